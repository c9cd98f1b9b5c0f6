"""Evaluation, apart from training: closed-loop rollouts in simulation and world-model metrics offline.

Runbook:
    # closed loop: 20 episodes per MT10 task in policy mode, the scripted expert on the same seeds beside it
    wam eval --checkpoint runs/mt10/checkpoint --env metaworld --tasks mt10 --episodes 20 --mode policy
    # the same, plus frame PSNR/SSIM of forward and video mode on the run's held-out episodes
    wam eval --checkpoint runs/mt10/checkpoint --tasks mt10 --episodes 20 --world-model --dataset data/mt10

`rollout(env, policy, seeds)` runs one episode per seed and returns documented arrays; `evaluate(...)`
runs it for every task, writes `eval_info.json` (LeRobot's aggregate keys `pc_success`,
`avg_sum_reward`, `avg_max_reward`, per-task rows with Wilson 95% intervals, every setting that
changes the number), rollout mp4s and `report.html`. `evaluate_world_model(...)` measures forward and
video mode frame PSNR and SSIM per predicted horizon beside the copy-the-last-frame baseline and the
tokenizer's own reconstruction (the ceiling), forward mode again with each window given another window's
actions (a world model that ignores its actions scores the same there), and inverse-mode action error given
the true frames.

Success is counted at any step (MetaWorld's flag does not persist); an episode ends `after_success`
steps after its first success, at the environment's step limit, or at `max_steps`. Evaluation seeds
are derived from (seed, task, episode) apart from the ones `wam collect` uses, so demonstrations and
evaluation episodes never share a layout.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from wam.collect import EpisodeRecorder, env_metadata

EVAL_STREAM = 0x5EED  # mixes into evaluation seeds so they differ from collection seeds of the same seed

# Named evaluation seed sets. `dev`: tune, compare and choose on it as often as you like (every choice of the
# earlier references was made on it). `test`: evaluated once per shipped checkpoint, never used to choose
# anything; the headline numbers come from it. Each names the `seed` that `eval_seeds` derives episodes from.
SEED_SETS: dict[str, int] = {"dev": 0, "test": 7919}


def resolve_seed(seed: int | str) -> tuple[int, str | None]:
    """(seed, name of its seed set or None) from an integer seed or a seed set's name (`SEED_SETS`)."""
    if isinstance(seed, str) and not seed.lstrip("-").isdigit():
        if seed not in SEED_SETS:
            raise ValueError(f"unknown seed set {seed!r}; give an integer seed or one of: {', '.join(SEED_SETS)}")
        return SEED_SETS[seed], seed
    value = int(seed)
    return value, next((name for name, s in SEED_SETS.items() if s == value), None)


def eval_seeds(seed: int, task: str, n: int) -> list[int]:
    """n reproducible episode seeds for one task, disjoint in derivation from `wam collect`'s."""
    return [int(np.random.SeedSequence([seed, EVAL_STREAM, zlib.crc32(task.encode()), i]).generate_state(1)[0] >> 1)
            for i in range(n)]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (fractions); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: Sequence[bool], b: Sequence[bool], *, resamples: int = 10_000,
                      seed: int = 0) -> dict[str, Any]:
    """Success of `b` minus success of `a` on the same episodes (same seeds, in the same order), in points.

    Two policies run on the same seeds share each episode's layout, so their difference is measured more
    tightly than two separate Wilson intervals suggest. Returns the difference, a 95% percentile-bootstrap
    interval over episodes (fixed `seed`), the discordant counts (episodes only `a` / only `b` solved) and
    the exact two-sided McNemar p-value (a binomial test on the discordant episodes)."""
    a_arr, b_arr = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or len(a_arr) == 0:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists of episode outcomes on the "
                         f"same seeds; got {a_arr.shape} and {b_arr.shape}")
    d = b_arr.astype(np.float64) - a_arr.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    only_a, only_b = int((a_arr & ~b_arr).sum()), int((b_arr & ~a_arr).sum())
    k, n = min(only_a, only_b), only_a + only_b
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"difference": 100 * float(d.mean()), "ci95": [100 * float(lo), 100 * float(hi)],
            "only_a": only_a, "only_b": only_b, "n_episodes": len(d), "mcnemar_p": p}


# ---- policies besides the WAM ----------------------------------------------------------------------


class ExpertPolicy:
    """An environment's scripted expert behind the policy API (the reference beside every evaluation)."""

    def __init__(self, env_name: str, task: str):
        from wam.envs import get_adapter

        self._act = get_adapter(env_name).make_expert(task)

    def reset(self) -> None:
        pass

    def select_action(self, obs: dict) -> np.ndarray:
        return np.asarray(self._act(obs), dtype=np.float32)


