"""Rollouts: a policy acting in one environment or in several at once, episode by episode, from given seeds.

    res = rollout(env, policy, seeds=[0, 1, 2])          # arrays, one entry per seed (documented below)
    res = rollout_vector(lambda: make_env(), policy, seeds, num_envs=4)   # the same, environments in parallel
    write_video("episode.mp4", res["frames"][0])

A policy is anything with reset() and select_action(obs) (WAMPolicy, wam.client.PolicyClient, the scripted
`ExpertPolicy`, `RandomPolicy`). Evaluation, imagination (`wam.imagine`, an environment inside a world model)
and the benchmarks share these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wam.collect import EpisodeRecorder
from wam.errors import ArgumentError

# ---- policies besides the WAM ----------------------------------------------------------------------


class ExpertPolicy:
    """An environment's scripted expert behind the policy API (the reference beside every evaluation)."""

    def __init__(self, env_name: str, task: str):
        from wam.envs import get_adapter

        self._act = get_adapter(env_name).make_expert(task)

    def reset(self) -> None:
        pass

    def needs_images(self) -> bool:
        return False  # the expert reads the simulator's state

    def select_action(self, obs: dict) -> np.ndarray:
        return np.asarray(self._act(obs), dtype=np.float32)


class RandomPolicy:
    """Uniform random actions from an action space (a floor every trained policy must clear)."""

    def __init__(self, action_space, seed: int = 0):
        self.space, self.seed = action_space, seed
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def needs_images(self) -> bool:
        return False

    def select_action(self, obs: dict) -> np.ndarray:
        return self.rng.uniform(self.space.low, self.space.high).astype(np.float32)


# ---- closed loop -----------------------------------------------------------------------------------


def rollout(
    env,
    policy,
    seeds: Sequence[int],
    *,
    max_steps: int | None = None,
    after_success: int = 0,
    record: int = 0,
    progress: Callable[[], None] | None = None,
    keep_episodes: bool = False,
) -> dict[str, Any]:
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
    The observation given to the policy carries `task` = env.task_description (LeRobot's key). Where the
    environment can skip rendering (`metadata["lazy_images"]`: it honours `render_images`) and the policy says
    which observations it looks at (`needs_images()`), the others' images are left unrendered (black); the
    episodes are the same, the rendering cost falls (to a quarter with four actions per chunk). Recorded
    episodes and frames are always rendered.
    """
    limit = min(max_steps or env.max_episode_steps, env.max_episode_steps)
    base = getattr(env, "unwrapped", env)
    lazy = bool(getattr(base, "metadata", {}).get("lazy_images")) and hasattr(policy, "needs_images")
    camera = f"observation.images.{env.camera_names[0]}"
    tally = _Tally(len(seeds), camera=camera, record=record, keep_episodes=keep_episodes, after_success=after_success)
    try:
        for i, seed in enumerate(seeds):
            policy.reset()
            obs, _ = env.reset(seed=int(seed))
            tally.begin(i, obs)
            for _ in range(limit):
                action = policy.select_action({**obs, "task": env.task_description})
                if lazy:
                    base.render_images = tally.watched(i) or policy.needs_images()
                before = obs
                obs, reward, terminated, truncated, info = env.step(action)
                if (
                    tally.add(i, before, action, reward, bool(info.get("success", False)), obs)
                    or terminated
                    or truncated
                ):
                    break
            tally.end(i)
            if progress is not None:
                progress()
    finally:
        if lazy:
            base.render_images = True
    return tally.result()


class _Tally:
    """`rollout`'s arrays, filled in step by step, episode by episode (in any order: `rollout_vector` runs several
    at once)."""

    def __init__(self, n: int, *, camera: str, record: int, keep_episodes: bool, after_success: int):
        self.camera, self.record, self.after_success = camera, record, after_success
        self.out: dict[str, Any] = {
            "success": np.zeros(n, bool),
            "first_success": np.full(n, -1),
            "steps": np.zeros(n, int),
            "sum_reward": np.zeros(n),
            "max_reward": np.full(n, -np.inf),
            "seconds": np.zeros(n),
            "frames": [None] * n,
        }
        self.recorders = [EpisodeRecorder() for _ in range(n)] if keep_episodes else None
        self.started = np.zeros(n)

    def begin(self, i: int, obs: dict) -> None:
        """Episode i starts from observation `obs`."""
        self.started[i] = time.perf_counter()
        if i < self.record:
            self.out["frames"][i] = [obs[self.camera]]

    def watched(self, i: int) -> bool:
        """Whether episode i's images are kept (a video or a dataset episode): they must be rendered."""
        return self.out["frames"][i] is not None or self.recorders is not None

    def add(self, i: int, obs: dict, action, reward: float, success: bool, next_obs: dict) -> bool:
        """One step of episode i (`obs` --action--> `next_obs`); True when it has succeeded and run
        `after_success` steps since."""
        out = self.out
        if self.recorders is not None:
            self.recorders[i].add(obs, action, reward, success)
        out["sum_reward"][i] += reward
        out["max_reward"][i] = max(out["max_reward"][i], reward)
        step = out["steps"][i]
        out["steps"][i] += 1
        if out["frames"][i] is not None:
            out["frames"][i].append(next_obs[self.camera])
        if success and out["first_success"][i] < 0:
            out["first_success"][i], out["success"][i] = step, True
        return bool(out["success"][i]) and step - out["first_success"][i] >= self.after_success

    def end(self, i: int) -> None:
        self.out["seconds"][i] = time.perf_counter() - self.started[i]

    def result(self) -> dict[str, Any]:
        out = {**self.out, "frames": [np.stack(f) for f in self.out["frames"][: self.record] if f is not None]}
        if self.recorders is not None:
            out["episodes"] = [r.data() for r in self.recorders]
        return out


