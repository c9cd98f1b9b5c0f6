"""Training examples cut from episodes: history frames, future frames, an action chunk, state and task.

For the current step `t` of an episode of length L, one example holds (n = n_obs_steps,
F = future_frames, s = future_stride, H = action_horizon):

    frames   steps t-n+1 .. t (history), then t+s, t+2s, .., t+F*s (future)      (n+F, C, H, W*cams)
    action   steps t .. t+H-1                                                     (H, A)
    state    steps t-n+1 .. t                                                     (n, S)

A step outside [0, L) is padding: it copies the nearest valid step (as LeRobot does) and is marked in
`frame_is_pad`, `action_is_pad` or `state_is_pad`, so losses can leave it out. Every step of every
chosen episode is a current step `t`, so the dataset has one item per frame.

Frames are float32 in [-1, 1]; cameras sit side by side along the width in the order of `cameras`.
Actions are mapped to [-1, 1] with the dataset's min/max statistics and states standardised with its
mean/std (`normalizer`, serialisable into a checkpoint).

Batches: `collate_windows` stacks items like torch's default collate, without waking torch's thread
pool (use it as the DataLoader's `collate_fn`).

Decode cache: the first access to an episode decodes all its frames once, resizes them and keeps them
as uint8, so later epochs never touch a video decoder. Memory is
`num_frames x 3 x image_size x image_size x cameras` bytes: 12 KiB per frame at 64x64 with one camera
(100 episodes of 150 steps: 184 MB), 48 KiB at 128x128. Call `preload()` before handing the dataset to
a DataLoader with worker processes: forked workers then share the filled cache instead of each
decoding (and holding) its own copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wam.data.lerobot import LeRobotDataset
from wam.data.stats import Normalizer
from wam.errors import ArgumentError, DatasetError


def _int64(values: np.ndarray) -> np.ndarray:
    return np.array(values, dtype=np.int64).reshape(-1)


def resolve_cameras(dataset: LeRobotDataset, cameras: Sequence[str] | None) -> list[str]:
    """Full camera keys from short names (`corner4`) or full keys; all cameras when None or empty."""
    if not cameras:
        if not dataset.camera_keys:
            raise DatasetError(f"{dataset.root} has no camera features (video or image); WAM needs frames")
        return list(dataset.camera_keys)
    out = []
    for c in cameras:
        key = c if c in dataset.features else f"observation.images.{c}"
        if key not in dataset.camera_keys:
            short = [k.removeprefix("observation.images.") for k in dataset.camera_keys]
            raise ArgumentError(f"camera {c!r} is not in {dataset.root}; cameras: {', '.join(short)}")
        out.append(key)
    return out


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None, batch: int = 256) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, h, w) uint8, resized with antialiasing when `size` differs."""
    x = np.ascontiguousarray(np.asarray(frames).transpose(0, 3, 1, 2))  # (N, 3, H, W)
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    out = np.empty((x.shape[0], x.shape[1], *size), dtype=np.uint8)
    for i in range(0, len(x), batch):
        y = F.interpolate(
            torch.from_numpy(x[i : i + batch]).float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        out[i : i + batch] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def collate_windows(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch WindowDataset items: tensors stacked along a new first axis, strings into a list.

    Same result as torch's default collate, but stacks with numpy: torch.stack wakes its intra-op
    thread pool for every key of every batch, which costs tens of milliseconds per batch when the
    cores are busy (as they are while a model trains in the same process or next to it)."""
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        if isinstance(first, torch.Tensor):
            batch[key] = torch.from_numpy(np.stack([it[key].numpy() for it in items]))
        else:
            batch[key] = [it[key] for it in items]
    return batch


class WindowDataset(torch.utils.data.Dataset):
    """A torch Dataset of WAM training examples over every step of the chosen episodes (see module doc).

    Item keys: `frames` (T, C, H, W*cams) float32 in [-1, 1] with T = n_obs_steps + future_frames,
    `frame_is_pad` (T,), `action` (action_horizon, A), `action_is_pad` (action_horizon,), `state`
    (n_obs_steps, S) (S = 0 without `observation.state`), `state_is_pad` (n_obs_steps,), `task` (str),
    `task_index`, `episode_index`, `index` (int64: the dataset's global frame index of step t).
    `episodes` selects episode_index values (default all); `image_size` is an int (square) or (h, w)
    per camera, None keeps the stored size.
    """

    def __init__(
        self,
        dataset: LeRobotDataset | str | Path,
        *,
        n_obs_steps: int,
        future_frames: int,
        future_stride: int,
        action_horizon: int,
        cameras: Sequence[str] | None = None,
        image_size: int | tuple[int, int] | None = None,
        episodes: Sequence[int] | None = None,
        normalizer: Normalizer | None = None,
        action_key: str = "action",
        state_key: str = "observation.state",
    ):
        if n_obs_steps < 1 or future_frames < 0 or action_horizon < 1 or future_stride < 1:
            raise ArgumentError("need n_obs_steps >= 1, future_frames >= 0, future_stride >= 1, action_horizon >= 1")
        self.dataset = dataset if isinstance(dataset, LeRobotDataset) else LeRobotDataset(dataset)
        ds = self.dataset
        self.n_obs_steps, self.future_frames = n_obs_steps, future_frames
        self.future_stride, self.action_horizon = future_stride, action_horizon
        self.cameras = resolve_cameras(ds, cameras)
        if image_size is None:
            shapes = {ds.camera_shape(k)[:2] for k in self.cameras}
            if len(shapes) > 1:
                raise ArgumentError(f"cameras have different sizes {sorted(shapes)}; pass image_size to resize them")
            self.image_size: tuple[int, int] = tuple(shapes.pop())  # type: ignore[assignment]
            self._resize: tuple[int, int] | None = None
        else:
            self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self._resize = self.image_size
        if episodes is None:
            self.positions = list(range(ds.num_episodes))
        else:
            self.positions = [ds.position_of(int(e)) for e in episodes]
            if not self.positions:
                raise ArgumentError("no episodes chosen")
        self.normalizer = normalizer
        if self.normalizer is None and action_key in ds.data:
            self.normalizer = Normalizer(ds.stats, action_key=action_key, state_key=state_key)

        # one entry per (episode, step); rows index the dataset's in-memory columns
        lengths = np.array([ds.episodes[p].length for p in self.positions])
        self._item_ep = np.repeat(np.arange(len(self.positions)), lengths)
        self._item_t = np.concatenate([np.arange(n) for n in lengths])
        n_rows = len(ds.data["episode_index"])
        self._actions = self._normalised(ds.data.get(action_key), n_rows, self.normalizer, "action")
        self._states = self._normalised(ds.data.get(state_key), n_rows, self.normalizer, "state")
        self._task_index = _int64(ds.data.get("task_index", np.zeros(n_rows)))
        self._episode_index = _int64(ds.data["episode_index"])
        self._index = _int64(ds.data.get("index", np.arange(n_rows)))
        self._cache: dict[int, np.ndarray] = {}
        self.decodes = 0  # episodes decoded so far (each at most once per process)

    @staticmethod
    def _normalised(values: np.ndarray | None, n_rows: int, norm: Normalizer | None, kind: str) -> np.ndarray:
        if values is None:
            return np.zeros((n_rows, 0), np.float32)
        v = np.array(values, np.float32).reshape(n_rows, -1)
        if norm is not None:
            v = norm.normalize_action(v) if kind == "action" else norm.normalize_state(v)
        return np.ascontiguousarray(v, dtype=np.float32)

    # -- decode cache

    def episode_frames(self, k: int) -> np.ndarray:
        """All frames of the k-th chosen episode, (L, 3, h, w * cams) uint8, decoded once and cached."""
        frames = self._cache.get(k)
        if frames is None:
            pos = self.positions[k]
            per_cam = [resize_frames(self.dataset.episode_frames(pos, key), self._resize) for key in self.cameras]
            frames = per_cam[0] if len(per_cam) == 1 else np.concatenate(per_cam, axis=-1)
            self._cache[k] = frames
            self.decodes += 1
        return frames

    def preload(self, progress: bool = True) -> WindowDataset:
        """Decode every chosen episode now (see the module docstring on DataLoader workers)."""
        from tqdm.auto import tqdm

        for k in tqdm(range(len(self.positions)), desc="decoding episodes", unit="ep", disable=not progress):
            self.episode_frames(k)
        return self

    @property
    def cache_nbytes(self) -> int:
        return sum(a.nbytes for a in self._cache.values())

    def estimated_cache_nbytes(self) -> int:
        """Bytes the cache holds once every chosen episode is decoded."""
        h, w = self.image_size
        return len(self) * 3 * h * w * len(self.cameras)

    # -- items

    def __len__(self) -> int:
        return len(self._item_t)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, t = int(self._item_ep[i]), int(self._item_t[i])
        ep = self.dataset.episodes[self.positions[k]]
        n_steps = ep.length
        hist = np.arange(t - self.n_obs_steps + 1, t + 1)
        fut = t + self.future_stride * np.arange(1, self.future_frames + 1)
        steps = np.concatenate([hist, fut])
        frame_pad = (steps < 0) | (steps >= n_steps)
        # numpy, not torch, for these small gathers: no intra-op thread pool to wake for each item
        frames = self.episode_frames(k)[np.clip(steps, 0, n_steps - 1)].astype(np.float32)
        frames *= 1.0 / 127.5
        frames -= 1.0
        act_steps = np.arange(t, t + self.action_horizon)
        act_pad = act_steps >= n_steps
        act_rows = ep.start + np.clip(act_steps, 0, n_steps - 1)
        state_rows = ep.start + np.clip(hist, 0, n_steps - 1)
        row = ep.start + t
        ti = int(self._task_index[row])
        return {
            "frames": torch.from_numpy(frames),
            "frame_is_pad": torch.from_numpy(frame_pad),
            "action": torch.from_numpy(self._actions[act_rows]),
            "action_is_pad": torch.from_numpy(act_pad),
            "state": torch.from_numpy(self._states[state_rows]),
            "state_is_pad": torch.from_numpy(hist < 0),
            "task": self.dataset.tasks[ti] if 0 <= ti < len(self.dataset.tasks) else "",
            "task_index": torch.tensor(ti, dtype=torch.int64),
            "episode_index": torch.tensor(int(self._episode_index[row]), dtype=torch.int64),
            "index": torch.tensor(int(self._index[row]), dtype=torch.int64),
        }

    def __repr__(self) -> str:
        return (
            f"WindowDataset({len(self)} windows from {len(self.positions)} episodes of {self.dataset.root}, "
            f"cameras={self.cameras}, image_size={self.image_size}, n_obs_steps={self.n_obs_steps}, "
            f"future_frames={self.future_frames}, future_stride={self.future_stride}, "
            f"action_horizon={self.action_horizon})"
        )
