"""Statistics and metrics shared by evaluation, imagination, the critic and the benchmarks: intervals and paired
tests of success rates, rank statistics, and image metrics. Pure functions of arrays.

    wilson_interval(k, n)           95% interval of a success rate
    paired_difference(a, b)         two policies on the same episodes: difference, bootstrap interval, McNemar's p
    spearman(a, b), auc(s, labels)  rank correlation; area under the ROC curve
    psnr(a, b), ssim(a, b)          image metrics of frames in [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from wam.errors import ArgumentError

# ---- success rates ---------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (fractions); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(
    a: Sequence[bool], b: Sequence[bool], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Success of `b` minus success of `a` on the same episodes (same seeds, in the same order), in points.

    Two policies run on the same seeds share each episode's layout, so their difference is measured more
    tightly than two separate Wilson intervals suggest. Returns the difference, a 95% percentile-bootstrap
    interval over episodes (fixed `seed`), the discordant counts (episodes only `a` / only `b` solved) and
    the exact two-sided McNemar p-value (a binomial test on the discordant episodes)."""
    a_arr, b_arr = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or len(a_arr) == 0:
        raise ArgumentError(
            f"paired_difference needs two equally long, non-empty lists of episode outcomes on the "
            f"same seeds; got {a_arr.shape} and {b_arr.shape}"
        )
    d = b_arr.astype(np.float64) - a_arr.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    only_a, only_b = int((a_arr & ~b_arr).sum()), int((b_arr & ~a_arr).sum())
    k, n = min(only_a, only_b), only_a + only_b
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {
        "difference": 100 * float(d.mean()),
        "ci95": [100 * float(lo), 100 * float(hi)],
        "only_a": only_a,
        "only_b": only_b,
        "n_episodes": len(d),
        "mcnemar_p": p,
    }


def task_row(
    task: str, description: str, seeds: list[int], res: dict, expert: dict | None, video_paths: list[str]
) -> dict:
    n, k = len(seeds), int(res["success"].sum())
    lo, hi = wilson_interval(k, n)
    row = {
        "task": task,
        "description": description,
        "n_episodes": n,
        "pc_success": 100.0 * k / n,
        "ci95": [100 * lo, 100 * hi],
        "avg_sum_reward": float(res["sum_reward"].mean()),
        "avg_max_reward": float(res["max_reward"].mean()),
        "avg_steps": float(res["steps"].mean()),
        "successes": res["success"].tolist(),
        "first_success": res["first_success"].tolist(),
        "sum_rewards": res["sum_reward"].tolist(),
        "max_rewards": res["max_reward"].tolist(),
        "steps": res["steps"].tolist(),
        "seeds": list(seeds),
        "video_paths": video_paths,
        "expert_pc_success": None,
        "expert_ci95": None,
    }
    if expert is not None:
        ke = int(expert["success"].sum())
        elo, ehi = wilson_interval(ke, n)
        row.update(
            expert_pc_success=100.0 * ke / n,
            expert_ci95=[100 * elo, 100 * ehi],
            expert_successes=expert["success"].tolist(),
            expert_avg_sum_reward=float(expert["sum_reward"].mean()),
            expert_avg_max_reward=float(expert["max_reward"].mean()),
        )
    return row


def aggregate(rows: list[dict]) -> dict:
    """LeRobot's aggregate keys over all episodes of all tasks, with the Wilson interval."""
    succ = [s for r in rows for s in r["successes"]]
    n, k = len(succ), int(sum(succ))
    lo, hi = wilson_interval(k, n)
    out = {
        "pc_success": 100.0 * k / max(1, n),
        "avg_sum_reward": float(np.mean([x for r in rows for x in r["sum_rewards"]])) if n else 0.0,
        "avg_max_reward": float(np.mean([x for r in rows for x in r["max_rewards"]])) if n else 0.0,
        "n_episodes": n,
        "ci95": [100 * lo, 100 * hi],
    }
    if rows and all(r.get("expert_successes") is not None for r in rows):
        es = [s for r in rows for s in r["expert_successes"]]
        elo, ehi = wilson_interval(int(sum(es)), n)
        out["expert"] = {
            "pc_success": 100.0 * sum(es) / max(1, n),
            "ci95": [100 * elo, 100 * ehi],
            "avg_sum_reward": float(np.mean([r["expert_avg_sum_reward"] for r in rows])),
            "avg_max_reward": float(np.mean([r["expert_avg_max_reward"] for r in rows])),
        }
    else:
        out["expert"] = None
    return out


