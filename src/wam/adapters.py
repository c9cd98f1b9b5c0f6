"""Parameter-efficient fine-tuning of a trained WAM: LoRA or bottleneck adapters per stream, the base frozen.

Runbook:
    # a base run, then fine-tune it on a new task's demonstrations (a new task gets a new row of the task table)
    wam train --dataset data/mt10 --preset wam-tiny --steps 20000 --out runs/mt10
    wam collect metaworld --tasks push-wall-v3 --episodes 20 --out data/new
    wam finetune --checkpoint runs/mt10/checkpoint --dataset data/new --out runs/new --adapter lora --rank 8
    wam eval --checkpoint runs/new/checkpoint --tasks push-wall-v3
    # an interrupted fine-tune continues exactly where it stopped
    wam finetune --out runs/new --resume
    # bottleneck adapters after each stream's attention instead, or every weight trained
    wam finetune --checkpoint runs/mt10/checkpoint --dataset data/new --out runs/new-ad --adapter adapter --rank 16
    wam finetune --checkpoint runs/mt10/checkpoint --dataset data/new --out runs/new-full --adapter full

Output of a fine-tune (`out/`): `adapter/` (adapter.safetensors with only the trained tensors, adapter.json with
the settings and the hash of the base weights), `checkpoint/` (a normal checkpoint every verb loads: LoRA folded
into the weights; its train_state/ resumes the fine-tune), `log.jsonl`, `finetune.json`.

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

import copy
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

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


def add_adapters(model: nn.Module, kind: str = "lora", rank: int = 8, alpha: float = 16.0,
                 streams=STREAMS, train_task_embedding: bool = True) -> list[str]:
    """Wrap the chosen streams' linears of every block (see the module docstring), freeze every base parameter,
    and return the names of the parameters left trainable: the adapters', and the task embedding's when
    `train_task_embedding` (a new task needs its own row of the table). New modules draw their init from torch's
    global generator (seed it first for a repeatable run)."""
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if int(rank) < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    streams = tuple(streams)
    bad = [s for s in streams if s not in STREAMS]
    if bad or not streams:
        raise ValueError(f"unknown streams {bad or '(none)'}; choose among: {', '.join(STREAMS)}")
    if adapter_spec(model) is not None:
        raise ValueError(f"this model already carries {adapter_spec(model)['kind']} adapters; merge them first "
                         f"(LoRA) or start from the base model")
    model.requires_grad_(False)
    for b in range(len(model.blocks)):
        for s in streams:
            for target in TARGETS[kind]:
                name = f"blocks.{b}.streams.{STREAMS.index(s)}.{target}"
                base = model.get_submodule(name)
                if type(base) is not nn.Linear:
                    raise ValueError(f"{name} is a {type(base).__name__}, not a plain nn.Linear to adapt")
                _set_submodule(model, name, LoRALinear(base, int(rank), float(alpha)) if kind == "lora"
                               else BottleneckAdapter(base, int(rank)))
    if train_task_embedding:
        params = dict(model.named_parameters())
        for k in _task_keys(model):
            params[k].requires_grad_(True)
    model._adapter_spec = {"kind": kind, "rank": int(rank), "alpha": float(alpha), "streams": list(streams),
                           "train_task_embedding": bool(train_task_embedding)}
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with requires_grad (what an optimizer built by make_optimizer updates)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what a fine-tune changed: the adapter modules' tensors and, when trained, the task embedding."""
    spec = adapter_spec(model)
    if spec is None:
        raise ValueError("this model has no adapters (add_adapters or load_adapter first)")
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
    from wam.checkpoint import atomic_dir_replace

    spec, meta = adapter_spec(model), dict(meta or {})
    sd = adapter_state_dict(model)  # (refuses a model without adapters)
    n_adapter = sum(sd[k].numel() for k in adapter_keys(model))
    if "base_weights_hash" not in meta:  # (a caller saving often computes it once: the frozen base never changes)
        meta["base_weights_hash"] = base_weights_hash(model, spec["train_task_embedding"])
    info = {**spec, "adapter_parameters": n_adapter, "trainable_parameters": sum(v.numel() for v in sd.values()),
            "total_parameters": sum(p.numel() for p in model.parameters()), **meta}
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
        raise FileNotFoundError(f"{root} is not a wam adapter (adapter.json and adapter.safetensors expected); "
                                f"point at the adapter/ directory written by `wam finetune`")
    info = json.loads((root / "adapter.json").read_text())
    spec = {k: info[k] for k in SPEC_KEYS}
    if adapter_spec(model) is not None:
        raise ValueError("this model already carries adapters; load the adapter onto its base model")
    have = base_weights_hash(model, spec["train_task_embedding"])
    if have != info["base_weights_hash"]:
        raise ValueError(f"{root} was trained on other base weights ({info['base_weights_hash']}, checkpoint "
                         f"{info.get('base_checkpoint', 'unknown')}); this model's are {have}. Load the adapter onto "
                         f"the checkpoint it was fine-tuned from")
    add_adapters(model, **spec)
    sd = load_file(root / "adapter.safetensors")
    expected = set(adapter_state_dict(model))
    if set(sd) != expected:
        raise ValueError(f"{root / 'adapter.safetensors'} does not hold the tensors its adapter.json describes "
                         f"(missing {sorted(expected - set(sd))[:3]}, unexpected {sorted(set(sd) - expected)[:3]})")
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
        raise ValueError("bottleneck adapters are nonlinear (o + up(gelu(down(o)))) and cannot fold into the base "
                         "weights; save the model with them (save_checkpoint(..., config={'adapter': "
                         "adapter_spec(model)})) and load_checkpoint rebuilds them")
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            _set_submodule(model, name, m.merge())
    del model._adapter_spec
    return model