class RandomPolicy:
    """Uniform random actions from an action space (a floor every trained policy must clear)."""

    def __init__(self, action_space, seed: int = 0):
        self.space, self.seed = action_space, seed
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def select_action(self, obs: dict) -> np.ndarray:
        return self.rng.uniform(self.space.low, self.space.high).astype(np.float32)


# ---- closed loop -----------------------------------------------------------------------------------


def rollout(env, policy, seeds: Sequence[int], *, max_steps: int | None = None, after_success: int = 0,
            record: int = 0, progress: Callable[[], None] | None = None,
            keep_episodes: bool = False) -> dict[str, Any]:
    """Run one episode per seed with `policy` (reset(), select_action(obs)) in a gymnasium `env`.

    Returns arrays over episodes:
        success (N,) bool          success flag seen at any step
        first_success (N,) int     step of the first success, -1 when none
        steps (N,) int             steps taken
        sum_reward (N,) float      return; max_reward (N,) float: the largest single-step reward
        seconds (N,) float         wall-clock time of each episode
        frames                     list of (L, H, W, 3) uint8 camera frames for the first `record` episodes
        episodes                   with keep_episodes: every episode's steps as a dataset episode (each camera,
                                   observation.state, observation.environment_state where the env has it,
                                   action, next.reward, next.success, next.done), as `wam collect` records them
    The observation given to the policy carries `task` = env.task_description (LeRobot's key).
    """
    limit = min(max_steps or env.max_episode_steps, env.max_episode_steps)
    camera = f"observation.images.{env.camera_names[0]}"
    n = len(seeds)
    out: dict[str, Any] = {"success": np.zeros(n, bool), "first_success": np.full(n, -1), "steps": np.zeros(n, int),
                           "sum_reward": np.zeros(n), "max_reward": np.full(n, -np.inf), "seconds": np.zeros(n),
                           "frames": [], **({"episodes": []} if keep_episodes else {})}
    for i, seed in enumerate(seeds):
        t0 = time.perf_counter()
        policy.reset()
        obs, _ = env.reset(seed=int(seed))
        frames = [obs[camera]] if i < record else None
        recorder = EpisodeRecorder() if keep_episodes else None
        for step in range(limit):
            action = policy.select_action({**obs, "task": env.task_description})
            before = obs
            obs, reward, terminated, truncated, info = env.step(action)
            if recorder is not None:
                recorder.add(before, action, reward, info.get("success", False))
            out["sum_reward"][i] += reward
            out["max_reward"][i] = max(out["max_reward"][i], reward)
            out["steps"][i] = step + 1
            if frames is not None:
                frames.append(obs[camera])
            if info.get("success", False) and out["first_success"][i] < 0:
                out["first_success"][i] = step
                out["success"][i] = True
            if terminated or truncated or (out["success"][i] and step - out["first_success"][i] >= after_success):
                break
        out["seconds"][i] = time.perf_counter() - t0
        if frames is not None:
            out["frames"].append(np.stack(frames))
        if recorder is not None:
            out["episodes"].append(recorder.data())
        if progress is not None:
            progress()
    return out


class _SlotPolicies:
    """The policy of each of K parallel environments. A WAMPolicy keeps one PolicyState per environment and
    predicts the chunks of every environment whose queue ran out in one batched call; any other policy is
    copied once per environment (it must survive copy.deepcopy)."""

    def __init__(self, policy, k: int):
        import copy

        self.batched = hasattr(policy, "predict_chunks") and hasattr(policy, "new_state")
        self.policy = policy
        if self.batched:
            self.states = [policy.new_state() for _ in range(k)]
            self.queues = [[] for _ in range(k)]
        else:
            try:
                self.copies = [copy.deepcopy(policy) for _ in range(k)]
            except Exception as e:  # noqa: BLE001 (e.g. a live connection)
                raise ValueError(f"{type(policy).__name__} cannot be copied for {k} parallel environments ({e}); "
                                 f"evaluate it with num_envs=1") from None

    def reset(self, j: int) -> None:
        if self.batched:
            self.states[j], self.queues[j] = self.policy.new_state(), []
        else:
            self.copies[j].reset()

    def act(self, obs: dict[int, dict]) -> dict[int, np.ndarray]:
        """One action per environment in `obs` (slot -> observation with the task)."""
        if not self.batched:
            return {j: np.asarray(self.copies[j].select_action(o)) for j, o in obs.items()}
        p, need, tasks = self.policy, [], []
        for j, o in obs.items():
            ob = p.read_observation(o)
            p.push(self.states[j], ob)
            if not self.queues[j]:
                need.append(j)
                tasks.append(ob.task)
        if need:
            for j, chunk in zip(need, p.predict_chunks([self.states[i] for i in need], tasks)):
                self.queues[j] = list(chunk[0, :p.n_action_steps])
        return {j: self.queues[j].pop(0) for j in obs}


