#!/usr/bin/env python3
"""The peers lserve's GPU attention is measured against, on the same GPU and in the same run.

Llama-3-8B's attention layer (32 query heads, 8 KV heads, head_dim 128, bf16):
  - the ceilings: device-to-device copy bandwidth (bytes read + written) and a bf16 GEMM rate;
  - causal prefill through torch SDPA with the cuDNN and the flash backends;
  - FlexAttention (torch.compile) with half the KV heads streaming (sink + local window) at
    LServe's windows (sink 128 + local 8192) and DuoAttention's (sink 64 + local 256), the mask
    the sparse prefill kernel computes;
  - decode (one query per sequence) through torch SDPA over a contiguous KV cache, and a
    PyTorch Quest (score pages by key min/max, keep the top pages under a token budget,
    gather them, SDPA) for the sparse decode comparison.

Prints one CSV row per case (peer,case,context,batch,ms,rate,unit) and writes the same to
--csv. Times are medians of CUDA-event-timed repeats after a warm-up.

    python3 bench/cuda/peer_attention.py --csv peers.csv [--quick] [--parts prefill,decode]
"""
import argparse
import csv
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, D = 32, 8, 128
DT = torch.bfloat16
rows = []


def emit(peer, case, context, batch, ms, rate, unit):
    row = dict(peer=peer, case=case, context=context, batch=batch, ms=f"{ms:.4f}", rate=f"{rate:.1f}", unit=unit)
    rows.append(row)
    print(",".join(str(v) for v in row.values()), flush=True)


def bench(fn, min_ms=200.0, max_reps=50):
    """Median ms of fn() over repeats, each timed with CUDA events; one warm-up call first."""
    fn()
    torch.cuda.synchronize()
    times = []
    spent = 0.0
    while len(times) < 3 or (spent < min_ms and len(times) < max_reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
        spent += times[-1]
    times.sort()
    return times[len(times) // 2]


def bench_many(fn, reps):
    """ms per call of `reps` back-to-back calls (short kernels: no host wait between them)."""
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) / reps)
    samples.sort()
    return samples[len(samples) // 2]


def ceilings():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").fill_(7)
    dst = torch.empty_like(src)
    ms = bench_many(lambda: dst.copy_(src), 10)
    emit("copy", "device-to-device copy 1 GiB", 0, 1, ms, 2 * n / ms / 1e6, "GB/s")
    a = torch.randn(8192, 8192, dtype=DT, device="cuda")
    b = torch.randn(8192, 8192, dtype=DT, device="cuda")
    ms = bench_many(lambda: a @ b, 10)
    emit("cublas", "bf16 GEMM 8192^3", 0, 1, ms, 2 * 8192**3 / ms / 1e9, "TFLOP/s")
    del src, dst, a, b


def causal_flops(n):
    return 4.0 * D * HEADS * n * (n + 1) / 2


def prefill(lengths):
    for n in lengths:
        q = torch.randn(1, HEADS, n, D, dtype=DT, device="cuda")
        k = torch.randn(1, KV_HEADS, n, D, dtype=DT, device="cuda")
        v = torch.randn(1, KV_HEADS, n, D, dtype=DT, device="cuda")
        # The cuDNN backend takes no GQA: KV expanded to every query head (not timed).
        ke = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
        ve = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        for name, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa-flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    ms = bench(lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True))
                emit(name, "causal prefill", n, 1, ms, causal_flops(n) / ms / 1e9, "TFLOP/s")
            except RuntimeError as e:
                print(f"# {name} at {n}: {str(e).splitlines()[0]}", file=sys.stderr)
        del q, k, v, ke, ve
        torch.cuda.empty_cache()


