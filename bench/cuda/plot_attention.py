#!/usr/bin/env python3
"""Speed against context of lserve's dense GPU attention and its peers, as one PNG.

    python3 bench/cuda/plot_attention.py LSERVE_TIMING.txt PEERS.csv OUT.png

LSERVE_TIMING.txt is what bench/cuda/attention_timing prints; PEERS.csv what
bench/cuda/peer_attention.py writes (same GPU). Left: causal prefill TFLOP/s; right: decode
time per layer at batch 1 and 8.
"""
import csv
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIZES = {"32K": 32768, "64K": 65536, "128K": 131072, "256K": 262144}


def read_lserve(path):
    prefill, decode = {}, {}  # page -> [(context, TFLOP/s)], (page, batch) -> [(context, ms)]
    for line in open(path):
        m = re.match(r"prefill (\d+K) \(one pass, causal\)\s+(\d+)\s+([\d.]+)\s+\S+\s+\S+\s+([\d.]+)", line)
        if m:
            prefill.setdefault(int(m[2]), []).append((SIZES[m[1]], float(m[4])))
        m = re.match(r"decode (\d+K) x(\d+)\s+(\d+)\s+([\d.]+)", line)
        if m and m[1] in SIZES:
            decode.setdefault((int(m[3]), int(m[2])), []).append((SIZES[m[1]], float(m[4])))
    return prefill, decode


def read_peers(path):
    prefill, decode = {}, {}
    for r in csv.DictReader(open(path)):
        n, b = int(r["context"]), int(r["batch"])
        if r["case"] == "causal prefill":
            prefill.setdefault(r["peer"], []).append((n, float(r["rate"])))
        elif r["peer"] == "sdpa" and r["case"] == "decode":
            decode.setdefault(b, []).append((n, float(r["ms"])))
    return prefill, decode


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    lp, ld = read_lserve(sys.argv[1])
    pp, pd = read_peers(sys.argv[2])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for page, pts in sorted(lp.items()):
        a.plot(*zip(*sorted(pts)), "o-", label=f"lserve (wgmma), {page}-token pages")
    for peer, pts in sorted(pp.items()):
        a.plot(*zip(*sorted(pts)), "s--", label=f"torch SDPA, {peer.replace('sdpa-', '')}")
    a.set(xscale="log", xlabel="prompt tokens", ylabel="TFLOP/s", title="causal prefill, one layer (32/8 heads, d 128)")
    a.set_ylim(bottom=0)
    for (page, batch), pts in sorted(ld.items()):
        if page == 64:
            b.plot(*zip(*sorted(pts)), "o-", label=f"lserve, batch {batch}")
    for batch, pts in sorted(pd.items()):
        b.plot(*zip(*sorted(pts)), "s--", label=f"torch SDPA, batch {batch}")
    b.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="ms per layer", title="decode, one layer")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[3], dpi=110)


if __name__ == "__main__":
    main()
