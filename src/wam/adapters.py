"""LoRA and bottleneck adapters for a trained WAM, per stream, the base frozen: the modules, saving, loading
and merging. A core module (it knows nothing of training: `load_checkpoint` rebuilds adapters with it); the
`wam finetune` verb that trains them is `wam.finetune`.

Where the modules go (model.py's StreamLayer, in every block, for each chosen stream):
    lora     qkv, proj (attention output), mlp.0, mlp.2:  y = W x + b + (alpha / rank) B A x   (Hu et al. 2021)
    adapter  proj:  y = o + up(gelu(down(o))),  o = W x + b                                (Houlsby et al. 2019)
B and up start at zero, so a fresh adapter leaves every output unchanged. The wrappers hold the base Linear's own
weight and bias under the same names (`blocks.0.streams.1.qkv.weight`), so the base's state_dict keys never
change; an adapter only adds keys (`...qkv.lora_a.weight`).

Merging: LoRA folds exactly into W (W + scale B A) and `merge_adapters` puts plain nn.Linear back, so the merged
model has the base's architecture and keys. Bottleneck adapters are nonlinear and cannot fold into weights:
`merge_adapters` refuses them; a checkpoint keeps them as modules and records their settings under "adapter" in
config.json, from which `load_checkpoint` rebuilds them.

Library:
    names = add_adapters(model, "lora", rank=8, alpha=16)   # base frozen; names of the trainable parameters
    save_adapter("runs/new/adapter", model, {"base_checkpoint": "runs/mt10/checkpoint"})
    load_adapter(fresh_base_model, "runs/new/adapter")      # refuses a different base
    merge_adapters(model)                                   # LoRA only: back to plain nn.Linear
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from wam.atomic import atomic_dir_replace
from wam.errors import ArgumentError, CheckpointError, NotFoundError
from wam.model import STREAMS

KINDS = ("lora", "adapter")  # parameter-efficient kinds; `finetune` also takes "full"
TARGETS = {"lora": ("qkv", "proj", "mlp.0", "mlp.2"), "adapter": ("proj",)}  # per StreamLayer
SPEC_KEYS = ("kind", "rank", "alpha", "streams", "train_task_embedding")


# ---- the modules -----------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update: y = W x + b + (alpha / rank) B(A(x)).

    A (rank, in) starts as nn.Linear's own init, B (out, rank) at zero: a fresh LoRA changes nothing."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the base's own parameters, under the base's names
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Linear(self.in_features, rank, **kw)
        self.lora_b = nn.Linear(rank, self.out_features, **kw)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * self.lora_b(self.lora_a(x))

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain Linear with W + scale B A (summed in float64, then rounded once); this module is unchanged."""
        w = self.weight
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        delta = self.lora_b.weight.double() @ self.lora_a.weight.double() * self.scale  # (out, in)
        out.weight.copy_((w.double() + delta).to(w.dtype))
        if self.bias is not None:
            out.bias.copy_(self.bias)
        out.requires_grad_(w.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


class BottleneckAdapter(nn.Module):
    """A frozen Linear followed by a residual bottleneck: o = W x + b; y = o + up(gelu(down(o))).

    Placed on a stream's attention output projection (Houlsby et al. 2019 put one after attention and one after
    the MLP; one after attention keeps the count small). `up` starts at zero: a fresh adapter changes nothing."""

    def __init__(self, base: nn.Linear, width: int):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the base's own parameters, under the base's names
        self.width = width
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.down = nn.Linear(self.out_features, width, **kw)
        self.up = nn.Linear(width, self.out_features, **kw)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        o = F.linear(x, self.weight, self.bias)
        return o + self.up(F.gelu(self.down(o)))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, width={self.width}"


ADAPTER_MODULES = (LoRALinear, BottleneckAdapter)


# ---- inserting, counting, hashing ------------------------------------------------------------------


def adapter_spec(model: nn.Module) -> dict | None:
    """The settings `add_adapters` was called with (kind, rank, alpha, streams, train_task_embedding), or None."""
    return getattr(model, "_adapter_spec", None)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _task_keys(model: nn.Module) -> list[str]:
    """The task embedding's parameters: the table's rows, or the text projection."""
    if getattr(model, "task_table", None) is not None:
        return ["task_table.weight"]
    return [f"task_proj.{n}" for n, _ in model.task_proj.named_parameters()]


def _task_text_keys(model: nn.Module) -> list[str]:
    """A text-conditioned model's stored task embeddings (a buffer, never trained): a fine-tune on new tasks
    fills new rows, so they travel with the adapter and are no part of the base's identity."""
    return ["task_text"] if getattr(model, "task_text", None) is not None else []


def adapter_keys(model: nn.Module) -> list[str]:
    """state_dict keys of the adapter modules' own parameters (not the wrapped base weight and bias)."""
    keys = []
    for name, m in model.named_modules():
        if isinstance(m, ADAPTER_MODULES):
            keys += [f"{name}.{n}" for n, _ in m.named_parameters() if n not in ("weight", "bias")]
    return keys


def add_adapters(
    model: nn.Module,
    kind: str = "lora",
    rank: int = 8,
    alpha: float = 16.0,
    streams=STREAMS,
    train_task_embedding: bool = True,
) -> list[str]:
    """Wrap the chosen streams' linears of every block (see the module docstring), freeze every base parameter,
    and return the names of the parameters left trainable: the adapters', and the task embedding's when
    `train_task_embedding` (a new task needs its own row of the table). New modules draw their init from torch's
    global generator (seed it first for a repeatable run)."""
    if kind not in KINDS:
        raise ArgumentError(f"unknown adapter kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if int(rank) < 1:
        raise ArgumentError(f"rank must be at least 1, got {rank}")
    streams = tuple(streams)
    bad = [s for s in streams if s not in STREAMS]
    if bad or not streams:
        raise ArgumentError(f"unknown streams {bad or '(none)'}; choose among: {', '.join(STREAMS)}")
    if adapter_spec(model) is not None:
        raise ArgumentError(
            f"this model already carries {adapter_spec(model)['kind']} adapters; merge them first "
            f"(LoRA) or start from the base model"
        )
    model.requires_grad_(False)
    for b in range(len(model.blocks)):
        for s in streams:
            for target in TARGETS[kind]:
                name = f"blocks.{b}.streams.{STREAMS.index(s)}.{target}"
                base = model.get_submodule(name)
                if type(base) is not nn.Linear:
                    raise ArgumentError(f"{name} is a {type(base).__name__}, not a plain nn.Linear to adapt")
                _set_submodule(
                    model,
                    name,
                    LoRALinear(base, int(rank), float(alpha)) if kind == "lora" else BottleneckAdapter(base, int(rank)),
                )
    if train_task_embedding:
        params = dict(model.named_parameters())
        for k in _task_keys(model):
            params[k].requires_grad_(True)
    model._adapter_spec = {
        "kind": kind,
        "rank": int(rank),
        "alpha": float(alpha),
        "streams": list(streams),
        "train_task_embedding": bool(train_task_embedding),
    }
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with requires_grad (what an optimizer built by make_optimizer updates)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what a fine-tune changed: the adapter modules' tensors and, when trained, the task embedding."""
    spec = adapter_spec(model)
    if spec is None:
        raise ArgumentError("this model has no adapters (add_adapters or load_adapter first)")
    keys = adapter_keys(model) + (_task_keys(model) if spec["train_task_embedding"] else []) + _task_text_keys(model)
    sd = model.state_dict()
    return {k: sd[k].detach().contiguous().cpu() for k in keys}


def base_weights_hash(model: nn.Module, exclude_task_embedding: bool) -> str:
    """A hash of the frozen base tensors (names, dtypes, shapes, bytes), the same with or without adapters
    inserted; the task embedding is left out when the fine-tune trains it (and stored task texts always)."""
    skip = set(adapter_keys(model)) | set(_task_text_keys(model))
    skip |= set(_task_keys(model)) if exclude_task_embedding else set()
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if k in skip:
            continue
        v = v.detach().contiguous().cpu()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---- saving, loading, merging ----------------------------------------------------------------------


def save_adapter(path: str | os.PathLike, model: nn.Module, meta: dict | None = None) -> Path:
    """Write `adapter.safetensors` (adapter_state_dict) and `adapter.json` (settings, parameter counts, the base
    weights' hash, and `meta`, e.g. the base checkpoint's path) to a temporary sibling, then rename it into place."""
    spec, meta = adapter_spec(model), dict(meta or {})
    sd = adapter_state_dict(model)  # (refuses a model without adapters)
    n_adapter = sum(sd[k].numel() for k in adapter_keys(model))
    if "base_weights_hash" not in meta:  # (a caller saving often computes it once: the frozen base never changes)
        meta["base_weights_hash"] = base_weights_hash(model, spec["train_task_embedding"])
    info = {
        **spec,
        "adapter_parameters": n_adapter,
        "trainable_parameters": sum(v.numel() for v in sd.values()),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        **meta,
    }
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_file(sd, tmp / "adapter.safetensors")
        (tmp / "adapter.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        atomic_dir_replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_adapter(model: nn.Module, path: str | os.PathLike) -> dict:
    """Add the adapter saved at `path` to a base model and load its tensors; returns adapter.json's contents.
    Refuses (ValueError, model untouched) a model whose base weights are not the ones the adapter was trained on."""
    root = Path(path)
    if not (root / "adapter.json").is_file() or not (root / "adapter.safetensors").is_file():
        raise NotFoundError(
            f"{root} is not a wam adapter (adapter.json and adapter.safetensors expected); "
            f"point at the adapter/ directory written by `wam finetune`"
        )
    info = json.loads((root / "adapter.json").read_text())
    spec = {k: info[k] for k in SPEC_KEYS}
    if adapter_spec(model) is not None:
        raise ArgumentError("this model already carries adapters; load the adapter onto its base model")
    have = base_weights_hash(model, spec["train_task_embedding"])
    if have != info["base_weights_hash"]:
        raise CheckpointError(
            f"{root} was trained on other base weights ({info['base_weights_hash']}, checkpoint "
            f"{info.get('base_checkpoint', 'unknown')}); this model's are {have}. Load the adapter "
            f"onto the checkpoint it was fine-tuned from"
        )
    add_adapters(model, **spec)
    sd = load_file(root / "adapter.safetensors")
    expected = set(adapter_state_dict(model))
    if set(sd) != expected:
        raise CheckpointError(
            f"{root / 'adapter.safetensors'} does not hold the tensors its adapter.json "
            f"describes (missing {sorted(expected - set(sd))[:3]}, unexpected "
            f"{sorted(set(sd) - expected)[:3]})"
        )
    model.load_state_dict(sd, strict=False)
    return info


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA into its base Linear and put a plain nn.Linear back (in place; returns the model): the
    result has the base's modules and state_dict keys and saves as a normal checkpoint. Raises ValueError for
    bottleneck adapters, which are nonlinear: keep those as modules (see the module docstring)."""
    spec = adapter_spec(model)
    if spec is None:
        return model
    if spec["kind"] != "lora":
        raise ArgumentError(
            "bottleneck adapters are nonlinear (o + up(gelu(down(o)))) and cannot fold into the base "
            "weights; save the model with them (save_checkpoint(..., config={'adapter': "
            "adapter_spec(model)})) and load_checkpoint rebuilds them"
        )
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            _set_submodule(model, name, m.merge())
    del model._adapter_spec
    return model
