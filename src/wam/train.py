"""Training: the tokenizer stage, then the WAM stage on cached latents, in one plain loop.

Runbook:
    # collect demonstrations, then train the CPU-sized preset on them
    wam collect metaworld --tasks mt10 --episodes 50 --out data/mt10
    wam train --dataset data/mt10 --preset wam-tiny --steps 20000 --out runs/mt10
    # an interrupted run continues exactly where it stopped (same data order, optimizer, RNG)
    wam train --dataset data/mt10 --preset wam-tiny --steps 20000 --out runs/mt10 --resume
    # a mixture: action-free videos at 30% of each batch, another robot's data, task text through MiniLM
    wam train --dataset data/mt7 --dataset data/videos:0.3:no-actions --dataset data/other_robot:0.2 \
        --model text_encoder=minilm --out runs/mix

Why cached latents: the tokenizer is trained first and frozen, every frame of the dataset is encoded
once, and the WAM stage gathers windows from those tensors by index arithmetic: no video decoding or
convolution in the hot loop.

Determinism: the batch and the noise of step s come from a generator seeded with (seed, s), so a
resumed run draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wam import modes
from wam.atomic import recover_dir, write_text_atomic
from wam.config import LossConfig, ModelConfig, TrainConfig  # (TrainConfig: re-exported here)
from wam.episodes import (
    DatasetSpec,
    EpisodeTensors,
    episodes_to_tensors,
    load_mixture,
    mixture_weights,
    shift_latents,
    split_episodes,
)
from wam.errors import ArgumentError, DatasetError, NotFoundError, TrainingDiverged
from wam.inference.precision import autocast_context, resolve_precision
from wam.model import WAM


def tokenizer_budget(tc: TrainConfig) -> int:
    """Steps of the tokenizer stage: tc.tokenizer_steps when set, else a fifth of the WAM stage's, at most 2000
    (1500 WAM steps train the tokenizer for 300, 10000 and more for 2000)."""
    return tc.tokenizer_steps if tc.tokenizer_steps is not None else min(2000, tc.steps // 5)


# ---- schedule, EMA ---------------------------------------------------------------------------------


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up to tc.lr, then cosine decay to lr_min_ratio * lr at tc.steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps))
    return tc.lr * (tc.lr_min_ratio + (1 - tc.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), [_full(p.detach()) for p in model.parameters()], 1 - decay)


def _full(t):
    """A sharded (FSDP) tensor gathered whole; any other tensor as it is. Collective for sharded ones."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


# ---- the WAM stage -------------------------------------------------------------------------------


@dataclass
class FitState:
    model: WAM
    ema: WAM
    optimizer: torch.optim.Optimizer
    step: int = 0
    precision: str | None = None  # "bf16" or "fp32" once a run has chosen ("auto"): kept for the whole run


def make_state(cfg: ModelConfig, tc: TrainConfig) -> FitState:
    torch.manual_seed(tc.seed)
    model = WAM(cfg)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    return FitState(model, ema, make_optimizer(model, tc))


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (a frozen base under adapters gets no optimizer state); no weight
    decay on biases, norms, position embeddings and tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "pos" in name or "table" in name else decay).append(p)
    # the fused kernel updates all parameters in one call: 2.8 ms a step against 12 ms for the per-parameter
    # loop, for a 1.3 M-parameter model on 2 CPU cores. FSDP's sharded parameters keep the loop.
    fused = all(type(p.data) is torch.Tensor for p in decay + no_decay)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr,
        betas=(0.9, 0.95),
        fused=fused,
    )


