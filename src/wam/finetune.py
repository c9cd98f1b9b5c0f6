"""Fine-tuning a trained checkpoint on a new dataset: LoRA or bottleneck adapters (wam.adapters), or every weight.

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
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from wam.adapters import (
    KINDS,
    adapter_spec,
    add_adapters,
    base_weights_hash,
    merge_adapters,
    save_adapter,
    trainable_parameters,
)
from wam.atomic import recover_dir, write_text_atomic
from wam.checkpoint import load_checkpoint, save_checkpoint
from wam.config import LossConfig, finetune_config, from_dict, to_dict  # (finetune_config: re-exported here)
from wam.episodes import episodes_to_tensors, load_episodes, split_episodes
from wam.errors import ArgumentError, CheckpointError, DatasetError, NotFoundError
from wam.model import STREAMS
from wam.train import (
    FitState,
    JsonlLogger,
    TrainConfig,
    collection_protocol,
    fit,
    load_train_state,
    make_optimizer,
    model_state,
    train_state_dict,
    validate_and_log,
)


def _check_sizes(dataset, norm, checkpoint) -> None:
    """Refuse a dataset whose action or state size differs from the base's (its statistics would not apply)."""
    from wam.data.lerobot import read_info

    try:
        feats = read_info(Path(dataset))["features"]
    except DatasetError as e:
        raise DatasetError(
            f"cannot read the dataset {dataset}: {e}. Run `wam dataset check {dataset}` for details"
        ) from e
    size = lambda key: math.prod(feats[key]["shape"]) if key in feats else 0  # noqa: E731
    a, s = size(norm.action_key), size(norm.state_key)
    if (a and a != norm.action_dim) or (norm.state_dim and s != norm.state_dim):
        raise DatasetError(
            f"the dataset's action/state sizes ({a}/{s}) do not match the base checkpoint's "
            f"({norm.action_dim}/{norm.state_dim}, {checkpoint}); fine-tuning needs the same robot"
        )