def rollout_vector(env_fn: Callable, policy, seeds: Sequence[int], *, num_envs: int, max_steps: int | None = None,
                   after_success: int = 0, record: int = 0, progress: Callable[[], None] | None = None,
                   keep_episodes: bool = False) -> dict:
    """`rollout` over `num_envs` environments stepped in parallel processes (gymnasium's AsyncVectorEnv, its
    autoreset off: each environment is reset with the next seed when its episode ends). A WAMPolicy predicts
    the chunks of all environments in one batched call. Returns `rollout`'s arrays, in seed order; every
    episode starts from its seed and a fresh policy state, so they equal `rollout`'s (batched inference
    differs from one-at-a-time only by float rounding)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    n = len(seeds)
    k = max(1, min(num_envs, n))
    # spawn, not fork: a simulator that renders with EGL cannot be forked once the parent has a context
    # (gymnasium builds one environment in the parent to read the spaces)
    envs = gym.vector.AsyncVectorEnv([env_fn] * k, autoreset_mode=AutoresetMode.DISABLED, context="spawn")
    try:
        limit_env = envs.get_attr("max_episode_steps")[0]
        limit = min(max_steps or limit_env, limit_env)
        camera = f"observation.images.{envs.get_attr('camera_names')[0][0]}"
        task = envs.get_attr("task_description")[0]
        out: dict[str, Any] = {"success": np.zeros(n, bool), "first_success": np.full(n, -1),
                               "steps": np.zeros(n, int), "sum_reward": np.zeros(n),
                               "max_reward": np.full(n, -np.inf), "seconds": np.zeros(n), "frames": [None] * n}
        recorders = [EpisodeRecorder() for _ in range(n)] if keep_episodes else None
        slots = _SlotPolicies(policy, k)
        episode = list(range(k))  # which seed index each environment runs (-1: idle)
        started = [time.perf_counter()] * k
        nxt = k
        obs, _ = envs.reset(seed=[int(seeds[i]) for i in episode])
        current = [{key: v[j] for key, v in obs.items()} for j in range(k)]
        for j in range(k):
            slots.reset(j)
            if episode[j] < record:
                out["frames"][episode[j]] = [current[j][camera]]
        action_shape = envs.single_action_space.shape
        while any(i >= 0 for i in episode):
            live = {j: {**current[j], "task": task} for j in range(k) if episode[j] >= 0}
            acts = slots.act(live)
            batch_actions = np.zeros((k, *action_shape), dtype=np.float32)
            for j, a in acts.items():
                batch_actions[j] = a
            obs, reward, terminated, truncated, info = envs.step(batch_actions)
            success = info.get("success", np.zeros(k, bool))
            ended = np.zeros(k, bool)
            for j in live:
                i = episode[j]
                if recorders is not None:
                    recorders[i].add(current[j], acts[j], reward[j], bool(success[j]))
                current[j] = {key: v[j] for key, v in obs.items()}
                out["sum_reward"][i] += reward[j]
                out["max_reward"][i] = max(out["max_reward"][i], reward[j])
                out["steps"][i] += 1
                step = out["steps"][i] - 1
                if out["frames"][i] is not None:
                    out["frames"][i].append(current[j][camera])
                if bool(success[j]) and out["first_success"][i] < 0:
                    out["first_success"][i], out["success"][i] = step, True
                if terminated[j] or truncated[j] or step + 1 >= limit or \
                        (out["success"][i] and step - out["first_success"][i] >= after_success):
                    out["seconds"][i] = time.perf_counter() - started[j]
                    if progress is not None:
                        progress()
                    ended[j] = True  # reset even when idle: a truncated environment may not step again
                    if nxt < n:
                        episode[j], nxt = nxt, nxt + 1
                    else:
                        episode[j] = -1
            if ended.any():
                obs, _ = envs.reset(seed=[int(seeds[episode[j]]) if ended[j] and episode[j] >= 0 else None
                                          for j in range(k)], options={"reset_mask": ended})
                for j in np.flatnonzero(ended & (np.asarray(episode) >= 0)):
                    current[j] = {key: v[j] for key, v in obs.items()}
                    started[j] = time.perf_counter()
                    slots.reset(j)
                    if episode[j] < record:
                        out["frames"][episode[j]] = [current[j][camera]]
        out["frames"] = [np.stack(f) for f in out["frames"][:record] if f is not None]
        if recorders is not None:
            out["episodes"] = [r.data() for r in recorders]
        return out
    finally:
        envs.close()


def write_video(path: Path, frames: np.ndarray, fps: int = 30, scale: int = 2) -> None:
    """A browser-playable mp4 (H.264 4:2:0) of (L, H, W, 3) uint8 frames, enlarged `scale` times."""
    from wam.data.video import VideoEncoder

    frames = np.asarray(frames)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    enc = VideoEncoder(path, width=frames.shape[2], height=frames.shape[1], fps=fps, pix_fmt="yuv420p", crf=18)
    try:
        enc.write(frames)
    finally:
        enc.close()


def _task_row(task: str, description: str, seeds: list[int], res: dict, expert: dict | None,
              video_paths: list[str]) -> dict:
    n, k = len(seeds), int(res["success"].sum())
    lo, hi = wilson_interval(k, n)
    row = {"task": task, "description": description, "n_episodes": n, "pc_success": 100.0 * k / n,
           "ci95": [100 * lo, 100 * hi], "avg_sum_reward": float(res["sum_reward"].mean()),
           "avg_max_reward": float(res["max_reward"].mean()), "avg_steps": float(res["steps"].mean()),
           "successes": res["success"].tolist(), "first_success": res["first_success"].tolist(),
           "sum_rewards": res["sum_reward"].tolist(), "max_rewards": res["max_reward"].tolist(),
           "steps": res["steps"].tolist(), "seeds": list(seeds), "video_paths": video_paths,
           "expert_pc_success": None, "expert_ci95": None}
    if expert is not None:
        ke = int(expert["success"].sum())
        elo, ehi = wilson_interval(ke, n)
        row.update(expert_pc_success=100.0 * ke / n, expert_ci95=[100 * elo, 100 * ehi],
                   expert_successes=expert["success"].tolist(),
                   expert_avg_sum_reward=float(expert["sum_reward"].mean()),
                   expert_avg_max_reward=float(expert["max_reward"].mean()))
    return row


def aggregate(rows: list[dict]) -> dict:
    """LeRobot's aggregate keys over all episodes of all tasks, with the Wilson interval."""
    succ = [s for r in rows for s in r["successes"]]
    n, k = len(succ), int(sum(succ))
    lo, hi = wilson_interval(k, n)
    out = {"pc_success": 100.0 * k / max(1, n),
           "avg_sum_reward": float(np.mean([x for r in rows for x in r["sum_rewards"]])) if n else 0.0,
           "avg_max_reward": float(np.mean([x for r in rows for x in r["max_rewards"]])) if n else 0.0,
           "n_episodes": n, "ci95": [100 * lo, 100 * hi]}
    if rows and all(r.get("expert_successes") is not None for r in rows):
        es = [s for r in rows for s in r["expert_successes"]]
        elo, ehi = wilson_interval(int(sum(es)), n)
        out["expert"] = {"pc_success": 100.0 * sum(es) / max(1, n), "ci95": [100 * elo, 100 * ehi],
                         "avg_sum_reward": float(np.mean([r["expert_avg_sum_reward"] for r in rows])),
                         "avg_max_reward": float(np.mean([r["expert_avg_max_reward"] for r in rows]))}
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
        g = {"tasks": [r["task"] for r in present], "n_episodes": n, "pc_success": 100.0 * k / n,
             "ci95": [100 * lo, 100 * hi], "task_mean": float(np.mean([r["pc_success"] for r in present]))}
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
        out["group_mean"] = {"pc_success": mean, "ci95": [max(0.0, mean - half), min(100.0, mean + half)],
                             "groups_evaluated": list(out["groups"])}
        if all("expert_pc_success" in g for g in out["groups"].values()):
            out["group_mean"]["expert_pc_success"] = float(np.mean([g["expert_pc_success"]
                                                                    for g in out["groups"].values()]))
    return out