def group_results(rows: list[dict], groups: dict[str, Sequence[str]]) -> dict:
    """Success per task group (e.g. MetaWorld's difficulty groups), two ways: `pc_success` over the group's
    episodes with its Wilson interval, and the `group_mean` over groups (the published MT50 convention:
    the mean of the group means), with a normal-approximation interval. Only groups with evaluated tasks
    count; `groups_evaluated` names them."""
    by_task = {r["task"]: r for r in rows}
    out: dict[str, Any] = {"groups": {}}
    variance = []
    for name, tasks in groups.items():
        present = [by_task[t] for t in tasks if t in by_task]
        if not present:
            continue
        succ = [s for r in present for s in r["successes"]]
        n, k = len(succ), int(sum(succ))
        lo, hi = wilson_interval(k, n)
        g = {
            "tasks": [r["task"] for r in present],
            "n_episodes": n,
            "pc_success": 100.0 * k / n,
            "ci95": [100 * lo, 100 * hi],
            "task_mean": float(np.mean([r["pc_success"] for r in present])),
        }
        if all(r.get("expert_successes") is not None for r in present):
            es = [s for r in present for s in r["expert_successes"]]
            g["expert_pc_success"] = 100.0 * sum(es) / n
        out["groups"][name] = g
        p = k / n
        variance.append(p * (1 - p) / n)
    if out["groups"]:
        G = len(out["groups"])
        mean = float(np.mean([g["pc_success"] for g in out["groups"].values()]))
        half = 100 * 1.96 * float(np.sqrt(sum(variance))) / G
        out["group_mean"] = {
            "pc_success": mean,
            "ci95": [max(0.0, mean - half), min(100.0, mean + half)],
            "groups_evaluated": list(out["groups"]),
        }
        if all("expert_pc_success" in g for g in out["groups"].values()):
            out["group_mean"]["expert_pc_success"] = float(
                np.mean([g["expert_pc_success"] for g in out["groups"].values()])
            )
    return out


# ---- ranks -------------------------------------------------------------------------------------------


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (the probability that a done frame outscores a not-done one)."""
    pos, neg = labels > 0.5, labels <= 0.5
    if not pos.any() or not neg.any():
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of x, tied values sharing their mean rank."""
    x = np.asarray(x, float)
    r = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation (nan for fewer than two points or a constant side)."""
    ra, rb = average_ranks(a), average_ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1]) if len(ra) > 1 and ra.std() > 0 and rb.std() > 0 else float("nan")


# ---- image metrics ---------------------------------------------------------------------------------


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) of images (N, C, H, W)
    with values in [0, 1], averaged over channels and pixels: (N,)."""
    C = a.shape[1]
    w = _gaussian_window().to(a)[None, None].expand(C, 1, -1, -1)
    conv = lambda x: torch.nn.functional.conv2d(x, w, groups=C)  # noqa: E731  (valid region only)
    mu_a, mu_b = conv(a), conv(b)
    var_a, var_b = conv(a * a) - mu_a**2, conv(b * b) - mu_b**2
    cov = conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images (N, ...) with values in [0, 1]: (N,)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def frames_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two frame tensors with values in [0, 1], taken whole: one number."""
    mse = float((a - b).pow(2).mean())
    return 10 * np.log10(1.0 / max(mse, 1e-10))


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """Model frames in [-1, 1] -> [0, 1], quantised to 8 bits as a saved image would be."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round() / 255.0
