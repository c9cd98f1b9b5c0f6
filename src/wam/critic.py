"""The outcome model ("critic"): from one frame, how far along its task the robot is and whether it is done.

It scores imagined futures: `--plan N` samples N joint video+action futures for a chunk and acts on the one
whose last predicted frame scores highest. It reads what the world model predicts (one frame's latents, from
the checkpoint's own frozen tokenizer) and the task, and predicts

    progress   the dataset's reward of the frame, mapped from the data's reward range to [0, 1] (MetaWorld's
               dense reward measures stage by stage how far the task is done: reach, grasp, move, place)
    success    the probability that the frame shows the task done (the dataset's next.success flag)

No robot state: an imagined future has frames but no proprioception, and the hand is in the picture.
Outcomes are per frame, so successful demonstrations already hold both classes (every frame before the
success is "not done"); datasets with failed or perturbed episodes (`wam collect --action-noise`) add states
that demonstrations never visit.

Runbook:
    wam critic --checkpoint checkpoints/wam-tiny-mt50-v2 --dataset runs/mt50-v2/data  # -> <checkpoint>/critic
    wam critic --checkpoint runs/imagine-world/checkpoint --dataset data/mt50:tasks=mt10 \
        --dataset data/mt10-noisy --imagined --action-guidance 2     # also judges imagined frames (wam imagine)
    wam eval --checkpoint checkpoints/wam-tiny-mt50-v2 --tasks hard --mode joint --plan 4

Row convention (LeRobot's): row i holds the frame at step i and next.reward / next.success after action i, so
the outcome of frame i + 1 is row i's; the first frame of an episode has no outcome and is not trained on.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from wam.errors import ArgumentError, CheckpointError, DatasetError, NotFoundError
from wam.stats import auc, spearman


@dataclass(frozen=True)
class CriticConfig:
    latent_channels: int  # channels of the tokenizer's latent grid
    grid: tuple[int, int]  # (h, w) of one frame's latent grid (cameras side by side)
    n_tasks: int  # task indices of the checkpoint it scores for
    state_dim: int = 0  # size of the robot state it also reads off the frame (normalised; 0: none)
    width: int = 64  # channels of the first convolution (the second has twice as many)
    task_dim: int = 64  # task embedding size
    hidden: int = 256  # the head's hidden size
    reward_range: tuple[float, float] = (0.0, 1.0)  # progress = (reward - lo) / (hi - lo), the training data's range
    model_hash: str = ""  # the checkpoint it was trained with
    tokenizer_hash: str = ""  # the tokenizer whose latents it reads (any checkpoint sharing it may use the critic)
    tasks: list[str] = field(default_factory=list)  # the checkpoint's tasks, by index


class Critic(nn.Module):
    """(B, c, h, w) latents and (B,) task indices -> progress in [0, 1] and the success logit, each (B,), and
    the robot state (B, state_dim) the frame shows (normalised; what an imagined observation's
    proprioception is taken to be, `wam imagine`)."""

    def __init__(self, cfg: CriticConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.GELU(),
        )
        h, wd = (math.ceil(math.ceil(n / 2) / 2) for n in cfg.grid)
        self.task = nn.Embedding(max(1, cfg.n_tasks), cfg.task_dim)
        self.head = nn.Sequential(
            nn.Linear(2 * w * h * wd + cfg.task_dim, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, 2 + cfg.state_dim),
        )

    def forward(self, latents: torch.Tensor, task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv(latents.float()).flatten(1)  # (B, 2w * h/4 * w/4)
        out = self.head(torch.cat([x, self.task(task.long())], 1))  # (B, 2 + S)
        return torch.sigmoid(out[:, 0]), out[:, 1], out[:, 2:]

    @torch.no_grad()
    def score(self, latents: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """What planning maximises, (B,): progress plus the probability of being done, in [0, 2]."""
        progress, logit, _ = self(latents, task)
        return progress + torch.sigmoid(logit)


def save_critic(critic: Critic, out: str | Path, metrics: dict | None = None) -> Path:
    """Write critic.safetensors and critic.json to `out`, atomically (a temporary directory renamed into place)."""
    from wam.atomic import atomic_dir_replace

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({k: v.contiguous() for k, v in critic.state_dict().items()}, tmp / "critic.safetensors")
        (tmp / "critic.json").write_text(json.dumps({"config": asdict(critic.cfg), "metrics": metrics or {}}, indent=2))
        atomic_dir_replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_critic(path: str | Path, device: str | torch.device = "cpu") -> Critic:
    path = Path(path)
    if not (path / "critic.safetensors").is_file() or not (path / "critic.json").is_file():
        raise NotFoundError(
            f"{path} holds no critic (critic.safetensors and critic.json expected); train one "
            f"with `wam critic --checkpoint CHECKPOINT --dataset DATASET`"
        )
    meta = json.loads((path / "critic.json").read_text())
    cfg = dict(meta["config"])
    cfg["grid"], cfg["reward_range"] = tuple(cfg["grid"]), tuple(cfg["reward_range"])
    critic = Critic(CriticConfig(**cfg))
    critic.load_state_dict(load_file(path / "critic.safetensors"))
    critic.metrics, critic.path = meta.get("metrics", {}), str(path)
    return critic.to(device).eval()


# ---- imagined frames of recorded episodes ------------------------------------------------------------


@torch.no_grad()
def imagine_along(
    world,
    critic,
    starts: torch.Tensor,
    states: torch.Tensor | None,
    actions: Sequence[np.ndarray],
    task: torch.Tensor,
    *,
    sampling_steps: int = 2,
    action_guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    cache: bool | None = None,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Imagine recorded episodes: from each episode's first frame, the frame that follows every future_stride of its
    recorded actions, autoregressively and exactly as `ImaginedEnv` imagines a policy's episode (forward mode, the
    queued actions padded to the horizon with the last one, the robot state of each imagined frame read off it by
    `critic`, the same sampling steps and action guidance). What a critic trained on real frames only never sees:
    the frames the world model imagines for actions that fail, next to the outcome those actions really had.

    starts  (N, c, h, w) the first frame's latents of each episode
    states  (N, S) its normalised robot state, or None
    actions N arrays (L_i, A) of normalised actions, the episode's own
    task    (N,) the world model's task index of each episode
    Returns N tensors (K_i, c, h, w), K_i = (L_i - 1) // future_stride: imagined frame k stands for row
    (k + 1) * future_stride of its episode. Episodes are imagined in batches of similar length; noise comes from
    one generator seeded with `seed`, so the same call gives the same frames."""
    from wam.modes import next_frame

    model = world.model.eval()
    cfg = model.cfg
    stride = cfg.future_stride
    cache = cfg.attention != "full" if cache is None else bool(cache)
    lengths = [(len(a) - 1) // stride for a in actions]
    order = sorted(range(len(actions)), key=lambda i: lengths[i])
    out: list[torch.Tensor | None] = [None] * len(actions)
    gen = torch.Generator().manual_seed(int(seed))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(lengths), desc="imagining recorded episodes", unit="frame", dynamic_ncols=True)
    for b0 in range(0, len(order), batch_size):
        ids = order[b0 : b0 + batch_size]
        k_max = max(lengths[i] for i in ids)
        if k_max == 0:
            for i in ids:
                out[i] = starts.new_zeros((0, *starts.shape[1:]))
            continue
        hist = [starts[ids].float()] * cfg.n_obs_steps  # n_obs x (B, c, h, w)
        state0 = (
            states[ids].float() if states is not None and cfg.state_dim > 0 else torch.zeros(len(ids), cfg.state_dim)
        )
        state_hist = [state0] * cfg.n_obs_steps
        made = []
        for k in range(k_max):
            acts = np.zeros((len(ids), stride, cfg.action_dim), np.float32)
            for j, i in enumerate(ids):  # this stride's actions (an ended episode repeats its last ones)
                a = actions[i][min(k, lengths[i] - 1) * stride :][:stride, : cfg.action_dim]
                acts[j, : len(a), : a.shape[1]] = a
                acts[j, len(a) :, : a.shape[1]] = a[-1]
            z = next_frame(
                model,
                torch.stack(hist, 1),
                task[ids],
                torch.as_tensor(acts),
                state=torch.stack(state_hist, 1) if cfg.state_dim > 0 else None,
                steps=sampling_steps,
                generator=gen,
                cache=cache,
                action_guidance=action_guidance,
            )  # (B, c, h, w)
            made.append(z)
            hist = hist[1:] + [z]
            if cfg.state_dim > 0:
                _, _, read = critic(z, task[ids].to(z.device))
                if read.shape[1] >= cfg.state_dim:
                    state_hist = state_hist[1:] + [read[:, : cfg.state_dim].float()]
            if bar is not None:
                bar.update(sum(1 for i in ids if k < lengths[i]))
        made = torch.stack(made, 1)  # (B, k_max, c, h, w)
        for j, i in enumerate(ids):
            out[i] = made[j, : lengths[i]]
    if bar is not None:
        bar.close()
    return out


