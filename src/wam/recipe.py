"""Named training recipes: a checkpoint's whole making (demonstrations, tokenizer stage, WAM stage, every
setting) as one frozen record that one command runs, and resumes, from a fresh clone.

Runbook:
    wam recipe list                                      # the recipes, with what each makes
    wam recipe show mt50-v2                              # every setting, as JSON
    wam recipe run mt50-v2 --out runs/mt50-v2            # the whole recipe; run it again to continue
    wam recipe run mt50-v2 --out runs/mt50-v2 --until-step 20000    # a sitting: stop after WAM step 20,000
    wam recipe status runs/mt50-v2                       # where it stands, each sitting's start and end
    wam recipe ship runs/mt50-v2 --to checkpoints/wam-tiny-mt50-v2    # the finished weights, to share

A run directory holds `recipe.json` (the recipe it was started with: a run refuses to continue under a recipe
whose settings changed), `data/` (the collected dataset), `train/` (the training run: `train/checkpoint`),
and `sittings.jsonl`, one line per start and per end of a sitting (time, stage, step; the tokenizer stage's
step while it is under way), so the log shows where each sitting started and ended. Interrupting a run
anywhere (Ctrl-C, a kill, a power cut, or `until_step`) loses at most the work since the last checkpoint of
the stage it was in (collection: every 100 kept episodes; training: every `checkpoint_every` steps), and
running the same command again continues it to exactly the weights an uninterrupted run gives
(`tests/test_recipe.py`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wam.atomic import write_text_atomic
from wam.errors import ArgumentError, NotFoundError


@dataclass(frozen=True)
class Recipe:
    """One checkpoint's making. `collect`: the arguments of `wam.collect.collect` (less `out`); `train`: of
    `wam.train.train` as `preset`, `model` (ModelConfig changes), `train` (TrainConfig fields), `loss`
    (LossConfig fields) and `val_fraction`."""

    name: str
    summary: str  # what it makes, in one line
    collect: dict[str, Any]
    preset: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The MT50 reference, v2: the benchmark as LeRobot presents it (frames made as `wam eval --protocol lerobot`
# makes them), 50 scripted demonstrations per task, one cosine schedule from start to end. The network and
# loss are the earlier reference's (wam-tiny, 8-channel detail-weighted tokenizer, 16 tokens per frame, the
# future left out 30% of the time); 128 px frames (4x4 latent patches, still 16 tokens) led on MT10; the
# length is the one closed-loop success was still rising at, run without restarts.
MT50_V2 = Recipe(
    name="mt50-v2",
    summary="MT50 from one camera + 4-D state on LeRobot's protocol: 2,500 expert demos, wam-tiny at 128 px, "
    "100k steps",
    collect={
        "env": "metaworld",
        "tasks": "mt50",
        "episodes": 50,
        "image_size": 128,
        "protocol": "lerobot",
        "seed": 0,
        "after_success": 10,
    },
    preset="wam-tiny",
    model={"image_size": 128, "patch_size": 4},
    train={
        "steps": 100_000,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_steps": 1000,
        "lr_min_ratio": 0.05,
        "ema_decay": 0.999,
        "tokenizer_steps": 3000,
        "checkpoint_every": 2000,
        "val_every": 5000,
        "keep_every": 10_000,  # copies of the weights along the way (RUN/train/steps/step-N): the curves
        "seed": 0,
    },
    loss={"p_omit_future": 0.3},
)

# The same network, data, tokenizer stage and schedule trained as a policy only: the future frames never enter the
# sequence (no video loss), every example is the policy's problem. Beside mt50-v2 on the same evaluation episodes it
# measures what the world model adds at this budget. It collects the same dataset (`--data runs/mt50-v2/data`
# reuses that run's), and its tokenizer stage, with the same data, seed and settings, is mt50-v2's.
POLICY_ONLY_LOSS = {"p_omit_future": 1.0, "p_omit_action": 0.0, "p_clean_future": 0.0, "p_clean_action": 0.0}
MT50_V2_POLICY = dataclasses.replace(
    MT50_V2,
    name="mt50-v2-policy",
    summary="mt50-v2 trained as a policy only (no future frames, no video loss): the world model's worth at its budget",
    loss=POLICY_ONLY_LOSS,
)

# A recipe of seconds on the synthetic dot world: the same stages, for tests and for trying the command.
DOT_TINY = Recipe(
    name="dot-tiny",
    summary="the synthetic dot world: 8 episodes, a 32-wide network, 24 steps (seconds; tests, trying the command)",
    collect={"env": "dot", "episodes": 8, "seed": 0, "checkpoint_every": 3},
    preset="wam-tiny",
    model={"width": 32, "depth": 2, "image_size": 32, "tokenizer_width": 8, "future_stride": 1, "action_horizon": 4},
    train={
        "steps": 24,
        "batch_size": 4,
        "tokenizer_steps": 6,
        "tokenizer_checkpoint_every": 2,
        "log_every": 2,
        "val_every": 8,
        "checkpoint_every": 4,
        "warmup_steps": 4,
        "seed": 0,
    },
    val_fraction=0.25,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (MT50_V2, MT50_V2_POLICY, DOT_TINY)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ArgumentError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]


def _log_sitting(out: Path, event: str, **fields: Any) -> None:
    """Append one line to out/sittings.jsonl (flushed at once: a killed sitting keeps its start line)."""
    rec = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
    with open(out / "sittings.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()


def _check_same_recipe(out: Path, recipe: Recipe) -> None:
    """A run continues only under the recipe it was started with (recipe.json), else it would not be that
    recipe. The settings of a stage that has not started yet may change: the run then equals an uninterrupted
    run of the new recipe (data collected under an earlier version is kept when only training settings changed)."""
    path = out / "recipe.json"
    new = recipe.to_dict()
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in set(saved) | set(new) if saved.get(k) != new.get(k))
        started = {
            "collect": (out / "data").exists() or any(out.glob(".data.partial-*")),
            "train": (out / "train").exists(),
        }
        frozen = [k for k in changed if started["train"] or (started["collect"] and k not in _TRAIN_KEYS)]
        if frozen:
            raise ArgumentError(
                f"{out} was started with another version of recipe {recipe.name!r} (differs in: "
                f"{', '.join(changed)}); continue it with that version, or choose a new output "
                f"directory"
            )
        if not changed:
            return
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(new, indent=2))


_TRAIN_KEYS = {"summary", "preset", "model", "train", "loss", "val_fraction"}  # settings of the training stage


def progress_of(out: str | Path) -> dict[str, Any]:
    """Where a recipe run stands: {"stage": "collect" | "train" | "done", "step": WAM steps done}, with
    "tokenizer_step" (tokenizer steps done) while the tokenizer stage is under way."""
    out = Path(out)
    if not (out / "data" / "meta" / "info.json").is_file():
        return {"stage": "collect", "step": 0}
    state = out / "train" / "checkpoint" / "train_state" / "state.pt"
    import torch

    from wam.train import TOKENIZER_STATE

    tokenizer_state = out / "train" / TOKENIZER_STATE

    if not state.is_file():
        if tokenizer_state.is_file():  # the tokenizer stage is under way: say how far
            tokenizer_step = int(torch.load(tokenizer_state, map_location="cpu", weights_only=False)["step"])
            return {"stage": "train", "step": 0, "tokenizer_step": tokenizer_step}
        return {"stage": "train", "step": 0}

    step = int(torch.load(state, map_location="cpu", weights_only=False)["step"])
    total = (
        json.loads((out / "recipe.json").read_text())["train"].get("steps") if (out / "recipe.json").is_file() else None
    )
    return {"stage": "done" if total is not None and step >= total else "train", "step": step}


def status(out: str | Path) -> dict[str, Any]:
    """A recipe run's state for a person: its recipe, `progress_of`, the WAM stage's total steps, and its
    sittings, each a start line of sittings.jsonl joined with the end line after it (None while it runs, or
    when it was killed before it could write one)."""
    out = Path(out)
    if not (out / "recipe.json").is_file():
        raise NotFoundError(f"{out} holds no recipe run (no recipe.json); start one with `wam recipe run NAME --out`")
    recorded = json.loads((out / "recipe.json").read_text())
    lines = (out / "sittings.jsonl").read_text().splitlines() if (out / "sittings.jsonl").is_file() else []
    sittings: list[dict[str, Any]] = []
    for event in map(json.loads, lines):
        if event["event"] == "start":
            sittings.append({"start": event, "end": None})
        elif sittings and sittings[-1]["end"] is None:
            sittings[-1]["end"] = event
    progress, steps = progress_of(out), recorded["train"].get("steps")
    return {
        "recipe": recorded["name"],
        "steps": steps,
        "progress": progress,
        "sittings": sittings,
        "pace": pace(sittings, progress["step"], steps) if progress["stage"] == "train" else None,
    }


def pace(sittings: list[dict], step: int, steps: int | None) -> dict | None:
    """The WAM stage's pace in the last finished sitting that continued it (its steps over its whole time, the
    loading of the data included; a sitting that started the WAM stage spent part of its time in the tokenizer
    stage and is left out) and the hours left at that pace: {"sitting" (1-based), "steps_per_hour",
    "hours_left"}; None before any such sitting."""
    from datetime import datetime

    for i in range(len(sittings) - 1, -1, -1):
        start, end = sittings[i]["start"], sittings[i]["end"]
        if end is None or start["stage"] != "train" or start["step"] == 0 or end["step"] <= start["step"]:
            continue
        fmt = "%Y-%m-%dT%H:%M:%S%z"
        seconds = (datetime.strptime(end["time"], fmt) - datetime.strptime(start["time"], fmt)).total_seconds()
        if seconds <= 0:
            continue
        per_hour = (end["step"] - start["step"]) * 3600 / seconds
        left = None if steps is None else max(0, steps - step) / per_hour
        return {"sitting": i + 1, "steps_per_hour": per_hour, "hours_left": left}
    return None


def _collect_stage(recipe: Recipe, out: Path, *, workers: int | None, progress: bool) -> None:
    from wam.collect import collect
    from wam.data.writer import find_resumable

    data = out / "data"
    if (data / "meta" / "info.json").is_file():
        return
    resume = find_resumable(data) is not None
    collect(
        **recipe.collect,
        out=data,
        workers=workers,
        resume=resume,
        overwrite=not resume and data.exists(),
        progress=progress,
    )


def _train_stage(recipe: Recipe, out: Path, *, until_step: int | None, progress: bool) -> None:
    from wam.config import LossConfig
    from wam.train import TrainConfig, resumable, train

    run = out / "train"
    resume = resumable(run)
    train(
        out / "data",
        run,
        preset=recipe.preset,
        model_changes=dict(recipe.model),
        tc=TrainConfig(**recipe.train),
        lc=LossConfig(**recipe.loss),
        val_fraction=recipe.val_fraction,
        resume=resume,
        overwrite=not resume and run.exists(),
        progress=progress,
        until=until_step,
    )


def _use_data(recipe: Recipe, out: Path, data: Path) -> None:
    """Stand a finished dataset in for the recipe's collection stage (out/data becomes a link to it), once it is
    shown to be what the stage would collect: its meta/collection.json records the recipe's collection settings."""
    from wam.collect import collection_settings, recorded_settings

    record = data / "meta" / "collection.json"
    if not (data / "meta" / "info.json").is_file() or not record.is_file():
        raise ArgumentError(
            f"`data` must be a finished dataset made by `wam collect` (with meta/info.json and "
            f"meta/collection.json); {data} is not"
        )
    want, have = collection_settings(**recipe.collect), recorded_settings(json.loads(record.read_text()))
    differ = [k for k in want if want[k] != have.get(k)]
    if differ:
        raise ArgumentError(
            f"{data} was not collected with recipe {recipe.name!r}'s settings (differs in: {', '.join(differ)}); "
            f"leave out `data` and the recipe collects its own"
        )
    link = out / "data"
    if link.exists() or link.is_symlink():
        if link.resolve() != data.resolve():
            raise ArgumentError(f"{out} already has its data ({link.resolve()}); leave out `data`")
        return
    link.symlink_to(data.resolve(), target_is_directory=True)