class _RolloutDataset:
    """The policy's rollouts, task by task, into a LeRobot dataset (written aside and moved into place at
    the end, so an interrupted evaluation leaves nothing half-written at `root`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists():
            raise ValueError(f"--record {self.root} already exists; choose a new path for the rollouts' dataset")
        self.writer = None
        self.episodes: list[dict] = []

    def add(self, row: dict) -> dict:
        """Writes the row's episodes; returns the row without them (what eval_info.json keeps)."""
        from wam.data.writer import LeRobotWriter

        episodes, meta = row.pop("_episodes"), row.pop("_env")
        if self.writer is None:
            self.writer = LeRobotWriter(self.root, fps=meta["fps"], robot_type=meta["robot_type"],
                                        names=meta["names"])
        for i, data in enumerate(episodes):
            index = self.writer.add_episode(data, task=row["description"])
            self.episodes.append({"episode_index": index, "task": row["task"], "seed": row["seeds"][i],
                                  "success": row["successes"][i], "first_success": row["first_success"][i],
                                  "length": len(data["action"])})
        return row

    def finalize(self, settings: dict) -> dict:
        if self.writer is None:
            raise ValueError("no episode was run; nothing to record")
        summary = {"source": "wam eval", "settings": settings, "episodes": self.episodes,
                   "pc_success": 100.0 * float(np.mean([e["success"] for e in self.episodes]))}
        self.writer.add_meta_file("rollouts.json", json.dumps(summary, indent=2))
        self.writer.finalize()
        return {"path": str(self.root), "episodes": len(self.episodes),
                "frames": int(sum(e["length"] for e in self.episodes))}

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def evaluate_task(policy, env: str, task: str, *, episodes: int, out: Path, seed: int = 0,
                  max_steps: int | None = None, after_success: int = 0, expert: bool = True,
                  videos_per_task: int = 2, image_size: int = 64, cameras: list[str] | None = None,
                  num_envs: int = 1, progress: Callable[[], None] | None = None,
                  env_options: dict | None = None, keep_episodes: bool = False,
                  protocol_options: dict | None = None) -> dict:
    """One task: the policy's rollouts and the expert's on the same seeds -> an eval_info per-task row.
    num_envs > 1 steps that many environments in parallel processes (`rollout_vector`). `env_options` go to
    the adapter's make_env (e.g. MetaWorld's state="full"); by default they follow the policy (`env_options_for`).
    keep_episodes: the row also carries the policy's episodes as dataset episodes ("_episodes") and the
    environment's metadata ("_env"), for `evaluate(record=...)`."""
    import functools

    from wam.envs import get_adapter

    adapter = get_adapter(env)
    seeds = eval_seeds(seed, task, episodes)
    opts = env_options_for(policy, env, task) if env_options is None else env_options
    opts = {**opts, **(protocol_options or {})}
    kw = dict(max_steps=max_steps, after_success=after_success, progress=progress)
    if num_envs > 1:
        env_fn = functools.partial(adapter.make_env, task, image_size=image_size, cameras=cameras, **opts)
        res = rollout_vector(env_fn, policy, seeds, num_envs=num_envs, record=videos_per_task,
                             keep_episodes=keep_episodes, **kw)
        ref = rollout_vector(env_fn, ExpertPolicy(env, task), seeds, num_envs=num_envs, **kw) if expert else None
        description = adapter.describe(task)
        meta = None
        if keep_episodes:
            e = env_fn()
            try:
                meta = env_metadata(e)
            finally:
                e.close()
    else:
        e = adapter.make_env(task, image_size=image_size, cameras=cameras, **opts)
        try:
            res = rollout(e, policy, seeds, record=videos_per_task, keep_episodes=keep_episodes, **kw)
            ref = rollout(e, ExpertPolicy(env, task), seeds, **kw) if expert else None
            description = e.task_description
            meta = env_metadata(e)
        finally:
            e.close()
    paths = []
    for i, frames in enumerate(res["frames"]):
        rel = f"videos/{task}/episode_{i:03d}.mp4"
        write_video(out / rel, frames)
        paths.append(rel)
    row = _task_row(task, description, seeds, res, ref, paths)
    if keep_episodes:
        row.update(_episodes=res["episodes"], _env=meta)
    return row