def _write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def finetune(
    checkpoint: str | os.PathLike | None,
    dataset: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    adapter: str | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    streams=None,
    train_task_embedding: bool | None = None,
    tc=None,
    lc=None,
    val_fraction: float = 0.05,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune the checkpoint at `checkpoint` on the LeRobot dataset `dataset`; returns finetune.json's contents.

    adapter "lora" (default) or "adapter": the base frozen, adapters trained (rank: LoRA rank or bottleneck width,
    default 8; alpha: LoRA scale numerator, default 16); "full": every weight trained. The base's tokenizer and
    normalisation statistics are kept (frames encoded by the frozen tokenizer); the dataset's tasks missing from
    the base run's task list are appended to it (new rows of the task table). Trains with `wam.train.fit` from the
    base's EMA weights (`tc` default: `finetune_config(adapter)`). Writes `out/` as in the module docstring.
    resume=True continues `out` with its recorded settings (checkpoint and dataset may then be None).
    Single process only. Raises a `wam.errors.WamError` for bad inputs."""
    t_start = time.perf_counter()
    out = Path(out)
    ckpt_dir, info_file = out / "checkpoint", out / "finetune.json"
    for d in (ckpt_dir, out / "adapter"):  # a write killed half-way: put back the last one, drop the rest
        recover_dir(d)
    given = dict(adapter=adapter, rank=rank, alpha=alpha, streams=streams, train_task_embedding=train_task_embedding)
    given.update(checkpoint=checkpoint, dataset=dataset, tc=tc, lc=lc, val_fraction=val_fraction)
    saved_ts, saved_hash = None, None
    if resume:
        given, saved_hash = _resumed_settings(out, given)
        saved_ts = torch.load(ckpt_dir / "train_state" / "state.pt", map_location="cpu", weights_only=False)
    elif ckpt_dir.exists() and not overwrite:
        raise ArgumentError(
            f"{out} already holds a fine-tune; pass `resume=True` to continue it or `overwrite=True` to start over"
        )
    settings = _settings(**given)
    checkpoint, dataset, adapter = settings["checkpoint"], settings["dataset"], settings["adapter"]
    tc, lc = from_dict(TrainConfig, settings["train"]), from_dict(LossConfig, settings["loss"])

    base = _load_base(checkpoint, adapter, saved_hash, out)
    data, tasks, new_tasks, base_tasks = _finetune_episodes(
        base, dataset, adapter, settings["train_task_embedding"], progress
    )
    train_eps, val_eps = split_episodes(data.episodes, settings["val_fraction"])
    tok = base.tokenizer.eval().requires_grad_(False)
    cfg = base.model.cfg
    train_data = episodes_to_tensors(train_eps, tok, cfg.action_dim, cfg.state_dim)
    val_data = episodes_to_tensors(val_eps, tok, cfg.action_dim, cfg.state_dim) if val_eps else None
    model, state, weights_hash = _adapted_state(
        base,
        tc,
        adapter,
        rank=settings["rank"],
        alpha=settings["alpha"],
        streams=settings["streams"],
        train_task_embedding=settings["train_task_embedding"],
        saved_ts=saved_ts,
    )
    n_train, n_total = trainable_parameters(model), sum(p.numel() for p in model.parameters())
    if progress:
        print(f"trainable parameters: {n_train:,} of {n_total:,} ({100 * n_train / n_total:.2f}%)")

    summary = {
        "settings": settings,
        "base_model_hash": base.model_hash,
        "tasks": tasks,
        "new_tasks": new_tasks,
        "trainable_parameters": n_train,
        "total_parameters": n_total,
        "trainable_fraction": n_train / n_total,
        "resumed_at_step": state.step if resume else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(out / "adapter", ignore_errors=True)  # (an overwritten fine-tune's, perhaps of another kind)
    _write_json(info_file, summary)
    adapter_info = {
        "base_checkpoint": str(checkpoint),
        "base_model_hash": base.model_hash,
        "base_weights_hash": weights_hash,
        "tasks": tasks,
    }
    _fit_and_save(
        state,
        base,
        train_data,
        val_data,
        tc,
        lc,
        out=out,
        adapter=adapter,
        adapter_info=adapter_info,
        run_info=_run_info(settings, base, data, tasks, base_tasks, train_eps, val_eps),
        resume=resume,
        progress=progress,
    )
    summary.update(
        steps=state.step,
        wall_time_s=round(time.perf_counter() - t_start, 2),
        checkpoint_dir=str(ckpt_dir),
        adapter_dir=str(out / "adapter") if adapter in KINDS else None,
    )
    _write_json(info_file, summary)
    return summary


_ADAPTER_SETTINGS = ("adapter", "rank", "alpha", "streams", "train_task_embedding")


def _resumed_settings(out: Path, given: dict) -> tuple[dict, str]:
    """The settings a resumed fine-tune continues with (its finetune.json's; the adapter's may not change) and
    the hash of the base it started from."""
    info_file = out / "finetune.json"
    if not (out / "checkpoint" / "train_state" / "state.pt").is_file() or not info_file.is_file():
        raise NotFoundError(
            f"nothing to resume in {out}: {out / 'checkpoint'}/train_state/state.pt or {info_file} does "
            f"not exist; start the fine-tune without `resume=True`"
        )
    saved = json.loads(info_file.read_text())
    s = saved["settings"]
    for name in _ADAPTER_SETTINGS:
        value = given[name]
        if value is not None and (list(value) if name == "streams" else value) != s[name]:
            raise ArgumentError(
                f"{out} was fine-tuned with `{name}={s[name]!r}`; resuming cannot change it to {value!r}"
            )
    resumed = {name: s[name] for name in (*_ADAPTER_SETTINGS, "val_fraction")}
    resumed.update(
        checkpoint=given["checkpoint"] or s["checkpoint"],
        dataset=given["dataset"] or s["dataset"],
        tc=given["tc"] or from_dict(TrainConfig, s["train"]),
        lc=given["lc"] or from_dict(LossConfig, s["loss"]),
    )
    return resumed, saved["base_model_hash"]


def _settings(
    *, adapter, rank, alpha, streams, train_task_embedding, checkpoint, dataset, tc, lc, val_fraction
) -> dict:
    """Every setting of the fine-tune with its default filled in, checked; as finetune.json records them."""
    adapter = adapter or "lora"
    rank, alpha = 8 if rank is None else int(rank), 16.0 if alpha is None else float(alpha)
    streams = list(STREAMS if streams is None else streams)
    _check_settings(adapter, rank, streams, checkpoint, dataset)
    return {
        "checkpoint": str(checkpoint),
        "dataset": str(dataset),
        "adapter": adapter,
        "rank": rank,
        "alpha": alpha,
        "streams": streams,
        "train_task_embedding": True if train_task_embedding is None else bool(train_task_embedding),
        "val_fraction": val_fraction,
        "train": to_dict(tc or finetune_config(adapter)),
        "loss": to_dict(lc or LossConfig()),
    }


def _run_info(settings: dict, base, data, tasks, base_tasks, train_eps, val_eps) -> dict:
    """The fine-tuned checkpoint's record of its run (as `wam train` writes it), with the fine-tune's settings.
    Its benchmark protocol is the dataset's when it was collected under one, else the base's."""
    base_run = base.config.get("run", {})
    info = {
        "dataset": settings["dataset"],
        "preset": base_run.get("preset"),
        "cameras": [c.removeprefix("observation.images.") for c in data.cameras],
        "tasks": tasks,
        "fps": data.fps,
        "val_fraction": settings["val_fraction"],
        "train_episodes": [e["episode_index"] for e in train_eps],
        "val_episodes": [e["episode_index"] for e in val_eps],
        "train": settings["train"],
        "loss": settings["loss"],
        "finetune": {
            "base_checkpoint": settings["checkpoint"],
            "base_model_hash": base.model_hash,
            **{k: settings[k] for k in ("adapter", "rank", "alpha", "streams")},
            "base_tasks": base_tasks,
        },
    }
    protocol = collection_protocol(settings["dataset"]) or base_run.get("protocol")
    if protocol is not None:
        info["protocol"] = protocol
    return info


def _check_settings(adapter: str, rank: int, streams: list[str], checkpoint, dataset) -> None:
    if adapter not in (*KINDS, "full"):
        raise ArgumentError(f"unknown `adapter={adapter!r}`; choose lora, adapter or full")
    if rank < 1:
        raise ArgumentError(f"`rank` must be at least 1, got {rank}")
    if bad := [s for s in streams if s not in STREAMS]:
        raise ArgumentError(f"unknown streams {bad}; choose among: {', '.join(STREAMS)}")
    if checkpoint is None or dataset is None:
        raise ArgumentError("pass `checkpoint=DIR` (the base) and `dataset=PATH`")


def _load_base(checkpoint, adapter: str, saved_hash: str | None, out: Path):
    """The base checkpoint (EMA weights, frozen tokenizer, normalisation statistics, task list), checked."""
    base = load_checkpoint(checkpoint)
    if base.tokenizer is None:
        raise CheckpointError(f"{checkpoint} has no tokenizer.safetensors; fine-tuning encodes frames with the base's")
    if adapter in KINDS and adapter_spec(base.model) is not None:
        raise CheckpointError(
            f"{checkpoint} carries unmerged bottleneck adapters; fine-tune its own base, or this "
            f"one with `adapter='full'`"
        )
    if saved_hash is not None and base.model_hash != saved_hash:
        raise ArgumentError(
            f"{checkpoint} is not the base {out} was fine-tuned from (model {base.model_hash}, expected {saved_hash})"
        )
    return base


def _finetune_episodes(base, dataset, adapter: str, train_task_embedding: bool, progress: bool):
    """The dataset's episodes normalised with the base's statistics, their tasks mapped into the base's task list
    (new tasks appended, a text-conditioned model given their embeddings). Returns (episodes, tasks, new tasks,
    base tasks)."""
    from wam.data import Normalizer

    cfg, run0 = base.model.cfg, base.config.get("run", {})
    norm = Normalizer.from_dict(base.stats)
    _check_sizes(dataset, norm, base.path)
    data = load_episodes(
        dataset, image_size=cfg.image_size, cameras=run0.get("cameras"), normalizer=norm, progress=progress
    )
    if len(data.cameras) != cfg.n_cameras:
        raise DatasetError(f"the dataset gives {len(data.cameras)} cameras, the base model takes {cfg.n_cameras}")
    base_tasks = list(run0.get("tasks", []))
    used = sorted({e["task_index"] for e in data.episodes})
    new_tasks = [data.tasks[i] for i in used if data.tasks[i] not in base_tasks]
    tasks = base_tasks + new_tasks
    if len(tasks) > cfg.n_tasks:
        raise DatasetError(
            f"the base model's task table has {cfg.n_tasks} rows and its run used {len(base_tasks)}; "
            f"the {len(new_tasks)} new task(s) of {dataset} do not fit"
        )
    if new_tasks and adapter in KINDS and not train_task_embedding:
        raise ArgumentError(
            f"new tasks {new_tasks} need their task-table rows trained: keep `train_task_embedding=True`"
        )
    for e in data.episodes:
        e["task_index"] = tasks.index(data.tasks[e["task_index"]])
    if new_tasks and getattr(cfg, "text_encoder", ""):  # a text-conditioned model stores its tasks' embeddings
        from wam.text import encode_texts

        base.model.set_task_embeddings(torch.as_tensor(encode_texts(new_tasks, cfg.text_encoder)), len(base_tasks))
    return data, tasks, new_tasks, base_tasks


def _adapted_state(
    base,
    tc: TrainConfig,
    adapter: str,
    *,
    rank: int,
    alpha: float,
    streams: list[str],
    train_task_embedding: bool,
    saved_ts: dict | None,
):
    """The model: adapters on the base (or every weight trainable), an EMA copy, an optimizer of what trains.
    Returns (model, FitState, hash of the base weights the adapters apply to)."""
    torch.manual_seed(tc.seed)  # the adapters' initial weights: the same command gives the same run
    model = base.model
    if adapter == "full":
        model.requires_grad_(True)
    else:
        add_adapters(model, adapter, rank=rank, alpha=alpha, streams=streams, train_task_embedding=train_task_embedding)
    weights_hash = base_weights_hash(model, train_task_embedding) if adapter in KINDS else None
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    state = FitState(model, ema, make_optimizer(model, tc))
    if saved_ts is not None:
        model.load_state_dict(saved_ts["model"])
        load_train_state(state, saved_ts)
    return model, state, weights_hash


def _fit_and_save(
    state: FitState,
    base,
    train_data,
    val_data,
    tc: TrainConfig,
    lc,
    *,
    out: Path,
    adapter: str,
    adapter_info: dict,
    run_info: dict,
    resume: bool,
    progress: bool,
) -> None:
    """`fit`, writing the adapter and a checkpoint (LoRA folded into the weights) every tc.checkpoint_every steps."""
    from wam.data import Normalizer

    stats = Normalizer.from_dict(base.stats).to_dict()
    tok = base.tokenizer
    logger = JsonlLogger(out, resume=resume)

    def on_checkpoint(s: FitState) -> None:
        ts = {**train_state_dict(s, tc), "model": model_state(s)}
        extra = {}
        export = s.ema
        if adapter in KINDS:
            save_adapter(out / "adapter", s.ema, {**adapter_info, "step": s.step})
        if adapter_spec(export) is not None and adapter_spec(export)["kind"] == "lora":
            export = merge_adapters(copy.deepcopy(export))
        elif adapter_spec(export) is not None:  # bottleneck adapters stay modules; load_checkpoint rebuilds them
            extra = {"adapter": adapter_spec(export)}
        save_checkpoint(out / "checkpoint", export, tok, stats=stats, config={"run": run_info, **extra}, train_state=ts)

    fit(
        state,
        train_data,
        tc,
        lc,
        on_log=logger,
        on_checkpoint=on_checkpoint,
        on_validate=validate_and_log(val_data, logger),
        progress=progress,
    )