def run_recipe(
    recipe: str | Recipe,
    out: str | Path,
    *,
    until_step: int | None = None,
    workers: int | None = None,
    data: str | Path | None = None,
    progress: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) `recipe` in `out`; returns `progress_of(out)`. Every stage picks up where the last
    sitting left it. `until_step` ends this sitting after that WAM step (the schedule stays the recipe's).
    `workers`: collection processes (the dataset does not depend on it). `data`: a finished dataset collected
    with the recipe's collection settings (checked against its meta/collection.json), used instead of
    collecting it again, e.g. another recipe's run's `data/` when two recipes differ only in training.
    `on_stage(name)` is called as each stage starts."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    out = Path(out)
    if until_step is not None and until_step < 1:
        raise ArgumentError(f"until_step must be a positive WAM step, got {until_step}")
    _check_same_recipe(out, recipe)
    if data is not None:
        _use_data(recipe, out, Path(data))
    start = progress_of(out)
    _log_sitting(out, "start", recipe=recipe.name, **start, **({"data": str(Path(data).resolve())} if data else {}))
    try:
        if start["stage"] == "collect":
            if on_stage is not None:
                on_stage("collect")
            _collect_stage(recipe, out, workers=workers, progress=progress)
        if progress_of(out)["stage"] == "train":
            if on_stage is not None:
                on_stage("train")
            _train_stage(recipe, out, until_step=until_step, progress=progress)
    except BaseException as e:
        _log_sitting(out, "end", interrupted=type(e).__name__, **progress_of(out))
        raise
    end = progress_of(out)
    _log_sitting(out, "end", **end)
    return end


SHIPPED_FILES = ("model.safetensors", "tokenizer.safetensors", "stats.json")


def ship(out: str | Path, dest: str | Path, *, overwrite: bool = False) -> Path:
    """The finished checkpoint of the recipe run in `out`, as a checkpoint to share at `dest`: the weights, the
    tokenizer, the statistics, the config with the recipe it came from (`recipe`: its name, every setting, and
    the sittings that made it) and the training log (for reports), without the optimizer state a run keeps to
    resume. Written aside and moved into place; the weights are byte for byte the run's (checked by hash)."""
    import shutil
    import uuid

    from wam.atomic import atomic_dir_replace
    from wam.checkpoint import file_hash

    out, dest = Path(out), Path(dest)
    st = status(out)  # (refuses a directory that holds no recipe run)
    if st["progress"]["stage"] != "done":
        raise ArgumentError(
            f"{out} is at WAM step {st['progress']['step']:,} of {st['steps']:,}: finish it first with "
            f"`wam recipe run {st['recipe']} --out {out}`"
        )
    if dest.exists() and not overwrite:
        raise ArgumentError(f"{dest} already exists; choose another path, or pass overwrite to replace it")
    src = out / "train" / "checkpoint"
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        for name in SHIPPED_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        if (out / "train" / "log.jsonl").is_file():
            shutil.copyfile(out / "train" / "log.jsonl", tmp / "log.jsonl")
        config = json.loads((src / "config.json").read_text())
        config["recipe"] = {
            "name": st["recipe"],
            "settings": json.loads((out / "recipe.json").read_text()),
            "sittings": [{"start": s["start"]["time"], "end": s["end"] and s["end"]["time"]} for s in st["sittings"]],
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        if file_hash(tmp / "model.safetensors") != file_hash(src / "model.safetensors"):
            raise OSError(f"the copy of {src / 'model.safetensors'} differs from it; try again")
        atomic_dir_replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
