"""Policy evaluation in imagination: a policy acts on frames the world model imagines, from real start frames.

`ImaginedEnv` is an environment inside a WAM checkpoint, with the interface `wam.rollout.rollout` drives
(reset(seed), step(action), camera_names, task_description, max_episode_steps), so an imagined evaluation runs
through the same loop, the same per-task rows and the same report as a simulated one:

    reset(seed)  a real start: the first frame and robot state of a held-out episode (start="dataset") or of
                 the simulator reset with wam eval's seed (start="sim", the very episodes `wam eval` runs)
    step(a)      queues the action; every future_stride actions the model imagines the frame that follows
                 (forward mode: the history frames clean, the queued actions given, padded to the horizon
                 with the last one; the observed tokens' keys and values computed once, exactly), and the
                 critic (`wam.critic`) reads off it the task's progress, whether it is done, and the robot
                 state the next observation carries. Between two imagined frames the policy sees the last one.
    reward       the critic's progress in [0, 1]; info["success"]: its probability of "done" >= threshold on the
                 last `persist` imagined frames in a row (one frame judged done by mistake, out of the hundred
                 or so of an episode, would otherwise count the whole episode a success)

Runbook:
    wam critic --checkpoint checkpoints/wam-tiny-mt50-v2 --dataset runs/mt50-v2/data
    wam imagine --checkpoint checkpoints/wam-tiny-mt50-v2 --tasks mt10 --episodes 5 --start sim --out runs/imagine
    wam imagine --checkpoint checkpoints/wam-tiny-mt50-v2 --policy runs/wm/policy/checkpoint --tasks mt10 ...
    wam imagine --checkpoint checkpoints/wam-tiny-mt50-v2 --server ws://127.0.0.1:8766 --tasks mt10 ...  # a served one
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from wam.critic import imagine_along  # (also re-exported: recorded episodes, imagined)
from wam.errors import ArgumentError, DatasetError
from wam.modes import next_frame


class ImaginedEnv:
    """One task's environment inside a world model (see the module docstring)."""

    def __init__(
        self,
        world,
        critic,
        starts: Sequence[dict],
        task: str,
        description: str,
        *,
        max_steps: int = 500,
        sampling_steps: int = 2,
        threshold: float = 0.5,
        persist: int = 1,
        fps: int | None = None,
        cache: bool | None = None,
        device: str | torch.device = "cpu",
        action_guidance: float = 1.0,
    ):
        from wam.data import Normalizer

        if not starts:
            raise ArgumentError(f"no start frame for task {task!r}")
        self.model, self.tokenizer, self.critic = world.model.eval(), world.tokenizer.eval(), critic.eval()
        self.cfg = self.model.cfg
        run = world.config.get("run", {})
        self.camera_names = list(run.get("cameras") or ["camera"])
        self.normalizer = Normalizer.from_dict(world.stats)
        tasks = list(run.get("tasks", []))
        if description not in tasks:
            raise ArgumentError(f"the world model was not trained on task {description!r}; it knows: {tasks}")
        self.task_index = torch.tensor([tasks.index(description)])
        self.starts, self.task, self.task_description = list(starts), task, description
        if persist < 1:
            raise ArgumentError(f"persist must be >= 1 (imagined frames in a row judged done), got {persist}")
        self.max_episode_steps, self.sampling_steps, self.threshold = max_steps, sampling_steps, threshold
        self.persist = int(persist)
        self.action_guidance = float(action_guidance)  # > 1: frames follow the actions more than the data's prior
        self.fps, self.device = fps, torch.device(device)
        # the observed tokens' keys and values once per imagined frame (exact; not for "full" attention)
        self.cache = self.cfg.attention != "full" if cache is None else bool(cache)

    def _obs(self) -> dict:
        frame = self.frame  # (H, W * n_cams, 3) uint8, cameras side by side
        views = np.split(frame, len(self.camera_names), axis=1)
        obs = {f"observation.images.{c}": v for c, v in zip(self.camera_names, views)}
        if self.state is not None:
            obs["observation.state"] = self.state
        return obs

    @torch.no_grad()
    def reset(self, seed: int | None = None) -> tuple[dict, dict]:
        from wam.tokenizer import encode_frames

        seed = 0 if seed is None else int(seed)
        start = self.starts[seed % len(self.starts)]
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.frame = np.asarray(start["frame"], np.uint8)
        z = encode_frames(self.tokenizer, self.frame[None]).to(self.device)  # (1, c, h, w)
        self.history = [z] * self.cfg.n_obs_steps
        self.state = None if start.get("state") is None else np.asarray(start["state"], np.float32)
        norm_state = (
            None
            if self.state is None or self.cfg.state_dim == 0
            else torch.as_tensor(np.asarray(self.normalizer.normalize_state(self.state[None]), np.float32))
        )
        self.states = [norm_state] * self.cfg.n_obs_steps
        self.pending: list[np.ndarray] = []
        self.progress, self.p_success = self._judge(z)[:2]
        self.done_run = int(self.p_success >= self.threshold)  # imagined frames in a row judged done
        return self._obs(), {"success": self.done_run >= self.persist}

    def _judge(self, z: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        p, logit, state = self.critic(z.float(), self.task_index.to(z.device))
        return float(p[0]), float(torch.sigmoid(logit[0])), state

    @torch.no_grad()
    def _imagine(self) -> None:
        """Advance the world by future_stride steps: the queued actions -> the next frame, state and outcome."""
        cfg = self.cfg
        acts = np.asarray(self.normalizer.normalize_action(np.stack(self.pending)[None]), np.float32)  # (1, k, A)
        state = (
            torch.stack([s if s is not None else torch.zeros(1, cfg.state_dim) for s in self.states], 1)
            if cfg.state_dim > 0
            else None
        )
        z = next_frame(
            self.model,
            torch.stack(self.history, 1),
            self.task_index,
            torch.as_tensor(acts),
            state=state,
            steps=self.sampling_steps,
            generator=self.generator,
            cache=self.cache,
            action_guidance=self.action_guidance,
        )  # (1, c, h, w): the frame future_stride steps ahead
        frame = self.tokenizer.decode(z[:, None])[:, 0]  # (1, 3, H, W) in [-1, 1]
        self.frame = ((frame[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        self.progress, self.p_success, state = self._judge(z)
        self.done_run = self.done_run + 1 if self.p_success >= self.threshold else 0
        self.history = self.history[1:] + [z]
        if self.state is not None and state.shape[1] > 0:
            self.state = np.asarray(self.normalizer.unnormalize_state(state[:, : len(self.state)]), np.float32)[0]
            self.states = self.states[1:] + [state[:, : cfg.state_dim].float()]
        self.pending = []

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        self.pending.append(np.asarray(action, np.float32).reshape(-1))
        if len(self.pending) == self.cfg.future_stride:
            self._imagine()
        success = self.done_run >= self.persist
        return self._obs(), self.progress, False, False, {"success": success, "p_success": self.p_success}

    def close(self) -> None:
        pass


def dataset_starts(world, dataset: str | Path, episodes: Sequence[int] | None = None) -> dict[str, list[dict]]:
    """First frame and robot state (environment units) of each held-out episode, by task text."""
    from wam.data import LeRobotDataset
    from wam.data.windows import resize_frames

    run = world.config.get("run", {})
    eps = list(episodes) if episodes is not None else list(run.get("val_episodes") or [])
    if not eps:
        raise ArgumentError("the checkpoint records no held-out episodes; pass the episodes to start from")
    ds = LeRobotDataset(dataset)
    size = world.model.cfg.image_size
    cams = [f"observation.images.{c}" for c in run.get("cameras", [])] or ds.camera_keys[:1]
    out: dict[str, list[dict]] = {}
    for e in eps:
        pos = ds.position_of(int(e))
        ep = ds.episodes[pos]
        rows = np.arange(ep.start, ep.start + 1)
        views = [resize_frames(ds.episode_frames(pos, k, rows=np.zeros(1, int)), (size, size)) for k in cams]
        frame = np.concatenate(views, axis=-1).transpose(0, 2, 3, 1)[0]  # (h, w * n_cams, 3)
        state = ds.data["observation.state"][rows][0] if "observation.state" in ds.data else None
        task = ds.tasks[int(ds.data["task_index"][ep.start])] if "task_index" in ds.data else ds.tasks[0]
        out.setdefault(task, []).append({"frame": frame, "state": state, "episode_index": int(e)})
    return out


def sim_starts(
    env: str, task: str, seeds: Sequence[int], *, image_size: int, cameras: list[str] | None, state_size: int | None
) -> tuple[list[dict], int]:
    """The simulator's first observation for each seed (the episodes `wam eval` runs with these seeds), and
    the task's step limit."""
    from wam.envs import get_adapter

    adapter = get_adapter(env)
    opts = {"state": adapter.state_mode(state_size)} if state_size and hasattr(adapter, "state_mode") else {}
    e = adapter.make_env(task, image_size=image_size, cameras=cameras, **opts)
    try:
        starts = []
        for s in seeds:
            obs, _ = e.reset(seed=int(s))
            frame = np.concatenate([obs[f"observation.images.{c}"] for c in e.camera_names], axis=1)
            starts.append({"frame": frame, "state": obs.get("observation.state"), "seed": int(s)})
        return starts, int(e.max_episode_steps)
    finally:
        e.close()


def imagine(
    world,
    critic,
    policy,
    *,
    env: str = "metaworld",
    tasks: str | Sequence[str] | None = "mt10",
    episodes: int = 5,
    start: str = "sim",
    dataset: str | Path | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    sampling_steps: int = 2,
    threshold: float = 0.5,
    persist: int = 1,
    videos_per_task: int = 2,
    out: str | Path = "runs/imagine",
    settings: dict | None = None,
    progress: bool = True,
    action_guidance: float = 1.0,
) -> dict:
    """Evaluate `policy` (reset()/select_action(obs), e.g. a WAMPolicy or a PolicyClient) inside `world` (a
    Checkpoint) on each task, scored by `critic`; writes out/imagine_info.json (wam eval's eval_info format,
    "imagined": true), videos of the imagined episodes and out/report.html. Returns the info dict."""
    from wam.atomic import write_json_atomic
    from wam.envs import get_adapter
    from wam.report import build_report
    from wam.stats import aggregate, group_results

    if start not in ("sim", "dataset"):
        raise ArgumentError(
            f"start must be 'sim' (the simulator's first frame for wam eval's seeds) or 'dataset' "
            f"(held-out episodes' first frames), got {start!r}"
        )
    adapter = get_adapter(env)
    task_names = adapter.resolve_tasks(",".join(tasks) if isinstance(tasks, (list, tuple)) else tasks)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_text = (
        dataset_starts(world, dataset or world.config.get("run", {}).get("dataset")) if start == "dataset" else None
    )
    rows, t0 = [], time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(task_names) * episodes, desc="imagining", unit="ep", dynamic_ncols=True)
    scene = dict(sampling_steps=sampling_steps, threshold=threshold, persist=persist, action_guidance=action_guidance)
    for task in task_names:
        rows.append(
            _imagine_task(
                world,
                critic,
                policy,
                env,
                task,
                episodes=episodes,
                seed=seed,
                by_text=by_text,
                max_steps=max_steps,
                videos=videos_per_task,
                out=out,
                bar=bar,
                **scene,
            )
        )
    if bar is not None:
        bar.close()
    groups = getattr(adapter, "DIFFICULTY", None)
    info = {
        **aggregate(rows),
        **(group_results(rows, groups) if groups else {}),
        "imagined": True,
        "eval_s": time.perf_counter() - t0,
        "per_task": rows,
        "settings": {
            "env": env,
            "tasks": task_names,
            "episodes_per_task": episodes,
            "seed": seed,
            "start": start,
            "max_steps": max_steps,
            "world_model": str(world.path),
            "world_model_hash": world.model_hash,
            "critic": getattr(critic, "path", None),
            "world_sampling_steps": sampling_steps,
            "world_action_guidance": action_guidance,
            "threshold": threshold,
            "persist": persist,
            **getattr(policy, "settings", {}),
            **(settings or {}),
        },
    }
    write_json_atomic(out / "imagine_info.json", info)
    build_report(out, info, title="wam imagine: the policy evaluated inside the world model")
    return info


def _imagine_task(
    world,
    critic,
    policy,
    env: str,
    task: str,
    *,
    episodes: int,
    seed: int,
    by_text: dict | None,
    max_steps: int | None,
    videos: int,
    out: Path,
    bar,
    **scene,
) -> dict:
    """One task's imagined episodes (`imagine`): their first frames (the simulator's for wam eval's seeds, or
    held-out episodes' in `by_text`), the rollout inside the world model, its videos; returns the task's row."""
    from wam.envs import get_adapter
    from wam.evaluate import eval_seeds
    from wam.rollout import rollout, write_video
    from wam.stats import task_row

    run, cfg = world.config.get("run", {}), world.model.cfg
    description = get_adapter(env).describe(task)
    seeds = eval_seeds(seed, task, episodes)
    size_of = getattr(policy, "state_size", None)
    state_size = size_of(description) if size_of is not None else cfg.state_dim
    where = dict(image_size=cfg.image_size, cameras=run.get("cameras"), state_size=state_size)
    if by_text is not None:
        starts = by_text.get(description, [])
        if not starts:
            raise ArgumentError(f"no held-out episode of {task} ({description!r}) to start from")
        _, limit = sim_starts(env, task, seeds[:1], **where)
    else:
        starts, limit = sim_starts(env, task, seeds, **where)
    limit = min(max_steps or limit, limit)
    world_env = ImaginedEnv(world, critic, starts, task, description, max_steps=limit, **scene)
    episode_ids = list(range(episodes))  # reset(i) starts from starts[i % len(starts)] with noise seed i
    res = rollout(
        world_env, policy, episode_ids, record=videos, progress=(lambda: bar.update(1)) if bar is not None else None
    )
    paths = []
    for i, frames in enumerate(res["frames"]):
        rel = f"videos/{task}/imagined_{i:03d}.mp4"
        write_video(out / rel, frames, fps=10)
        paths.append(rel)
    episodes_run = seeds if by_text is None else [s.get("episode_index") for s in (starts * episodes)[:episodes]]
    return task_row(task, description, episodes_run, res, None, paths)


def compare(imagined: dict, simulated: dict) -> dict:
    """Imagined against simulated success per task (both eval_info-like dicts): the rows side by side."""
    sim = {r["task"]: r for r in simulated["per_task"]}
    rows = [
        {"task": r["task"], "imagined": r["pc_success"], "simulated": sim[r["task"]]["pc_success"]}
        for r in imagined["per_task"]
        if r["task"] in sim
    ]
    return {"tasks": rows, "imagined": imagined["pc_success"], "simulated": simulated["pc_success"]}


@torch.no_grad()
def replay(
    world,
    critic,
    dataset: str | Path,
    *,
    episodes: Sequence[int] | None = None,
    sampling_steps: int = 2,
    threshold: float = 0.5,
    persist: int = 1,
    action_guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    real: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Recorded episodes imagined open loop: from each episode's first frame and robot state, the world model
    imagines the frames its recorded actions bring (`imagine_along`, as `ImaginedEnv` would for a policy that
    acted exactly so), and the critic judges them as `wam imagine` does, beside what really happened.

    Where `wam imagine` lets the policy act on imagined frames (closed loop), here the actions are fixed: a
    world model that judges these outcomes right but a policy's imagined episodes wrong is led astray by the
    closed loop; one that gets these wrong does not follow the actions. `dataset` is any LeRobot dataset with
    actions and success flags (`wam eval --record` writes a policy's episodes as one). Returns one dict per
    episode: episode_index, task (its text), length, real_success, real_first_success (-1: none),
    real_max_reward, imagined_success (`persist` imagined frames in a row judged done), imagined_first_done
    (the step its imagined frame stands for; -1: none), imagined_progress (the critic's best progress) and
    p_done (the critic's probability of done on each frame, the start first: other decision rules, `first_done`).

    real=True also sets the imagined frames beside the recorded ones they stand for (rows 0, stride, 2 stride, ...
    of the episode), which tells a world model that loses the scene from a critic that misreads it:
    real_p_done, real_judged_success, real_judged_first_done and real_judged_progress (the same critic and rule
    on the recorded frames), psnr (dB, each imagined frame against the recorded one), psnr_still (the first
    frame held still against them: a world model that tracks nothing) and psnr_ceiling (the recorded frames
    through the tokenizer: what no world model on these latents can beat)."""
    from wam.data import LeRobotDataset, Normalizer

    ds = LeRobotDataset(dataset)
    for key in ("action", "next.success"):
        if key not in ds.data:
            raise DatasetError(
                f"{dataset} has no {key!r} column; replay needs recorded actions and success flags "
                f"(datasets of `wam collect` or `wam eval --record`)"
            )
    run, cfg = world.config.get("run", {}), world.model.cfg
    tasks = list(run.get("tasks", []))
    normalizer = Normalizer.from_dict(world.stats)
    cams = [f"observation.images.{c}" for c in run.get("cameras", [])] or ds.camera_keys[:1]
    missing = [c for c in cams if c not in ds.camera_keys]
    if missing:
        raise DatasetError(
            f"{dataset} has no camera {missing[0]!r}, which the world model sees; it has: {ds.camera_keys}"
        )
    positions = [ds.position_of(int(e)) for e in episodes] if episodes is not None else list(range(ds.num_episodes))
    if not positions:
        raise ArgumentError(f"no episode of {dataset} to replay")
    stride = cfg.future_stride
    starts, states, actions, task_ids, meta, recorded = [], [], [], [], [], []
    for pos in positions:
        ep = _recorded_episode(ds, pos, world, normalizer, cams, tasks, real=real)
        starts.append(ep["start"])
        if ep["recorded"] is not None:
            recorded.append(ep["recorded"])
        if ep["state"] is not None:
            states.append(ep["state"])
        actions.append(ep["actions"])
        task_ids.append(ep["task"])
        meta.append(ep["meta"])
    task = torch.as_tensor(task_ids)
    made = imagine_along(
        world,
        critic,
        torch.stack(starts),
        torch.as_tensor(np.stack(states)) if states else None,
        actions,
        task,
        sampling_steps=sampling_steps,
        action_guidance=action_guidance,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    out = []
    for i, z in enumerate(made):
        frames = torch.cat([starts[i][None], z])  # the start frame is judged too, as ImaginedEnv judges it
        p, logit, _ = critic(frames.float(), task[i].repeat(len(frames)))
        p_done = torch.sigmoid(logit).tolist()
        first = first_done(p_done, threshold, persist)
        out.append(
            {
                **meta[i],
                "imagined_success": first >= 0,
                "imagined_first_done": first * stride if first >= 0 else -1,
                "imagined_progress": float(p.max()),
                "imagined_frames": len(z),
                "p_done": [round(x, 4) for x in p_done],
            }
        )
        if real:
            out[-1].update(_beside_recorded(world, critic, z, *recorded[i], task[i], threshold, persist))
    return out


def _recorded_episode(ds, pos: int, world, normalizer, cams: list[str], tasks: list[str], *, real: bool) -> dict:
    """One recorded episode for `replay`: its first frame's latents (with real=True also every stride-th recorded
    frame and its latents), its first robot state and its actions normalised, its task and real outcome."""
    from wam.data.windows import resize_frames
    from wam.tokenizer import encode_frames

    cfg, stride = world.model.cfg, world.model.cfg.future_stride
    lo, hi = ds.episode_ranges[pos]
    text = ds.tasks[int(ds.data["task_index"][lo])] if "task_index" in ds.data else ds.tasks[0]
    if text not in tasks:
        raise ArgumentError(
            f"episode {ds.episodes[pos].episode_index} is of task {text!r}, which the world model was not trained on"
        )
    rows = np.arange(0, (hi - lo - 1) // stride * stride + 1, stride) if real else np.zeros(1, int)
    views = [resize_frames(ds.episode_frames(pos, k, rows=rows), (cfg.image_size, cfg.image_size)) for k in cams]
    frames = np.concatenate(views, axis=-1).transpose(0, 2, 3, 1)  # (R, H, W * n_cams, 3)
    start = encode_frames(world.tokenizer, frames[:1])[0]  # alone: the same latents with real or not
    recorded = (frames, torch.cat([start[None], encode_frames(world.tokenizer, frames[1:])])) if real else None
    state = None
    if cfg.state_dim > 0 and "observation.state" in ds.data:
        state = np.asarray(normalizer.normalize_state(ds.data["observation.state"][lo : lo + 1]), np.float32)[0]
    success = np.asarray(ds.data["next.success"][lo:hi], bool)
    reward = np.asarray(ds.data["next.reward"][lo:hi], np.float64) if "next.reward" in ds.data else None
    return {
        "start": start,
        "recorded": recorded,
        "state": state,
        "task": tasks.index(text),
        "actions": np.asarray(normalizer.normalize_action(ds.data["action"][lo:hi]), np.float32),
        "meta": {
            "episode_index": int(ds.episodes[pos].episode_index),
            "task": text,
            "length": hi - lo,
            "real_success": bool(success.any()),
            "real_first_success": int(np.argmax(success)) if success.any() else -1,
            "real_max_reward": float(reward.max()) if reward is not None else None,
        },
    }


@torch.no_grad()
def _beside_recorded(
    world,
    critic,
    imagined: torch.Tensor,
    frames: np.ndarray,
    latents: torch.Tensor,
    task: torch.Tensor,
    threshold: float,
    persist: int,
) -> dict:
    """One replayed episode's imagined latents (K, c, h, w) beside its recorded frames (K + 1, H, W, 3) at the
    rows they stand for and those frames' latents: `replay(real=True)`'s per-episode additions."""
    from wam.stats import psnr, to_unit
    from wam.tokenizer import to_model_frames

    p, logit, _ = critic(latents.float(), task.repeat(len(latents)))
    real_p_done = torch.sigmoid(logit).tolist()
    truth = to_unit(to_model_frames(frames[1:]))  # (K, 3, H, W) in [0, 1]
    first = first_done(real_p_done, threshold, persist)
    stride = world.model.cfg.future_stride
    out = {
        "real_p_done": [round(x, 4) for x in real_p_done],
        "real_judged_success": first >= 0,
        "real_judged_first_done": first * stride if first >= 0 else -1,
        "real_judged_progress": float(p.max()),
        "psnr": [],
        "psnr_still": [],
        "psnr_ceiling": [],
    }
    if len(imagined) == 0:
        return out
    tokenizer = world.tokenizer.eval()

    def decoded(z: torch.Tensor) -> torch.Tensor:  # (N, c, h, w) latents -> (N, 3, H, W) in [0, 1], 64 at a time
        return torch.cat([to_unit(tokenizer.decode(z[j : j + 64, None].float())[:, 0]) for j in range(0, len(z), 64)])

    still = to_unit(to_model_frames(frames[:1])).expand_as(truth)
    for key, x in (("psnr", decoded(imagined)), ("psnr_still", still), ("psnr_ceiling", decoded(latents[1:]))):
        out[key] = [round(float(v), 2) for v in psnr(x, truth)]
    return out


def replay_summary(verdicts: list[dict]) -> dict:
    """`replay`'s verdicts against the real outcomes, over all episodes and per task: real and imagined success
    (%), the share of episodes judged right, and how often a failure is judged a success and a success is. With
    `replay(real=True)`'s verdicts, the same rates for the critic on the recorded frames (recorded_accuracy, ...)
    and the mean PSNR over imagined frames (psnr, psnr_still, psnr_ceiling)."""

    def rates(real: np.ndarray, said: np.ndarray, prefix: str = "") -> dict:
        return {
            f"{prefix}accuracy": float((real == said).mean()),
            f"{prefix}failed_judged_success": float(said[~real].mean()) if (~real).any() else None,
            f"{prefix}succeeded_judged_success": float(said[real].mean()) if real.any() else None,
        }

    def one(vs: list[dict]) -> dict:
        real = np.array([v["real_success"] for v in vs], bool)
        said = np.array([v["imagined_success"] for v in vs], bool)
        out = {
            "episodes": len(vs),
            "real_pc_success": 100 * float(real.mean()),
            "imagined_pc_success": 100 * float(said.mean()),
            **rates(real, said),
        }
        if all("real_judged_success" in v for v in vs):  # replay(real=True): the recorded frames judged too
            out.update(rates(real, np.array([v["real_judged_success"] for v in vs], bool), "recorded_"))
            for key in ("psnr", "psnr_still", "psnr_ceiling"):
                values = [x for v in vs for x in v[key]]
                out[key] = float(np.mean(values)) if values else None
        return out

    tasks = sorted({v["task"] for v in verdicts})
    return {**one(verdicts), "per_task": {t: one([v for v in verdicts if v["task"] == t]) for t in tasks}}


def first_done(p_done: Sequence[float], threshold: float = 0.5, persist: int = 1) -> int:
    """The first imagined frame that ends `persist` frames in a row whose probability of done is >= threshold
    (as `ImaginedEnv` counts a success), or -1."""
    run = 0
    for k, p in enumerate(p_done):
        run = run + 1 if p >= threshold else 0
        if run >= persist:
            return k
    return -1