# ---- training ----------------------------------------------------------------------------------------


def outcome_rows(episodes: list[dict], task_map: dict[int, int]) -> dict[str, np.ndarray]:
    """Every frame with an outcome: (episode position, row in the episode, checkpoint task, reward, success).
    Episodes without next.reward / next.success, or of a task the checkpoint does not know, are left out."""
    ep, row, task, reward, success = [], [], [], [], []
    for i, e in enumerate(episodes):
        if "rewards" not in e or e["task_index"] not in task_map or len(e["frames"]) < 2:
            continue
        n = len(e["frames"]) - 1
        ep.append(np.full(n, i))
        row.append(np.arange(1, n + 1))
        task.append(np.full(n, task_map[e["task_index"]]))
        reward.append(e["rewards"][:-1])
        success.append(e["successes"][:-1] if "successes" in e else np.zeros(n, np.float32))
    if not ep:
        raise DatasetError(
            "no episode with next.reward (and a task the checkpoint knows); the critic learns from "
            "the rewards and success flags `wam collect` writes"
        )
    cat = np.concatenate
    out = {
        "episode": cat(ep),
        "row": cat(row),
        "task": cat(task),
        "reward": cat(reward).astype(np.float32),
        "success": cat(success).astype(np.float32),
    }
    kept = [
        i for i, e in enumerate(episodes) if "rewards" in e and e["task_index"] in task_map and len(e["frames"]) > 1
    ]
    if all(episodes[i].get("states") is not None and episodes[i]["states"].shape[1] > 0 for i in kept):
        out["state"] = cat([episodes[i]["states"][1:] for i in kept]).astype(np.float32)
    return out