def env_options_for(policy, env: str, task: str) -> dict:
    """Environment settings that give `policy` the observation keys and sizes it was trained on: for
    MetaWorld, `state="proprio"` (4-D) or `"full"` (39-D) by the size of the state the policy reads."""
    from wam.envs import get_adapter

    adapter, size_of = get_adapter(env), getattr(policy, "state_size", None)
    if not hasattr(adapter, "state_mode") or size_of is None:
        return {}
    try:
        size = size_of(adapter.describe(task))
    except (KeyError, ValueError):
        size = size_of()
    return {"state": adapter.state_mode(size)} if size else {}


def protocol_env_options(policy, env: str, tasks: list[str], protocol: str | None, cameras: list[str] | None,
                         render_size: int | None) -> dict:
    """The environment settings of a named protocol, checked against what `policy` reads ({} for none)."""
    if protocol is None:
        return {}
    from wam.envs import get_adapter

    adapter = get_adapter(env)
    if not hasattr(adapter, "protocol"):
        raise ValueError(f"environment {env!r} has no named protocols")
    opts = adapter.protocol(protocol)
    if render_size is not None and render_size != opts.get("render_size"):
        raise ValueError(f"protocol {protocol!r} renders at {opts.get('render_size')} px; leave render_size out")
    wanted = list(opts.pop("cameras", ()) or ())
    if wanted and cameras and cameras != wanted:
        raise ValueError(f"protocol {protocol!r} gives the camera(s) {wanted}; this policy reads {cameras}")
    policy_state = env_options_for(policy, env, tasks[0]).get("state")
    if policy_state and opts.get("state") and policy_state != opts["state"]:
        raise ValueError(f"protocol {protocol!r} gives observation.state={opts['state']!r}; this policy was trained "
                         f"on state={policy_state!r}")
    return opts


_WORKER_POLICY: dict = {}  # per worker process: the policy, built once from its checkpoint


