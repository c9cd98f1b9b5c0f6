"""Scripted-expert demonstrations, collected in parallel and written as a LeRobot v3.0 dataset.

Runbook:

    wam collect metaworld --tasks mt10 --episodes 50 --out data/mt10       # 50 successful episodes per task
    wam collect metaworld --tasks reach-v3,push-v3 --episodes 10 --out data/two --image-size 96
    wam collect metaworld --tasks easy --episodes 20 --cameras corner4,topview --out data/easy
    wam collect metaworld --tasks mt10 --episodes 50 --state full --out data/mt10-full   # 39-D observation.state
    wam collect dot --episodes 20 --out data/dot                           # the synthetic test world
    wam collect metaworld --tasks mt50 --episodes 10 --action-noise 0.5 --keep-failed --out data/mt50-noisy

Works for any adapter in `wam.envs.ENVS` (make_env, make_expert, resolve_tasks, describe).

Each episode runs the expert from a seed derived from (--seed, task name, attempt number), so the
same command gives the same dataset, whatever the number of worker processes. An episode records
observation k and the action taken at k on row k (LeRobot's convention: the observation after the
last action is not stored); `next.reward`, `next.success` and `next.done` describe the step's outcome.
`observation.state` is the robot's own reading (MetaWorld: hand xyz + gripper, 4-D) unless `--state
full`; what only the simulator knows (object and goal poses) is `observation.environment_state`,
stored for analysis.
It ends `--after-success` steps after the first success (success does not persist in MetaWorld, so
it is counted at any step), when the environment ends it, or at the step limit.

By default only successful episodes are kept and failed attempts are retried, up to `--max-attempts`
per task (4x the requested episodes); `--keep-failed` keeps every attempt. The experts' success rate
per task (successes / attempts) is printed at the end and stored with the settings and the seed of
every kept episode in `meta/collection.json`.

Processes: `--workers` (default: one per CPU core) simulate and render; the main process encodes
video and writes files. Workers are started with `spawn` (each opens its own GL context) and results
come back in submission order, so the dataset is deterministic. A round of at most two episodes per
worker runs in the main process instead: starting processes would cost more than it saves.
"""

from __future__ import annotations

import inspect
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wam.envs import get_adapter

_ENV_CACHE: dict[tuple, Any] = {}  # per process: the last few environments, by (family, task, size, cameras)
_ENV_CACHE_SIZE = 3  # jobs come task by task, so a few suffice; each MetaWorld env holds a GL context


def episode_seed(seed: int, task: str, attempt: int) -> int:
    """A seed for one attempt, independent of which other tasks are collected alongside."""
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode()), attempt]).generate_state(1)[0] >> 1)


def run_episode(env_name: str, task: str, seed: int, *, image_size: int = 64, cameras: Sequence[str] | None = None,
                after_success: int = 10, max_steps: int | None = None, state: str | None = None,
                action_noise: float = 0.0) -> dict[str, Any]:
    """Run the scripted expert for one episode and return its arrays (see the module docstring).
    action_noise > 0 adds Gaussian noise of that standard deviation to every action the expert chooses (the
    noisy action is executed and recorded, clipped to the action space), from a generator seeded by `seed`."""
    adapter = get_adapter(env_name)
    key = (env_name, task, image_size, tuple(cameras) if cameras else None, state)
    env = _ENV_CACHE.pop(key, None)
    if env is None:
        env = adapter.make_env(task, image_size=image_size, cameras=cameras, **({"state": state} if state else {}))
    _ENV_CACHE[key] = env  # (re)inserted last: the dict's order is the order of use
    while len(_ENV_CACHE) > _ENV_CACHE_SIZE:
        _ENV_CACHE.pop(next(iter(_ENV_CACHE))).close()
    params = inspect.signature(adapter.make_expert).parameters
    expert = adapter.make_expert(task, seed=seed) if "seed" in params else adapter.make_expert(task)
    obs, _ = env.reset(seed=seed)
    limit = min(max_steps or env.max_episode_steps, env.max_episode_steps)
    cams = [f"observation.images.{c}" for c in env.camera_names]
    frames: dict[str, list] = {c: [] for c in cams}
    states, env_states, actions, rewards, successes = [], [], [], [], []
    first_success = -1
    noise = np.random.default_rng([seed, 1]) if action_noise > 0 else None
    space = getattr(env, "action_space", None)
    low, high = (space.low, space.high) if space is not None and hasattr(space, "low") else (-1.0, 1.0)
    for step in range(limit):
        action = np.asarray(expert(obs), dtype=np.float32)
        if noise is not None:  # a perturbed expert: it sees where the noise took it and corrects from there
            action = np.clip(action + noise.normal(0.0, action_noise, action.shape), low, high).astype(np.float32)
        for c in cams:
            frames[c].append(obs[c])
        states.append(obs["observation.state"])
        if "observation.environment_state" in obs:
            env_states.append(obs["observation.environment_state"])
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        successes.append(bool(info.get("success", False)))
        if successes[-1] and first_success < 0:
            first_success = step
        if terminated or truncated or (first_success >= 0 and step - first_success >= after_success):
            break
    n = len(actions)
    done = np.zeros(n, bool)
    done[-1] = True
    data = {c: np.stack(frames[c]) for c in cams}
    data.update({
        "observation.state": np.stack(states).astype(np.float32),
        **({"observation.environment_state": np.stack(env_states).astype(np.float32)} if env_states else {}),
        "action": np.stack(actions).astype(np.float32),
        "next.reward": np.asarray(rewards, np.float32),
        "next.success": np.asarray(successes, bool),
        "next.done": done,
    })
    return {
        "data": data, "task": task, "description": env.task_description, "seed": seed,
        "success": first_success >= 0, "first_success": first_success, "length": n, "fps": env.fps,
        "robot_type": getattr(env, "robot_type", env_name),
        "names": {"action": getattr(env, "action_names", None), "observation.state": getattr(env, "state_names", None),
                  "observation.environment_state": getattr(env, "environment_state_names", None)},
    }