def shard_state(state: FitState, tc: TrainConfig, dist, optimizer_state: dict | None = None) -> None:
    """FSDP2: shard the model's blocks and the rest over the processes, then build the optimizer over the
    shards (loading a saved full optimizer state into it when given). The EMA copy stays whole."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(state.model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.world,))
    for block in state.model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(state.model, mesh=mesh)
    state.optimizer = make_optimizer(state.model, tc)
    if optimizer_state is not None:
        load_optimizer_state(state, optimizer_state)


def _is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def model_state(state: FitState) -> dict:
    """The raw weights, whole (gathered from the shards under FSDP: call it on every process)."""
    if _is_sharded(state.model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(state.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state.model.state_dict()


def optimizer_state(state: FitState) -> dict:
    """The optimizer state, whole: torch's own format, or under FSDP the parameter-name format of
    torch.distributed.checkpoint (call it on every process then); `load_optimizer_state` reads both."""
    if _is_sharded(state.model) and not state.optimizer.state:  # before the first step: nothing to gather
        # (and torch.distributed.checkpoint would take a zero-gradient step to create some, which counts as
        # one of Adam's steps)
        name = {id(p): n for n, p in state.model.named_parameters()}
        return {
            "state": {},
            "param_groups": [
                {**{k: v for k, v in g.items() if k != "params"}, "params": [name[id(p)] for p in g["params"]]}
                for g in state.optimizer.param_groups
            ],
        }
    if _is_sharded(state.model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            state.model, state.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return state.optimizer.state_dict()


def load_optimizer_state(state: FitState, saved: dict) -> None:
    if not saved.get("state"):  # saved before the first step: a fresh optimizer is that state
        return
    by_name = any(isinstance(k, str) for k in saved["state"])
    if by_name or _is_sharded(state.model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if not by_name:  # torch's own format, into a sharded model: name the parameters first
            names = [n for n, _ in state.model.named_parameters()]
            saved = {
                "state": {names[i]: v for i, v in saved["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]],
            }
        set_optimizer_state_dict(
            state.model,
            state.optimizer,
            optim_state_dict=saved,
            options=StateDictOptions(full_state_dict=True, strict=False),
        )  # (parameters that never
        # had a gradient, such as the last block's context-stream output weights, have no state to load)
    else:
        state.optimizer.load_state_dict(saved)


def fit(
    state: FitState,
    data: EpisodeTensors,
    tc: TrainConfig,
    lc: LossConfig = LossConfig(),
    *,
    until: int | None = None,
    on_log: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[FitState], None] | None = None,
    on_validate: Callable[[FitState], dict] | None = None,
    progress: bool = False,
    dist=None,
) -> FitState:
    """Run optimizer steps state.step .. until (default tc.steps) of the WAM stage.

    on_log(record) receives a dict every tc.log_every steps; on_checkpoint(state) is called every
    tc.checkpoint_every steps and at the end; on_validate(state) every tc.val_every steps and at the end.
    A NaN or inf loss raises TrainingDiverged before the bad gradient touches the weights, after
    calling on_checkpoint with the last good state.

    dist (`wam.distributed.Dist`): with several processes, each trains on its rows of the same global
    batch through DistributedDataParallel (or, for a model sharded by `shard_state`, FSDP2). Give on_log and
    on_validate to rank 0 only; on_checkpoint runs on every process (gathering FSDP shards is collective)
    and must write on rank 0 only.
    """
    from wam.distributed import Dist

    dist = dist or Dist()
    until = tc.steps if until is None else until
    model, ema, opt = state.model, state.ema, state.optimizer
    net, shard = _parallel(model, tc, dist)
    cfg = model.cfg
    device_type = next(model.parameters()).device.type
    if tc.precision == "auto" and state.precision is not None:
        precision = state.precision  # a resumed run keeps the precision it chose, whatever a new timing says
    else:
        precision = resolve_precision(tc.precision, device_type)
        if dist.enabled:  # "auto" measures the machine: every process takes rank 0's verdict
            precision = dist.from_main(precision)
    state.precision = precision
    model.train()
    bar = None
    if progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=until, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    t0, samples, acc = time.perf_counter(), 0, {}
    while state.step < until:
        g = step_generator(tc.seed, state.step)
        batch = data.gather(*data.sample(tc.batch_size, g), cfg)
        if tc.latent_shift > 0:
            batch["latents"] = shift_latents(batch["latents"], tc.latent_shift, cfg.n_cameras, g)
        for group in opt.param_groups:
            group["lr"] = lr_at(state.step, tc)
        with autocast_context(precision, device_type):
            loss, parts = modes.training_loss(net, batch, lc, generator=g, shard=shard)
        if not dist.all_true(bool(torch.isfinite(loss)), loss.device):
            if on_checkpoint is not None:
                on_checkpoint(state)
            raise TrainingDiverged(
                f"loss became {float(loss.detach())} at step {state.step}; the last good "
                f"state is saved. Lower `lr` or raise `warmup_steps`, and check the dataset for "
                f"NaN/inf (wam dataset check)"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = _full(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        opt.step()
        ema_update(ema, model, tc.ema_decay if state.step >= tc.warmup_steps else 0.0)
        state.step += 1
        samples += tc.batch_size
        for k, v in {"loss": loss.detach(), **parts, "grad_norm": grad_norm}.items():
            acc[k] = acc.get(k, 0.0) + float(v)
        if bar is not None:
            bar.update(1)
        if state.step % tc.log_every == 0 or state.step == until:
            k_steps = tc.log_every if state.step % tc.log_every == 0 else (state.step % tc.log_every)
            dt = time.perf_counter() - t0
            acc = dist.mean(acc, loss.device)  # (every process: the losses over the whole global batch)
            rec = {
                "step": state.step,
                **{k: v / k_steps for k, v in acc.items()},
                "lr": opt.param_groups[0]["lr"],
                "samples_per_s": samples / dt,
            }
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.0f}")
            if on_log is not None:
                on_log(rec)
            t0, samples, acc = time.perf_counter(), 0, {}
        if on_validate is not None and tc.val_every and state.step % tc.val_every == 0 and state.step < until:
            on_validate(state)
            model.train()
        if (
            on_checkpoint is not None
            and tc.checkpoint_every
            and state.step % tc.checkpoint_every == 0
            and state.step < until
        ):
            on_checkpoint(state)
    if bar is not None:
        bar.close()
    if on_validate is not None:
        on_validate(state)
    if on_checkpoint is not None:
        on_checkpoint(state)
    model.eval()
    return state


def _parallel(model: WAM, tc: TrainConfig, dist) -> tuple[torch.nn.Module, tuple[int, int] | None]:
    """The network a step runs (the model, or DistributedDataParallel around it) and this process's rows of the
    global batch (None: all of them, one process)."""
    if dist.enabled and _is_sharded(model):  # FSDP: the sharded model averages its gradients itself
        return model, (dist.rows(tc.batch_size), dist.world)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        on_cuda = next(model.parameters()).device.type == "cuda"
        # static graph: the same parameters take part in every step (the last block's context-stream
        # output weights never do: nothing reads the context tokens after the last attention)
        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if on_cuda else None, static_graph=True)
        return net, (dist.rows(tc.batch_size), dist.world)
    return model, None


@torch.no_grad()
def validation_losses(
    model: WAM, data: EpisodeTensors, *, batches: int = 4, batch_size: int = 64, seed: int = 1234
) -> dict[str, float]:
    """Flow-matching loss of each mode on windows of `data` (fixed windows and noise); modes that give
    actions use only the windows that have actions, modes that generate them only the imitated ones."""
    model.eval()
    ep_of, step_of = data.window_index()
    has = data.has_actions[ep_of]
    pools = {
        modes.GENERATE: (has if data.imitate is None else has & data.imitate[ep_of]).nonzero()[:, 0],
        modes.GIVEN: has.nonzero()[:, 0],
    }
    out: dict[str, float] = {}
    for name in modes.MODES:
        pool = pools.get(modes.MODES[name].actions)
        pool = None if pool is not None and len(pool) == len(ep_of) else pool
        if pool is not None and len(pool) == 0:
            continue
        total = 0.0
        for b in range(batches):
            g = torch.Generator().manual_seed(seed + b)
            idx = torch.randint(0, len(ep_of) if pool is None else len(pool), (batch_size,), generator=g)
            idx = idx if pool is None else pool[idx]
            batch = data.gather(ep_of[idx], step_of[idx], model.cfg)
            total += float(modes.mode_loss(model, batch, name, generator=g))
        out[name] = total / batches
    return out


def validate_and_log(val_data: EpisodeTensors | None, logger: Callable) -> Callable[[FitState], dict]:
    """An on_validate callback for `fit`: the EMA weights' per-mode validation losses, logged as "val"."""

    def on_validate(s: FitState) -> dict:
        if val_data is None:
            return {}
        losses = validation_losses(s.ema, val_data)
        logger({"step": s.step, **losses}, prefix="val")
        return losses

    return on_validate