def _worker_init(threads: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    torch.set_num_threads(threads)


def _task_job(args: tuple) -> dict:
    spec, env, task, kwargs = args
    if _WORKER_POLICY.get("spec") != spec:
        from wam.policy import WAMPolicy

        path, policy_kwargs = spec
        _WORKER_POLICY.update(spec=spec, policy=WAMPolicy.from_checkpoint(path, **dict(policy_kwargs)))
    return evaluate_task(_WORKER_POLICY["policy"], env, task, **kwargs)


def evaluate(policy, *, env: str = "metaworld", tasks: str | Sequence[str] | None = "mt10", episodes: int = 20,
             out: str | Path = "runs/eval", seed: int | str = 0, max_steps: int | None = None, after_success: int = 0,
             expert: bool = True, videos_per_task: int = 2, workers: int = 1, num_envs: int = 1,
             world_model: dict | None = None, render_size: int | None = None, protocol: str | None = None,
             log_path: str | Path | None = None, settings: dict | None = None, progress: bool = True,
             record: str | Path | None = None) -> dict:
    """Closed-loop evaluation of `policy` on every task; writes out/eval_info.json, out/videos/<task>/*.mp4
    and out/report.html. `policy` is a WAMPolicy (or a wam.client.PolicyClient) or any object with
    reset()/select_action(obs) and optionally `settings` (a dict recorded in eval_info.json), `cameras` and
    `image_size`.

    `render_size` renders the cameras at that many pixels instead of the policy's `image_size`; the policy
    resizes each frame to its own size, as it would a real camera's (the way its training frames were resized
    when the dataset's size differs from the model's).

    `seed` is an integer or the name of a seed set (`SEED_SETS`: "dev" to choose on, "test" to report).
    `protocol` names a benchmark's fixed environment settings (MetaWorld: `PROTOCOLS` in wam.envs.metaworld;
    "lerobot" is the benchmark as LeRobot's environment presents it): the scene's look, goal markers, the render
    size (frames resized by the environment to the policy's size, as training frames are), the step limit, the
    camera and the state. A policy that reads another camera or state than the protocol gives is refused.

    `workers` > 1 spreads the tasks over that many processes (a WAMPolicy only; each rebuilds it from its
    checkpoint with one thread). `num_envs` > 1 runs that many environments of a task at once in
    parallel processes, the policy's chunks batched (`rollout_vector`). Every episode starts from its own
    seed and the policy re-seeds its sampler at reset(), so the results do not depend on the number of
    workers or environments.

    `record` writes every episode the policy ran (not the expert's) to a LeRobot v3.0 dataset at that path,
    as `wam collect` writes the expert's: the cameras, the robot state, the simulator's state where it has
    one, the actions, rewards and success flags, failures included."""
    from wam.envs import get_adapter

    task_names = get_adapter(env).resolve_tasks(tasks)
    seed, seed_set = resolve_seed(seed)
    image_size = getattr(policy, "image_size", None) or getattr(getattr(policy, "cfg", None), "image_size", 64)
    if render_size is not None and render_size < 16:
        raise ValueError(f"render_size must be at least 16 pixels, got {render_size}")
    cameras = [c.removeprefix("observation.images.") for c in getattr(policy, "cameras", [])] or None
    protocol_options = protocol_env_options(policy, env, task_names, protocol, cameras, render_size)
    render_size = protocol_options.get("render_size") or (int(render_size) if render_size else image_size)
    recorder = _RolloutDataset(record) if record is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env_size = image_size if protocol_options else render_size  # a protocol's env resizes; else the policy does
    kwargs = dict(episodes=episodes, out=out, seed=seed, max_steps=max_steps, after_success=after_success,
                  expert=expert, videos_per_task=videos_per_task, image_size=env_size, cameras=cameras,
                  num_envs=num_envs, keep_episodes=recorder is not None, protocol_options=protocol_options)
    per_task = episodes * (2 if expert else 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(task_names) * per_task, desc="evaluating", unit="ep", dynamic_ncols=True)
    t0 = time.perf_counter()
    workers = max(1, min(workers, len(task_names)))
    if workers > 1:
        spec = getattr(policy, "spec", None)
        if spec is None:
            raise ValueError("evaluation in several processes needs a WAMPolicy (it is rebuilt from its checkpoint "
                             "in each process); use workers=1 for other policies")
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // workers)
        # (not multiprocessing.Pool: its daemonic workers may not start the environments' own processes)
        try:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                     initargs=(threads,)) as pool:
                rows = []
                for row in pool.map(_task_job, [(spec, env, t, kwargs) for t in task_names]):
                    rows.append(recorder.add(row) if recorder is not None else row)
                    if bar is not None:
                        bar.update(per_task)
        except BaseException:
            if recorder is not None:
                recorder.abort()
            raise
    else:
        rows = []
        try:
            for task in task_names:
                if bar is not None:
                    bar.set_postfix(task=task)
                row = evaluate_task(policy, env, task, progress=(lambda: bar.update(1)) if bar is not None else None,
                                    **kwargs)
                rows.append(recorder.add(row) if recorder is not None else row)
        except BaseException:
            if recorder is not None:
                recorder.abort()
            raise
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    groups = getattr(get_adapter(env), "DIFFICULTY", None)
    info = {**aggregate(rows), **(group_results(rows, groups) if groups else {}), "eval_s": elapsed,
            "eval_ep_s": elapsed / max(1, len(rows) * episodes), "per_task": rows,
            "settings": {"env": env, "tasks": task_names, "episodes_per_task": episodes, "seed": seed,
                         "seed_set": seed_set, "protocol": protocol,
                         "protocol_settings": {k: list(v) if isinstance(v, tuple) else v
                                               for k, v in protocol_options.items()} or None,
                         "max_steps": max_steps, "after_success": after_success, "image_size": image_size,
                         "render_size": render_size, "cameras": cameras, **getattr(policy, "settings", {}),
                         **(settings or {})}}
    served = getattr(policy, "server_ms", None)
    if served:  # through a policy server: how long it took per chunk (decode, forward pass, encode)
        info["server_ms"] = {"n_chunks": len(served), "median": float(np.median(served)),
                             "p90": float(np.percentile(served, 90)), "first": served[0]}
    if world_model is not None:
        info["world_model"] = world_model
    if recorder is not None:
        info["recorded"] = recorder.finalize(info["settings"])
    write_json_atomic(out / "eval_info.json", info)
    from wam.report import build_report

    build_report(out, info, world_model=world_model, log_path=log_path)
    return info