def _job(args: tuple) -> dict[str, Any]:
    env_name, task, seed, kwargs = args
    return run_episode(env_name, task, seed, **kwargs)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def collect(env: str, *, tasks: str | Sequence[str] | None = None, episodes: int, out: str | Path,
            image_size: int = 64, cameras: Sequence[str] | None = None, workers: int | None = None,
            keep_failed: bool = False, max_attempts: int | None = None, after_success: int = 10,
            max_steps: int | None = None, seed: int = 0, codec: str = "h264", crf: int | None = None,
            state: str | None = None, action_noise: float = 0.0, overwrite: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Collect `episodes` expert episodes per task into a LeRobot v3.0 dataset at `out`.

    Returns the summary also written to meta/collection.json: per-task attempts, successes, success
    rate, kept episodes and mean length, and the settings. Raises ValueError for bad settings.
    `state` is the environment's `observation.state` setting (MetaWorld: "proprio", the default, or "full").
    `action_noise` perturbs the expert (see `run_episode`): with `keep_failed`, episodes that fail, stall or
    succeed late, the outcomes an outcome model (`wam critic`) must tell apart.
    """
    from tqdm.auto import tqdm

    from wam.data.writer import LeRobotWriter

    from wam.data.video import CODECS

    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    if not action_noise >= 0:
        raise ValueError(f"--action-noise must be >= 0 (a standard deviation in action units), got {action_noise}")
    if codec not in CODECS:
        raise ValueError(f"unknown video codec {codec!r}; choose one of: {', '.join(CODECS)}")
    adapter = get_adapter(env)
    task_list = adapter.resolve_tasks(tasks)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another --out or pass --overwrite")
    max_attempts = max_attempts or (episodes if keep_failed else 4 * episodes)
    if max_attempts < episodes:
        raise ValueError(f"--max-attempts ({max_attempts}) must be at least --episodes ({episodes})")
    workers = max(1, workers or os.cpu_count() or 1)
    modes = getattr(adapter, "STATE_MODES", None)
    if state is not None and (modes is None or state not in modes):
        raise ValueError(f"unknown --state {state!r} for {env}; " + (f"choose one of: {', '.join(modes)}" if modes
                         else f"{env} has a single kind of state, leave --state out"))
    kwargs = {"image_size": image_size, "cameras": list(cameras) if cameras else None,
              "after_success": after_success, "max_steps": max_steps, "state": state, "action_noise": action_noise}
    stats = {t: {"attempts": 0, "successes": 0, "kept": 0, "frames": 0} for t in task_list}
    kept_episodes: list[dict] = []
    next_attempt = {t: 0 for t in task_list}
    writer: LeRobotWriter | None = None
    pool = None
    t0 = time.time()
    bar = tqdm(total=len(task_list) * episodes, unit="ep", desc=f"collecting {env}", disable=not progress,
               file=sys.stderr)
    try:
        while True:
            jobs = []
            for t in task_list:  # plan a round: enough attempts to fill each task at its observed success rate
                s = stats[t]
                need = episodes - s["kept"]
                left = max_attempts - s["attempts"]
                if need <= 0 or left <= 0:
                    continue
                rate = s["successes"] / s["attempts"] if s["attempts"] and not keep_failed else 1.0
                n = min(left, need if rate >= 1.0 else math.ceil(need / max(rate, 0.1)))
                tries = range(next_attempt[t], next_attempt[t] + n)
                jobs += [(env, t, episode_seed(seed, t, a), kwargs) for a in tries]
                next_attempt[t] += n
            if not jobs:
                break
            if pool is None and workers > 1 and len(jobs) > 2 * workers:
                pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker)
            results = pool.imap(_job, jobs) if pool is not None else map(_job, jobs)
            for res in results:
                s = stats[res["task"]]
                s["attempts"] += 1
                s["successes"] += int(res["success"])
                if (res["success"] or keep_failed) and s["kept"] < episodes:
                    if writer is None:
                        writer = LeRobotWriter(out, fps=res["fps"], robot_type=res["robot_type"], codec=codec, crf=crf,
                                               overwrite=overwrite, names={k: v for k, v in res["names"].items() if v})
                    index = writer.add_episode(res["data"], task=res["description"])
                    s["kept"] += 1
                    s["frames"] += res["length"]
                    kept_episodes.append({"episode_index": index, "task": res["task"], "seed": res["seed"],
                                          "success": res["success"], "first_success": res["first_success"],
                                          "length": res["length"]})
                    bar.update(1)
                attempts = sum(v["attempts"] for v in stats.values())
                rate = sum(v["successes"] for v in stats.values()) / attempts
                bar.set_postfix(attempts=attempts, success=f"{100 * rate:.0f}%")
        bar.close()
        elapsed = time.time() - t0
        summary = _summary(env, task_list, stats, kept_episodes, elapsed, seed=seed, episodes_per_task=episodes,
                           settings={**kwargs, "keep_failed": keep_failed, "max_attempts": max_attempts,
                                     "workers": workers, "codec": codec, "crf": crf})
        if writer is None:
            raise ValueError(f"no episode was kept (the expert never succeeded in {max_attempts} attempts per task); "
                             f"use --keep-failed to keep failed episodes")
        writer.add_meta_file("collection.json", json.dumps(summary, indent=2))
        writer.finalize()
    except BaseException:
        bar.close()
        if writer is not None:
            writer.abort()
        if pool is not None:
            pool.terminate()
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        while _ENV_CACHE:  # environments run in this process (small collections): free their GL contexts
            _ENV_CACHE.popitem()[1].close()
    if progress:
        print_summary(summary, out)
    return summary


def _summary(env: str, tasks: list[str], stats: dict, kept: list[dict], elapsed: float, **extra) -> dict:
    rows = []
    for t in tasks:
        s = stats[t]
        rows.append({"task": t, "attempts": s["attempts"], "successes": s["successes"],
                     "success_rate": round(s["successes"] / s["attempts"], 4) if s["attempts"] else None,
                     "kept": s["kept"], "mean_length": round(s["frames"] / s["kept"], 1) if s["kept"] else None})
    frames = sum(s["frames"] for s in stats.values())
    attempts = sum(s["attempts"] for s in stats.values())
    return {"env": env, "tasks": rows, "episodes_kept": len(kept), "frames": frames, "attempts": attempts,
            "success_rate": round(sum(s["successes"] for s in stats.values()) / max(attempts, 1), 4),
            "seconds": round(elapsed, 2), "frames_per_second": round(frames / max(elapsed, 1e-9), 1),
            **extra, "episodes": kept}


def print_summary(summary: dict, out: Path) -> None:
    """The experts' success rate per task, as a table."""
    print(f"{'task':<30} {'attempts':>8} {'success':>8} {'rate':>6} {'kept':>5} {'mean len':>9}")
    for r in summary["tasks"]:
        rate = f"{100 * r['success_rate']:.0f}%" if r["success_rate"] is not None else "-"
        mean = f"{r['mean_length']:.1f}" if r["mean_length"] is not None else "-"
        print(f"{r['task']:<30} {r['attempts']:>8} {r['successes']:>8} {rate:>6} {r['kept']:>5} {mean:>9}")
    print(f"expert success rate: {100 * summary['success_rate']:.1f}% over {summary['attempts']} attempts")
    missing = [r for r in summary["tasks"] if r["kept"] < summary.get("episodes_per_task", 0)]
    for r in missing:
        print(f"warning: only {r['kept']} episodes kept for {r['task']}")
    print(f"wrote {out}: {summary['episodes_kept']} episodes, {summary['frames']} frames in {summary['seconds']:.1f}s "
          f"({summary['frames_per_second']:.0f} frames/s)")
