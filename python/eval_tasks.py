"""The long-context evaluation tasks of docs/eval_tasks.md, in plain Python (no dependencies).

docs/eval_tasks.md is the specification; this file implements it and must follow it. The
training script uses the same generator (with other needle counts and its own seeds), so that
what the model is trained on is what `lserve eval` asks.

    rng = SplitMix64(sample_seed(seed, "passkey", 4096, 500, 0))
    s = make_sample("passkey", 4096, 500, rng, lines, line_cost, text_cost)
    s.prompt_text(lines)   # everything after <|begin_of_text|>
    s.answer               # what the continuation must be

line_cost(i) is the token count of " " + lines[i] and text_cost(t) that of any other string,
both without special tokens (see "Length" in the specification).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

TASKS = {"passkey": 1, "niah": 2, "multikey": 3, "multivalue": 4, "kv": 5, "vartrack": 6}

# Needles per sample in the evaluation; training draws other counts.
DEFAULT_COUNTS = {"passkey": 1, "niah": 1, "multikey": 4, "multivalue": 4, "kv": 6, "vartrack": 5}

MAX_NEW_TOKENS = 64

ADJECTIVES = (
    "amber ancient azure bitter bold brave bright calm clever cold crimson curious dark eager "
    "early electric empty fancy fierce frozen gentle giant golden grand green happy hidden hollow "
    "humble icy jolly kind late lazy little lively lucky misty modern noble odd orange pale "
    "patient polite proud quick quiet rapid rough royal rustic scarlet shiny silent silver sleepy "
    "smooth solid steady swift tender wild young").split()
NOUNS = (
    "anchor apple arrow badger banner basket beacon bridge bucket candle canyon castle cedar "
    "comet copper coral dragon eagle ember falcon feather forest fountain garden glacier harbor "
    "hammer island jacket jungle kettle lantern lemon meadow mirror monkey needle ocean orchid "
    "otter panther pebble pepper pillow planet pocket rabbit river rocket saddle shadow spider "
    "spoon squirrel thunder tiger tower tulip valley violin walnut whale willow window").split()
assert len(ADJECTIVES) == 64 and len(NOUNS) == 64, (len(ADJECTIVES), len(NOUNS))
HEX = "0123456789abcdef"
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mix64(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class SplitMix64:
    def __init__(self, state: int):
        self.state = state & MASK64

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK64
        return mix64(self.state)

    def below(self, n: int) -> int:
        """An integer in [0, n): next() mod n (n >= 1)."""
        return self.next() % n


def sample_seed(seed: int, task: str, length: int, depth_permille: int, index: int) -> int:
    h = mix64(seed + GOLDEN)
    for v in (TASKS[task], length, depth_permille, index):
        h = mix64(h ^ v)
    return h


def depth_permille(depth: float) -> int:
    """A depth fraction in [0, 1] as the integer permille the specification works with."""
    return min(1000, max(0, int(round(depth * 1000))))


# ----------------------------------------------------------------------------------------------
# values
# ----------------------------------------------------------------------------------------------

def number7(rng: SplitMix64) -> str:
    return str(1000000 + rng.below(9000000))


def word_key(rng: SplitMix64) -> str:
    a = ADJECTIVES[rng.below(64)]
    return a + "-" + NOUNS[rng.below(64)]


def hex_id(rng: SplitMix64) -> str:
    d = [HEX[rng.below(16)] for _ in range(16)]
    return "".join(d[:8]) + "-" + "".join(d[8:12]) + "-" + "".join(d[12:])


def var_name(rng: SplitMix64) -> str:
    return "".join(UPPER[rng.below(26)] for _ in range(5))


def distinct(rng: SplitMix64, draw, count: int) -> list:
    """count values of draw(rng), each redrawn while it equals an earlier one."""
    out = []
    while len(out) < count:
        v = draw(rng)
        if v not in out:
            out.append(v)
    return out


# ----------------------------------------------------------------------------------------------
# samples
# ----------------------------------------------------------------------------------------------

@dataclass
class Sample:
    task: str
    start: int                      # first haystack line
    n: int                          # haystack sentences (lines start, start+1, ... mod N)
    needles: list                   # [(slot, text)] in text order; slot k = before sentence k
    question: str
    answer: str
    cost: int = 0                   # 1 + needles + haystack + question, as counted by the spec
    values: dict = field(default_factory=dict)

    def items(self, lines: list) -> list:
        """The sentences and needles in text order."""
        out, j, N = [], 0, len(lines)
        for k in range(self.n + 1):
            while j < len(self.needles) and self.needles[j][0] == k:
                out.append(self.needles[j][1])
                j += 1
            if k < self.n:
                out.append(lines[(self.start + k) % N])
        return out

    def prompt_text(self, lines: list) -> str:
        return "".join(" " + it for it in self.items(lines)) + "\n\n" + self.question


def _needles_and_question(task: str, rng: SplitMix64, count: int):
    """Returns (needle texts with the target first, question, answer, values, answer_order)."""
    if task == "passkey":
        v = number7(rng)
        return ([f"The pass key is {v}. Remember it."], "What is the pass key? Answer:", v,
                {"value": v})
    if task in ("niah", "multikey"):
        n = 1 if task == "niah" else count
        keys = distinct(rng, word_key, n)
        vals = [number7(rng) for _ in range(n)]
        needles = [f"The special magic number for {k} is: {v}." for k, v in zip(keys, vals)]
        return (needles, f"What is the special magic number for {keys[0]}? Answer:", vals[0],
                {"keys": keys, "values": vals})
    if task == "multivalue":
        key = word_key(rng)
        vals = distinct(rng, number7, count)
        needles = [f"The special magic number for {key} is: {v}." for v in vals]
        return (needles, f"What are all the special magic numbers for {key}? Answer:", None,
                {"key": key, "values": vals})
    if task == "kv":
        keys = distinct(rng, hex_id, count)
        vals = [hex_id(rng) for _ in range(count)]
        needles = [f"The value for key {k} is {v}." for k, v in zip(keys, vals)]
        return (needles, f"What is the value for key {keys[0]}? Answer:", vals[0],
                {"keys": keys, "values": vals})
    if task == "vartrack":
        v = number7(rng)
        names = distinct(rng, var_name, count)
        needles = [f"VAR {names[0]} = {v}."]
        needles += [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, count)]
        return (needles, f"Which variables are assigned the value {v}? Answer:",
                " ".join(names), {"value": v, "names": names})
    raise ValueError(f"unknown task {task!r}")


def make_sample(task: str, length: int, depth: int, rng: SplitMix64, lines: list, line_cost,
                text_cost, count: int | None = None, fill=None) -> Sample:
    """One sample of the specification. depth is in permille (0..1000). fill(start, budget)
    may replace the sentence-by-sentence count of haystack sentences (same result, faster)."""
    count = DEFAULT_COUNTS[task] if count is None else count
    N = len(lines)
    start = rng.below(N)
    needles, question, answer, values = _needles_and_question(task, rng, count)
    fixed = 1 + sum(text_cost(" " + t) for t in needles) + text_cost("\n\n" + question)
    budget = length - fixed
    if fill is not None:
        n, used = fill(start, budget)
    else:
        n, used = 0, 0
        while budget > 0:
            c = line_cost((start + n) % N)
            if used + c > budget:
                break
            used += c
            n += 1
    # slots, in needle order
    slot0 = (depth * n + 500) // 1000
    if task == "vartrack":
        slots = [((depth + (1000 - depth) * i // count) * n + 500) // 1000 for i in range(count)]
    else:
        slots = [slot0] + [rng.below(n + 1) for _ in range(len(needles) - 1)]
    order = sorted(range(len(needles)), key=lambda j: (slots[j], j))
    placed = [(slots[j], needles[j]) for j in order]
    if task == "multivalue":
        answer = ", ".join(values["values"][j] for j in order)
    return Sample(task=task, start=start, n=n, needles=placed, question=question, answer=answer,
                  cost=fixed + used, values=values)


def score(continuation: str, answer: str) -> bool:
    """Exact match: the continuation (decoded, already cut at the first end-of-text or
    end-of-turn token) is cut at its first newline and stripped of surrounding whitespace."""
    return continuation.split("\n", 1)[0].strip() == answer


def load_haystack(path) -> list:
    with open(path, encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip()]


# ----------------------------------------------------------------------------------------------

def _vectors(haystack_path):
    lines = load_haystack(haystack_path)
    r = SplitMix64(0)
    print("SplitMix64(0):", [r.next() for _ in range(3)])
    r = SplitMix64(12345)
    print("SplitMix64(12345) below(1000):", [r.below(1000) for _ in range(5)])
    print(f"N = {len(lines)}; seed 7, L 4096, D 500, i 3:")
    for task in TASKS:
        state = sample_seed(7, task, 4096, 500, 3)
        rng = SplitMix64(state)
        start = rng.below(len(lines))
        needles, _, answer, _ = _needles_and_question(task, rng, DEFAULT_COUNTS[task])
        print(f"  {task:10s} 0x{state:016x} start {start:5d} {needles[0]!r} answer {answer!r}")


def _show(args):
    import json
    from pathlib import Path
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    lines = load_haystack(args.haystack)

    def cost(t):
        return len(tok.encode(t, add_special_tokens=False).ids)

    rng = SplitMix64(sample_seed(args.seed, args.task, args.length, args.depth, args.index))
    s = make_sample(args.task, args.length, args.depth, rng, lines,
                    lambda i: cost(" " + lines[i]), cost)
    text = s.prompt_text(lines)
    ids = tok.encode(text, add_special_tokens=True).ids
    print(json.dumps({"task": s.task, "start": s.start, "sentences": s.n,
                      "slots": [k for k, _ in s.needles], "counted": s.cost,
                      "tokens": len(ids), "answer": s.answer}, indent=1))
    print(text)


def main():
    import argparse
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description="Print samples of docs/eval_tasks.md.")
    ap.add_argument("command", choices=["vectors", "show"])
    ap.add_argument("--haystack", default=str(root / "eval" / "haystack.txt"))
    ap.add_argument("--model", help="show: model folder with tokenizer.json")
    ap.add_argument("--task", default="niah", choices=list(TASKS))
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=500, help="permille")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", type=int, default=0)
    args = ap.parse_args()
    if args.command == "vectors":
        _vectors(args.haystack)
    else:
        _show(args)


if __name__ == "__main__":
    main()
