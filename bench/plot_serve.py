#!/usr/bin/env python3
"""Plots `lserve bench serve --csv` output: throughput, time to first token and inter-token
latency against the number of requests in flight. Several CSVs (e.g. one per attention policy)
are drawn side by side, each labelled by its file name without the extension.

    python3 bench/plot_serve.py bench/results/serve_dense.csv [more.csv ...] bench/results/serve.png
"""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(csv_paths, png_path):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for path in csv_paths:
        rows = sorted(csv.DictReader(open(path)), key=lambda r: int(r["concurrency"]))
        label = Path(path).stem
        conc = [int(r["concurrency"]) for r in rows]
        axes[0].plot(conc, [float(r["output_tok_per_s"]) for r in rows], marker="o", label=label)
        for q, style in (("p50", "-"), ("p99", "--")):
            axes[1].plot(conc, [float(r[f"ttft_{q}"]) for r in rows], style, marker="o", label=f"{label} {q}")
            axes[2].plot(conc, [float(r[f"itl_{q}"]) for r in rows], style, marker="o", label=f"{label} {q}")
    first = next(csv.DictReader(open(csv_paths[0])))
    shape = f"{first['input_len']} prompt + {first['output_len']} output tokens per request"
    for ax, ylabel, title in ((axes[0], "output tokens/s", "throughput"),
                              (axes[1], "ms", "time to first token"),
                              (axes[2], "ms", "inter-token latency")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("requests in flight")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{shape}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:-1], sys.argv[-1])
