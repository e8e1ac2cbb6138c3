"""Checks the samples `lserve eval --write-samples` builds against python/eval_tasks.py, the
reference implementation of docs/eval_tasks.md, with token counts from `lserve tokenize`
(which gives Hugging Face's ids). Usage: eval_prompts_vs_python.py LSERVE MODEL SAMPLES.jsonl
Every sample in the file is rebuilt in Python; prompt text, answer, start, sentence count and
needle slots must be identical."""

import json
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(root / "python"))
import eval_tasks as et  # noqa: E402


def main():
    lserve, model, samples_path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tok = subprocess.Popen([lserve, "tokenize", "--tokenizer", model, "--jsonl"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    memo = {}

    def cost(text):
        if text not in memo:
            tok.stdin.write(json.dumps(text) + "\n")
            tok.stdin.flush()
            memo[text] = len(json.loads(tok.stdout.readline()))
        return memo[text]

    lines = et.load_haystack(root / "eval" / "haystack.txt")
    failures = 0
    samples = [json.loads(l) for l in open(samples_path)]
    for c in samples:
        task, length, depth, index = c["task"], c["length"], c["depth_permille"], c["index"]
        rng = et.SplitMix64(et.sample_seed(seed, task, length, depth, index))
        s = et.make_sample(task, length, depth, rng, lines, lambda i: cost(" " + lines[i]), cost)
        want = {"start": s.start, "sentences": s.n, "slots": [k for k, _ in s.needles], "counted": s.cost,
                "answer": s.answer, "prompt": s.prompt_text(lines)}
        wrong = [key for key, value in want.items() if c[key] != value]
        failures += 1 if wrong else 0
        for key in wrong:
            value = want[key]
            shown = (value[:80] + "...") if isinstance(value, str) and len(value) > 80 else value
            print(f"FAIL {task} L={length} D={depth} i={index}: {key} differs (python: {shown!r})")
    tok.stdin.close()
    tok.wait()
    print(f"{len(samples) - failures}/{len(samples)} samples identical to python/eval_tasks.py")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