# ---- fine-tuning a checkpoint on a dataset -----------------------------------------------------------


def finetune_config(adapter: str = "lora", **changes):
    """Fine-tuning's TrainConfig defaults: a short run and warm-up; adapters take a larger learning rate than
    full fine-tuning, which moves every weight of a model that already works."""
    from wam.train import TrainConfig

    base = dict(steps=2000, warmup_steps=100, lr=1e-3 if adapter in KINDS else 1e-4, tokenizer_steps=0,
                val_every=500, checkpoint_every=500)
    return TrainConfig(**{**base, **changes})


def _check_sizes(dataset, norm, checkpoint) -> None:
    """Refuse a dataset whose action or state size differs from the base's (its statistics would not apply)."""
    from wam.data.lerobot import DatasetError, read_info
    from wam.train import RunError

    try:
        feats = read_info(Path(dataset))["features"]
    except DatasetError as e:
        raise RunError(f"cannot read the dataset {dataset}: {e}. Run `wam dataset check {dataset}` for details") from e
    size = lambda key: math.prod(feats[key]["shape"]) if key in feats else 0  # noqa: E731
    a, s = size(norm.action_key), size(norm.state_key)
    if (a and a != norm.action_dim) or (norm.state_dim and s != norm.state_dim):
        raise RunError(f"the dataset's action/state sizes ({a}/{s}) do not match the base checkpoint's "
                       f"({norm.action_dim}/{norm.state_dim}, {checkpoint}); fine-tuning needs the same robot")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def finetune(checkpoint: str | os.PathLike | None, dataset: str | os.PathLike | None, out: str | os.PathLike, *,
             adapter: str | None = None, rank: int | None = None, alpha: float | None = None, streams=None,
             train_task_embedding: bool | None = None, tc=None, lc=None, val_fraction: float = 0.05,
             resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Fine-tune the checkpoint at `checkpoint` on the LeRobot dataset `dataset`; returns finetune.json's contents.

    adapter "lora" (default) or "adapter": the base frozen, adapters trained (rank: LoRA rank or bottleneck width,
    default 8; alpha: LoRA scale numerator, default 16); "full": every weight trained. The base's tokenizer and
    normalisation statistics are kept (frames encoded by the frozen tokenizer); the dataset's tasks missing from
    the base run's task list are appended to it (new rows of the task table). Trains with `wam.train.fit` from the
    base's EMA weights (`tc` default: `finetune_config(adapter)`). Writes `out/` as in the module docstring.
    resume=True continues `out` with its recorded settings (checkpoint and dataset may then be None).
    Single process only. Raises RunError for bad inputs."""
    from wam.checkpoint import load_checkpoint, save_checkpoint
    from wam.config import LossConfig, from_dict, to_dict
    from wam.data import Normalizer
    from wam.train import (FitState, JsonlLogger, RunError, TrainConfig, TrainingDiverged, episodes_to_tensors,
                           fit, load_episodes, load_train_state, make_optimizer, model_state, split_episodes,
                           train_state_dict, validate_and_log)

    t_start = time.perf_counter()
    out = Path(out)
    ckpt_dir, info_file = out / "checkpoint", out / "finetune.json"
    saved_ts, saved_hash = None, None
    if resume:
        if not (ckpt_dir / "train_state" / "state.pt").is_file() or not info_file.is_file():
            raise RunError(f"nothing to resume in {out}: {ckpt_dir}/train_state/state.pt or {info_file} does not "
                           f"exist; start the fine-tune without --resume")
        saved = json.loads(info_file.read_text())
        s, saved_hash = saved["settings"], saved["base_model_hash"]
        for name, given in (("adapter", adapter), ("rank", rank), ("alpha", alpha), ("streams", streams),
                            ("train_task_embedding", train_task_embedding)):
            if given is not None and (list(given) if name == "streams" else given) != s[name]:
                raise RunError(f"{out} was fine-tuned with {name} {s[name]!r}; --resume cannot change it to {given!r}")
        adapter, rank, alpha, streams = s["adapter"], s["rank"], s["alpha"], s["streams"]
        train_task_embedding, val_fraction = s["train_task_embedding"], s["val_fraction"]
        checkpoint, dataset = checkpoint or s["checkpoint"], dataset or s["dataset"]
        tc = tc or from_dict(TrainConfig, s["train"])
        lc = lc or from_dict(LossConfig, s["loss"])
        saved_ts = torch.load(ckpt_dir / "train_state" / "state.pt", map_location="cpu", weights_only=False)
    elif ckpt_dir.exists() and not overwrite:
        raise RunError(f"{out} already holds a fine-tune; pass --resume to continue it or --overwrite to start over")
    adapter = adapter or "lora"
    if adapter not in (*KINDS, "full"):
        raise RunError(f"unknown --adapter {adapter!r}; choose lora, adapter or full")
    rank, alpha = 8 if rank is None else int(rank), 16.0 if alpha is None else float(alpha)
    streams = list(STREAMS if streams is None else streams)
    train_task_embedding = True if train_task_embedding is None else bool(train_task_embedding)
    if rank < 1:
        raise RunError(f"--rank must be at least 1, got {rank}")
    if bad := [s for s in streams if s not in STREAMS]:
        raise RunError(f"unknown streams {bad}; choose among: {', '.join(STREAMS)}")
    if checkpoint is None or dataset is None:
        raise RunError("pass --checkpoint DIR (the base) and --dataset PATH")
    tc, lc = tc or finetune_config(adapter), lc or LossConfig()

    # -- the base: EMA weights, frozen tokenizer, normalisation statistics, task list
    try:
        base = load_checkpoint(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise RunError(str(e)) from None
    if base.tokenizer is None:
        raise RunError(f"{checkpoint} has no tokenizer.safetensors; fine-tuning encodes frames with the base's")
    if adapter in KINDS and adapter_spec(base.model) is not None:
        raise RunError(f"{checkpoint} carries unmerged bottleneck adapters; fine-tune its own base, or this one "
                       f"with --adapter full")
    base_hash = base.model_hash
    if saved_hash is not None and base_hash != saved_hash:
        raise RunError(f"{checkpoint} is not the base {out} was fine-tuned from (model {base_hash}, expected "
                       f"{saved_hash})")
    cfg, run0 = base.model.cfg, base.config.get("run", {})
    norm = Normalizer.from_dict(base.stats)
    _check_sizes(dataset, norm, checkpoint)
    data = load_episodes(dataset, image_size=cfg.image_size, cameras=run0.get("cameras"), normalizer=norm,
                         progress=progress)
    if len(data.cameras) != cfg.n_cameras:
        raise RunError(f"the dataset gives {len(data.cameras)} cameras, the base model takes {cfg.n_cameras}")
    base_tasks = list(run0.get("tasks", []))
    used = sorted({e["task_index"] for e in data.episodes})
    new_tasks = [data.tasks[i] for i in used if data.tasks[i] not in base_tasks]
    tasks = base_tasks + new_tasks
    if len(tasks) > cfg.n_tasks:
        raise RunError(f"the base model's task table has {cfg.n_tasks} rows and its run used {len(base_tasks)}; "
                       f"the {len(new_tasks)} new task(s) of {dataset} do not fit")
    if new_tasks and adapter in KINDS and not train_task_embedding:
        raise RunError(f"new tasks {new_tasks} need their task-table rows trained: keep train_task_embedding")
    for e in data.episodes:
        e["task_index"] = tasks.index(data.tasks[e["task_index"]])
    if new_tasks and getattr(cfg, "text_encoder", ""):  # a text-conditioned model stores its tasks' embeddings
        from wam.text import encode_texts

        base.model.set_task_embeddings(torch.as_tensor(encode_texts(new_tasks, cfg.text_encoder)), len(base_tasks))
    train_eps, val_eps = split_episodes(data.episodes, val_fraction)
    tok = base.tokenizer.eval().requires_grad_(False)
    train_data = episodes_to_tensors(train_eps, tok, cfg.action_dim, cfg.state_dim)
    val_data = episodes_to_tensors(val_eps, tok, cfg.action_dim, cfg.state_dim) if val_eps else None

    # -- the model: adapters on the base (or every weight trainable), an EMA copy, an optimizer of what trains
    torch.manual_seed(tc.seed)  # the adapters' initial weights: the same command gives the same run
    model = base.model
    if adapter == "full":
        model.requires_grad_(True)
    else:
        add_adapters(model, adapter, rank=rank, alpha=alpha, streams=streams,
                     train_task_embedding=train_task_embedding)
    weights_hash = base_weights_hash(model, train_task_embedding) if adapter in KINDS else None
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    state = FitState(model, ema, make_optimizer(model, tc))
    if saved_ts is not None:
        model.load_state_dict(saved_ts["model"])
        load_train_state(state, saved_ts)
    n_train, n_total = trainable_parameters(model), sum(p.numel() for p in model.parameters())
    if progress:
        print(f"trainable parameters: {n_train:,} of {n_total:,} ({100 * n_train / n_total:.2f}%)")

    settings = {"checkpoint": str(checkpoint), "dataset": str(dataset), "adapter": adapter, "rank": rank,
                "alpha": alpha, "streams": streams, "train_task_embedding": train_task_embedding,
                "val_fraction": val_fraction, "train": to_dict(tc), "loss": to_dict(lc)}
    summary = {"settings": settings, "base_model_hash": base_hash, "tasks": tasks, "new_tasks": new_tasks,
               "trainable_parameters": n_train, "total_parameters": n_total,
               "trainable_fraction": n_train / n_total, "resumed_at_step": state.step if resume else None}
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(out / "adapter", ignore_errors=True)  # (an overwritten fine-tune's, perhaps of another kind)
    _write_json(info_file, summary)
    run_info = {"dataset": str(dataset), "preset": run0.get("preset"), "cameras": [c.removeprefix(
                "observation.images.") for c in data.cameras], "tasks": tasks, "fps": data.fps,
                "val_fraction": val_fraction, "train_episodes": [e["episode_index"] for e in train_eps],
                "val_episodes": [e["episode_index"] for e in val_eps], "train": to_dict(tc), "loss": to_dict(lc),
                "finetune": {"base_checkpoint": str(checkpoint), "base_model_hash": base_hash, "adapter": adapter,
                             "rank": rank, "alpha": alpha, "streams": streams, "base_tasks": base_tasks}}
    logger = JsonlLogger(out, resume=resume)

    def on_checkpoint(s: FitState) -> None:
        ts = {**train_state_dict(s, tc), "model": model_state(s)}
        extra = {}
        export = s.ema
        if adapter in KINDS:
            save_adapter(out / "adapter", s.ema, {"base_checkpoint": str(checkpoint), "base_model_hash": base_hash,
                                                  "base_weights_hash": weights_hash, "tasks": tasks, "step": s.step})
        if adapter_spec(export) is not None and adapter_spec(export)["kind"] == "lora":
            export = merge_adapters(copy.deepcopy(export))
        elif adapter_spec(export) is not None:  # bottleneck adapters stay modules; load_checkpoint rebuilds them
            extra = {"adapter": adapter_spec(export)}
        save_checkpoint(ckpt_dir, export, tok, stats=norm.to_dict(), config={"run": run_info, **extra},
                        train_state=ts)

    on_validate = validate_and_log(val_data, logger)

    try:
        fit(state, train_data, tc, lc, on_log=logger, on_checkpoint=on_checkpoint, on_validate=on_validate,
            progress=progress)
    except TrainingDiverged as e:
        raise RunError(str(e)) from e
    summary.update(steps=state.step, wall_time_s=round(time.perf_counter() - t_start, 2),
                   checkpoint_dir=str(ckpt_dir), adapter_dir=str(out / "adapter") if adapter in KINDS else None)
    _write_json(info_file, summary)
    return summary