def longest_run(flags: np.ndarray) -> int:
    """The longest run of True in a 1-D boolean array."""
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def _refit_with_imagined(
    data,
    ckpt,
    critic,
    fit,
    train_idx,
    val_idx,
    val_eps,
    metrics: dict,
    *,
    imagine_steps,
    action_guidance,
    seed,
    progress,
):
    """`train_critic(imagined=True)`'s second half: the world model imagines every episode along its recorded
    actions, the first critic's held-out numbers on real and imagined frames are kept ("real_only"), and a new
    critic is fitted on the real and imagined training frames together; returns it (metrics are updated)."""
    t0 = time.perf_counter()
    n_real = len(data.episode_of)
    new_ep, dones = _add_imagined_frames(
        data, ckpt, critic, imagine_steps=imagine_steps, action_guidance=action_guidance, seed=seed, progress=progress
    )
    im_val = n_real + np.flatnonzero(np.isin(new_ep, list(val_eps)))
    im_train = n_real + np.flatnonzero(~np.isin(new_ep, list(val_eps)))
    metrics.update(
        imagined_frames=len(new_ep),
        imagined_train_frames=len(im_train),
        imagined_val_frames=len(im_val),
        imagine_steps=imagine_steps,
        action_guidance=action_guidance,
        imagine_s=time.perf_counter() - t0,
        imagined_done_fraction=float(dones.mean()),
    )
    metrics["real_only"] = {
        **_held_out_metrics(critic, data, val_idx),
        **_held_out_metrics(critic, data, im_val, "imagined_"),
    }
    t1 = time.perf_counter()
    critic = fit(np.concatenate([train_idx, im_train]))
    metrics["train_s"] += time.perf_counter() - t1
    metrics.update(_held_out_metrics(critic, data, im_val, "imagined_"))
    return critic


