#!/usr/bin/env python3
"""LServe's sparse attention on the GPU against dense and the peers, as one PNG.

    python3 bench/cuda/plot_sparse_gpu.py ATTENTION_TIMING.txt[,MORE.txt...] PEERS.csv OUT.png

ATTENTION_TIMING.txt is what bench/cuda/attention_timing prints (several, comma-separated: a
later file's rows replace an earlier one's of the same case and length, e.g. a full run and a
newer run of one section), PEERS.csv what
bench/cuda/peer_attention.py writes, on the same GPU. Panels: prefill time against the prompt
length (one Llama-3-8B layer), decode time per layer at batch 1 against the context, and the
KV memory a sequence holds against its context (computed from the cache layout of
kv/kv_cache.h for Llama-3-8B: dense, and LServe's half streaming with key summaries).
"""
import csv
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

K = 1024


def read_timing(paths):
    """Dicts {context: ms} of dense prefill, {window: {context: ms}} of streaming prefill, and
    dense and LServe decode at batch 1; a later file's rows replace an earlier one's."""
    dense_prefill, stream_prefill, dense_decode, lserve_decode = {}, {}, {}, {}
    for path in paths:
        for line in open(path):
            m = re.match(r"prefill (\d+)K \(one pass, causal\)\s+64\s+([\d.]+)", line)
            if m:
                dense_prefill[int(m[1]) * K] = float(m[2])
            m = re.match(r"prefill\s+(\d+)K, (LServe|DuoAttention)\S* .*?\s([\d.]+) ms", line)
            if m:
                stream_prefill.setdefault(m[2], {})[int(m[1]) * K] = float(m[3])
            m = re.match(r"decode (\d+)K x1\s+64\s+([\d.]+)", line)
            if m:
                dense_decode[int(m[1]) * K] = float(m[2])
            m = re.match(r"decode\s+(\d+)K x1, shared\s*:.*per step\s+([\d.]+) ms", line)
            if m:
                lserve_decode[int(m[1]) * K] = float(m[2])
    return ([*dense_prefill.items()], {w: [*pts.items()] for w, pts in stream_prefill.items()},
            [*dense_decode.items()], [*lserve_decode.items()])


def read_peers(path):
    prefill, decode = {}, {}
    for r in csv.DictReader(open(path)):
        n, b, ms = int(r["context"]), int(r["batch"]), float(r["ms"])
        if r["case"] == "causal prefill" or r["peer"] == "flex":
            prefill.setdefault(f"{r['peer']}: {r['case']}", []).append((n, ms))
        elif b == 1 and r["peer"] in ("sdpa", "torch-quest"):
            decode.setdefault(r["peer"], []).append((n, ms))
    return prefill, decode


def kv_bytes(n, lserve):
    """KV bytes of one Llama-3-8B sequence of n tokens (32 layers, 8 KV heads, d 128, bf16,
    64-token pages): dense keeps K and V of every head; LServe keeps half the heads whole (plus
    per-16-token key min and max) and the other half at sink 128 + local 256 tokens."""
    layers, heads, d, page = 32, 8, 128, 64
    pages = -(-n // page)
    per_head_page = 2 * page * d * 2
    if not lserve:
        return layers * heads * pages * per_head_page
    summaries = 2 * (page // 16) * d * 2
    window_pages = min(pages, -(-128 // page) + -(-256 // page) + 1)
    return layers * (heads // 2) * (pages * (per_head_page + summaries) + window_pages * per_head_page)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    dp, sp, dd, ld = read_timing(sys.argv[1].split(","))
    pp, pd = read_peers(sys.argv[2])
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.8))
    if dp:
        a.plot(*zip(*sorted(dp)), "o-", color="black", label="lserve dense")
    for name, pts in sorted(sp.items()):
        a.plot(*zip(*sorted(pts)), "o-", label=f"lserve, half the heads streaming ({name}'s window)")
    for name, pts in sorted(pp.items()):
        a.plot(*zip(*sorted(pts)), "s--", label=name.replace("streaming 50% ", "50% streaming, "))
    a.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="ms", title="prefill, one layer (32/8 heads, d 128)")
    if dd:
        b.plot(*zip(*sorted(dd)), "o-", color="black", label="lserve dense")
    if ld:
        b.plot(*zip(*sorted(ld)), "o-", label="lserve (LServe: streaming + selection, budget 4096)")
    for name, pts in sorted(pd.items()):
        b.plot(*zip(*sorted(pts)), "s--", label={"sdpa": "torch SDPA dense", "torch-quest": "PyTorch Quest"}[name])
    b.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="ms per layer", title="decode, batch 1, one layer")
    ns = [2**k for k in range(14, 21)]
    c.plot(ns, [kv_bytes(n, False) / 2**30 for n in ns], "o-", color="black", label="dense")
    c.plot(ns, [kv_bytes(n, True) / 2**30 for n in ns], "o-", label="LServe (half the heads streaming)")
    c.axhline(140 - 15, color="grey", ls=":", label="H200 memory less the 8B weights")
    c.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="GiB per sequence",
          title="KV cache of one sequence, Llama-3-8B")
    for ax in (a, b, c):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sys.argv[3], dpi=110)


if __name__ == "__main__":
    main()
