"""Feature statistics in LeRobot's layout, and the normaliser built from them.

`meta/stats.json` maps each feature to `min`, `max`, `mean`, `std`, `count` and the quantiles `q01`,
`q10`, `q50`, `q90`, `q99`. Vectors have one value per dimension; camera features have one value per
channel, shaped (3, 1, 1), on pixels scaled to [0, 1] (LeRobot samples at most ~100 frames per
episode for them). Dataset statistics are aggregated from per-episode ones: min/max/count exactly,
mean/std exactly by the parallel-variance formula, quantiles as the count-weighted mean of the
episodes' quantiles (an approximation, the one LeRobot makes too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wam.errors import ArgumentError, DatasetError

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
EPS = 1e-8  # keeps constant dimensions finite under min/max normalisation
STATE_STD_MIN = 1e-2  # smallest standard deviation a state dimension is divided by


def numeric_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over the first axis of (N, ...) values (booleans count as 0/1)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    x = x.astype(np.float64)
    out = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([len(x)]),
    }
    q = np.quantile(x, list(QUANTILES.values()), axis=0)
    for i, name in enumerate(QUANTILES):
        out[name] = q[i]
    return out


def sample_indices(n: int, max_samples: int = 100) -> np.ndarray:
    """Evenly spaced frame indices, at most `max_samples` of them."""
    k = min(n, max_samples)
    return np.round(np.linspace(0, n - 1, k)).astype(int)


def image_stats(frames: np.ndarray, max_samples: int = 100) -> dict[str, np.ndarray]:
    """Per-channel statistics of (N, H, W, 3) uint8 frames in [0, 1], each shaped (3, 1, 1).

    Uses at most `max_samples` evenly spaced frames, each strided down to about 150 px on its longer
    side, as LeRobot does: image statistics only need to be representative.
    """
    idx = sample_indices(len(frames), max_samples)
    imgs = np.asarray(frames)[idx]
    step = max(1, max(imgs.shape[1], imgs.shape[2]) // 150) if max(imgs.shape[1:3]) >= 300 else 1
    imgs = imgs[:, ::step, ::step]
    pix = imgs.reshape(-1, imgs.shape[-1]).astype(np.float64) / 255.0  # (P, C)
    out = numeric_stats(pix)
    out = {k: (v if k == "count" else v.reshape(-1, 1, 1)) for k, v in out.items()}
    out["count"] = np.array([len(idx)])
    return out


def aggregate(stats_list: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine the statistics of disjoint parts (e.g. episodes) of one feature."""
    stats_list = [s for s in stats_list if s]
    if not stats_list:
        return {}
    counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in stats_list])
    total = counts.sum()
    means = np.stack([np.asarray(s["mean"], np.float64) for s in stats_list])
    stds = np.stack([np.asarray(s["std"], np.float64) for s in stats_list])
    w = (counts / total).reshape((-1,) + (1,) * (means.ndim - 1))
    mean = (w * means).sum(axis=0)
    var = (w * (stds**2 + (means - mean) ** 2)).sum(axis=0)
    out = {
        "min": np.min(np.stack([np.asarray(s["min"], np.float64) for s in stats_list]), axis=0),
        "max": np.max(np.stack([np.asarray(s["max"], np.float64) for s in stats_list]), axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(var, 0.0)),
        "count": np.array([int(total)]),
    }
    for q in QUANTILES:
        if all(q in s for s in stats_list):
            out[q] = (w * np.stack([np.asarray(s[q], np.float64) for s in stats_list])).sum(axis=0)
    return out


def aggregate_features(per_episode: list[dict[str, dict]]) -> dict[str, dict[str, np.ndarray]]:
    """Aggregate {feature: stats} dicts, one per episode, into dataset statistics."""
    keys: list[str] = []
    for s in per_episode:
        keys += [k for k in s if k not in keys]
    return {k: aggregate([s[k] for s in per_episode if k in s]) for k in keys}


def to_json(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Plain lists and numbers, as written to meta/stats.json."""
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def from_json(d: dict[str, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    return {k: {s: np.asarray(v, dtype=np.float64) for s, v in st.items()} for k, st in d.items()}


class Normalizer:
    """Maps actions to [-1, 1] with min/max statistics and states to zero mean, unit variance.

    A policy predicts normalised actions; `unnormalize_action` maps them back to the environment's
    units. Built from a dataset's statistics; `to_dict`/`from_dict` give the plain JSON form that a
    checkpoint stores as `stats.json`. Works on numpy arrays and torch tensors (last axis = features).
    """

    def __init__(
        self,
        stats: dict[str, dict[str, Any]],
        action_key: str = "action",
        state_key: str = "observation.state",
        require_action: bool = True,
    ):
        self.action_key, self.state_key = action_key, state_key
        self.stats = from_json(to_json(stats))  # private float64 copies
        if action_key in self.stats and {"min", "max"} <= set(self.stats[action_key]):
            a = self.stats[action_key]
            self.action_min = a["min"].reshape(-1)
            self.action_range = np.maximum(a["max"].reshape(-1) - self.action_min, 0.0) + EPS
        elif require_action:
            raise DatasetError(f"statistics have no min/max for {action_key!r}; found features: {sorted(self.stats)}")
        else:  # action-free videos: only the state is normalised
            self.action_min = self.action_range = np.zeros(0)
        s = self.stats.get(state_key)
        if s is not None and {"mean", "std"} <= set(s):
            # floored: a state dimension that hardly varies in the data (an absent object's pose) must not
            # turn a tiny deviation at test time into hundreds of standard deviations
            self.state_mean, self.state_std = s["mean"].reshape(-1), np.maximum(s["std"].reshape(-1), STATE_STD_MIN)
        else:
            self.state_mean = self.state_std = None

    @property
    def action_dim(self) -> int:
        return len(self.action_min)

    @property
    def state_dim(self) -> int:
        return 0 if self.state_mean is None else len(self.state_mean)

    @staticmethod
    def _like(v: np.ndarray, x):
        if hasattr(x, "new_tensor"):  # torch tensor: same device and dtype
            return x.new_tensor(v.astype(np.float32))
        return v.astype(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float32)

    def normalize_action(self, x):
        return (x - self._like(self.action_min, x)) / self._like(self.action_range, x) * 2 - 1

    def unnormalize_action(self, y):
        return (y + 1) / 2 * self._like(self.action_range, y) + self._like(self.action_min, y)

    def normalize_state(self, x):
        if self.state_mean is None:
            return x
        return (x - self._like(self.state_mean, x)) / self._like(self.state_std, x)

    def unnormalize_state(self, y):
        if self.state_mean is None:
            return y
        return y * self._like(self.state_std, y) + self._like(self.state_mean, y)

    def to_dict(self) -> dict:
        keep = {}
        if self.action_dim:
            keep[self.action_key] = {k: self.stats[self.action_key][k] for k in ("min", "max")}
        if self.state_mean is not None:
            keep[self.state_key] = {k: self.stats[self.state_key][k] for k in ("mean", "std")}
        return {"action_key": self.action_key, "state_key": self.state_key, "stats": to_json(keep)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        try:
            return cls(
                d["stats"],
                action_key=d.get("action_key", "action"),
                state_key=d.get("state_key", "observation.state"),
                require_action=d.get("action_key", "action") in d["stats"],
            )
        except (KeyError, TypeError) as e:
            raise ArgumentError(f"not a normaliser dict (expected keys 'stats', 'action_key', 'state_key'): {e}") from e
