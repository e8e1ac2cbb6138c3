#!/usr/bin/env python3
"""Build lserve's correctness fixtures and the bundled default model with HF transformers.

What it produces (paths relative to the repository root):

  tests/fixtures/models/<name>/      tiny random-weight models, one per architecture
      config.json, model*.safetensors (+ model.safetensors.index.json when sharded),
      generation_config.json, reference.safetensors
  models/tiny-llama/                 the default model used when --model is omitted
      config.json, model.safetensors, generation_config.json, tokenizer.json,
      tokenizer_config.json (with a Llama-3 style chat template), reference.safetensors

Fixtures (hidden 64, head_dim 16, vocab 512):
  llama3        Llama, GQA 4/2, rope llama3 scaling (classic "rope_scaling" key in config.json), f32
  llama2        Llama, MHA 4/4, plain rope theta 1e4, f16
  llama_linear  Llama, GQA 4/2, linear rope scaling x4, bf16, saved in several shards
  mistral       Mistral, GQA 4/1, no sliding window, f32
  qwen2         Qwen2 (qkv bias), tied embeddings, yarn x4 (classic "rope_scaling" with "type"), f32
  qwen3         Qwen3 (q/k RMSNorm), 8 heads of head_dim 16 on hidden 64, tied embeddings, bf16

reference.safetensors holds, for prompt p in {0, 1}:
  prompt{p}.ids            int32   [T]     random token ids (T = 11 and 150)
  prompt{p}.logits         float32 [T, V]  one full forward over the prompt
  prompt{p}.decode_logits  float32 [8, V]  incremental decoding with a KV cache: prefill T-8
                                           tokens, then one token at a time; row i are the
                                           logits after feeding token T-8+i
  prompt{p}.greedy         int32   [16]    generate(do_sample=False, max_new_tokens=16), no EOS stop
  rope.inv_freq            float32 [head_dim/2]  HF's rotary inverse frequencies (diagnostics)
  rope.attention_scaling   float32 [1]           HF's cos/sin multiplier (yarn: 0.1*ln(factor)+1)
All references are computed on the CPU in float32 with eager attention, from the checkpoint as
saved (weights stored in f16/bf16 are upcast to f32), so they are deterministic.

How to run it (on the machine that has torch/transformers; a GPU is not needed):

  # 1. gather an English training corpus for the tokenizer (any Debian system; no deps)
  python3 python/make_fixtures.py collect-corpus --out .carry/corpus
  # 2. build everything (needs torch, transformers, tokenizers, safetensors, numpy)
  PYTHONUNBUFFERED=1 python3 python/make_fixtures.py all --corpus .carry/corpus

  Sub-commands: collect-corpus, fixtures [--only NAME ...], tiny-llama --corpus DIR, all.
  Versions used to produce the checked-in files: torch 2.11, transformers 5.17.0,
  tokenizers 0.23.2, safetensors 0.8.0.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

T_PROMPTS = (11, 150)
N_DECODE = 8
N_GREEDY = 16
FIXTURE_VOCAB = 512

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
]

# Pre-tokenizer split pattern of Llama 3 (the cl100k-style regex).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- (message['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# name -> spec. "rope" holds the scaling parameters without rope_theta (None = plain rope).
FIXTURES = {
    "llama3": dict(
        arch="llama", layers=2, heads=4, kv_heads=2, intermediate=128, theta=500000.0,
        rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
        tie=False, dtype="float32", classic_rope_key="rope_type", seed=101),
    "llama2": dict(
        arch="llama", layers=2, heads=4, kv_heads=4, intermediate=160, theta=10000.0,
        rope=None, tie=False, dtype="float16", seed=102),
    "llama_linear": dict(
        arch="llama", layers=3, heads=4, kv_heads=2, intermediate=192, theta=10000.0,
        rope={"rope_type": "linear", "factor": 4.0},
        tie=False, dtype="bfloat16", max_shard_size="128KB", seed=103),
    "mistral": dict(
        arch="mistral", layers=2, heads=4, kv_heads=1, intermediate=128, theta=1000000.0,
        rope=None, tie=False, dtype="float32", seed=104),
    # max_position_embeddings = factor * original_max_position_embeddings: some transformers
    # versions derive the yarn factor from that ratio instead of "factor"; keeping them
    # consistent makes the fixture independent of that quirk.
    "qwen2": dict(
        arch="qwen2", layers=2, heads=4, kv_heads=2, intermediate=128, theta=1000000.0,
        rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
        max_pos=2048, tie=True, dtype="float32", classic_rope_key="type", seed=105),
    "qwen3": dict(
        arch="qwen3", layers=2, heads=8, kv_heads=2, head_dim=16, intermediate=192,
        theta=1000000.0, rope=None, tie=True, dtype="bfloat16", seed=106),
}


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"<?[\w.+-]+@[\w-]+(\.[\w-]+)+>?")
_URL = re.compile(r"(https?|ftp)://\S+")
_HEX = re.compile(r"\b[0-9a-fA-F]{12,}\b")
_CHANGELOG_HEAD = re.compile(r"^\S+ \([^)]*\) [^;]*; *urgency=")
_CHANGELOG_TAIL = re.compile(r"^ -- ")


def _clean_text(text: str) -> str:
    out = []
    blank = 0
    for line in text.splitlines():
        line = line.replace("\ufffd", "").replace("\f", "").rstrip()
        if _CHANGELOG_HEAD.match(line) or _CHANGELOG_TAIL.match(line):
            continue
        line = _URL.sub("", line)
        line = _EMAIL.sub("", line).rstrip()
        if _HEX.search(line):
            continue
        visible = [c for c in line if not c.isspace()]
        if visible:
            letters = sum(c.isalpha() for c in visible)
            if letters < 0.6 * len(visible) or len(line) > 400:
                continue
            blank = 0
            out.append(line)
        else:
            blank += 1
            if blank <= 1:
                out.append("")
    return "\n".join(out).strip() + "\n"


def _read_doc(path: Path) -> str:
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if b"\0" in raw[:4096]:
        return ""
    text = raw.decode("utf-8", errors="replace")
    if "<html" in text[:2000].lower() or "<!doctype" in text[:2000].lower():
        return ""
    return text


def collect_corpus(out_dir: Path, max_bytes: int, per_file: int) -> None:
    """Gathers English plain text from the Debian documentation tree into out_dir/*.txt."""
    doc = Path("/usr/share/doc")
    lic = Path("/usr/share/common-licenses")
    wanted = re.compile(r"^(readme|news|changelog|changes|copyright|faq|todo|authors|"
                        r"thanks|history|bugs|install|usage)", re.I)
    groups = [sorted(p for p in lic.glob("*") if p.is_file() and not p.is_symlink())]
    readmes, changelogs, rest = [], [], []
    for p in sorted(doc.rglob("*")):
        if not p.is_file() or p.is_symlink() or p.stat().st_size > 4_000_000:
            continue
        name = p.name.lower()
        if any(name.endswith(s) for s in (".html", ".htm", ".html.gz", ".pdf", ".png", ".svg",
                                            ".jpg", ".js", ".css", ".py", ".c", ".h")):
            continue
        if not wanted.match(name) and not name.endswith((".txt", ".txt.gz", ".md", ".md.gz")):
            continue
        if name.startswith(("readme", "news", "faq")):
            readmes.append(p)
        elif name.startswith("changelog"):
            changelogs.append(p)
        else:
            rest.append(p)
    groups += [readmes, rest, changelogs]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.txt"):
        old.unlink()
    seen = set()
    total = 0
    part, part_bytes, part_idx, nfiles = None, 0, 0, 0
    for group in groups:
        for p in group:
            if total >= max_bytes:
                break
            try:
                text = _read_doc(p)
            except Exception:
                continue
            if not text:
                continue
            digest = hashlib.sha1(text.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            text = _clean_text(text[: per_file * 3])
            data = text.encode("utf-8")[:per_file]
            data = data.decode("utf-8", errors="ignore").encode("utf-8")
            if len(data) < 200:
                continue
            if part is None or part_bytes > 1_000_000:
                if part:
                    part.close()
                part = open(out_dir / f"part-{part_idx:03d}.txt", "wb")
                part_idx, part_bytes = part_idx + 1, 0
            part.write(data + b"\n\n")
            part_bytes += len(data) + 2
            total += len(data) + 2
            nfiles += 1
    if part:
        part.close()
    log(f"corpus: {nfiles} documents, {total / 1e6:.2f} MB in {part_idx} files under {out_dir}")


# ----------------------------------------------------------------------------------------------
# torch utilities (imported lazily so collect-corpus runs without torch)
# ----------------------------------------------------------------------------------------------

def _torch():
    import torch
    return torch


def _dtype(name):
    torch = _torch()
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _config_class(arch):
    import transformers as tf
    return {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig,
            "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config}[arch]


def make_config(arch, theta, rope, **kw):
    """Builds a config with the rope set either as rope_parameters (transformers 5) or as
    rope_theta + rope_scaling (transformers 4)."""
    import inspect
    cls = _config_class(arch)
    params = inspect.signature(cls.__init__).parameters
    optional = ("use_sliding_window", "sliding_window")
    for attempt in range(2):
        try:
            if "rope_parameters" in params:
                rp = {"rope_type": "default", "rope_theta": float(theta)}
                if rope:
                    rp.update(rope)
                return cls(rope_parameters=rp, **kw)
            return cls(rope_theta=float(theta), rope_scaling=dict(rope) if rope else None, **kw)
        except TypeError:
            if attempt or not any(k in kw for k in optional):
                raise
            log(f"    (config rejected {[k for k in optional if k in kw]}; retrying without)")
            kw = {k: v for k, v in kw.items() if k not in optional}


def effective_rope(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if not rp:
        rp = dict(getattr(cfg, "rope_scaling", None) or {})
        rp.setdefault("rope_theta", getattr(cfg, "rope_theta", None))
    return dict(rp)


def expected_rope(head_dim, theta, rope, max_pos):
    """Independent computation of (inv_freq[head_dim/2], attention_scaling) in float64."""
    import numpy as np
    exps = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    base = 1.0 / (theta ** exps)
    kind = (rope or {}).get("rope_type", "default")
    if kind == "default":
        return base, 1.0
    factor = float(rope["factor"])
    if kind == "linear":
        return base / factor, 1.0
    if kind == "llama3":
        lo, hi = rope["low_freq_factor"], rope["high_freq_factor"]
        orig = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / base
        long_wl, short_wl = orig / lo, orig / hi
        scaled = np.where(wavelen > long_wl, base / factor, base)
        t = (orig / wavelen - lo) / (hi - lo)
        blended = (1 - t) * scaled / factor + t * scaled
        middle = (wavelen >= short_wl) & (wavelen <= long_wl)
        return np.where(middle, blended, scaled), 1.0
    if kind == "yarn":
        orig = rope.get("original_max_position_embeddings") or max_pos
        att = rope.get("attention_factor")
        if att is None:
            att = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        fast = rope.get("beta_fast") or 32
        slow = rope.get("beta_slow") or 1

        def dim_for(rotations):
            return head_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(dim_for(fast)), 0)
        high = min(math.ceil(dim_for(slow)), head_dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        keep = 1 - ramp  # weight of the unscaled frequency
        return base / factor * (1 - keep) + base * keep, att
    raise ValueError(f"no reference rope for {kind}")


def init_weights(model, seed, emb_std, lm_std, w_std, bias_std, norm_jitter):
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-2] if "." in name else name
            if name.endswith(".weight") and "norm" in leaf:
                noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * norm_jitter
                p.copy_((1.0 + noise).to(p.dtype))
                continue
            if name.endswith(".bias"):
                std = bias_std
            elif "embed_tokens" in name:
                std = emb_std
            elif "lm_head" in name:
                std = lm_std
            else:
                std = w_std
            p.copy_((torch.randn(p.shape, generator=g, dtype=torch.float32) * std).to(p.dtype))


def load_f32(path):
    from transformers import AutoModelForCausalLM
    torch = _torch()
    try:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    m.float().eval()
    return m


def new_model(cfg):
    from transformers import AutoModelForCausalLM
    try:
        m = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    except TypeError:
        cfg._attn_implementation = "eager"
        m = AutoModelForCausalLM.from_config(cfg)
    return m.float().eval()


def disable_eos(model):
    from transformers import GenerationConfig
    gc = GenerationConfig(do_sample=False, max_new_tokens=N_GREEDY, eos_token_id=None,
                          pad_token_id=0, bos_token_id=None)
    model.generation_config = gc
    for attr in ("eos_token_id",):
        try:
            setattr(model.config, attr, None)
        except Exception:
            pass
    return gc


def compute_reference(model, prompts):
    """Returns {name: tensor} with logits / decode_logits / greedy for each prompt."""
    torch = _torch()
    gc = disable_eos(model)
    out = {}
    with torch.no_grad():
        for p, ids in enumerate(prompts):
            x = ids.to(torch.long).view(1, -1)
            T = x.shape[1]
            full = model(input_ids=x, use_cache=False).logits[0].float()

            o = model(input_ids=x[:, : T - N_DECODE], use_cache=True)
            past = o.past_key_values
            rows = []
            for i in range(N_DECODE):
                tok = x[:, T - N_DECODE + i: T - N_DECODE + i + 1]
                o = model(input_ids=tok, past_key_values=past, use_cache=True)
                past = o.past_key_values
                rows.append(o.logits[0, -1].float())
            dec = torch.stack(rows)
            dec_err = (dec - full[T - N_DECODE:]).abs().max().item()

            # greedy by hand (cached, plain argmax) and through generate()
            o = model(input_ids=x, use_cache=True)
            past = o.past_key_values
            nxt = o.logits[0, -1].argmax()
            manual = [int(nxt)]
            for _ in range(N_GREEDY - 1):
                o = model(input_ids=nxt.view(1, 1), past_key_values=past, use_cache=True)
                past = o.past_key_values
                nxt = o.logits[0, -1].argmax()
                manual.append(int(nxt))
            gen_ids = None
            try:
                g = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                   generation_config=gc)
                gen_ids = [int(t) for t in g[0, T:]]
            except Exception as e:  # noqa: BLE001
                log(f"    !! generate() failed: {e!r}")
            if gen_ids != manual:
                log(f"    !! generate() {gen_ids} != manual greedy {manual}; storing manual")
            greedy = manual

            top = full[-1].topk(3)
            log(f"    prompt{p}: T={T} logits std={full.std().item():.3f} "
                f"last top3={[int(i) for i in top.indices]} ({[round(v, 3) for v in top.values.tolist()]}) "
                f"|decode-full|max={dec_err:.2e} greedy={greedy}")
            out[f"prompt{p}.ids"] = ids.to(torch.int32).contiguous()
            out[f"prompt{p}.logits"] = full.contiguous()
            out[f"prompt{p}.decode_logits"] = dec.contiguous()
            out[f"prompt{p}.greedy"] = torch.tensor(greedy, dtype=torch.int32)
    return out


def rope_diagnostics(model, head_dim, theta, rope, max_pos):
    torch = _torch()
    res = {}
    try:
        rot = model.model.rotary_emb
        inv = rot.inv_freq.detach().float().cpu().contiguous()
        att = float(getattr(rot, "attention_scaling", 1.0))
        res["rope.inv_freq"] = inv
        res["rope.attention_scaling"] = torch.tensor([att], dtype=torch.float32)
        exp_inv, exp_att = expected_rope(head_dim, theta, rope, max_pos)
        rel = (inv.double().numpy() - exp_inv) / exp_inv
        ok = abs(rel).max() < 1e-5 and abs(att - exp_att) < 1e-6
        log(f"    rope: HF attention_scaling={att:.6f} (expected {exp_att:.6f}), "
            f"inv_freq max rel diff vs own formula={abs(rel).max():.2e} {'OK' if ok else '!! MISMATCH'}")
    except Exception as e:  # noqa: BLE001
        log(f"    !! rope diagnostics failed: {e!r}")
    return res


def random_prompts(vocab_hi, seed, first_token=None):
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for T in T_PROMPTS:
        ids = torch.randint(0, vocab_hi, (T,), generator=g, dtype=torch.long)
        if first_token is not None:
            ids[0] = first_token
        prompts.append(ids)
    return prompts


def save_reference(path, tensors, meta):
    from safetensors.torch import save_file
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in meta.items()})


def to_classic_rope_json(cfg_path: Path, type_key: str, theta: float, rope: dict):
    """Rewrites config.json so the rope is given as top-level rope_theta + rope_scaling, the way
    Llama-3.1 / Qwen2.5 checkpoints on the hub spell it (type_key "rope_type" or legacy "type")."""
    d = json.loads(cfg_path.read_text())
    saved = {k: d.get(k) for k in ("rope_parameters", "rope_scaling", "rope_theta") if k in d}
    log(f"    save_pretrained wrote: {json.dumps(saved)}")
    d.pop("rope_parameters", None)
    scaling = {k: v for k, v in rope.items() if k != "rope_type"}
    scaling[type_key] = rope["rope_type"]
    d["rope_theta"] = float(theta)
    d["rope_scaling"] = scaling
    cfg_path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def describe_folder(folder: Path):
    from safetensors import safe_open
    files = sorted(folder.iterdir())
    log("    files: " + ", ".join(f"{f.name}({f.stat().st_size // 1024}K)" for f in files))
    cfg = json.loads((folder / "config.json").read_text())
    keys = {k: cfg[k] for k in ("rope_parameters", "rope_scaling", "rope_theta", "dtype",
                                  "torch_dtype", "head_dim", "tie_word_embeddings") if k in cfg}
    log(f"    config.json: {json.dumps(keys)}")
    names = []
    for f in files:
        if f.suffix == ".safetensors" and f.name != "reference.safetensors":
            with safe_open(str(f), "pt") as h:
                names += list(h.keys())
    log(f"    {len(names)} tensors saved; lm_head.weight present: {'lm_head.weight' in names}")


def verify_weights(mem_model, ref_model, storage_dtype):
    """The reloaded f32 weights must equal the in-memory weights rounded to the storage dtype."""
    torch = _torch()
    worst = 0.0
    ref_sd = ref_model.state_dict()
    for name, p in mem_model.state_dict().items():
        if "rotary" in name or name not in ref_sd:
            continue
        want = p.to(storage_dtype).float()
        worst = max(worst, (want - ref_sd[name].float()).abs().max().item())
    log(f"    reloaded weights vs in-memory rounded: max abs diff {worst:.2e}")
    return worst


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------

def build_fixture(name, spec, root: Path):
    torch = _torch()
    import transformers
    t0 = time.time()
    folder = root / "tests" / "fixtures" / "models" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    hidden = 64
    head_dim = spec.get("head_dim", hidden // spec["heads"])
    max_pos = spec.get("max_pos", 4096)
    kw = dict(vocab_size=FIXTURE_VOCAB, hidden_size=hidden, intermediate_size=spec["intermediate"],
              num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
              num_key_value_heads=spec["kv_heads"], max_position_embeddings=max_pos,
              tie_word_embeddings=spec["tie"], hidden_act="silu", bos_token_id=1, eos_token_id=2,
              rms_norm_eps=1e-6 if spec["arch"].startswith("qwen") else 1e-5)
    if "head_dim" in spec:
        kw["head_dim"] = spec["head_dim"]
    if spec["arch"] == "mistral":
        kw["sliding_window"] = None
    if spec["arch"] in ("qwen2", "qwen3"):
        kw["use_sliding_window"] = False
    cfg = make_config(spec["arch"], spec["theta"], spec["rope"], **kw)
    log(f"[{name}] {type(cfg).__name__} rope={effective_rope(cfg)} head_dim={head_dim}")

    torch.manual_seed(spec["seed"])
    model = new_model(cfg)
    # tied models: a large embedding std makes every token predict itself (the e.e^T term)
    emb_std = 0.1 if spec["tie"] else 0.4
    init_weights(model, spec["seed"], emb_std=emb_std, lm_std=0.1, w_std=0.08, bias_std=0.1,
                 norm_jitter=0.15)
    storage = _dtype(spec["dtype"])
    mem_sd = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(storage)
    save_kw = {}
    if spec.get("max_shard_size"):
        save_kw["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(str(folder), **save_kw)
    if spec.get("max_shard_size") and not (folder / "model.safetensors.index.json").exists():
        log("    !! expected a sharded checkpoint but no index was written")
    gen_cfg = {"_from_model_config": False, "bos_token_id": 1, "eos_token_id": 2,
               "transformers_version": transformers.__version__}
    (folder / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")

    ref = load_f32(str(folder))
    if spec.get("classic_rope_key"):
        probe = random_prompts(FIXTURE_VOCAB, spec["seed"] + 7)[1].view(1, -1)
        with torch.no_grad():
            before = ref(input_ids=probe).logits
        to_classic_rope_json(folder / "config.json", spec["classic_rope_key"], spec["theta"],
                             spec["rope"])
        ref = load_f32(str(folder))
        with torch.no_grad():
            after = ref(input_ids=probe).logits
        diff = (before - after).abs().max().item()
        log(f"    classic rope_scaling json ({spec['classic_rope_key']!r} key) reloads with "
            f"rope={effective_rope(ref.config)}; logits diff vs rope_parameters json: {diff:.2e} "
            f"{'OK' if diff == 0 else '!! DIFFERENT'}")

    class _Mem:  # state_dict holder for verify_weights
        def __init__(self, sd):
            self._sd = sd

        def state_dict(self):
            return self._sd

    verify_weights(_Mem(mem_sd), ref, storage)
    if spec["tie"]:
        same = ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()
        log(f"    tied after reload: {same}")
    tensors = rope_diagnostics(ref, head_dim, spec["theta"], spec["rope"], max_pos)
    prompts = random_prompts(FIXTURE_VOCAB, 1000 + spec["seed"])
    tensors.update(compute_reference(ref, prompts))
    save_reference(folder / "reference.safetensors", tensors, {
        "model": name, "storage_dtype": spec["dtype"], "compute": "float32 cpu eager",
        "decode_steps": N_DECODE, "greedy_tokens": N_GREEDY,
        "transformers": transformers.__version__, "torch": torch.__version__})
    describe_folder(folder)
    log(f"    done in {time.time() - t0:.1f}s")


def yarn_ratio_probe():
    """Reports what this transformers version does with yarn when max_position_embeddings is
    not factor * original_max_position_embeddings (the qwen2 fixture avoids this case)."""
    try:
        rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
        cfg = make_config("qwen2", 1000000.0, rope, vocab_size=64, hidden_size=64,
                          intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=4096)
        m = new_model(cfg)
        inv = m.model.rotary_emb.inv_freq.double().numpy()
        att = float(m.model.rotary_emb.attention_scaling)
        for f in (4.0, 8.0):
            exp_inv, exp_att = expected_rope(16, 1000000.0, dict(rope, factor=f), 4096)
            rel = abs((inv - exp_inv) / exp_inv).max()
            log(f"[yarn probe] max_pos 4096, original 512, factor 4: matches factor={f}? "
                f"inv rel diff {rel:.2e}, attention_scaling HF {att:.6f} vs {exp_att:.6f}")
    except Exception as e:  # noqa: BLE001
        log(f"[yarn probe] failed: {e!r}")


# ----------------------------------------------------------------------------------------------
# tiny-llama (default model with a real tokenizer)
# ----------------------------------------------------------------------------------------------

def train_tokenizer(corpus: Path, vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, \
        processors, trainers
    files = sorted(str(p) for p in corpus.glob("*.txt"))
    if not files:
        raise SystemExit(f"no *.txt files in {corpus}")
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=2, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t0 = time.time()
    tok.train(files, trainer)
    n_bpe = tok.get_vocab_size()
    tok.add_special_tokens(SPECIAL_TOKENS)  # placed after the BPE vocabulary, as in Llama 3
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A:0",
        pair="<|begin_of_text|> $A:0 <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    log(f"[tiny-llama] tokenizer trained on {len(files)} files in {time.time() - t0:.1f}s: "
        f"{n_bpe} BPE tokens + {len(SPECIAL_TOKENS)} special = {tok.get_vocab_size()}")
    return tok, n_bpe


def build_tiny_llama(root: Path, corpus: Path):
    torch = _torch()
    import transformers
    t0 = time.time()
    folder = root / "models" / "tiny-llama"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    tok, n_bpe = train_tokenizer(corpus, 4096)
    tok.save(str(folder / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    bos, eot, eos = ids["<|begin_of_text|>"], ids["<|eot_id|>"], ids["<|end_of_text|>"]
    vocab = tok.get_vocab_size()

    tok_cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for t, i in sorted(ids.items(), key=lambda kv: kv[1])},
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 32768,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")

    cfg = make_config("llama", 500000.0, None, vocab_size=vocab, hidden_size=256,
                      intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=False, hidden_act="silu", rms_norm_eps=1e-5,
                      bos_token_id=bos, eos_token_id=[eos, eot])
    log(f"[tiny-llama] {type(cfg).__name__} vocab={vocab} rope={effective_rope(cfg)}")
    torch.manual_seed(7)
    model = new_model(cfg)
    init_weights(model, 7, emb_std=0.02, lm_std=0.02, w_std=0.02, bias_std=0.0, norm_jitter=0.0)
    mem_sd = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(torch.bfloat16)
    model.save_pretrained(str(folder))
    gen_cfg = {"_from_model_config": False, "bos_token_id": bos, "eos_token_id": [eos, eot],
               "do_sample": True, "temperature": 0.6, "top_p": 0.9,
               "transformers_version": transformers.__version__}
    (folder / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")

    ref = load_f32(str(folder))

    class _Mem:
        def state_dict(self):
            return mem_sd

    verify_weights(_Mem(), ref, torch.bfloat16)
    tensors = rope_diagnostics(ref, 32, 500000.0, None, 32768)
    prompts = random_prompts(n_bpe, 4242, first_token=bos)
    tensors.update(compute_reference(ref, prompts))
    save_reference(folder / "reference.safetensors", tensors, {
        "model": "tiny-llama", "storage_dtype": "bfloat16", "compute": "float32 cpu eager",
        "decode_steps": N_DECODE, "greedy_tokens": N_GREEDY, "prompts": "random ids, BOS first",
        "transformers": transformers.__version__, "torch": torch.__version__})
    check_tokenizer(folder, corpus)
    describe_folder(folder)
    log(f"[tiny-llama] done in {time.time() - t0:.1f}s")


def check_tokenizer(folder: Path, corpus: Path):
    try:
        from transformers import AutoTokenizer
        tk = AutoTokenizer.from_pretrained(str(folder))
        text = "Hello world! The GNU General Public License, version 3 (2007)."
        enc = tk(text)["input_ids"]
        log(f"    AutoTokenizer {type(tk).__name__}: {text!r} -> {enc}")
        log(f"    pieces: {tk.convert_ids_to_tokens(enc)}")
        sample = next(iter(sorted(corpus.glob('*.txt')))).read_text()[:2000]
        back = tk.decode(tk(sample, add_special_tokens=False)["input_ids"])
        log(f"    round trip of 2000 corpus chars: {'OK' if back == sample else '!! DIFFERENT'}; "
            f"{len(tk(sample)['input_ids'])} tokens")
        msgs = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi there "}]
        rendered = tk.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        log(f"    chat template: {rendered!r}")
        chat_ids = tk.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys"):
            chat_ids = chat_ids["input_ids"]
        log(f"    chat ids ({len(chat_ids)}): {list(chat_ids)}")
    except Exception as e:  # noqa: BLE001
        log(f"    !! tokenizer check failed: {e!r}")
        traceback.print_exc()


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["collect-corpus", "fixtures", "tiny-llama", "all"])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                    help="repository root (default: parent of this script's folder)")
    ap.add_argument("--corpus", default=".carry/corpus",
                    help="folder of *.txt files to train the tokenizer on (relative to --root)")
    ap.add_argument("--out", default=None, help="collect-corpus: output folder (default --corpus)")
    ap.add_argument("--corpus-mb", type=float, default=4.0, help="collect-corpus: size in MB")
    ap.add_argument("--only", nargs="*", default=None, help="fixtures: build only these")
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    root = Path(args.root)
    corpus = Path(args.corpus)
    if not corpus.is_absolute():
        corpus = root / corpus

    if args.command == "collect-corpus":
        out = Path(args.out) if args.out else corpus
        if not out.is_absolute():
            out = root / out
        collect_corpus(out, int(args.corpus_mb * 1e6), per_file=24_000)
        return 0

    torch = _torch()
    import transformers
    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {sys.version.split()[0]}")
    failures = []
    if args.command in ("fixtures", "all"):
        names = args.only or list(FIXTURES)
        for name in names:
            try:
                build_fixture(name, FIXTURES[name], root)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                failures.append(name)
        yarn_ratio_probe()
    if args.command in ("tiny-llama", "all"):
        try:
            build_tiny_llama(root, corpus)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failures.append("tiny-llama")
    if failures:
        log(f"FAILED: {failures}")
        return 1
    log("all done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