# ---- world-model metrics ---------------------------------------------------------------------------


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) of images (N, C, H, W)
    with values in [0, 1], averaged over channels and pixels: (N,)."""
    C = a.shape[1]
    w = _gaussian_window().to(a)[None, None].expand(C, 1, -1, -1)
    conv = lambda x: torch.nn.functional.conv2d(x, w, groups=C)  # noqa: E731  (valid region only)
    mu_a, mu_b = conv(a), conv(b)
    var_a, var_b = conv(a * a) - mu_a ** 2, conv(b * b) - mu_b ** 2
    cov = conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images (N, ...) with values in [0, 1]: (N,)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def _to_unit(frames: torch.Tensor) -> torch.Tensor:
    """Model frames in [-1, 1] -> [0, 1], quantised to 8 bits as a saved image would be."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round() / 255.0


@torch.no_grad()
def map_tasks(data, known: list[str], dataset, unknown_tasks: str = "refuse") -> None:
    """Point loaded episodes' task indices into a checkpoint's task table (`known`, its task strings),
    for a dataset other than the training one. Tasks the checkpoint never saw are refused, or with
    unknown_tasks="drop" marked `no_task` (they get the model's "no task" token)."""
    if known and data.tasks != known:
        unknown = sorted({data.tasks[e["task_index"]] for e in data.episodes} - set(known))
        if unknown and unknown_tasks != "drop":
            raise ValueError(f"{dataset} has tasks the checkpoint was not trained on: {unknown}")
        for e in data.episodes:
            text = data.tasks[e["task_index"]]
            e["no_task"] = text not in known
            e["task_index"] = known.index(text) if text in known else 0