def train_state_dict(state: FitState, tc: TrainConfig) -> dict:
    return {
        "step": state.step,
        "optimizer": optimizer_state(state),
        "ema": state.ema.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "train_config": tc.__dict__,
        "precision": state.precision,
    }


def load_train_state(state: FitState, saved: dict) -> None:
    load_optimizer_state(state, saved["optimizer"])
    state.ema.load_state_dict(saved["ema"])
    torch.set_rng_state(saved["torch_rng"])
    state.step = int(saved["step"])
    state.precision = saved.get("precision")  # (None in checkpoints written before it was kept)


class JsonlLogger:
    """Scalars to a JSON-lines file and, when the tensorboard package is present, TensorBoard events."""

    def __init__(self, out: Path, resume: bool = False):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "log.jsonl"
        if not resume and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))
        except Exception:  # noqa: BLE001 (tensorboard missing or broken: JSON lines only)
            self.tb = None

    def __call__(self, rec: dict, prefix: str = "train") -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": prefix, **rec}) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, rec["step"])
            self.tb.flush()


# ---- the run: a LeRobot dataset in, a checkpoint directory out ------------------------------------


def _tokenizer_from(path, tok):
    """`tok` with the weights of the tokenizer saved in checkpoint `path` (same architecture required)."""
    from safetensors.torch import load_file

    f = Path(path) / "tokenizer.safetensors"
    if not f.is_file():
        raise NotFoundError(
            f"`tokenizer_from={str(path)!r}`: {f} does not exist; give a checkpoint directory written by wam train"
        )
    try:
        tok.load_state_dict(load_file(f))
    except RuntimeError as e:
        raise ArgumentError(
            f"`tokenizer_from={str(path)!r}`: its tokenizer does not fit this model's settings "
            f"(image size, latent channels, tokenizer width): {str(e).splitlines()[0]}"
        ) from e
    return tok


