#!/usr/bin/env python3
"""Assemble English text from the documentation that Debian packages ship, for training the
long-context model and for the haystacks of the long-context evaluation (docs/eval_tasks.md).

Runs with a plain python3 (standard library only) on any Debian machine; the packages that
scripts/install-deps.sh installs bring enough documentation. Sources, in this order:

  /usr/share/common-licenses/*            plain text
  /usr/share/doc/**                       README/NEWS/FAQ/*.txt/*.md/*.rst (plain or .gz) and the
                                          <p> paragraphs of shipped HTML manuals
  /usr/share/man/man[1-8]/*.gz            English man pages, roff stripped here (no groff needed)
  /usr/share/info/*.info*.gz              GNU info manuals, node headers and menus dropped

Every document becomes a list of paragraphs (one line each, whitespace collapsed, URLs and
e-mail addresses removed, code-like lines dropped); paragraphs are deduplicated across the
whole corpus. Documents are then split in two by a hash of their path: a held-out part whose
sentences make the evaluation haystack, and the training part. No training paragraph contains
an evaluation sentence, and no evaluation sentence is in the training sentence list.

Outputs:
  eval/haystack.txt                       the evaluation haystack, one sentence per line, in
                                          document order (checked into the repository); kept
                                          as it is when it exists, unless --rewrite-eval
  OUT/train_docs.txt.xz                   training documents: paragraphs separated by "\\n",
                                          documents separated by a line holding only "\\f"
  OUT/train_sentences.txt.xz              training haystack sentences, one per line
  OUT/manifest.json                       sizes and counts per source

  python3 python/collect_haystack.py --out .carry/corpus          # ~1-2 minutes on one core

The sentence rules (split_sentences, keep_sentence) are imported by train_long_context.py so
that training haystacks and evaluation haystacks look alike.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import lzma
import re
import sys
import time
from pathlib import Path

# ----------------------------------------------------------------------------------------------
# paragraph cleaning
# ----------------------------------------------------------------------------------------------

_URL = re.compile(r"(https?|ftp|file)://\S+|www\.\S+")
_EMAIL = re.compile(r"<?[\w.+-]+@[\w-]+(\.[\w-]+)+>?")
_HEX = re.compile(r"\b[0-9a-fA-F]{12,}\b")
_SPACES = re.compile(r"\s+")


def clean_paragraph(text: str) -> str:
    """One paragraph on one line, or "" when it does not look like English prose."""
    text = text.replace("\ufffd", "").replace("\u00ad", "")
    text = _URL.sub("", text)
    text = _EMAIL.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) < 30 or _HEX.search(text):
        return ""
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters < 0.7 * len(visible):
        return ""
    if len(text.split()) < 5:
        return ""
    return text


def paragraphs_from_plain(text: str) -> list[str]:
    """Paragraphs of a plain-text file: blocks separated by blank lines, lines unwrapped.
    Indented blocks and lines full of punctuation (tables, code, ASCII art) are dropped."""
    out, block = [], []

    def flush():
        if block:
            p = clean_paragraph(" ".join(block))
            if p:
                out.append(p)
            block.clear()

    for line in text.splitlines():
        s = line.rstrip()
        if not s.strip():
            flush()
            continue
        if s.startswith(("    ", "\t")) or s.lstrip().startswith(("*", "-", "+", "#", "|", ">", "=")):
            flush()
            if s.lstrip()[:1] in "*-+" and len(s.lstrip()) > 2:
                # a bullet item is a paragraph of its own
                item = clean_paragraph(s.lstrip()[1:])
                if item:
                    out.append(item)
            continue
        block.append(s.strip())
    flush()
    return out


# ----------------------------------------------------------------------------------------------
# sentences (shared with the training script)
# ----------------------------------------------------------------------------------------------

_SENT_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z])")
_DIGIT_RUN = re.compile(r"\d{4,}")
_BAD_CHARS = set("\\{}<>|_=$#~`*@^[]")
_BAD_PHRASES = ("magic number", "pass key", "passkey", "var ", "answer:", "question:")


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENT_SPLIT.split(paragraph) if s.strip()]


def keep_sentence(s: str) -> bool:
    """A haystack sentence: plain ASCII English prose, 40-300 characters, at least 6 words,
    starting with a capital letter and ending with . ! or ?, no runs of 4+ digits (needle
    values are 7-digit numbers), nothing code-like, and none of the needle or question phrases."""
    if not 40 <= len(s) <= 300 or not s.isascii() or not s.isprintable():
        return False
    if not ("A" <= s[0] <= "Z") or s[-1] not in ".!?" or "  " in s:
        return False
    if len(s.split()) < 6 or _DIGIT_RUN.search(s) or any(c in _BAD_CHARS for c in s):
        return False
    letters = [c for c in s if c.isalpha()]
    visible = [c for c in s if not c.isspace()]
    if len(letters) < 0.75 * len(visible):
        return False
    if sum(c.isupper() for c in letters) > 0.3 * len(letters):
        return False
    low = s.lower()
    if any(p in low for p in _BAD_PHRASES) or low.endswith((" e.g.", " i.e.", " etc.", " vs.")):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------

def read_maybe_gz(path: Path, limit: int = 8_000_000) -> str:
    raw = gzip.open(path, "rb").read(limit) if path.suffix == ".gz" else path.read_bytes()[:limit]
    if b"\0" in raw[:4096]:
        return ""
    return raw.decode("utf-8", errors="replace")


_HTML_P = re.compile(r"<p\b[^>]*>(.*?)</p\s*>", re.S | re.I)
_HTML_TAG = re.compile(r"<[^>]+>")
_HTML_DROP = re.compile(r"<(pre|script|style|table)\b.*?</\1\s*>", re.S | re.I)


def paragraphs_from_html(text: str) -> list[str]:
    text = _HTML_DROP.sub(" ", text)
    out = []
    for m in _HTML_P.finditer(text):
        p = clean_paragraph(html.unescape(_HTML_TAG.sub("", m.group(1))))
        if p:
            out.append(p)
    return out


_ROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),          # font changes
    (re.compile(r"\\s[+-]?\d"), ""),                      # size changes
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),         # strings
    (re.compile(r"\\n(\[[^\]]*\]|\(..|.)"), ""),          # registers
    (re.compile(r"\\[hvwlLNDXoxbkzZ]'[^']*'"), ""),       # motions and the like
    (re.compile(r"\\\((em|en|hy)"), "-"),
    (re.compile(r"\\\((aq|oq|cq|rs)"), "'"),
    (re.compile(r"\\\((dq|lq|rq)"), '"'),
    (re.compile(r"\\\[(em|en|hy)\]"), "-"),
    (re.compile(r"\\\[(aq|oq|cq)\]"), "'"),
    (re.compile(r"\\\[(dq|lq|rq)\]"), '"'),
    (re.compile(r"\\\(co"), "(c)"),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),             # other named glyphs
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\[&|^%c:,/)]"), ""),
    (re.compile(r"\\e"), "\\\\"),
]
_ROFF_BREAK = {"PP", "LP", "P", "TP", "IP", "HP", "SH", "SS", "sp", "br", "RS", "RE", "TQ",
               "ne", "bp", "in", "ti", "EX", "EE", "TS", "TE", "UR", "UE", "MT", "ME"}
_ROFF_FONT = {"B", "I", "SM", "SB"}
_ROFF_ALT = {"BR", "RB", "IR", "RI", "BI", "IB"}
_ROFF_ARGS = re.compile(r'"((?:[^"]|"")*)"|(\S+)')


def _roff_text(s: str) -> str:
    for pat, rep in _ROFF_ESCAPES:
        s = pat.sub(rep, s)
    return s


def paragraphs_from_roff(text: str) -> list[str]:
    """Text of a man(7) page: fill text joined into paragraphs, B/I/BR... macro arguments kept,
    no-fill blocks (examples), tables, tag lines of .TP/.IP and everything else dropped.
    mdoc(7) pages return nothing."""
    lines = text.splitlines()
    if any(l.startswith((".Dd", ".Sh ")) for l in lines[:80]):
        return []
    out, block = [], []
    skip_until = None   # ".." after .de/.ig, ".fi" after .nf, ".TE" after .TS, ".EE" after .EX
    tag_next = False    # the line after .TP is the tag

    def flush():
        if block:
            p = clean_paragraph(_roff_text(" ".join(block)))
            if p:
                out.append(p)
            block.clear()

    for line in lines:
        if skip_until:
            if line.startswith(skip_until):
                skip_until = None
            continue
        if line.startswith((".\\\"", "'\\\"", "\\\"")) or line in (".", "'"):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"[.']\s*(\S+)\s*(.*)", line)
            if not m:
                continue
            name, rest = m.group(1), m.group(2)
            if name in ("de", "de1", "am", "ig"):
                flush()
                skip_until = ".."
            elif name == "nf":
                flush()
                skip_until = ".fi"
            elif name == "TS":
                flush()
                skip_until = ".TE"
            elif name == "EX":
                flush()
                skip_until = ".EE"
            elif name in _ROFF_BREAK:
                flush()
                tag_next = name in ("TP", "TQ")
            elif name in _ROFF_FONT or name in _ROFF_ALT:
                args = [a if a is not None and a != "" else b
                        for a, b in _ROFF_ARGS.findall(rest)]
                args = [a.replace('""', '"') for a in args]
                if tag_next:
                    tag_next = False
                    continue
                block.append(("" if name in _ROFF_ALT else " ").join(args))
            # every other request (TH, ft, ad, na, if, ie, el, so, ds, ...) is ignored
            continue
        if tag_next:
            tag_next = False
            continue
        block.append(line.strip())
    flush()
    return out


_INFO_HEADER = re.compile(r"^File: .*Node: ", re.M)


def paragraphs_from_info(text: str) -> list[str]:
    out = []
    for node in text.split("\x1f"):
        if "Tag Table:" in node[:40] or "Indirect:" in node[:40]:
            continue
        body = "\n".join(l for l in node.splitlines()
                         if not _INFO_HEADER.match(l) and not l.startswith("* ")
                         and not l.startswith(("====", "----", "****")))
        out += paragraphs_from_plain(body)
    return out


MAN_PER_FAMILY = 40
_DOC_WANTED = re.compile(r"^(readme|news|faq|todo|thanks|history|bugs|install|usage|overview|"
                         r"intro|guide|manual|notes)", re.I)
_DOC_TEXT_EXT = (".txt", ".txt.gz", ".md", ".md.gz", ".rst", ".rst.gz")


def iter_documents(roots: dict):
    """Yields (doc_id, source, paragraphs) in a fixed order."""
    lic = roots["licenses"]
    if lic.is_dir():
        for p in sorted(lic.iterdir()):
            if p.is_file() and not p.is_symlink():
                yield str(p), "licenses", paragraphs_from_plain(read_maybe_gz(p))
    doc = roots["doc"]
    if doc.is_dir():
        for p in sorted(doc.rglob("*")):
            if not p.is_file() or p.is_symlink() or p.stat().st_size > 8_000_000:
                continue
            name = p.name.lower()
            if name.endswith((".html", ".htm")):
                yield str(p), "doc-html", paragraphs_from_html(read_maybe_gz(p))
            elif _DOC_WANTED.match(name) or name.endswith(_DOC_TEXT_EXT):
                if name.startswith("changelog") or ".html" in name:
                    continue
                yield str(p), "doc-text", paragraphs_from_plain(read_maybe_gz(p))
    man = roots["man"]
    for sec in range(1, 9):
        d = man / f"man{sec}"
        if not d.is_dir():
            continue
        family = {}   # at most MAN_PER_FAMILY pages of one family (git-*, openssl-*, ...)
        for p in sorted(d.iterdir()):
            if not p.is_file() or p.is_symlink() or not p.name.endswith(".gz"):
                continue
            stem = re.split(r"[._:-]", p.name, maxsplit=1)[0].lower()
            family[stem] = family.get(stem, 0) + 1
            if family[stem] <= MAN_PER_FAMILY:
                yield str(p), "man", paragraphs_from_roff(read_maybe_gz(p))
    info = roots["info"]
    if info.is_dir():
        for p in sorted(info.iterdir()):
            if p.is_file() and ".info" in p.name:
                yield str(p), "info", paragraphs_from_info(read_maybe_gz(p))


# ----------------------------------------------------------------------------------------------

def _norm_key(p: str) -> bytes:
    return hashlib.sha1(p.lower().encode("utf-8")).digest()[:12]


ANCHOR = 40   # every kept sentence is at least this long
_WORD_START = re.compile(r"(?<![A-Za-z])[A-Z]")


def _holds_any(paragraph: str, anchors: dict) -> bool:
    """Whether an evaluation sentence occurs anywhere inside the paragraph, also where the
    sentence splitter did not cut the paragraph there."""
    for m in _WORD_START.finditer(paragraph):
        for s in anchors.get(paragraph[m.start():m.start() + ANCHOR], ()):
            if s in paragraph:
                return True
    return False


def _is_eval_doc(doc_id: str, eval_percent: int) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) % 100 < eval_percent


def collect(args) -> int:
    t0 = time.time()
    roots = {"licenses": Path(args.licenses), "doc": Path(args.doc), "man": Path(args.man),
             "info": Path(args.info)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eval_path = Path(args.eval_haystack)
    reuse_eval = eval_path.exists() and not args.rewrite_eval
    caps = {"licenses": 1.0, "doc-text": args.doc_text_mb, "doc-html": args.doc_html_mb,
            "man": args.man_mb, "info": args.info_mb}

    seen = set()
    docs = []   # (doc_id, source, [paragraphs])
    per_source = {k: [0, 0] for k in caps}   # documents, bytes
    for doc_id, source, paras in iter_documents(roots):
        if per_source[source][1] >= caps[source] * 1e6:
            continue
        kept = []
        for p in paras:
            k = _norm_key(p)
            if k not in seen:
                seen.add(k)
                kept.append(p)
        if not kept:
            continue
        docs.append((doc_id, source, kept))
        per_source[source][0] += 1
        per_source[source][1] += sum(len(p) + 1 for p in kept)
    log(f"read {len(docs)} documents in {time.time() - t0:.0f}s: " +
        ", ".join(f"{k} {v[0]} docs {v[1] / 1e6:.1f} MB" for k, v in per_source.items()))

    # A fixed pseudo-random document order, so that neither split is one package's manual.
    docs.sort(key=lambda d: hashlib.sha1(d[0].encode()).digest())

    # Held-out documents: a fixed share by hash of the path, in the order above, until the
    # haystack has --eval-mb of sentences.
    eval_sents, eval_ids, budget = [], set(), int(args.eval_mb * 1e6)
    used, seen_s = 0, set()
    for doc_id, source, paras in docs:
        if used >= budget or source == "licenses" or not _is_eval_doc(doc_id, args.eval_percent):
            continue
        eval_ids.add(doc_id)
        for p in paras:
            for s in split_sentences(p):
                if keep_sentence(s) and s not in seen_s:
                    seen_s.add(s)
                    eval_sents.append(s)
                    used += len(s) + 1
    if reuse_eval:
        eval_sents = [l for l in eval_path.read_text(encoding="utf-8").splitlines() if l]
        log(f"keeping {eval_path} ({len(eval_sents)} sentences); pass --rewrite-eval to rebuild")
    else:
        eval_path.parent.mkdir(parents=True, exist_ok=True)
        eval_path.write_text("\n".join(eval_sents) + "\n", encoding="utf-8")
        log(f"wrote {eval_path}: {len(eval_sents)} sentences, {used / 1e6:.2f} MB "
            f"from {len(eval_ids)} documents")
    eval_set = set(eval_sents)
    anchors = {}
    for s in eval_sents:
        anchors.setdefault(s[:ANCHOR], []).append(s)

    max_train = int(args.train_mb * 1e6)
    n_docs, n_bytes, n_sents, dropped = 0, 0, 0, 0
    with lzma.open(out / "train_docs.txt.xz", "wt", encoding="utf-8", preset=6) as fd, \
            lzma.open(out / "train_sentences.txt.xz", "wt", encoding="utf-8", preset=6) as fs:
        for doc_id, source, paras in docs:
            if doc_id in eval_ids or n_bytes >= max_train:
                continue
            kept, sents = [], []
            for p in paras:
                ss = split_sentences(p)
                if any(s in eval_set for s in ss) or _holds_any(p, anchors):
                    dropped += 1
                    continue
                kept.append(p)
                sents += [s for s in ss if keep_sentence(s)]
            if not kept:
                continue
            text = "\n".join(kept)
            fd.write(text + "\n\f\n")
            for s in sents:
                fs.write(s + "\n")
            n_docs += 1
            n_bytes += len(text) + 3
            n_sents += len(sents)
    manifest = {
        "sources": {k: {"documents": v[0], "bytes": v[1]} for k, v in per_source.items()},
        "train": {"documents": n_docs, "bytes": n_bytes, "sentences": n_sents,
                  "paragraphs_dropped_for_eval_overlap": dropped},
        "eval": {"path": str(eval_path), "sentences": len(eval_sents),
                 "bytes": sum(len(s) + 1 for s in eval_sents)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out}/train_docs.txt.xz ({n_docs} documents, {n_bytes / 1e6:.1f} MB of text, "
        f"{dropped} paragraphs dropped as they hold evaluation sentences) and "
        f"train_sentences.txt.xz ({n_sents} sentences) in {time.time() - t0:.0f}s")
    return 0


def log(*a):
    print(*a, flush=True)


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(root / ".carry" / "corpus"))
    ap.add_argument("--eval-haystack", default=str(root / "eval" / "haystack.txt"))
    ap.add_argument("--rewrite-eval", action="store_true",
                    help="rebuild the evaluation haystack even when it exists")
    ap.add_argument("--eval-mb", type=float, default=2.0, help="evaluation haystack size")
    ap.add_argument("--eval-percent", type=int, default=25,
                    help="share of documents held out for evaluation (until --eval-mb is reached)")
    ap.add_argument("--train-mb", type=float, default=24.0, help="training text size")
    ap.add_argument("--doc-text-mb", type=float, default=8.0)
    ap.add_argument("--doc-html-mb", type=float, default=8.0)
    ap.add_argument("--man-mb", type=float, default=16.0)
    ap.add_argument("--info-mb", type=float, default=4.0)
    ap.add_argument("--licenses", default="/usr/share/common-licenses")
    ap.add_argument("--doc", default="/usr/share/doc")
    ap.add_argument("--man", default="/usr/share/man")
    ap.add_argument("--info", default="/usr/share/info")
    return collect(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