@torch.no_grad()
def evaluate_world_model(checkpoint, dataset: str | Path, *, out: str | Path | None = None, windows: int = 256,
                         steps: int = 10, seed: int = 0, strips: int = 4, episodes: list[int] | None = None,
                         progress: bool = False, unknown_tasks: str = "refuse", drop_task: bool = False,
                         action_guidance: float = 1.0) -> dict:
    """Forward/video-mode frame quality and inverse/policy action error on held-out episodes.

    Uses the episodes the training run held out (recorded in the checkpoint) unless `episodes` is given.
    Windows are drawn (fixed seed) among those whose future frames all lie inside the episode.
    Returns the dict described in the module docstring; with `out`, also writes real-vs-predicted
    frame strips as PNGs under out/world_model/. unknown_tasks="drop": episodes of tasks the model never
    saw are predicted with its "no task" token instead of being refused; drop_task=True: every window is.
    action_guidance: forward mode's guidance on the actions (`wam.modes.sample`), for both forward rows."""
    from wam.modes import sample
    from wam.data import Normalizer
    from wam.episodes import episodes_to_tensors, load_episodes

    model, tok, cfg = checkpoint.model, checkpoint.tokenizer, checkpoint.model.cfg
    run = checkpoint.config.get("run", {})
    stats, held_out = checkpoint.stats, run.get("val_episodes")
    for d in run.get("datasets", []):  # a mixture: that dataset's held-out episodes (and its units, if it had actions)
        if Path(d["path"]).resolve() == Path(dataset).resolve():
            held_out = d.get("val_episodes", held_out)
            stats = d["stats"] if d.get("action_dim") else stats
    eps = episodes if episodes is not None else held_out
    if not eps:
        raise ValueError("no held-out episodes recorded in the checkpoint; pass episodes=[...]")
    data = load_episodes(dataset, image_size=cfg.image_size, cameras=run.get("cameras"),
                         normalizer=Normalizer.from_dict(stats), episodes=eps, progress=progress)
    map_tasks(data, run.get("tasks") or [], dataset, unknown_tasks)
    tensors = episodes_to_tensors(data.episodes, tok, cfg.action_dim, cfg.state_dim)
    ep, st = tensors.window_index()
    horizon = cfg.future_frames * cfg.future_stride
    full = st + horizon < tensors.lengths[ep]
    ep, st = ep[full], st[full]
    if len(ep) == 0:
        raise ValueError(f"no held-out episode is longer than {horizon} steps (the predicted horizon), so there is "
                         f"no window to measure the world model on; hold out longer episodes")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ep), generator=g)[:windows]
    batch = tensors.gather(ep[pick], st[pick], cfg)
    batch["drop_task"] = torch.tensor([drop_task or data.episodes[int(e)].get("no_task", False) for e in ep[pick]])
    n_obs, F = cfg.n_obs_steps, cfg.future_frames
    frames = {}  # all in [0, 1], (B, T, C, H, W)
    true_frames = torch.stack([torch.as_tensor(data.episodes[int(e)]["frames"][int(s) + k])
                               for e, s in zip(ep[pick], st[pick]) for k in
                               [*range(-n_obs + 1, 1), *[(j + 1) * cfg.future_stride for j in range(F)]]])
    B = len(pick)
    frames["real"] = true_frames.reshape(B, n_obs + F, *true_frames.shape[1:]).movedim(-1, 2).float() / 255.0
    frames["tokenizer_reconstruction"] = _to_unit(tok.decode(batch["latents"]))
    for name in ("forward", "video"):
        kw = {"action_guidance": action_guidance} if name == "forward" else {}
        res = sample(model, batch, name, steps=steps, generator=torch.Generator().manual_seed(seed), **kw)
        frames[name] = _to_unit(tok.decode(res["latents"]))
    # the same windows given another window's actions: how much the predicted frames depend on the actions
    other = {**batch, "actions": batch["actions"].roll(1, 0), "action_is_pad": batch["action_is_pad"].roll(1, 0)}
    res = sample(model, other, "forward", steps=steps, generator=torch.Generator().manual_seed(seed),
                 action_guidance=action_guidance)
    frames["forward_other_actions"] = _to_unit(tok.decode(res["latents"]))
    real_future = frames["real"][:, n_obs:]
    last = frames["real"][:, n_obs - 1:n_obs]
    result: dict[str, Any] = {"windows": B, "horizons": [(j + 1) * cfg.future_stride for j in range(F)],
                              "sampling_steps": steps, "action_guidance": action_guidance, "episodes": list(eps)}

    def metrics(pred: torch.Tensor) -> dict:  # pred (B, F, C, H, W)
        p, s = [], []
        for j in range(F):
            p.append(float(psnr(pred[:, j], real_future[:, j]).mean()))
            s.append(float(ssim(pred[:, j], real_future[:, j]).mean()))
        return {"psnr": p, "ssim": s}

    for name in ("forward", "forward_other_actions", "video", "tokenizer_reconstruction"):
        result[name] = metrics(frames[name][:, n_obs:])
    result["copy_last_frame"] = metrics(last.expand_as(real_future))
    true_actions = batch["actions"]
    mse = lambda a: float((a - true_actions).pow(2).mean())  # noqa: E731
    inv = sample(model, batch, "inverse", steps=steps, generator=torch.Generator().manual_seed(seed))
    pol = sample(model, batch, "policy", steps=steps, generator=torch.Generator().manual_seed(seed))
    result["inverse"] = {"action_mse": mse(inv["actions"]),
                         "mean_action_mse": mse(true_actions.mean((0, 1), keepdim=True))}
    result["policy"] = {"action_mse": mse(pol["actions"])}
    if out is not None and strips:
        result["strips"] = _write_strips(Path(out), frames, strips)
    return result


def _write_strips(out: Path, frames: dict, n: int, scale: int = 3) -> list[str]:
    """PNG per window: rows real, forward, video; columns history then future frames."""
    from PIL import Image

    (out / "world_model").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(n, frames["real"].shape[0])):
        rows = []
        for name in ("real", "forward", "video"):
            f = frames[name][i]  # (T, C, H, W); a prediction's history is the decoded given frame
            rows.append(torch.cat(list(f), -1))  # (C, H, T*W)
        img = (torch.cat(rows, -2).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        img = img.repeat(scale, 0).repeat(scale, 1)
        rel = f"world_model/strip_{i:03d}.png"
        Image.fromarray(img).save(out / rel)
        paths.append(rel)
    return paths
