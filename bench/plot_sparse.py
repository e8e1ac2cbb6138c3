#!/usr/bin/env python3
"""Plots sparse_attention_bench's CSV: decode attention time vs context (dense, quest, lserve)
for each layer shape, and prefill attention time vs prompt length (dense vs streaming heads).

    python3 bench/plot_sparse.py bench/results/cpu_sparse_attention.csv bench/results/cpu_sparse_attention.png
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(csv_path, png_path):
    rows = list(csv.DictReader(open(csv_path)))
    decode = defaultdict(lambda: defaultdict(list))
    prefill = defaultdict(lambda: defaultdict(list))
    for r in rows:
        target = decode if r["kind"] == "decode" else prefill
        target[r["shape"]][r["policy"]].append((int(r["context"]), float(r["seconds"])))
    panels = [("decode", s, d) for s, d in decode.items()] + [("prefill", s, d) for s, d in prefill.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    if len(panels) == 1:
        axes = [axes]
    for ax, (kind, shape, series) in zip(axes, panels):
        for policy, pts in series.items():
            pts.sort()
            xs = [p[0] for p in pts]
            ys = [p[1] * (1e3 if kind == "decode" else 1) for p in pts]
            ax.plot(xs, ys, marker="o", label=policy)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)" if kind == "decode" else "prompt length (tokens)")
        ax.set_ylabel("ms per decode step" if kind == "decode" else "seconds per prefill")
        ax.set_title(f"CPU {kind} attention, one layer\n{shape}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