def train_critic(
    checkpoint: str | Path,
    datasets: list[str | Path],
    *,
    out: str | Path | None = None,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.05,
    success_weight: float = 1.0,
    progress: bool = True,
    imagined: bool = False,
    imagine_steps: int = 2,
    action_guidance: float = 1.0,
) -> dict:
    """Train a critic on the frames of `datasets` (paths, or `PATH:tasks=A,B` as for wam train), encoded by the
    checkpoint's tokenizer one episode at a time; write it to `out` (default: <checkpoint>/critic). Returns its
    metrics on held-out episodes (the world model's own held-out episodes where the datasets hold them, else a
    seeded split by episode).

    imagined=True trains it on imagined frames too, so that it judges what `wam imagine` shows it: a critic is
    first trained on the real frames; the world model (the checkpoint) then imagines every episode along its own
    recorded actions from its first frame (`imagine_along` above, with `imagine_steps` denoising steps and
    `action_guidance`, as `wam imagine` will; that first critic reads the robot state off each imagined frame),
    and each imagined frame gets the outcome the real episode had at that step. The critic that is kept trains
    from scratch on the real and the imagined frames together. Imagined frames of failed episodes teach it that a
    scene the world model drifted into is not a success because it looks like one. The metrics then report both
    critics on the held-out episodes' imagined frames ("imagined_*", and "real_only" for the first)."""
    from wam.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if ckpt.tokenizer is None:
        raise CheckpointError(
            f"{checkpoint} has no tokenizer.safetensors; the critic reads the latents of its tokenizer"
        )
    t0 = time.perf_counter()
    data = _critic_frames(ckpt, datasets, progress=progress)
    load_s = time.perf_counter() - t0
    val_eps, validation = _validation_episodes(data.episodes, ckpt.config.get("run", {}), val_fraction, seed)
    is_val = np.isin(data.episode_of, list(val_eps))
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(train_idx) == 0:
        raise ArgumentError("every episode went to validation; give the critic more episodes")
    fit = functools.partial(
        _fit_critic, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, success_weight=success_weight
    )
    t1 = time.perf_counter()
    critic = fit(train_idx)
    metrics = {
        "steps": steps,
        "batch_size": batch_size,
        "train_frames": len(train_idx),
        "val_frames": len(val_idx),
        "episodes": len(data.episodes),
        "val_episodes": len(val_eps),
        "reward_range": list(data.cfg.reward_range),
        "load_s": load_s,
        "train_s": time.perf_counter() - t1,
        "datasets": [str(d) for d in datasets],
        "done_fraction": float(data.target_s.mean()),
        "validation": validation,
    }
    if imagined:
        critic = _refit_with_imagined(
            data,
            ckpt,
            critic,
            fit,
            train_idx,
            val_idx,
            val_eps,
            metrics,
            imagine_steps=imagine_steps,
            action_guidance=action_guidance,
            seed=seed,
            progress=progress,
        )
    with torch.no_grad():  # the fit on (up to 4096 of) the training frames, beside the held-out numbers
        ti = torch.as_tensor(train_idx[:4096])
        p, _, _ = critic(data.latents[data.index[ti]], data.task[ti])
    metrics["train_progress_spearman"] = spearman(p.numpy(), data.target_p[ti].numpy())
    metrics.update(_held_out_metrics(critic, data, val_idx))
    save_critic(critic, out or Path(checkpoint) / "critic", metrics)
    return metrics