class _SlotPolicies:
    """The policy of each of K parallel environments. A WAMPolicy keeps one PolicyState per environment and
    predicts the chunks of every environment whose queue ran out in one batched call; any other policy is
    copied once per environment (it must survive copy.deepcopy)."""

    def __init__(self, policy, k: int):
        import copy

        self.batched = hasattr(policy, "predict_chunks") and hasattr(policy, "new_state")
        self.policy = policy
        self.unseen = [False] * k  # the environment's last observation was left unrendered (needs_images)
        if self.batched:
            self.states = [policy.new_state() for _ in range(k)]
            self.queues = [[] for _ in range(k)]
        else:
            try:
                self.copies = [copy.deepcopy(policy) for _ in range(k)]
            except Exception as e:  # noqa: BLE001 (e.g. a live connection)
                raise ArgumentError(
                    f"{type(policy).__name__} cannot be copied for {k} parallel environments ({e}); "
                    f"evaluate it with num_envs=1"
                ) from None

    def needs_images(self, j: int) -> bool:
        """Whether environment j's next observation will be looked at (True for a policy that cannot say)."""
        if self.batched:
            return self.policy.needs_images(len(self.queues[j]))
        copy = self.copies[j]
        return copy.needs_images() if hasattr(copy, "needs_images") else True

    def reset(self, j: int) -> None:
        self.unseen[j] = False
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
            p.push(self.states[j], ob, unseen=self.unseen[j])
            if not self.queues[j]:
                need.append(j)
                tasks.append(ob.task)
        if need:
            for j, chunk in zip(need, p.predict_chunks([self.states[i] for i in need], tasks)):
                self.queues[j] = list(chunk[0, : p.n_action_steps])
        return {j: self.queues[j].pop(0) for j in obs}