def _seconds_per_step(fn, steps: int = 3) -> float:
    """Median wall time of fn() over `steps` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure_step_seconds(cfg: ModelConfig, tc: TrainConfig, lc: LossConfig, world: int = 1) -> tuple[float, float]:
    """(tokenizer step, WAM step) wall time on this machine, measured on throwaway models and random data of the
    run's shapes (about 8 steps in all). Leaves every random generator as it found it."""
    from wam.tokenizer import make_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tok = make_tokenizer(cfg)
        x = torch.rand(tc.tokenizer_batch_size, 3, cfg.image_size, cfg.image_size * cfg.n_cameras) * 2 - 1
        opt = torch.optim.AdamW(tok.parameters(), lr=1e-4)

        def tok_step():
            loss, _ = tok.loss(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_tok = _seconds_per_step(tok_step) if cfg.tokenizer == "conv" else 0.0
        n = 4 * (cfg.future_frames * cfg.future_stride + cfg.action_horizon + cfg.n_obs_steps)
        data = EpisodeTensors(
            latents=torch.randn(n, cfg.latent_channels, cfg.latent_size, cfg.latent_size * cfg.n_cameras),
            actions=torch.rand(n, cfg.action_dim) * 2 - 1,
            states=torch.randn(n, cfg.state_dim),
            starts=torch.tensor([0]),
            lengths=torch.tensor([n]),
            task=torch.tensor([0]),
            has_actions=torch.tensor([True]),
        )
        state = make_state(cfg, tc)
        precision = resolve_precision(tc.precision, "cpu")
        rows = max(1, tc.batch_size // world)

        def wam_step():
            g = step_generator(tc.seed, 0)
            batch = data.gather(*data.sample(rows, g), cfg)
            with autocast_context(precision, "cpu"):
                loss, _ = modes.training_loss(state.model, batch, lc, generator=g)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            ema_update(state.ema, state.model, tc.ema_decay)

        return t_tok, _seconds_per_step(wam_step)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_text(
    cfg: ModelConfig, tc: TrainConfig, lc: LossConfig, tokenizer_steps: int, done: int, windows: int, world: int = 1
) -> str:
    """What a run will do and about how long each stage takes, from a few steps of each measured here."""
    t_tok, t_wam = measure_step_seconds(cfg, tc, lc, world)
    lines = [f"plan ({windows:,} training windows; times from a few steps of each measured on this machine):"]
    if tokenizer_steps:
        lines.append(
            f"  1. tokenizer stage: {tokenizer_steps:,} step{'s' * (tokenizer_steps != 1)} at batch "
            f"{tc.tokenizer_batch_size}, "
            f"about {_duration(tokenizer_steps * t_tok)} (--tokenizer-steps to change)"
        )
    else:
        lines.append("  1. tokenizer stage: none (the tokenizer is given or already trained)")
    left = max(0, tc.steps - done)
    resumed = f", resuming at step {done:,}" if done else ""
    val = f"every {tc.val_every:,} steps and at the end" if 0 < tc.val_every < tc.steps else "at the end"
    lines.append(
        f"  2. WAM stage: {left:,} step{'s' * (left != 1)} at batch {tc.batch_size}{resumed}, about "
        f"{_duration(left * t_wam)}, plus encoding the frames once and validation {val}"
    )
    return "\n".join(lines)


def train(
    dataset: str | Path,
    out: str | Path,
    *,
    preset: str = "wam-tiny",
    model_changes: dict | None = None,
    tc: TrainConfig | None = None,
    lc: LossConfig | None = None,
    cameras: list[str] | None = None,
    val_fraction: float = 0.05,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tokenizer_from: str | Path | None = None,
    until: int | None = None,
) -> Path:
    """Train a WAM on a LeRobot dataset; returns the checkpoint directory `out/checkpoint`.

    Layout of `out`: `checkpoint/` (the latest checkpoint: EMA weights in model.safetensors, the raw
    weights, optimizer and step in train_state/), `log.jsonl`, `tb/` (TensorBoard events),
    `run.json` (the settings). `resume=True` continues from `out/checkpoint` exactly where it stopped,
    with the checkpoint's settings unless `tc` / `lc` are given (give a larger `tc.steps` to extend).

    `dataset`: one path, or a list of paths / `DatasetSpec`s ("PATH[:WEIGHT][:no-actions]") for a mixture:
    action-free videos train the video stream only, datasets with fewer action dimensions (other robots)
    are zero-padded and their padding masked out of the loss, each dataset normalised with its own statistics.
    `tokenizer_from`: a checkpoint whose frame tokenizer is the starting point (tc.tokenizer_steps 0: used as is).
    `until`: stop after that WAM step with a checkpoint (a sitting of a longer run: the schedule is still
    tc.steps long, and `resume=True` continues exactly as if it had not stopped).
    With `progress`, prints first what will run and about how long (`plan_text`).
    """
    from wam.distributed import setup, teardown

    dist = setup("cuda" if torch.cuda.is_available() and os.environ.get("WORLD_SIZE") else "cpu")
    try:
        return _train(
            dataset,
            out,
            preset=preset,
            model_changes=model_changes,
            tc=tc,
            lc=lc,
            cameras=cameras,
            val_fraction=val_fraction,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            dist=dist,
            tokenizer_from=tokenizer_from,
            until=until,
        )
    finally:
        teardown(dist)


def _train(
    dataset,
    out,
    *,
    preset,
    model_changes,
    tc,
    lc,
    cameras,
    val_fraction,
    resume,
    overwrite,
    progress,
    dist,
    tokenizer_from=None,
    until=None,
):
    from wam.config import PRESETS, to_dict

    out = Path(out)
    ckpt_dir, tok_state = out / "checkpoint", out / TOKENIZER_STATE
    if preset not in PRESETS:
        raise ArgumentError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    _check_out_dir(out, ckpt_dir, resume=resume, overwrite=overwrite, dist=dist)
    specs = [DatasetSpec.parse(d) for d in (dataset if isinstance(dataset, (list, tuple)) else [dataset])]
    saved, base, cameras, val_fraction, normalizers, tc, lc = _settings_of_run(
        out, specs, preset, model_changes, cameras, val_fraction, tc, lc, resume=resume, dist=dist
    )
    # frames stay on disk until they are encoded, one episode at a time, unless the tokenizer trains on them
    # (then they are all in memory for its stage): MT50 at 96 px is 6 GB of frames against 2 GB of latents
    frames_needed = (
        (saved is None or saved.tokenizer is None)
        and base.tokenizer == "conv"
        and (tokenizer_from is None or tokenizer_budget(tc) > 0)
    )
    mix = load_mixture(
        specs,
        image_size=base.image_size,
        cameras=cameras,
        normalizers=normalizers,
        progress=progress,
        lazy_frames=not frames_needed,
    )
    cfg = _fit_config(base, mix, fresh=saved is None)
    train_eps, val_eps = split_episodes(mix.episodes, val_fraction)
    train_eps.sort(key=lambda e: e["source"])  # (stable) each dataset's windows in one block, for weighted sampling
    val_eps.sort(key=lambda e: e["source"])
    windows = [sum(len(e["actions"]) for e in train_eps if e["source"] == i) for i in range(len(specs))]
    _check_fits(cfg, tc, dist)
    logger = JsonlLogger(out, resume=resume) if dist.main else None
    run_info = _run_info(
        specs, mix, train_eps, val_eps, windows, preset=preset, val_fraction=val_fraction, tc=tc, lc=lc
    )
    if dist.main:
        write_text_atomic(out / "run.json", json.dumps({"model": to_dict(cfg), **run_info}, indent=2))
    if progress and dist.main:
        done = int(saved.train_state["step"]) if saved is not None else 0
        print(
            plan_text(cfg, tc, lc, tokenizer_budget(tc) if frames_needed else 0, done, sum(windows), dist.world),
            flush=True,
        )

    if saved is not None and saved.tokenizer is not None:
        tok = saved.tokenizer
    else:
        tok = _tokenizer_stage(
            cfg,
            tc,
            train_eps,
            logger,
            train=frames_needed,
            tokenizer_from=tokenizer_from,
            progress=progress,
            dist=dist,
            state_path=tok_state if dist.main else None,
        )
    tok.eval()
    _wam_stage(
        cfg,
        tc,
        lc,
        tok,
        mix,
        train_eps,
        val_eps,
        windows,
        saved=saved,
        run_info=run_info,
        logger=logger,
        ckpt_dir=ckpt_dir,
        progress=progress,
        dist=dist,
        until=until,
    )
    return ckpt_dir


def _settings_of_run(out: Path, specs, preset, model_changes, cameras, val_fraction, tc, lc, *, resume, dist):
    """The settings `_train` runs with: a resumed run's own (its checkpoint's in the WAM stage, run.json's in the
    tokenizer stage) wherever new ones are not given, else the given ones and the preset's model. Returns the
    saved checkpoint (None before the WAM stage), the model config before it is fitted to the data, cameras,
    val_fraction, the saved normalizers (or None), tc and lc."""
    from wam.checkpoint import load_checkpoint
    from wam.config import from_dict

    ckpt_dir = out / "checkpoint"
    in_wam_stage = (ckpt_dir / "train_state" / "state.pt").is_file()
    saved = load_checkpoint(ckpt_dir, with_train_state=True) if resume and in_wam_stage else None
    normalizers, base = None, None
    if saved is not None:  # the checkpoint's settings unless new ones are given
        run = saved.config.get("run", {})
        cameras, val_fraction, normalizers, tc, lc = _saved_settings(
            saved, run, out, specs, cameras, val_fraction, tc, lc
        )
    if resume and saved is None:  # stopped in the tokenizer stage: the run's settings (run.json) unless given
        run = json.loads((out / "run.json").read_text())
        cameras, val_fraction = run.get("cameras", cameras), run.get("val_fraction", val_fraction)
        tc = tc or from_dict(TrainConfig, run["train"])
        lc = lc or from_dict(LossConfig, run["loss"])
        base = from_dict(ModelConfig, run["model"])
    elif not resume and dist.main:
        (out / TOKENIZER_STATE).unlink(missing_ok=True)  # (overwrite) a new run's tokenizer starts from nothing
    tc, lc = tc or TrainConfig(), lc or LossConfig()
    base = base or (saved.model.cfg if saved is not None else _preset_config(preset, model_changes))
    return saved, base, cameras, val_fraction, normalizers, tc, lc


def _check_fits(cfg: ModelConfig, tc: TrainConfig, dist) -> None:
    """Training settings that must fit the model fitted to the data, and the processes."""
    if not 0 <= tc.latent_shift < cfg.latent_size:
        raise ArgumentError(
            f"`latent_shift={tc.latent_shift}` must be 0 (off) or a shift of fewer cells than the latent grid's "
            f"{cfg.latent_size}; 1 moves a frame by {cfg.image_size // cfg.latent_size} pixels"
        )
    if tc.keep_every and tc.checkpoint_every and tc.keep_every % tc.checkpoint_every:
        raise ArgumentError(
            f"`keep_every={tc.keep_every}` must be a multiple of `checkpoint_every={tc.checkpoint_every}`: "
            f"the weights are kept when a checkpoint is written"
        )
    if dist.enabled and tc.batch_size % dist.world:
        raise ArgumentError(
            f"`batch_size={tc.batch_size}` is the global batch and must be divisible by the {dist.world} processes"
        )


TOKENIZER_STATE = "tokenizer_stage.pt"  # in the run directory while the tokenizer stage is under way


def resumable(out: str | Path) -> bool:
    """Whether `out` holds a run that `resume=True` continues: a checkpoint of the WAM stage, or the saved state
    of an unfinished tokenizer stage."""
    out = Path(out)
    return (out / "checkpoint" / "train_state" / "state.pt").is_file() or (out / TOKENIZER_STATE).is_file()


def _check_out_dir(out: Path, ckpt_dir: Path, *, resume: bool, overwrite: bool, dist) -> None:
    """The output directory holds a run to resume, or none unless it may be overwritten; a checkpoint write killed
    half-way is put back first."""
    if dist.main:  # (the run's only writer) a checkpoint write killed half-way: put back the last one, drop the rest
        recover_dir(ckpt_dir)
    if resume and not resumable(out):
        raise NotFoundError(
            f"nothing to resume in {out}: neither {ckpt_dir}/train_state/state.pt nor {out / TOKENIZER_STATE} "
            f"exists; start the run without `resume=True`"
        )
    if not resume and (ckpt_dir.exists() or (out / TOKENIZER_STATE).exists()) and not overwrite:
        raise ArgumentError(
            f"{out} already holds a run; pass `resume=True` to continue it or `overwrite=True` to start over"
        )
    dist.barrier()  # every process has checked the directory before rank 0 writes into it


def _saved_settings(saved, run: dict, out: Path, specs: list, cameras, val_fraction, tc, lc):
    """A resumed run's cameras, validation share, per-dataset normalisers and settings (given ones win)."""
    from wam.config import from_dict
    from wam.data import Normalizer

    saved_sets = run.get("datasets") or [{"stats": saved.stats}]
    if len(saved_sets) != len(specs):
        raise ArgumentError(
            f"the run in {out} was trained on {len(saved_sets)} dataset(s); resume it with the same "
            f"`dataset` arguments ({', '.join(d.get('path', '?') for d in saved_sets)})"
        )
    return (
        run.get("cameras", cameras),
        run.get("val_fraction", val_fraction),
        [Normalizer.from_dict(d["stats"]) for d in saved_sets],
        tc or from_dict(TrainConfig, run["train"]),
        lc or from_dict(LossConfig, run["loss"]),
    )


def _preset_config(preset: str, model_changes: dict | None) -> ModelConfig:
    """The preset with the given changes (a text encoder brings its embedding width)."""
    from wam.config import PRESETS, TEXT_ENCODERS, replace

    changes = dict(model_changes or {})
    if changes.get("text_encoder") and "text_dim" not in changes:
        changes["text_dim"] = TEXT_ENCODERS.get(changes["text_encoder"], 0)
    try:
        return replace(PRESETS[preset], **changes)
    except (TypeError, ValueError) as e:
        raise ArgumentError(f"invalid model settings: {e}") from e


def _fit_config(base: ModelConfig, mix, *, fresh: bool) -> ModelConfig:
    """A new run's model settings sized to the mixture's actions, states, cameras and tasks; a resumed run's,
    checked against them."""
    from wam.config import replace

    if fresh:
        try:
            cfg = replace(
                base,
                action_dim=mix.action_dim,
                state_dim=mix.state_dim,
                n_cameras=len(mix.cameras),
                n_tasks=max(base.n_tasks, len(mix.tasks)),
            )
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"invalid model settings: {e}") from e
    elif mix.action_dim > base.action_dim or mix.state_dim > base.state_dim:
        raise DatasetError(
            f"the datasets' action/state sizes ({mix.action_dim}/{mix.state_dim}) do not fit the "
            f"checkpoint's ({base.action_dim}/{base.state_dim})"
        )
    else:
        cfg = base
    if len(mix.tasks) > cfg.n_tasks:
        raise ArgumentError(
            f"the datasets hold {len(mix.tasks)} tasks but the model has {cfg.n_tasks} task rows; "
            f"raise it with n_tasks={len(mix.tasks)} in `model_changes`"
        )
    return cfg


def collection_protocol(path: str | Path) -> str | None:
    """The benchmark protocol (e.g. MetaWorld's "lerobot") that the dataset at `path` was collected under, read
    from its meta/collection.json (written by `wam collect`), or None (not collected by wam, or no named one)."""
    record = Path(path) / "meta" / "collection.json"
    if not record.is_file():
        return None
    info = json.loads(record.read_text())
    from wam.envs import ENVS, get_adapter

    if info.get("env") not in ENVS:
        return None
    find = getattr(get_adapter(info["env"]), "protocol_of", None)
    return find(info.get("settings") or {}) if find is not None else None


def _run_info(
    specs: list,
    mix,
    train_eps: list[dict],
    val_eps: list[dict],
    windows: list[int],
    *,
    preset: str,
    val_fraction: float,
    tc: TrainConfig,
    lc: LossConfig,
) -> dict:
    """run.json (beside the model settings) and the checkpoint's record of the run: datasets, split, settings."""
    from wam.config import to_dict

    primary = next(i for i, sp in enumerate(specs) if sp.actions and sp.imitate)
    run_info = {
        "dataset": specs[primary].path,
        "preset": preset,
        "cameras": [c.removeprefix("observation.images.") for c in mix.cameras],
        "tasks": mix.tasks,
        "fps": mix.fps,
        "val_fraction": val_fraction,
        "train_episodes": [e["episode_index"] for e in train_eps],
        "val_episodes": [e["episode_index"] for e in val_eps],
        "train": to_dict(tc),
        "loss": to_dict(lc),
    }
    protocol = collection_protocol(specs[primary].path)
    if protocol is not None:  # the policy is evaluated under it unless told otherwise
        run_info["protocol"] = protocol
    if any(sp.tasks is not None or sp.per_task is not None for sp in specs):  # which episodes the run read
        run_info["dataset_specs"] = [sp.to_dict() for sp in specs]
    if len(specs) > 1:  # each dataset's statistics: a policy un-normalises a task's actions with its dataset's
        run_info["datasets"] = [
            {
                **sp.to_dict(),
                "tasks": mix.dataset_tasks[i],
                "stats": mix.normalizers[i].to_dict(),
                "cameras": [c.removeprefix("observation.images.") for c in mix.dataset_cameras[i]],
                "action_dim": mix.normalizers[i].action_dim if sp.actions else 0,
                "state_dim": mix.normalizers[i].state_dim,
                "train_windows": windows[i],
                "val_episodes": [e["episode_index"] for e in val_eps if e["source"] == i],
            }
            for i, sp in enumerate(specs)
        ]
    return run_info


def _tokenizer_stage(
    cfg: ModelConfig,
    tc: TrainConfig,
    train_eps: list[dict],
    logger,
    *,
    train: bool,
    tokenizer_from,
    progress: bool,
    dist,
    state_path: Path | None = None,
):
    """The frame tokenizer: rank 0 starts it (fresh, or from `tokenizer_from`) and trains it on the training
    episodes' frames when `train`; every other process takes its weights. The stage's state is saved to
    `state_path` every `tc.tokenizer_checkpoint_every` steps, and continued from it when the file exists."""
    from wam.tokenizer import make_tokenizer, train_tokenizer

    torch.manual_seed(tc.seed)  # the tokenizer's initial weights: the same command gives the same run
    tok = make_tokenizer(cfg)
    if dist.main and tokenizer_from is not None:
        tok = _tokenizer_from(tokenizer_from, tok)
    if dist.main and train:
        steps = tokenizer_budget(tc)
        frames = _pack_frames(train_eps)  # (N, H, W, 3) uint8
        resume = None
        if state_path is not None and state_path.is_file():
            resume = torch.load(state_path, map_location="cpu", weights_only=False)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            start = resume["step"] if resume is not None else 0
            bar = tqdm(total=steps, initial=start, desc="tokenizer", unit="step", dynamic_ncols=True)

        def tick(loss: float) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")

        losses = train_tokenizer(
            tok,
            frames,
            steps=steps,
            batch_size=tc.tokenizer_batch_size,
            lr=tc.tokenizer_lr,
            seed=tc.seed,
            detail_weight=tc.tokenizer_detail_weight,
            progress=tick,
            resume=resume,
            checkpoint_every=tc.tokenizer_checkpoint_every if state_path is not None else 0,
            on_checkpoint=(lambda state: _save_atomic(state, state_path)) if state_path is not None else None,
        )
        if bar is not None:
            bar.close()
        for i in range(0, len(losses), tc.log_every):
            chunk = losses[i : i + tc.log_every]
            logger({"step": i + len(chunk), "loss": sum(chunk) / len(chunk)}, prefix="tokenizer")
        del frames
    dist.broadcast_module(tok)
    return tok


def _save_atomic(obj, path: Path) -> None:
    """torch.save through a temporary sibling and one rename: a kill leaves the previous file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _pack_frames(episodes: list[dict]) -> torch.Tensor:
    """Every episode's frames in one (N, H, W, 3) uint8 tensor; each episode keeps a view into it instead of its
    own array, so the frames are held once (MT50 at 128 px: 11 GB, not 22 GB while the copy is made)."""
    n = sum(len(e["frames"]) for e in episodes)
    packed = torch.empty((n, *np.asarray(episodes[0]["frames"]).shape[1:]), dtype=torch.uint8)
    row = 0
    for e in episodes:
        f = torch.as_tensor(np.asarray(e["frames"]))
        packed[row : row + len(f)] = f
        e["frames"] = packed[row : row + len(f)].numpy()  # a view: the episode's own array is freed
        row += len(f)
    _return_freed_memory()
    return packed


def _return_freed_memory() -> None:
    """Give the memory of freed arrays back to the system (glibc keeps the episodes' freed frame arrays in its
    heap: MT50 at 128 px held 12 GB of them beside the 10 GB of packed frames, and the WAM stage's latents then
    came on top). A no-op where the C library has no malloc_trim."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


LATENTS_CACHE = "latents.pt"  # in the run directory: the WAM stage's encoded frames, for the run's next sittings


def _encoded(train_eps, val_eps, tok, cfg: ModelConfig, mix, *, weights, cache: Path | None, progress=False) -> tuple:
    """The training and validation episodes as EpisodeTensors, every frame encoded by the frozen tokenizer. The
    encoded frames are kept in `cache` (written once, atomically) and a later sitting of the same run takes them
    from there instead of decoding and encoding every frame again, when the key still matches: the tokenizer's
    weights, the episodes, the frame size and cameras, and the files of the datasets they come from."""
    key = _latents_key(tok, train_eps + val_eps, cfg, mix) if cache is not None else None
    kept = None
    if cache is not None and cache.is_file():
        try:
            kept = torch.load(cache, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (an unreadable cache is rebuilt, never trusted)
            kept = None
        if kept is not None and kept.get("key") != key:
            kept = None
    A, S = cfg.action_dim, cfg.state_dim
    train = episodes_to_tensors(
        train_eps, tok, A, S, weights=weights, latents=kept and kept["train"], progress=progress
    )
    val = episodes_to_tensors(val_eps, tok, A, S, latents=kept and kept["val"]) if val_eps else None
    if cache is not None and kept is None:
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        try:
            torch.save({"key": key, "train": train.latents, "val": None if val is None else val.latents}, tmp)
            os.replace(tmp, cache)
        except OSError:  # (a full disk: the next sitting encodes again)
            tmp.unlink(missing_ok=True)
    return train, val


def _latents_key(tok, episodes: list[dict], cfg: ModelConfig, mix) -> str:
    """What the encoded frames depend on, hashed: the tokenizer's weights, which episodes of which dataset in
    which order, the frame size, the cameras, and each dataset's files (names, sizes, modification times)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(tok.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    order = [(int(e.get("source", 0)), int(e.get("episode_index", -1)), len(e["actions"])) for e in episodes]
    h.update(json.dumps([order, cfg.image_size, mix.dataset_cameras]).encode())
    for spec in mix.specs:
        root = Path(spec.path).resolve()
        h.update(str(root).encode())
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _wam_stage(
    cfg: ModelConfig,
    tc: TrainConfig,
    lc: LossConfig,
    tok,
    mix,
    train_eps: list[dict],
    val_eps: list[dict],
    windows: list[int],
    *,
    saved,
    run_info: dict,
    logger,
    ckpt_dir: Path,
    progress: bool,
    dist,
    until: int | None = None,
) -> None:
    """The WAM stage on cached latents: encode every frame once, then `fit`, checkpointing as it goes."""
    from wam.checkpoint import save_checkpoint

    weights = mixture_weights(mix.specs, windows)
    cache = ckpt_dir.parent / LATENTS_CACHE if dist.main else None
    train_data, val_data = _encoded(
        train_eps, val_eps, tok, cfg, mix, weights=weights, cache=cache, progress=progress and dist.main
    )
    for e in mix.episodes:  # the WAM stage reads only the latents
        e.pop("frames", None)
    state = make_state(cfg, tc)
    if saved is not None:
        state.model.load_state_dict(saved.train_state["model"])
    elif cfg.text_encoder:  # the tasks' text embeddings, fixed, stored in the model beside the projection
        from wam.text import encode_texts

        emb = torch.as_tensor(encode_texts(mix.tasks, cfg.text_encoder))
        for m in (state.model, state.ema):
            m.set_task_embeddings(emb)
    if tc.fsdp and dist.enabled:
        shard_state(state, tc, dist)
    if saved is not None:
        load_train_state(state, saved.train_state)
    primary = next(i for i, sp in enumerate(mix.specs) if sp.actions and sp.imitate)
    stats = mix.normalizers[primary].to_dict()  # stats.json: what a single-dataset reader expects

    def on_checkpoint(s: FitState) -> None:  # every process: under FSDP the shards are gathered first
        ts = {**train_state_dict(s, tc), "model": model_state(s)}
        if dist.main:
            save_checkpoint(ckpt_dir, s.ema, tok, stats=stats, config={"run": run_info}, train_state=ts)
            if tc.keep_every and s.step and s.step % tc.keep_every == 0:  # a copy for curves: the weights only
                kept = ckpt_dir.parent / "steps" / f"step-{s.step}"
                save_checkpoint(kept, s.ema, tok, stats=stats, config={"run": run_info})

    on_validate = validate_and_log(val_data, logger)
    if saved is None:
        on_checkpoint(state)  # step 0: the tokenizer is saved, so an interrupted run never trains it again
        if dist.main:
            (ckpt_dir.parent / TOKENIZER_STATE).unlink(missing_ok=True)  # (its stage's state: no longer needed)
    main_only = (lambda f: f) if dist.main else (lambda f: None)
    fit(
        state,
        train_data,
        tc,
        lc,
        until=min(until, tc.steps) if until is not None else None,
        on_log=main_only(logger),
        on_checkpoint=on_checkpoint,
        on_validate=main_only(on_validate),
        progress=progress,
        dist=dist,
    )
