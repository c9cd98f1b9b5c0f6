"""Episodes as a model reads them: datasets loaded into memory, mixtures of them, splits, and their frames
encoded by the frame tokenizer into the concatenated tensors that training, evaluation, the critic and the
benchmarks gather windows from.

    specs = [DatasetSpec.parse("data/mt10"), DatasetSpec.parse("data/videos:0.3:no-actions")]
    mix = load_mixture(specs, image_size=64)                        # episodes, one task list, normalisers
    train_eps, val_eps = split_episodes(mix.episodes, val_fraction=0.05)
    data = episodes_to_tensors(train_eps, tokenizer)                # EpisodeTensors (latents, actions, ...)
    batch = data.gather(*data.sample(32, generator), cfg)           # a batch of windows

`wam.data` reads and writes the files; this module sits above the tokenizer and below training.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wam.config import ModelConfig
from wam.errors import ArgumentError, DatasetError
from wam.tokenizer import encode_frames

# ---- episodes in latent space --------------------------------------------------------------------


@dataclass
class EpisodeTensors:
    """Every episode of a dataset as concatenated tensors, ready for window gathering.

    latents (N, c, h, w) encoded frames; actions (N, A) and states (N, S) normalised; episode e owns
    rows starts[e] .. starts[e] + lengths[e] - 1; task (E,) task index per episode; has_actions (E,); imitate
    (E,) (False: the episode's actions condition the world model but are never a policy target).
    Row i holds the observation at step i and the action taken there (LeRobot's row convention).
    """

    latents: torch.Tensor
    actions: torch.Tensor
    states: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    task: torch.Tensor
    has_actions: torch.Tensor
    imitate: torch.Tensor | None = None  # (E,) bool; None: every episode with actions is imitated
    action_dim_mask: torch.Tensor | None = None  # (E, A) for datasets with padded action dimensions
    source: torch.Tensor | None = None  # (E,) dataset of each episode in a mixture (episodes grouped by it)
    weights: torch.Tensor | None = None  # (n_datasets,) sampling probabilities; None: uniform over windows

    @property
    def num_episodes(self) -> int:
        return len(self.starts)

    @property
    def num_windows(self) -> int:
        return int(self.lengths.sum())

    def window_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(episode, step) of every window: one per row."""
        ep = torch.repeat_interleave(torch.arange(self.num_episodes), self.lengths)
        step = torch.cat([torch.arange(int(n)) for n in self.lengths])
        return ep, step

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(episode, step) of n windows drawn with replacement: uniformly over all windows, or for a
        weighted mixture a dataset by its weight, then uniformly over that dataset's windows."""
        ep_of, step_of = self._windows
        if self.weights is None:
            idx = torch.randint(0, len(ep_of), (n,), generator=generator)
        else:
            counts, offsets = self._dataset_windows
            d = torch.multinomial(self.weights, n, replacement=True, generator=generator)
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            idx = offsets[d] + (u * counts[d]).long().clamp(max=counts[d] - 1)
        return ep_of[idx], step_of[idx]

    @functools.cached_property
    def _windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.window_index()

    @functools.cached_property
    def _dataset_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows per dataset of a mixture, and where each dataset's block of windows starts."""
        counts = torch.zeros(len(self.weights), dtype=torch.long).index_add_(0, self.source, self.lengths)
        return counts, torch.cumsum(counts, 0) - counts

    def gather(self, ep: torch.Tensor, step: torch.Tensor, cfg: ModelConfig) -> dict:
        """Batch of windows at (episode, step): history frames step-n_obs+1..step, future frames every
        future_stride steps after it, actions step..step+H-1; steps outside the episode repeat the
        nearest valid row and are marked in *_is_pad."""
        start, length = self.starts[ep][:, None], self.lengths[ep][:, None]  # (B, 1)
        s = step[:, None]

        def rows(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            k = s + offsets[None, :]  # (B, K) step indices
            pad = (k < 0) | (k >= length)
            return start + k.clamp(min=0).minimum(length - 1), pad

        hist = torch.arange(-cfg.n_obs_steps + 1, 1)
        fut = torch.arange(1, cfg.future_frames + 1) * cfg.future_stride
        f_rows, f_pad = rows(torch.cat([hist, fut]))
        a_rows, a_pad = rows(torch.arange(cfg.action_horizon))
        s_rows, _ = rows(hist)
        batch = {
            "latents": self.latents[f_rows],  # (B, n_obs + F, c, h, w)
            "frame_is_pad": f_pad,
            "actions": self.actions[a_rows],  # (B, H, A)
            "action_is_pad": a_pad,
            "state": self.states[s_rows],  # (B, n_obs, S)
            "task": self.task[ep],
            "has_actions": self.has_actions[ep],
        }
        if self.imitate is not None:
            batch["imitate"] = self.imitate[ep]
        if self.action_dim_mask is not None:
            batch["action_dim_mask"] = self.action_dim_mask[ep]
        return batch


def shift_latents(latents: torch.Tensor, max_shift: int, n_cameras: int, generator: torch.Generator) -> torch.Tensor:
    """Random-shift augmentation in latent space (DrQ's image shift, applied to the tokenizer's grid): every example
    of a batch (B, T, c, h, w) moves by its own random offset of up to `max_shift` cells along each axis, the same
    for all its frames, history and future, so the frames still follow one another; the edge cells are repeated
    into the gap. Cameras placed side by side (`n_cameras` blocks along w) are shifted each within its own block."""
    B, T, c, h, w = latents.shape
    wc = w // n_cameras
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator)
    x = latents.reshape(B, T * c, h, n_cameras, wc).permute(0, 3, 1, 2, 4).reshape(B * n_cameras, T * c, h, wc)
    x = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")  # (B * n_cameras, T * c, h + 2m, wc + 2m)
    rows = (dy.repeat_interleave(n_cameras)[:, None] + torch.arange(h))[:, None, :, None]  # (B * n_cam, 1, h, 1)
    cols = (dx.repeat_interleave(n_cameras)[:, None] + torch.arange(wc))[:, None, None, :]  # (B * n_cam, 1, 1, wc)
    x = x.gather(2, rows.expand(-1, T * c, -1, wc + 2 * max_shift)).gather(3, cols.expand(-1, T * c, h, -1))
    return x.reshape(B, n_cameras, T * c, h, wc).permute(0, 2, 3, 1, 4).reshape(B, T, c, h, w)


def _encode_episodes(episodes: list[dict], tokenizer, progress: bool = False) -> torch.Tensor:
    """Every episode's frames encoded, concatenated in episode order; one episode's frames in memory at a time
    when they are read lazily."""
    latents = []
    if progress:  # decoding and encoding every frame of a large dataset takes minutes
        from tqdm.auto import tqdm

        episodes = tqdm(episodes, desc="encoding frames", unit="ep", dynamic_ncols=True)
    for e in episodes:
        f = e["frames"]() if callable(e["frames"]) else e["frames"]
        if len(e["actions"]) != len(f) or len(e["states"]) != len(f):
            raise ArgumentError("every episode needs as many actions and states as frames (one row per step)")
        latents.append(encode_frames(tokenizer, f))
    return torch.cat(latents)


def episodes_to_tensors(
    episodes: list[dict],
    tokenizer,
    action_dim: int | None = None,
    state_dim: int | None = None,
    weights: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
    progress: bool = False,
) -> EpisodeTensors:
    """Encode in-memory episodes into EpisodeTensors (`latents`: their frames already encoded, concatenated in
    episode order, e.g. kept from an earlier pass; the frames are then never read). `progress` shows the
    encoding's progress.

    Each episode is a dict: `frames` (L, H, W, 3) uint8 (cameras side by side; or a function that decodes them,
    `load_episodes(lazy_frames=True)`), `actions` (L, A) and
    `states` (L, S) already normalised, `task_index` int, optional `has_actions` bool (default True) and
    `source` int (its dataset in a mixture sampled with `weights`; episodes must come grouped by it).
    Actions narrower than `action_dim` are zero-padded and their padding masked out of the loss; states
    narrower than `state_dim` are zero-padded (another robot's proprioception is simply shorter).
    """
    if not episodes:
        raise ArgumentError("no episodes to train on")
    A = action_dim or max(e["actions"].shape[1] for e in episodes)
    S = state_dim if state_dim is not None else max(e["states"].shape[1] for e in episodes)
    source = torch.tensor([int(e.get("source", 0)) for e in episodes])
    if weights is not None and bool((source[1:] < source[:-1]).any()):
        raise ArgumentError("episodes of a weighted mixture must be grouped by dataset (sorted by 'source')")
    if latents is None:
        latents = _encode_episodes(episodes, tokenizer, progress)
    lengths = torch.tensor([len(e["actions"]) for e in episodes])
    if any(len(e["states"]) != len(e["actions"]) for e in episodes):
        raise ArgumentError("every episode needs as many actions and states as frames (one row per step)")
    if len(latents) != int(lengths.sum()):
        raise ArgumentError(f"{len(latents)} encoded frames given for episodes of {int(lengths.sum())} steps")
    acts = torch.zeros(int(lengths.sum()), A)
    dim_mask = torch.zeros(len(episodes), A, dtype=torch.bool)
    row = 0
    for i, e in enumerate(episodes):
        a = torch.as_tensor(np.asarray(e["actions"]), dtype=torch.float32)
        acts[row : row + len(a), : a.shape[1]] = a
        dim_mask[i, : a.shape[1]] = True
        row += len(a)
    states = torch.zeros(int(lengths.sum()), S)
    row = 0
    for e in episodes:
        st = torch.as_tensor(np.asarray(e["states"]), dtype=torch.float32)
        states[row : row + len(st), : st.shape[1]] = st
        row += len(st)
    return EpisodeTensors(
        latents=latents,
        actions=acts,
        states=states,
        starts=torch.cumsum(lengths, 0) - lengths,
        lengths=lengths,
        task=torch.tensor([int(e["task_index"]) for e in episodes]),
        has_actions=torch.tensor([bool(e.get("has_actions", True)) for e in episodes]),
        imitate=(
            None
            if all(e.get("imitate", True) for e in episodes)
            else torch.tensor([bool(e.get("imitate", True)) for e in episodes])
        ),
        action_dim_mask=None if bool(dim_mask.all()) else dim_mask,
        source=source,
        weights=weights,
    )


# ---- datasets in memory: loading, mixtures, splits ----------------------------------------------


@dataclass
class LoadedEpisodes:
    """A dataset's episodes in memory, normalised, with what a checkpoint must record about them."""

    episodes: list[dict]  # {"frames", "actions", "states", "task_index", "episode_index"} (+ "rewards",
    # "successes" (L,) when the dataset has next.reward / next.success)
    normalizer: Any  # wam.data.Normalizer
    cameras: list[str]
    tasks: list[str]
    fps: int


def require_valid_dataset(dataset: str | Path) -> None:
    """Run `wam dataset check`'s checks (wam.data.check, first frame of each video decoded) and raise DatasetError
    with its sentences when it finds a problem: nothing trains on, or is evaluated against, a dataset the check
    rejects. Warnings pass."""
    from wam.data.check import check_dataset

    report = check_dataset(dataset)
    if not report.ok:
        problems = "\n".join(f"problem: {p}" for p in report.problems)
        raise DatasetError(
            f"{dataset} fails `wam dataset check` ({len(report.problems)} problem(s)):\n{problems}\n"
            f"Repair the dataset (or collect it again) until `wam dataset check {dataset}` reports no "
            f"problem"
        )


def load_episodes(
    dataset: str | Path,
    *,
    image_size: int,
    cameras: list[str] | None = None,
    normalizer=None,
    episodes: list[int] | None = None,
    progress: bool = False,
    actions: bool = True,
    check: bool = True,
    tasks: tuple[str, ...] | None = None,
    per_task: tuple[int | None, int | None] | None = None,
    lazy_frames: bool = False,
) -> LoadedEpisodes:
    """Read every episode of a LeRobot dataset: frames resized to image_size (cameras side by side),
    actions and states normalised with the dataset's statistics (or a given Normalizer).

    actions=False reads the episodes as action-free videos (the dataset need not have actions): their
    `actions` are (L, 0) and they train the video stream only. check=True first refuses (DatasetError) a dataset
    that `wam dataset check` rejects, with the same sentences (`require_valid_dataset`). tasks: only the
    episodes of these tasks (`select_tasks`). per_task=(start, stop): of each task's episodes, in dataset order,
    only those at positions start <= i < stop (a Python slice; None for an open end). lazy_frames=True: each
    episode's "frames" is a function that decodes them when called (for passes that encode one episode at a
    time)."""
    ds, cams, norm = _open_dataset(dataset, cameras=cameras, normalizer=normalizer, actions=actions, check=check)
    positions = _positions(ds, dataset, episodes=episodes, tasks=tasks, per_task=per_task)
    it = positions
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(positions, desc=f"loading {Path(dataset).name}", unit="ep", dynamic_ncols=True)
    out = [_episode(ds, pos, cams, norm, image_size=image_size, actions=actions, lazy_frames=lazy_frames) for pos in it]
    return LoadedEpisodes(out, norm, cams, list(ds.tasks), int(ds.fps))


def _open_dataset(dataset, *, cameras, normalizer, actions: bool, check: bool):
    """`load_episodes`' dataset, its cameras and its normaliser, each refused in the user's words when unusable."""
    from wam.data import LeRobotDataset, Normalizer
    from wam.data.windows import resolve_cameras

    if check:
        require_valid_dataset(dataset)
    try:
        ds = LeRobotDataset(dataset)
    except (DatasetError, FileNotFoundError) as e:
        raise DatasetError(
            f"cannot read the dataset {dataset}: {e}. Run `wam dataset check {dataset}` for details"
        ) from e
    try:
        cams = resolve_cameras(ds, cameras)
    except ValueError as e:
        raise ArgumentError(str(e)) from e
    if actions and "action" not in ds.data:
        raise DatasetError(
            f"{dataset} has no 'action' feature; train on it as action-free videos (the dataset "
            f"spec `{dataset}:no-actions`)"
        )
    try:
        norm = normalizer or Normalizer(ds.stats, require_action=actions)
    except ValueError as e:
        raise DatasetError(f"{dataset}: {e}") from e
    return ds, cams, norm


def _positions(ds, dataset, *, episodes, tasks, per_task) -> list[int] | range:
    """The positions (in the dataset's episode order) of the episodes `load_episodes` reads: `episodes` (all by
    default), then only those of `tasks`, then `per_task`'s slice of each task's."""
    positions = range(ds.num_episodes) if episodes is None else [ds.position_of(i) for i in episodes]
    if tasks is not None:  # only the episodes of these tasks
        keep = set(select_tasks(list(ds.tasks), tasks, str(dataset)))
        if "task_index" not in ds.data:
            raise DatasetError(f"{dataset} has no task_index column, so its episodes cannot be chosen by task")
        positions = [p for p in positions if int(ds.data["task_index"][ds.episodes[p].start]) in keep]
    if per_task is not None:  # the same slice of every task's episodes
        by_task: dict[int, list[int]] = {}
        for p in positions:
            t = int(ds.data["task_index"][ds.episodes[p].start]) if "task_index" in ds.data else 0
            by_task.setdefault(t, []).append(p)
        chosen = {p for ps in by_task.values() for p in ps[slice(*per_task)]}
        positions = [p for p in positions if p in chosen]
        if not positions:
            raise ArgumentError(
                f"{dataset}: no episode at per-task positions {format_per_task(per_task)} (its tasks "
                f"have {sorted({len(ps) for ps in by_task.values()})} episodes each)"
            )
    return positions


def _episode(ds, pos: int, cams: list[str], norm, *, image_size: int, actions: bool, lazy_frames: bool) -> dict:
    """One episode as `load_episodes` returns it (its docstring): frames (or a function that decodes them),
    normalised actions and states, its task and index, and its outcomes where the dataset has them."""
    from wam.data.windows import resize_frames

    ep = ds.episodes[pos]
    rows = slice(ep.start, ep.stop)
    state = ds.data.get("observation.state")

    def read() -> np.ndarray:
        views = [resize_frames(ds.episode_frames(pos, k), (image_size, image_size)) for k in cams]  # (L, 3, h, w)
        return np.ascontiguousarray(np.concatenate(views, axis=-1).transpose(0, 2, 3, 1))  # (L, h, w * n_cams, 3)

    acts = (
        np.asarray(norm.normalize_action(ds.data["action"][rows].astype(np.float32)), np.float32)
        if actions
        else np.zeros((ep.length, 0), np.float32)
    )
    states = (
        np.zeros((ep.length, 0), np.float32)
        if state is None or norm.state_dim == 0
        else np.asarray(norm.normalize_state(state[rows].astype(np.float32)), np.float32)
    )
    item = {
        "frames": read if lazy_frames else read(),
        "actions": acts,
        "states": states,
        "task_index": int(ds.data["task_index"][ep.start]) if "task_index" in ds.data else 0,
        "episode_index": ep.episode_index,
        "has_actions": actions,
    }
    for key, name in (("next.reward", "rewards"), ("next.success", "successes")):  # outcomes (wam.critic)
        if key in ds.data:
            item[name] = np.asarray(ds.data[key][rows], np.float32).reshape(ep.length)
    return item


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a training mixture: `PATH[:WEIGHT][:no-actions|:world-only][:tasks=A,B,...][:per-task=A..B]`
    on the command line."""

    path: str
    weight: float | None = None  # relative share of the batches; None: by its number of windows (or 1.0
    # when another dataset of the mixture has a weight)
    actions: bool = True  # False: action-free videos, which train the video stream only
    tasks: tuple[str, ...] | None = None  # only these tasks' episodes (see `select_tasks`); None: all
    per_task: tuple[int | None, int | None] | None = None  # (start, stop): only each task's episodes at these
    # positions (`per-task=..10`: the first ten of every task; `per-task=10..`: all but the first ten)
    imitate: bool = True  # False ("world-only"): its actions are given to the world model (forward dynamics)
    # but never learned as a policy's, for episodes that are not demonstrations (perturbed, failed, play)

    @classmethod
    def parse(cls, spec: str | Path | DatasetSpec) -> DatasetSpec:
        """'data/mt10', 'data/videos:0.5:no-actions', 'data/other:2', 'data/mt50:tasks=mt10:per-task=..10' ->
        DatasetSpec."""
        if isinstance(spec, DatasetSpec):
            return spec
        parts = str(spec).split(":")
        weight, actions, imitate, tasks, per_task = None, True, True, None, None
        while len(parts) > 1:
            opt = parts[-1].strip()
            if opt in ("no-actions", "noactions", "videos"):
                actions = False
            elif opt in ("world-only", "world"):
                imitate = False
            elif opt.startswith("tasks="):
                tasks = tuple(t.strip() for t in opt.removeprefix("tasks=").split(",") if t.strip())
                if not tasks:
                    raise ArgumentError(f"empty task list in {spec!r}; write e.g. {parts[0]}:tasks=0,3 or :tasks=mt10")
            elif opt.startswith("per-task="):
                per_task = parse_per_task(opt.removeprefix("per-task="), str(spec))
            else:
                try:
                    weight = float(opt)
                except ValueError:
                    break  # part of the path
                if not weight > 0:
                    raise ArgumentError(f"dataset weight must be > 0, got {opt!r} in {spec!r}")
            parts.pop()
        if not actions and not imitate:
            raise ArgumentError(
                f"{spec!r} is both no-actions and world-only; world-only episodes need their actions "
                f"(they condition the world model): keep one of the two"
            )
        return cls(":".join(parts), weight, actions, imitate=imitate, tasks=tasks, per_task=per_task)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSpec:
        """The inverse of `to_dict` (extra keys, such as a run's per-dataset statistics, are ignored)."""
        tasks, per_task = d.get("task_filter"), d.get("per_task")
        return cls(
            d["path"],
            d.get("weight"),
            d.get("actions", True),
            tasks=None if tasks is None else tuple(tasks),
            per_task=None if per_task is None else tuple(per_task),
            imitate=d.get("imitate", True),
        )

    def to_dict(self) -> dict:
        d = {
            "path": self.path,
            "weight": self.weight,
            "actions": self.actions,
            "task_filter": None if self.tasks is None else list(self.tasks),
        }
        if not self.imitate:
            d["imitate"] = False
        if self.per_task is not None:
            d["per_task"] = list(self.per_task)
        return d


def run_dataset_specs(run_info: dict) -> list[DatasetSpec]:
    """The datasets a run was trained on, from its run.json (what a resumed run reads when no dataset is given)."""
    rows = run_info.get("datasets") or run_info.get("dataset_specs") or [{"path": run_info["dataset"]}]
    return [DatasetSpec.from_dict(r) for r in rows]


def parse_per_task(text: str, spec: str = "") -> tuple[int | None, int | None]:
    """'10' or '..10' -> (None, 10): the first ten episodes of every task; '10..' -> (10, None); '5..15' -> (5, 15)."""
    try:
        a, b = text.split("..", 1) if ".." in text else ("", text)
        start, stop = (int(a) if a.strip() else None), (int(b) if b.strip() else None)
    except ValueError:
        start = stop = -1
    if (
        (start is None and stop is None)
        or any(v is not None and v < 0 for v in (start, stop))
        or (start is not None and stop is not None and stop <= start)
    ):
        raise ArgumentError(
            f"bad per-task range {text!r} in {spec!r}; write per-task=10 (the first ten episodes of "
            f"every task), per-task=10.. (all but the first ten) or per-task=5..15"
        )
    return start, stop


def format_per_task(per_task: tuple[int | None, int | None]) -> str:
    a, b = per_task
    return f"{'' if a is None else a}..{'' if b is None else b}"


def select_tasks(dataset_tasks: list[str], wanted: tuple[str, ...] | list[str], dataset: str = "") -> list[int]:
    """The dataset's task indices named by `wanted`. Each item is a task index of the dataset (as `wam dataset
    info` lists them), a task text exactly as stored, or, for datasets collected from MetaWorld, a MetaWorld
    task name or set (`reach-v3`, `reach`, `mt10`, `easy`), read as those tasks' instructions."""
    out: list[int] = []
    for item in wanted:
        if item.isdigit():
            idx = [int(item)]
            if idx[0] >= len(dataset_tasks):
                raise ArgumentError(
                    f"{dataset} has {len(dataset_tasks)} tasks (0 to {len(dataset_tasks) - 1}); there is no task {item}"
                )
        elif item in dataset_tasks:
            idx = [dataset_tasks.index(item)]
        else:
            try:
                from wam.envs.metaworld import describe, resolve_tasks

                texts = [describe(t) for t in resolve_tasks(item)]
            except (ImportError, ValueError):
                texts = []
            idx = [dataset_tasks.index(t) for t in texts if t in dataset_tasks]
            if not idx:
                raise ArgumentError(
                    f"{dataset} has no task {item!r}; name tasks by index (0 to "
                    f"{len(dataset_tasks) - 1}), by their exact text or by a MetaWorld task name "
                    f"or set (`wam dataset info {dataset}` lists them)"
                )
        out += [i for i in idx if i not in out]
    return out


@dataclass
class Mixture:
    """Several datasets' episodes in one task list, each dataset normalised with its own statistics."""

    episodes: list[dict]  # as LoadedEpisodes, plus "source" (dataset position); task_index into `tasks`
    normalizers: list  # one wam.data.Normalizer per dataset
    specs: list[DatasetSpec]
    tasks: list[str]  # the union of the datasets' tasks, in order of first appearance
    dataset_tasks: list[list[str]]  # each dataset's own tasks
    dataset_cameras: list[list[str]]  # each dataset's camera keys (robots name cameras differently)
    fps: int  # the first dataset's

    @property
    def cameras(self) -> list[str]:
        """The first dataset's camera keys."""
        return self.dataset_cameras[0]

    @property
    def action_dim(self) -> int:
        return max([n.action_dim for n, s in zip(self.normalizers, self.specs) if s.actions] or [0])

    @property
    def state_dim(self) -> int:
        return max(n.state_dim for n in self.normalizers)


def load_mixture(
    specs: list[DatasetSpec],
    *,
    image_size: int,
    cameras: list[str] | None = None,
    normalizers: list | None = None,
    progress: bool = False,
    lazy_frames: bool = False,
) -> Mixture:
    """Load every dataset of a mixture; task indices are remapped into the union of their tasks (`lazy_frames`:
    see `load_episodes`)."""
    if not specs:
        raise ArgumentError("no dataset given; pass `dataset=PATH`")
    if not any(s.actions and s.imitate for s in specs):
        raise ArgumentError(
            "no dataset is imitated (each is no-actions or world-only); at least one must have actions "
            "and be imitated (demonstrations) to train a policy"
        )
    loaded = [
        load_episodes(
            s.path,
            image_size=image_size,
            cameras=cameras,
            normalizer=None if normalizers is None else normalizers[i],
            progress=progress,
            actions=s.actions,
            tasks=s.tasks,
            per_task=s.per_task,
            lazy_frames=lazy_frames,
        )
        for i, s in enumerate(specs)
    ]
    n_cams = {len(d.cameras) for d in loaded}
    if len(n_cams) > 1:
        raise ArgumentError(
            f"the datasets have different numbers of cameras ({sorted(n_cams)}); choose the same "
            f"number with `cameras` or train on datasets with as many cameras each"
        )
    tasks: list[str] = []
    episodes = []
    for i, d in enumerate(loaded):
        for t in d.tasks:
            if t not in tasks:
                tasks.append(t)
        remap = [tasks.index(t) for t in d.tasks]
        for e in d.episodes:
            e["task_index"] = remap[e["task_index"]] if e["task_index"] < len(remap) else e["task_index"]
            e["source"] = i
            e["imitate"] = specs[i].imitate
            episodes.append(e)
    return Mixture(
        episodes,
        [d.normalizer for d in loaded],
        list(specs),
        tasks,
        [d.tasks for d in loaded],
        [d.cameras for d in loaded],
        loaded[0].fps,
    )


def mixture_weights(specs: list[DatasetSpec], windows: list[int]) -> torch.Tensor | None:
    """Sampling probability of each dataset, or None for uniform over all windows (no weight given)."""
    if len(specs) < 2 or all(s.weight is None for s in specs):
        return None
    w = torch.tensor([1.0 if s.weight is None else s.weight for s in specs], dtype=torch.float64)
    w = w * torch.tensor([n > 0 for n in windows], dtype=torch.float64)
    return w / w.sum()


def split_episodes(episodes: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """Hold out the last ceil(val_fraction * n) episodes of every task of every dataset of the mixture (none where
    a dataset has one episode of a task): each dataset keeps its own share of every task for training."""
    by_task: dict[tuple[int, int], list[dict]] = {}
    for e in episodes:
        by_task.setdefault((e.get("source", 0), e["task_index"]), []).append(e)
    train, val = [], []
    for eps in by_task.values():
        k = math.ceil(val_fraction * len(eps)) if len(eps) > 1 and val_fraction > 0 else 0
        train += eps[: len(eps) - k]
        val += eps[len(eps) - k :]
    return train, val


def map_tasks(data, known: list[str], dataset, unknown_tasks: str = "refuse") -> None:
    """Point loaded episodes' task indices into a checkpoint's task table (`known`, its task strings),
    for a dataset other than the training one. Tasks the checkpoint never saw are refused, or with
    unknown_tasks="drop" marked `no_task` (they get the model's "no task" token)."""
    if known and data.tasks != known:
        unknown = sorted({data.tasks[e["task_index"]] for e in data.episodes} - set(known))
        if unknown and unknown_tasks != "drop":
            raise ArgumentError(f"{dataset} has tasks the checkpoint was not trained on: {unknown}")
        for e in data.episodes:
            text = data.tasks[e["task_index"]]
            e["no_task"] = text not in known
            e["task_index"] = known.index(text) if text in known else 0
