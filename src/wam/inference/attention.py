"""One switch for the attention kernel every block calls.

sdpa          PyTorch's scaled_dot_product_attention (the default; it picks flash / memory-efficient /
              math kernels itself)
block_sparse  plain PyTorch: queries in blocks, and each block attends only to the key blocks its mask
              leaves open (with prefix attention the observed tokens' queries skip every generated key
              block); equal to sdpa up to float rounding
sage          SageAttention's quantised kernel (CUDA, `pip install sageattention`); used where no mask
              is needed, sdpa elsewhere

from wam.inference.attention import set_attention_backend
set_attention_backend("block_sparse")
"""

from __future__ import annotations

import contextlib

import torch

from wam import model as _model
from wam.errors import ArgumentError, UnavailableError
from wam.model import sdpa


def block_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, block: int = 32
) -> torch.Tensor:
    """Attention computed only over (query block, key block) pairs the boolean mask leaves open."""
    if mask is None:
        return sdpa(q, k, v, None)
    N, M = q.shape[2], k.shape[2]
    mask = mask.expand(mask.shape[0], 1, N, M)
    out = torch.empty_like(q)
    n_kb = (M + block - 1) // block
    for qs in range(0, N, block):
        rows = mask[:, :, qs : qs + block]  # (B, 1, bq, M)
        pad = n_kb * block - M
        open_kb = torch.nn.functional.pad(rows, (0, pad)).reshape(*rows.shape[:3], n_kb, block).any(dim=(0, 1, 2, 4))
        if bool(open_kb.all()):
            keys = slice(None)
        else:
            keys = (open_kb.repeat_interleave(block)[:M]).nonzero().squeeze(1)  # the open key positions
        out[:, :, qs : qs + block] = sdpa(q[:, :, qs : qs + block], k[:, :, keys], v[:, :, keys], rows[..., keys])
    return out


def sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SageAttention on CUDA tensors without a mask; sdpa otherwise (its kernel takes no arbitrary mask)."""
    if mask is not None or not q.is_cuda:
        return sdpa(q, k, v, mask)
    from sageattention import sageattn

    return sageattn(q.contiguous(), k.contiguous(), v.contiguous(), tensor_layout="HND", is_causal=False)


BACKENDS = {"sdpa": sdpa, "block_sparse": block_sparse, "sage": sage}
_model.ATTENTION_BACKENDS.update(BACKENDS)


def set_attention_backend(name: str) -> None:
    """Make every WAM block use the named kernel (process-wide)."""
    if name not in BACKENDS:
        raise ArgumentError(f"unknown attention backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "sage":
        import importlib.util

        if importlib.util.find_spec("sageattention") is None:
            raise UnavailableError(
                "the 'sage' attention backend needs the sageattention package and a CUDA GPU: "
                "pip install sageattention (or choose 'sdpa')"
            )
        if not torch.cuda.is_available():
            raise UnavailableError(
                "the 'sage' attention backend runs on CUDA only; this machine has no CUDA device "
                "(choose 'sdpa' or 'block_sparse')"
            )
    _model.attention = BACKENDS[name]


def attention_backend() -> str:
    return next(n for n, f in BACKENDS.items() if f is _model.attention)


@contextlib.contextmanager
def using_attention(name: str):
    """Temporarily switch the attention kernel."""
    before = attention_backend()
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(before)
