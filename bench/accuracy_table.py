#!/usr/bin/env python3
"""Turns `lserve eval --json` files into one Markdown table: a row per file (configuration),
accuracy per task and length, the overall accuracy and its difference from the dense row.

    python3 bench/accuracy_table.py bench/results/accuracy/*.json > bench/results/accuracy/table.md
"""
import json
import sys
from pathlib import Path


def describe(att):
    parts = [att["policy"]]
    if att.get("streaming_kv_heads"):
        pattern = Path(att["head_pattern"]).stem if att.get("head_pattern") else "profiled"
        parts.append(f"{att['streaming_kv_heads']}/{att['kv_heads']} heads streaming ({pattern})")
    if "token_budget" in att:
        parts.append(f"budget {att['token_budget']}")
    if "psa_mass" in att:
        parts.append(f"mass {att['psa_mass']}, {att['psa_min_budget']}-{att['psa_max_budget']} tokens")
    if "logical_page_size" in att:
        parts.append(f"pages {att['logical_page_size']}/{att['page_size']}, interval {att['selector_interval']}")
        if att.get("selection") == "query":
            parts.append("one selection per query head")
    return "; ".join(parts)


def main(paths):
    runs = [(Path(p).stem, json.load(open(p))) for p in paths]
    runs.sort(key=lambda r: (not r[0].startswith("dense"), r[0]))
    first = runs[0][1]
    cols = [(t, str(L)) for t in first["task_list"] for L in first["lengths"]]
    dense = next((r["accuracy"] for n, r in runs if n.startswith("dense")), None)
    head = ["configuration", "attention"] + [f"{t} {int(L) // 1024}K" for t, L in cols] + ["all", "vs dense"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in runs:
        cells = []
        for t, L in cols:
            c = r["tasks"][t]["lengths"][L]
            cells.append(f"{c['correct']}/{c['total']}")
        delta = "" if dense is None or name.startswith("dense") else f"{100 * (r['accuracy'] - dense):+.1f}"
        print(f"| {name} | {describe(r['attention'])} | " + " | ".join(cells) +
              f" | {100 * r['accuracy']:.1f}% | {delta} |")
    grid = first
    print()
    print(f"Model {Path(grid['model']).name}; seed {grid['seed']}; {grid['samples_per_cell']} sample per "
          f"(task, length, depth), depths {', '.join(f'{d:g}' for d in grid['depths'])}; greedy, "
          f"{grid['max_new_tokens']} new tokens at most; exact match (docs/eval_tasks.md).")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
