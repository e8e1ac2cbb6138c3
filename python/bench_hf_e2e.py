#!/usr/bin/env python3
"""HF transformers end to end on a dummy-weight model, the peer of `lserve bench` on the GPU.

Builds the model of a config.json (LlamaForCausalLM, attn_implementation="sdpa", bf16, on
cuda, weights normal(0, 0.02), norms 1) and times:
  - prefill: one forward over a prompt of each length (batch 1), use_cache=True, logits of the
    last position only (logits_to_keep=1: HF would otherwise compute [n, vocab] logits);
  - decode: greedy steps with the cache from that prefill, at batch 1 and the other batch
    sizes asked for. A batch-B cache is the batch-1 prefill's KV repeated B times (the bytes a
    step reads are the same as for B distinct prompts, and it saves B prefills); cases whose KV
    does not fit in GPU memory are skipped and reported as such;
  - the causal attention rate of torch SDPA's cuDNN backend for one Llama-3-8B-shaped layer at
    each prefill length (the attention part of the prefill floor).

Prints CSV rows system,case,context,batch,value,unit (and writes them to --csv). Times come
from CUDA events after a warm-up.

    python3 python/bench_hf_e2e.py --config bench/configs/llama-3-8b.json --csv hf.csv \
        --prefill 32768,131008 --decode 32768,131008 --batch 1,8 --decode-steps 32

The report mode reads the CSV rows of lserve, HF and the ceilings and writes the comparison
table with each result against its floor (it needs no torch):

    python3 python/bench_hf_e2e.py --report all.csv --config bench/configs/llama-3-8b.json --md e2e.md
"""
import argparse
import csv
import json
import math
import sys
import time

FIELDS = ["system", "case", "context", "batch", "value", "unit"]
rows = []


def emit(system, case, context, batch, value, unit):
    row = dict(system=system, case=case, context=context, batch=batch,
               value="" if value is None else f"{value:.6g}", unit=unit)
    rows.append(row)
    print(",".join(str(row[k]) for k in FIELDS), flush=True)


def log(msg):
    print(f"# {msg}", flush=True)


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------- model arithmetic (no torch)

class Shape:
    """The sizes of a Llama config that the floors need."""

    def __init__(self, cfg):
        self.vocab = cfg["vocab_size"]
        self.hidden = cfg["hidden_size"]
        self.inter = cfg["intermediate_size"]
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads", self.heads)
        self.head_dim = cfg.get("head_dim") or self.hidden // self.heads
        self.tied = cfg.get("tie_word_embeddings", False)

    def layer_matmul_params(self):
        q = self.hidden * self.heads * self.head_dim
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        o = self.heads * self.head_dim * self.hidden
        mlp = 3 * self.hidden * self.inter
        return q + kv + o + mlp

    def params(self):
        per_layer = self.layer_matmul_params() + 2 * self.hidden
        emb = self.vocab * self.hidden
        return self.layers * per_layer + self.hidden + emb * (1 if self.tied else 2)

    def step_weight_bytes(self):
        """bf16 weight bytes one forward step reads: every matrix and norm, the LM head, and
        not the embedding table (only the looked-up rows, negligible)."""
        return 2 * (self.layers * (self.layer_matmul_params() + 2 * self.hidden) + self.hidden
                    + self.vocab * self.hidden)

    def kv_bytes_per_token(self):
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    def prefill_gemm_flops(self, n):
        """Linear layers over n tokens, plus the LM head for the last token only."""
        return 2.0 * n * self.layers * self.layer_matmul_params() + 2.0 * self.vocab * self.hidden

    def prefill_attention_flops(self, n):
        """Causal attention, QK^T and PV, over the lower triangle: all layers."""
        return self.layers * 4.0 * self.head_dim * self.heads * n * (n + 1) / 2

    def layer_attention_flops(self, n):
        return 4.0 * self.head_dim * self.heads * n * (n + 1) / 2


def fits(shape, batch, context, total_bytes, reserve=6 << 30):
    """Whether weights + the KV of batch x context (+ a reserve for activations) fit."""
    need = 2 * shape.params() + batch * context * shape.kv_bytes_per_token() + reserve
    return need <= total_bytes, need


# ---------------------------------------------------------------- HF measurements