@dataclass
class _CriticFrames:
    """The critic's training frames: every frame with an outcome, as rows into the encoded frames."""

    cfg: CriticConfig
    episodes: list[dict]  # as `load_episodes` gives them, without their frames; "dataset": its resolved path
    task_map: dict[int, int]  # task index of the loaded episodes -> the checkpoint's
    starts: np.ndarray  # (E,) each episode's first row in `latents`
    latents: torch.Tensor  # (N, c, h, w) half: every encoded frame (and the imagined ones, when added)
    index: torch.Tensor  # (R,) the row of `latents` of each training frame
    target_p: torch.Tensor  # (R,) progress in [0, 1]
    target_s: torch.Tensor  # (R,) done
    target_x: torch.Tensor | None  # (R, S) normalised robot state, or None
    task: torch.Tensor  # (R,) the checkpoint's task index
    episode_of: np.ndarray  # (R,) position in `episodes`
    row_of: np.ndarray  # (R,) row in its episode


def _critic_frames(ckpt, datasets: list, *, progress: bool) -> _CriticFrames:
    """Load the datasets' episodes, encode their frames with the checkpoint's tokenizer one episode at a time (a
    large dataset never sits in memory as pixels) and lay out the targets of every frame with an outcome."""
    from wam.checkpoint import file_hash
    from wam.data import Normalizer
    from wam.episodes import DatasetSpec, load_episodes
    from wam.tokenizer import encode_frames

    cfg, run = ckpt.model.cfg, ckpt.config.get("run", {})
    tasks = list(run.get("tasks", []))
    episodes, latents, ds_tasks = [], [], []  # episodes keep their outcomes and states, not their frames
    for spec in datasets:
        spec = DatasetSpec.parse(spec)
        loaded = load_episodes(
            spec.path,
            image_size=cfg.image_size,
            cameras=run.get("cameras") or None,
            normalizer=Normalizer.from_dict(ckpt.stats),
            progress=progress,
            tasks=spec.tasks,
            lazy_frames=True,
        )
        offset = len(ds_tasks)
        ds_tasks += loaded.tasks
        it = loaded.episodes
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"encoding {Path(spec.path).name}", unit="ep", dynamic_ncols=True)
        for e in it:
            with torch.no_grad():
                latents.append(encode_frames(ckpt.tokenizer, e.pop("frames")()).half())  # (L, c, h, w)
            e["frames"] = np.empty((len(latents[-1]), 0))  # (only its length is read below)
            episodes.append({**e, "task_index": e["task_index"] + offset, "dataset": str(Path(spec.path).resolve())})
    task_map = {i: tasks.index(t) for i, t in enumerate(ds_tasks) if t in tasks}
    if not task_map:
        raise ArgumentError(
            f"none of the datasets' tasks is one of the checkpoint's ({len(tasks)} tasks); the "
            f"critic scores the checkpoint's tasks"
        )
    rows = outcome_rows(episodes, task_map)
    starts = np.cumsum([0] + [len(z) for z in latents])[:-1]
    all_latents = torch.cat(latents)
    lo, hi = float(rows["reward"].min()), float(rows["reward"].max())
    hi = hi if hi > lo else lo + 1.0
    target_x = torch.as_tensor(rows["state"]) if "state" in rows and cfg.state_dim > 0 else None
    critic_cfg = CriticConfig(
        latent_channels=all_latents.shape[1],
        grid=tuple(all_latents.shape[2:]),
        n_tasks=max(1, len(tasks)),
        state_dim=0 if target_x is None else target_x.shape[1],
        reward_range=(lo, hi),
        model_hash=ckpt.model_hash,
        tasks=tasks,
        tokenizer_hash=file_hash(Path(ckpt.path) / "tokenizer.safetensors"),
    )
    return _CriticFrames(
        cfg=critic_cfg,
        episodes=episodes,
        task_map=task_map,
        starts=starts,
        latents=all_latents,
        index=torch.as_tensor(starts[rows["episode"]] + rows["row"]),
        target_p=torch.as_tensor((rows["reward"] - lo) / (hi - lo)).clamp(0, 1),
        target_s=torch.as_tensor(rows["success"]),
        target_x=target_x,
        task=torch.as_tensor(rows["task"]),
        episode_of=rows["episode"].copy(),
        row_of=rows["row"].copy(),
    )