def flex_streaming(lengths, windows):
    """Half the KV heads (and their query heads) streaming, the other half dense causal."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    group = HEADS // KV_HEADS
    for sink, local in windows:
        for n in lengths:
            streaming = torch.zeros(HEADS, dtype=torch.bool, device="cuda")
            streaming[: HEADS // 2] = True  # KV heads 0..3 stream: their query heads 0..15

            def mask(b, h, qi, ki):
                causal = ki <= qi
                lam = (ki < sink) | (qi - ki < local)
                return causal & (lam | ~streaming[h])

            # _compile: the mask is evaluated block by block (materialized whole it needs H * n^2 bytes).
            block_mask = create_block_mask(mask, 1, HEADS, n, n, device="cuda", _compile=True)
            q = torch.randn(1, HEADS, n, D, dtype=DT, device="cuda")
            k = torch.randn(1, KV_HEADS, n, D, dtype=DT, device="cuda")
            v = torch.randn(1, KV_HEADS, n, D, dtype=DT, device="cuda")
            try:
                ms = bench(lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True))
                emit("flex", f"streaming 50% sink {sink} local {local}", n, 1, ms, causal_flops(n) / ms / 1e9,
                     "dense-equivalent TFLOP/s")
            except Exception as e:  # compile errors or out of memory: reported, the rest goes on
                print(f"# flex at {n} sink {sink} local {local}: {str(e).splitlines()[0]}", file=sys.stderr)
            del q, k, v, block_mask
            torch.cuda.empty_cache()
    del group


def decode(lengths, batches):
    for n in lengths:
        for bsz in batches:
            q = torch.randn(bsz, HEADS, 1, D, dtype=DT, device="cuda")
            k = torch.randn(bsz, KV_HEADS, n, D, dtype=DT, device="cuda")
            v = torch.randn(bsz, KV_HEADS, n, D, dtype=DT, device="cuda")
            kv_bytes = 2 * k.numel() * k.element_size()
            ms = bench_many(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), 20)
            emit("sdpa", "decode", n, bsz, ms, kv_bytes / ms / 1e6, "GB/s")
            del q, k, v
            torch.cuda.empty_cache()


def quest(lengths, batches, budget=4096, page=16):
    """Quest in PyTorch: per page key min/max (precomputed, as a cache would keep them), score
    each page by sum_c max(q_c kmax_c, q_c kmin_c) per KV head (query heads of a group summed),
    keep the top pages under the budget, gather them, and run SDPA over the gathered KV."""
    group = HEADS // KV_HEADS
    for n in lengths:
        for bsz in batches:
            pages = n // page
            q = torch.randn(bsz, HEADS, 1, D, dtype=DT, device="cuda")
            k = torch.randn(bsz, KV_HEADS, pages, page, D, dtype=DT, device="cuda")
            v = torch.randn(bsz, KV_HEADS, pages, page, D, dtype=DT, device="cuda")
            kmax, kmin = k.amax(dim=3), k.amin(dim=3)  # [b, kvh, pages, D]
            top = budget // page

            def step():
                qg = q.view(bsz, KV_HEADS, group, D).float()
                s = torch.maximum(qg[:, :, :, None, :] * kmax[:, :, None].float(),
                                  qg[:, :, :, None, :] * kmin[:, :, None].float()).sum(-1).sum(2)
                idx = s.topk(top, dim=-1).indices  # [b, kvh, top]
                gi = idx[..., None, None].expand(-1, -1, -1, page, D)
                ks = torch.gather(k, 2, gi).view(bsz, KV_HEADS, top * page, D)
                vs = torch.gather(v, 2, gi).view(bsz, KV_HEADS, top * page, D)
                return F.scaled_dot_product_attention(q, ks, vs, enable_gqa=True)

            ms = bench_many(step, 10)
            emit("torch-quest", f"decode, budget {budget}, {page}-token pages", n, bsz, ms,
                 2 * bsz * KV_HEADS * budget * D * 2 / ms / 1e6, "GB/s of selected KV")
            del q, k, v, kmax, kmin
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", help="also write the rows here")
    ap.add_argument("--quick", action="store_true", help="fewer lengths (a smoke run)")
    ap.add_argument("--parts", default="ceilings,prefill,decode,quest,flex",
                    help="comma-separated subset of ceilings,prefill,decode,quest,flex")
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}",
          flush=True)
    print("peer,case,context,batch,ms,rate,unit", flush=True)
    start = time.time()
    parts = set(args.parts.split(","))
    long_prefill = [32768] if args.quick else [32768, 131072, 262144]
    long_decode = [65536] if args.quick else [65536, 131072, 262144, 524288]
    if "ceilings" in parts:
        ceilings()
    if "prefill" in parts:
        prefill(long_prefill)
    if "decode" in parts:
        decode(long_decode, [1, 8])
    if "quest" in parts:
        quest(long_decode, [1, 8])
    if "flex" in parts:
        flex_streaming(long_prefill, [(128, 8192), (64, 256)])
    print(f"# done in {time.time() - start:.0f} s", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