def build_model(cfg_path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with open(cfg_path) as f:
        cfg = json.load(f)
    config = LlamaConfig.from_dict(cfg)  # as from_pretrained reads a config.json
    t0 = time.time()
    # Built directly on the GPU: its random init is fast there; the weights are refilled below.
    with torch.device("cuda"):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:  # transformers before `dtype`
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    torch.cuda.synchronize()
    n = sum(p.numel() for p in model.parameters())
    dt = {p.dtype for p in model.parameters()}
    rope = getattr(model.config, "rope_parameters", None) or {
        "rope_theta": getattr(model.config, "rope_theta", None), **(getattr(model.config, "rope_scaling", None) or {})}
    log(f"model: {n / 1e9:.2f}B parameters {dt}, attention {model.config._attn_implementation}, rope {rope}, "
        f"built in {time.time() - t0:.1f} s")
    return model, cfg


def logits_kwargs(model):
    import inspect

    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    log("this transformers computes logits for every position (no logits_to_keep)")
    return {}


class Timer:
    def __init__(self):
        import torch

        self.a = torch.cuda.Event(enable_timing=True)
        self.b = torch.cuda.Event(enable_timing=True)

    def __enter__(self):
        self.a.record()
        return self

    def __exit__(self, *exc):
        self.b.record()
        self.b.synchronize()
        self.ms = self.a.elapsed_time(self.b)


def prefill(model, n, vocab, extra, batch=1):
    import torch

    ids = torch.randint(0, vocab, (batch, n), device="cuda")
    with torch.inference_mode(), Timer() as t:
        out = model(input_ids=ids, use_cache=True, **extra)
    return t.ms, out


def decode(model, cache, first, batch, steps, warmup=2):
    """ms per greedy step over `steps` steps at batch `batch`, after `warmup` steps."""
    import torch

    tok = first[:1].repeat(batch, 1)
    with torch.inference_mode():
        for _ in range(warmup):
            out = model(input_ids=tok, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        with Timer() as t:
            for _ in range(steps):
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
    return t.ms / steps


def attention_rates(shape, lengths):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for n in lengths:
        q = torch.randn(1, shape.heads, n, shape.head_dim, dtype=torch.bfloat16, device="cuda")
        # The cuDNN backend takes no GQA: KV expanded to every query head (not timed).
        k = torch.randn(1, shape.heads, n, shape.head_dim, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    torch.cuda.synchronize()
                    times = []
                    for _ in range(3):
                        with Timer() as t:
                            F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        times.append(t.ms)
                ms = sorted(times)[1]
                emit(f"sdpa-{name}", "attention_prefill_rate", n, 1, shape.layer_attention_flops(n) / ms / 1e9, "TFLOP/s")
            except RuntimeError as e:
                log(f"sdpa {name} at {n}: {str(e).splitlines()[0]}")
        del q, k, v
        torch.cuda.empty_cache()


def measure(args):
    import torch

    props = torch.cuda.get_device_properties(0)
    import transformers

    log(f"{torch.cuda.get_device_name()}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, cuDNN {torch.backends.cudnn.version()}")
    print(",".join(FIELDS), flush=True)
    start = time.time()
    model, cfg = build_model(args.config)
    shape = Shape(cfg)
    extra = logits_kwargs(model)
    log(f"prefill keeps logits of: {'the last position' if extra else 'every position'} ({extra})")
    total = props.total_memory

    if args.attention:
        attention_rates(shape, args.prefill)

    # Warm-up: kernels, cuBLAS handles and the allocator.
    ms, out = prefill(model, min(4096, min(args.prefill + args.decode)), shape.vocab, extra)
    decode(model, out.past_key_values, out.logits[:, -1:].argmax(-1), 1, 2)
    del out
    torch.cuda.empty_cache()
    log(f"warmed up ({time.time() - start:.0f} s)")

    for n in sorted(set(args.prefill) | set(args.decode)):
        reps = args.prefill_repeats if n in args.prefill else 1
        times = []
        out = None
        for _ in range(reps):
            out = None
            torch.cuda.empty_cache()
            ms, out = prefill(model, n, shape.vocab, extra)
            times.append(ms)
        ms = sorted(times)[len(times) // 2]
        log(f"prefill {n}: {ms / 1e3:.2f} s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        if n in args.prefill:
            emit("hf", "prefill", n, 1, n / (ms / 1e3), "tokens/s")
            emit("hf", "prefill_time", n, 1, ms / 1e3, "s")
        if n in args.decode:
            cache, first = out.past_key_values, out.logits[:, -1:].argmax(-1)
            del out
            current = 1
            for b in sorted(args.batch):
                ok, need = fits(shape, b, n + 2 * (args.decode_steps + 2), total)
                if not ok:
                    log(f"skip decode at {n} batch {b}: needs {need / 2**30:.0f} GiB (weights + KV + "
                        f"activations), the GPU has {total / 2**30:.0f} GiB")
                    emit("hf", "decode", n, b, None, f"skipped: needs {need / 2**30:.0f} GiB")
                    continue
                if b != current:
                    # The previous batch's steps left a few more tokens than n in the cache: the
                    # context is n plus tens of tokens either way.
                    if hasattr(cache, "batch_repeat_interleave") and b % current == 0:
                        with torch.inference_mode():
                            cache.batch_repeat_interleave(b // current)
                    else:
                        log(f"decode batch {b}: prefilling {b} prompts of {n} tokens for the cache (untimed)")
                        del cache
                        torch.cuda.empty_cache()
                        _, out = prefill(model, n, shape.vocab, extra, batch=b)
                        cache = out.past_key_values
                        del out
                    current = b
                ms = decode(model, cache, first, b, args.decode_steps)
                log(f"decode {n} batch {b}: {ms:.2f} ms/step")
                emit("hf", "decode", n, b, b * 1e3 / ms, "tokens/s")
                emit("hf", "decode_step", n, b, ms, "ms")
            del cache
        out = None  # the decode branch above already let go of it
        torch.cuda.empty_cache()
    log(f"done in {time.time() - start:.0f} s")


# ---------------------------------------------------------------- report

def report(args):
    with open(args.config) as f:
        shape = Shape(json.load(f))
    data = {}
    skipped = {}
    for path in args.report.split(","):
        with open(path) as f:
            for r in csv.DictReader(f):
                if r.get("system") in (None, "system"):
                    continue
                key = (r["system"], r["case"], int(r["context"]), int(r["batch"]))
                if r["value"] == "":
                    skipped[key] = r["unit"]
                else:
                    data[key] = float(r["value"])

    def get(*key):
        return data.get(key)

    copy = get("copy", "copy", 0, 1) or args.copy_gbps
    gemm = get("cublas", "gemm", 0, 1) or args.gemm_tflops
    measured = get("copy", "copy", 0, 1) is not None and get("cublas", "gemm", 0, 1) is not None
    lines = ["# End to end: lserve vs HF transformers (sdpa), Llama-3-8B shape, dummy bf16 weights", ""]
    lines.append(f"Ceilings {'measured in the same run' if measured else 'GIVEN, not measured in this run'}: "
                 f"device-to-device copy {copy:.0f} GB/s (read + write), bf16 GEMM 8192^3 {gemm:.0f} TFLOP/s "
                 "(cuBLAS through torch).")
    lines.append("")
    lines.append("Prefill floor: the linear layers' FLOPs at the GEMM rate + causal attention at cuDNN's rate "
                 "for that length (torch SDPA, one layer). Decode floor per step: weight bytes "
                 f"({shape.step_weight_bytes() / 1e9:.2f} GB: every matrix and the LM head, not the embedding "
                 "table) + KV bytes at the context, over the copy bandwidth. \"of floor\" = floor time / "
                 "measured time.")
    lines.append("")
    lines.append("| case | context | batch | lserve | HF | lserve / HF | floor | lserve of floor | HF of floor |")
    lines.append("|---|---|---|---|---|---|---|---|---|")

    def attn_rate(n):
        r = get("sdpa-cudnn", "attention_prefill_rate", n, 1)
        if r is None:
            r = args.cudnn_tflops_128k if n > 65536 else args.cudnn_tflops_32k
            return r, "given"
        return r, "measured"

    def fmt_pct(x):
        return "" if x is None else f"{100 * x:.0f}%"

    contexts = sorted({k[2] for k in list(data) + list(skipped) if k[0] in ("lserve", "hf")})
    batches = sorted({k[3] for k in list(data) + list(skipped) if k[0] in ("lserve", "hf")})
    notes = []
    for n in contexts:
        ls, hf = get("lserve", "prefill_time", n, 1), get("hf", "prefill_time", n, 1)
        if ls is None and hf is None:
            continue
        rate, how = attn_rate(n)
        floor = shape.prefill_gemm_flops(n) / (gemm * 1e12) + shape.prefill_attention_flops(n) / (rate * 1e12)
        if how == "given":
            notes.append(f"prefill floor at {n}: cuDNN rate {rate:.0f} TFLOP/s given, not measured in this run")
        def pcell(t):
            return "" if t is None else f"{t:.2f} s ({n / t:.0f} tok/s)"

        lines.append(
            f"| prefill | {n} | 1 | {pcell(ls)} | {pcell(hf)} | "
            f"{'' if ls is None or hf is None else f'{hf / ls:.2f}x'} | {pcell(floor)} | "
            f"{fmt_pct(None if ls is None else floor / ls)} | {fmt_pct(None if hf is None else floor / hf)} |")
    for n in contexts:
        for b in batches:
            ls, hf = get("lserve", "decode_step", n, b), get("hf", "decode_step", n, b)
            if ls is None and hf is None and ("lserve", "decode", n, b) not in skipped \
                    and ("hf", "decode", n, b) not in skipped:
                continue
            floor_ms = (shape.step_weight_bytes() + b * n * shape.kv_bytes_per_token()) / (copy * 1e9) * 1e3

            def cell(ms, system):
                if ms is None:
                    return "skipped" if (system, "decode", n, b) in skipped else ""
                return f"{b * 1e3 / ms:.1f} tok/s ({ms:.2f} ms)"

            lines.append(
                f"| decode | {n} | {b} | {cell(ls, 'lserve')} | {cell(hf, 'hf')} | "
                f"{'' if ls is None or hf is None else f'{hf / ls:.2f}x'} | {b * 1e3 / floor_ms:.1f} tok/s "
                f"({floor_ms:.2f} ms) | {fmt_pct(None if ls is None else floor_ms / ls)} | "
                f"{fmt_pct(None if hf is None else floor_ms / hf)} |")
    for key, why in sorted(skipped.items()):
        notes.append(f"{key[0]} {key[1]} at {key[2]}, batch {key[3]}: {why}")
    lines.append("")
    lines.append("lserve / HF: HF's time over lserve's (above 1: lserve is faster). Decode: tokens/s summed over "
                 "the batch, ms per step in brackets; HF's batch-B cache is its batch-1 prefill repeated B "
                 "times, lserve's holds B distinct prompts.")
    extra_rows = [k for k in data if k[0] == "lserve" and k[1] == "prefill" and k[3] > 1]
    for k in sorted(extra_rows):
        lines.append("")
        lines.append(f"lserve prefill of {k[3]} prompts of {k[2]} tokens together: {data[k]:.0f} tokens/s "
                     f"({k[2] * k[3] / data[k]:.1f} s; decode rows of the finished prompts ride along).")
    # lserve's sparse policies (system lserve-POLICY) against its own dense run.
    policies = sorted({k[0] for k in data if k[0].startswith("lserve-")})
    if policies:
        lines += ["", "lserve's sparse attention policies against dense lserve (same run):", "",
                  "| policy | case | context | batch | sparse | dense | speedup |", "|---|---|---|---|---|---|---|"]
        for pol in policies:
            for (system, case, n, b), v in sorted(data.items()):
                if system != pol or case not in ("prefill_time", "decode_step"):
                    continue
                dense = get("lserve", case, n, b)
                unit = "s" if case == "prefill_time" else "ms"
                lines.append(f"| {pol[len('lserve-'):]} | {case.split('_')[0]} | {n} | {b} | {v:.2f} {unit} | "
                             f"{'' if dense is None else f'{dense:.2f} {unit}'} | "
                             f"{'' if dense is None else f'{dense / v:.2f}x'} |")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    text = "\n".join(lines) + "\n"
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    print(text, end="")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the model's config.json")
    ap.add_argument("--csv", help="also write the rows here")
    ap.add_argument("--prefill", type=ints, default=[32768, 131008], help="prompt lengths to prefill (comma-separated)")
    ap.add_argument("--decode", type=ints, default=[32768, 131008], help="contexts to decode at (each a prefill length)")
    ap.add_argument("--batch", type=ints, default=[1, 8], help="decode batch sizes")
    ap.add_argument("--decode-steps", type=int, default=32, help="timed decode steps per case")
    ap.add_argument("--prefill-repeats", type=int, default=1, help="timed prefills per length (median)")
    ap.add_argument("--no-attention", dest="attention", action="store_false",
                    help="skip the SDPA attention-rate measurement")
    ap.add_argument("--report", help="comma-separated CSV files: write the comparison instead of measuring")
    ap.add_argument("--md", help="with --report: the markdown file to write")
    ap.add_argument("--copy-gbps", type=float, default=4243.0, help="with --report: copy bandwidth if not in the CSV")
    ap.add_argument("--gemm-tflops", type=float, default=715.0, help="with --report: GEMM rate if not in the CSV")
    ap.add_argument("--cudnn-tflops-32k", type=float, default=600.0,
                    help="with --report: cuDNN causal prefill rate up to 64K if not measured")
    ap.add_argument("--cudnn-tflops-128k", type=float, default=559.0,
                    help="with --report: cuDNN causal prefill rate above 64K if not measured")
    args = ap.parse_args()
    if args.report:
        report(args)
        return
    if args.decode_steps < 1 or args.prefill_repeats < 1 or min(args.batch, default=0) < 1:
        ap.error("--decode-steps, --prefill-repeats and --batch must be positive")
    if 1 not in args.batch:
        args.batch = [1] + args.batch  # the batch-B cache is built from batch 1
    try:
        measure(args)
    finally:
        if args.csv and rows:
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS)
                w.writeheader()
                w.writerows(rows)


if __name__ == "__main__":
    main()
