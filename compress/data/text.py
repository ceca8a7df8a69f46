"""A small offline text source: real English text shipped with Python itself, tokenised without a download.

The text is the docstrings of Python's standard-library packages (parsed from their installed ``.py``
sources with :mod:`ast`; nothing is imported or downloaded). Each docstring is split into sentences; a
sentence's label is the package it documents (``asyncio``, ``email``, ``logging``, ``xml`` by default), so
the data is a real (if modest) text-classification task. The tokenizer is a word-level vocabulary built
from the corpus itself (lower-cased ``[a-z]+|[0-9]+`` words, the ``vocab_size - 3`` most frequent, ties by
word); ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[CLS]``. Every sequence is ``[CLS] w1 w2 ...`` cut or padded to
``seq_len``; ``attention_mask`` is 1 on tokens and 0 on padding. Both arrays are int64, as BERT-style
encoders expect. The corpus depends on the Python version (its docstrings), and so does the fingerprint.
"""
from __future__ import annotations

import ast
import re
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import ConfigError

PAD, UNK, CLS = 0, 1, 2
_WORD = re.compile(r"[a-z]+|[0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class TextConfig(BaseModel):
    """``data.text``: which stdlib packages' docstrings, and how they are tokenised."""

    model_config = ConfigDict(extra="forbid")
    packages: list[str] = Field(default_factory=lambda: ["asyncio", "email", "logging", "xml"], min_length=2,
                                description="Standard-library packages; each is one class.")
    seq_len: int = Field(32, ge=4, le=512, description="Tokens per sequence, [CLS] included.")
    vocab_size: int = Field(2000, ge=16, description="Word vocabulary size, the 3 special tokens included.")
    per_class: int = Field(400, ge=1, description="At most this many sentences per package (seeded choice).")
    min_words: int = Field(5, ge=1, description="Shorter sentences are dropped.")


def _sentences(package: str, min_words: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"]) / package
    if not root.is_dir():
        raise ConfigError(f"data.text.packages: '{package}' is not a standard-library package of this Python "
                          f"(looked in {root.parent})")
    out: list[str] = []
    seen: set[str] = set()
    for f in sorted(root.rglob("*.py")):
        if "test" in f.parts or "tests" in f.parts:
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                for s in _SENTENCE.split(" ".join(doc.split())):
                    if len(_WORD.findall(s.lower())) >= min_words and s not in seen:
                        seen.add(s)
                        out.append(s)
    return out


def load_text(cfg: TextConfig, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, list[str], dict]:
    """``({"input_ids", "attention_mask"}, labels, class names, info)`` of the stdlib-docstring corpus."""
    rng = np.random.default_rng([int(seed), 11])
    texts: list[str] = []
    labels: list[int] = []
    for k, pkg in enumerate(cfg.packages):
        sents = _sentences(pkg, cfg.min_words)
        if len(sents) > cfg.per_class:
            keep = np.sort(rng.choice(len(sents), size=cfg.per_class, replace=False))
            sents = [sents[i] for i in keep]
        texts += sents
        labels += [k] * len(sents)
    words = [_WORD.findall(t.lower()) for t in texts]
    counts = Counter(w for ws in words for w in ws)
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.vocab_size - 3]]
    index = {w: i + 3 for i, w in enumerate(vocab)}
    ids = np.full((len(texts), cfg.seq_len), PAD, dtype=np.int64)
    mask = np.zeros((len(texts), cfg.seq_len), dtype=np.int64)
    for i, ws in enumerate(words):
        toks = [CLS] + [index.get(w, UNK) for w in ws][: cfg.seq_len - 1]
        ids[i, : len(toks)] = toks
        mask[i, : len(toks)] = 1
    info = {"sentences": len(texts), "vocab": len(vocab) + 3,
            "unk_rate": round(float((ids == UNK).sum() / max(1, mask.sum())), 4)}
    return {"input_ids": ids, "attention_mask": mask}, np.asarray(labels, dtype=np.int64), list(cfg.packages), info