def _validation_episodes(episodes: list[dict], run: dict, val_fraction: float, seed: int) -> tuple[set[int], str]:
    """The episodes the world model held out, when its dataset is here; else a seeded share. Returns their
    positions and a sentence saying which."""
    held_out = {
        str(Path(d["path"]).resolve()): set(d.get("val_episodes") or [])
        for d in run.get("datasets") or []
        if d.get("path")
    }  # a mixture: each dataset's held-out episodes
    if run.get("dataset") and not held_out:
        held_out[str(Path(run["dataset"]).resolve())] = set(run.get("val_episodes") or [])
    val_eps = {i for i, e in enumerate(episodes) if e["episode_index"] in held_out.get(e["dataset"], ())}
    validation = "the world model's held-out episodes"
    n_ep = len(episodes)
    if not val_eps and n_ep > 1:
        validation = f"a seeded {val_fraction:.0%} of the episodes"
        g = np.random.default_rng(seed)
        val_eps = set(g.permutation(n_ep)[: max(1, int(round(val_fraction * n_ep)))].tolist())
    return val_eps, validation


def _fit_critic(
    data: _CriticFrames,
    train_rows: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    success_weight: float,
) -> Critic:
    """A critic trained from scratch on the frames at `train_rows` (cosine learning rate, AdamW)."""
    torch.manual_seed(seed)
    critic = Critic(data.cfg)
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.as_tensor(train_rows)
    pos_weight = torch.tensor(float((1 - data.target_s[picks]).sum() / data.target_s[picks].sum().clamp(min=1)))
    pos_weight = pos_weight.clamp(1.0, 20.0)  # done frames are rarer: weigh them up to balance the classes
    critic.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        pick = picks[torch.randint(0, len(picks), (batch_size,), generator=gen)]
        p, logit, x = critic(data.latents[data.index[pick]], data.task[pick])
        loss = F.mse_loss(p, data.target_p[pick]) + success_weight * F.binary_cross_entropy_with_logits(
            logit, data.target_s[pick], pos_weight=pos_weight
        )
        if data.target_x is not None:
            loss = loss + F.mse_loss(x, data.target_x[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return critic.eval()


def _held_out_metrics(critic: Critic, data: _CriticFrames, rows_of: np.ndarray, prefix: str = "") -> dict:
    """Progress, success and state errors on the frames at `rows_of`; with a prefix (imagined frames), also per
    episode, as wam imagine judges one."""
    m = {}
    if not len(rows_of):
        return m
    with torch.no_grad():
        vi = torch.as_tensor(rows_of)
        p, logit, x = critic(data.latents[data.index[vi]], data.task[vi])
    prob = torch.sigmoid(logit).numpy()
    if data.target_x is not None:  # normalised units: 1.0 is one standard deviation of the dataset's state
        m["val_state_mae"] = float((x - data.target_x[vi]).abs().mean())
    m.update(
        val_progress_mae=float((p - data.target_p[vi]).abs().mean()),
        val_progress_spearman=spearman(p.numpy(), data.target_p[vi].numpy()),
        val_success_accuracy=float(((prob > 0.5) == (data.target_s[vi].numpy() > 0.5)).mean()),
        val_success_auc=auc(prob, data.target_s[vi].numpy()),
    )
    if prefix:
        m.update(_episode_verdicts(data, rows_of, prob))
    return {prefix + k: v for k, v in m.items()}


def _episode_verdicts(data: _CriticFrames, rows_of: np.ndarray, prob: np.ndarray) -> dict:
    """Per episode: a success once `persist` frames in a row are judged done (the frames of an episode are in
    order), against the real outcome; and when the first frame judged done comes, against the real success."""
    episodes = data.episodes
    ep_of = data.episode_of[rows_of]
    real = {e: bool(episodes[e].get("successes", np.zeros(1)).max() > 0.5) for e in np.unique(ep_of)}
    failed = [e for e in real if not real[e]]
    m = {"val_episodes": len(real), "val_failed_episodes": len(failed), "val_by_persist": {}}
    for persist in (1, 2, 3, 5):
        said = {e: longest_run(prob[ep_of == e] >= 0.5) >= persist for e in real}
        m["val_by_persist"][persist] = {
            "episode_accuracy": float(np.mean([said[e] == real[e] for e in real])),
            "failed_judged_success": float(np.mean([said[e] for e in failed])) if failed else None,
            "succeeded_judged_success": float(np.mean([said[e] for e in real if real[e]]))
            if any(real.values())
            else None,
        }
    m.update({f"val_{k}": v for k, v in m["val_by_persist"][1].items()})
    lags = []  # when the first frame judged done comes, against the real first success (in steps)
    for e in real:
        ok = prob[ep_of == e] >= 0.5
        if real[e] and ok.any():
            first_real = int(np.argmax(episodes[e]["successes"] > 0.5)) + 1  # frame rows: outcome of row - 1
            lags.append(int(data.row_of[rows_of][ep_of == e][np.argmax(ok)]) - first_real)
    m["val_first_done_lag"] = (
        {
            "median": float(np.median(lags)),
            "q25": float(np.percentile(lags, 25)),
            "q75": float(np.percentile(lags, 75)),
            "episodes": len(lags),
        }
        if lags
        else None
    )
    return m


def _add_imagined_frames(
    data: _CriticFrames, ckpt, critic: Critic, *, imagine_steps: int, action_guidance: float, seed: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Imagine every episode along its own actions from its first frame and add each imagined frame (one every
    future_stride steps) with the outcome the real episode had at that step. Returns the new rows' episodes and
    done flags."""
    episodes, task_map = data.episodes, data.task_map
    lo, hi = data.cfg.reward_range
    kept = np.unique(data.episode_of)
    stride = ckpt.model.cfg.future_stride
    made = imagine_along(
        ckpt,
        critic,
        data.latents[torch.as_tensor(data.starts[kept])].float(),
        None if data.target_x is None else torch.as_tensor(np.stack([episodes[i]["states"][0] for i in kept])),
        [episodes[i]["actions"] for i in kept],
        torch.as_tensor([task_map[episodes[i]["task_index"]] for i in kept]),
        sampling_steps=imagine_steps,
        action_guidance=action_guidance,
        seed=seed,
        progress=progress,
    )
    first = len(data.latents)
    data.latents = torch.cat([data.latents, *[z.half() for z in made]])
    new_ep = np.concatenate([np.full(len(z), i) for i, z in zip(kept, made)])
    new_row = np.concatenate([(np.arange(len(z)) + 1) * stride for z in made])
    data.index = torch.cat([data.index, torch.arange(first, first + len(new_ep))])
    rewards = np.concatenate([episodes[i]["rewards"][r - 1 : r] for i, r in zip(new_ep, new_row)])
    dones = np.concatenate(
        [
            episodes[i].get("successes", np.zeros(len(episodes[i]["rewards"])))[r - 1 : r]
            for i, r in zip(new_ep, new_row)
        ]
    ).astype(np.float32)
    data.target_p = torch.cat([data.target_p, torch.as_tensor((rewards - lo) / (hi - lo)).float().clamp(0, 1)])
    data.target_s = torch.cat([data.target_s, torch.as_tensor(dones)])
    data.task = torch.cat([data.task, torch.as_tensor([task_map[episodes[i]["task_index"]] for i in new_ep])])
    if data.target_x is not None:
        data.target_x = torch.cat(
            [data.target_x, torch.as_tensor(np.stack([episodes[i]["states"][r] for i, r in zip(new_ep, new_row)]))]
        )
    data.episode_of, data.row_of = np.concatenate([data.episode_of, new_ep]), np.concatenate([data.row_of, new_row])
    return new_ep, dones