def rollout_vector(
    env_fn: Callable,
    policy,
    seeds: Sequence[int],
    *,
    num_envs: int,
    max_steps: int | None = None,
    after_success: int = 0,
    record: int = 0,
    progress: Callable[[], None] | None = None,
    keep_episodes: bool = False,
) -> dict:
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
        tally = _Tally(n, camera=camera, record=record, keep_episodes=keep_episodes, after_success=after_success)
        run = _VectorRun(envs, _SlotPolicies(policy, k), tally, seeds, task=envs.get_attr("task_description")[0])
        run.start(np.ones(k, bool))
        # rollout's docstring: images the policy will not look at are left unrendered
        lazy = bool(envs.metadata.get("lazy_images")) and not keep_episodes
        while run.live():
            ended = run.step(limit, progress, lazy=lazy)
            if ended.any():
                run.start(ended)
        return tally.result()
    finally:
        envs.close()


class _VectorRun:
    """`rollout_vector`'s bookkeeping: which seed each of the K environments runs (-1: idle, no seeds left), each
    one's last observation, and the step of them all."""

    def __init__(self, envs, slots: _SlotPolicies, tally: _Tally, seeds: Sequence[int], *, task: str):
        self.envs, self.slots, self.tally, self.seeds, self.task = envs, slots, tally, seeds, task
        k = envs.num_envs
        self.episode = [-1] * k
        self.current: list[dict] = [{} for _ in range(k)]
        self.next_seed = 0
        self.rendering = [True] * k

    def live(self) -> bool:
        return any(i >= 0 for i in self.episode)

    def start(self, which: np.ndarray) -> None:
        """Reset the environments in `which` (their episodes ended; all at first), each with the next seed."""
        first = self.next_seed == 0
        for j in np.flatnonzero(which):
            self.episode[j] = self.next_seed if self.next_seed < len(self.seeds) else -1
            self.next_seed += int(self.episode[j] >= 0)
        seeds = [int(self.seeds[i]) if which[j] and i >= 0 else None for j, i in enumerate(self.episode)]
        # an idle environment is reset too: a truncated one may not step again
        obs, _ = self.envs.reset(seed=seeds) if first else self.envs.reset(seed=seeds, options={"reset_mask": which})
        for j in np.flatnonzero(which):
            if self.episode[j] >= 0:
                self.current[j] = {key: v[j] for key, v in obs.items()}
                self.slots.reset(j)
                self.tally.begin(self.episode[j], self.current[j])

    def render_only_what_is_seen(self) -> None:
        """Render the next observation only where the policy will look at it, or its images are kept."""
        want = [i >= 0 and (self.tally.watched(i) or self.slots.needs_images(j)) for j, i in enumerate(self.episode)]
        if want != self.rendering:
            self.envs.set_attr("render_images", want)
            self.rendering = want
        self.slots.unseen = [not w for w in want]

    def step(self, limit: int, progress: Callable[[], None] | None, *, lazy: bool) -> np.ndarray:
        """Every live environment takes one step (one batched call of the policy); returns which episodes ended."""
        k = self.envs.num_envs
        live = {j: {**self.current[j], "task": self.task} for j in range(k) if self.episode[j] >= 0}
        acts = self.slots.act(live)
        if lazy:  # after acting: the policy's queues say whether it will look at the next observation
            self.render_only_what_is_seen()
        batch = np.zeros((k, *self.envs.single_action_space.shape), dtype=np.float32)
        for j, a in acts.items():
            batch[j] = a
        obs, reward, terminated, truncated, info = self.envs.step(batch)
        success = info.get("success", np.zeros(k, bool))
        ended = np.zeros(k, bool)
        for j in live:
            i, before = self.episode[j], self.current[j]
            self.current[j] = {key: v[j] for key, v in obs.items()}
            done = self.tally.add(i, before, acts[j], reward[j], bool(success[j]), self.current[j])
            if done or terminated[j] or truncated[j] or self.tally.out["steps"][i] >= limit:
                self.tally.end(i)
                if progress is not None:
                    progress()
                ended[j] = True
        return ended


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
