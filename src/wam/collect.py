"""Scripted-expert demonstrations, collected in parallel and written as a LeRobot v3.0 dataset.

Runbook:

    wam collect metaworld --tasks mt10 --episodes 50 --out data/mt10       # 50 successful episodes per task
    wam collect metaworld --tasks reach-v3,push-v3 --episodes 10 --out data/two --image-size 96
    wam collect metaworld --tasks easy --episodes 20 --cameras corner4,topview --out data/easy
    wam collect metaworld --tasks mt10 --episodes 50 --state full --out data/mt10-full   # 39-D observation.state
    wam collect dot --episodes 20 --out data/dot                           # the synthetic test world
    wam collect metaworld --tasks mt50 --episodes 10 --action-noise 0.5 --keep-failed --out data/mt50-noisy
    wam collect metaworld --tasks mt50 --episodes 50 --out data/mt50 --resume  # continue an interrupted run

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

Interruptions: every `--checkpoint-every` kept episodes (default 100) the files written so far are
completed and the collection's state (settings, per-task counts, kept episodes, the round in progress)
is saved beside them in the hidden partial directory (see `wam.data.writer`). After Ctrl-C, an error, a
killed process or a machine stop, the same command plus `--resume` continues from the last checkpoint:
it finishes the interrupted round, then plans rounds as before, and gives the same episodes in the same
files as an uninterrupted run (only `--workers` may differ; the videos hold the same frames up to a level
of rounding in a few pixels, from the encoder and from float rendering in another process).
Ctrl-C and errors print that command.
Without `--resume` an interrupted collection of `--out` is refused; `--overwrite` deletes it and starts over.
"""

from __future__ import annotations

import inspect
import json
import math
import multiprocessing as mp
import os
import shlex
import signal
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wam.envs import get_adapter
from wam.errors import ArgumentError, DatasetError, NotFoundError

_ENV_CACHE: dict[tuple, Any] = {}  # per process: the last few environments, by (family, task, size, cameras)
_ENV_CACHE_SIZE = 3  # jobs come task by task, so a few suffice; each MetaWorld env holds a GL context
CHECKPOINT_EVERY = 100  # kept episodes between checkpoints (each one also starts new data and video files)


class EpisodeRecorder:
    """Every step of one episode as a dataset episode: the observation before each action (every
    `observation.*` key), the action, then the reward and success flag it brought; `data()` adds next.done.
    The expert's episodes here and a policy's (`wam eval --record`) are recorded alike."""

    def __init__(self):
        self.steps: list[dict] = []

    def add(self, obs: dict, action, reward: float, success: bool) -> None:
        keep = {k: np.asarray(v) for k, v in obs.items() if k.startswith("observation.")}
        self.steps.append(
            {
                **keep,
                "action": np.asarray(action, np.float32),
                "next.reward": np.float32(reward),
                "next.success": bool(success),
            }
        )

    def data(self) -> dict[str, np.ndarray]:
        out = {k: np.stack([s[k] for s in self.steps]) for k in self.steps[0]}
        for k in ("observation.state", "observation.environment_state", "next.reward"):
            if k in out:
                out[k] = out[k].astype(np.float32)
        done = np.zeros(len(self.steps), bool)
        done[-1] = True
        out["next.done"] = done
        return out


def env_metadata(env) -> dict[str, Any]:
    """What a dataset of `env`'s episodes records about it: fps, robot type and the names of its vectors."""
    names = {
        "action": getattr(env, "action_names", None),
        "observation.state": getattr(env, "state_names", None),
        "observation.environment_state": getattr(env, "environment_state_names", None),
    }
    return {
        "fps": int(getattr(env, "fps", 30)),
        "robot_type": getattr(env, "robot_type", None),
        "names": {k: list(v) for k, v in names.items() if v},
    }


def episode_seed(seed: int, task: str, attempt: int) -> int:
    """A seed for one attempt, independent of which other tasks are collected alongside."""
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode()), attempt]).generate_state(1)[0] >> 1)


def run_episode(
    env_name: str,
    task: str,
    seed: int,
    *,
    image_size: int = 64,
    cameras: Sequence[str] | None = None,
    after_success: int = 10,
    max_steps: int | None = None,
    state: str | None = None,
    action_noise: float = 0.0,
    env_options: dict | None = None,
) -> dict[str, Any]:
    """Run the scripted expert for one episode and return its arrays (see the module docstring).
    action_noise > 0 adds Gaussian noise of that standard deviation to every action the expert chooses (the
    noisy action is executed and recorded, clipped to the action space), from a generator seeded by `seed`.
    env_options: further settings of the adapter's make_env (a protocol's look, goal markers, render size)."""
    adapter = get_adapter(env_name)
    options = dict(env_options or {})
    key = (env_name, task, image_size, tuple(cameras) if cameras else None, state, tuple(sorted(options.items())))
    env = _ENV_CACHE.pop(key, None)
    if env is None:
        env = adapter.make_env(
            task, image_size=image_size, cameras=cameras, **({"state": state} if state else {}), **options
        )
    _ENV_CACHE[key] = env  # (re)inserted last: the dict's order is the order of use
    while len(_ENV_CACHE) > _ENV_CACHE_SIZE:
        _ENV_CACHE.pop(next(iter(_ENV_CACHE))).close()
    params = inspect.signature(adapter.make_expert).parameters
    expert = adapter.make_expert(task, seed=seed) if "seed" in params else adapter.make_expert(task)
    obs, _ = env.reset(seed=seed)
    limit = min(max_steps or env.max_episode_steps, env.max_episode_steps)
    recorder = EpisodeRecorder()
    first_success = -1
    noise = np.random.default_rng([seed, 1]) if action_noise > 0 else None
    space = getattr(env, "action_space", None)
    low, high = (space.low, space.high) if space is not None and hasattr(space, "low") else (-1.0, 1.0)
    for step in range(limit):
        action = np.asarray(expert(obs), dtype=np.float32)
        if noise is not None:  # a perturbed expert: it sees where the noise took it and corrects from there
            action = np.clip(action + noise.normal(0.0, action_noise, action.shape), low, high).astype(np.float32)
        before = obs
        obs, reward, terminated, truncated, info = env.step(action)
        success = bool(info.get("success", False))
        recorder.add(before, action, reward, success)
        if success and first_success < 0:
            first_success = step
        if terminated or truncated or (first_success >= 0 and step - first_success >= after_success):
            break
    data = recorder.data()
    meta = env_metadata(env)
    return {
        "data": data,
        "task": task,
        "description": env.task_description,
        "seed": seed,
        "success": first_success >= 0,
        "first_success": first_success,
        "length": len(data["action"]),
        "fps": meta["fps"],
        "robot_type": meta["robot_type"] or env_name,
        "names": meta["names"],
    }


def _job(args: tuple) -> dict[str, Any]:
    env_name, task, seed, kwargs = args
    return run_episode(env_name, task, seed, **kwargs)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    import torch

    # one thread per worker: a resize to the model's size runs in torch, and worker processes that each spin a
    # thread per core contend for the cores (MT50 at 480 px, 2 workers on 2 cores: 4.2 s per kept episode with
    # torch's default threads; 2.2-2.9 s on the next episodes with one thread each)
    torch.set_num_threads(1)


def collect(
    env: str,
    *,
    tasks: str | Sequence[str] | None = None,
    episodes: int,
    out: str | Path,
    image_size: int = 64,
    cameras: Sequence[str] | None = None,
    workers: int | None = None,
    keep_failed: bool = False,
    max_attempts: int | None = None,
    after_success: int = 10,
    max_steps: int | None = None,
    seed: int = 0,
    codec: str = "h264",
    crf: int | None = None,
    state: str | None = None,
    action_noise: float = 0.0,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    protocol: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect `episodes` expert episodes per task into a LeRobot v3.0 dataset at `out`.

    Returns the summary also written to meta/collection.json: per-task attempts, successes, success
    rate, kept episodes and mean length, and the settings. Raises a `wam.errors.WamError` for bad settings.
    `state` is the environment's `observation.state` setting (MetaWorld: "proprio", the default, or "full").
    `protocol` names a benchmark's environment settings (MetaWorld: `PROTOCOLS`, e.g. "lerobot": MetaWorld's own
    look and goal markers, rendered at 480 px and resized to `image_size`, 400 steps), so that training frames
    are made as the evaluation's are; its camera and state are the defaults of `cameras` and `state`.
    `action_noise` perturbs the expert (see `run_episode`): with `keep_failed`, episodes that fail, stall or
    succeed late, the outcomes an outcome model (`wam critic`) must tell apart.
    Every `checkpoint_every` kept episodes (0: never) the work so far is made safe on disk; `resume=True`
    continues an interrupted collection of `out` from its last checkpoint, with the same settings (the
    number of workers may differ), into the same dataset an uninterrupted run gives.
    """
    from tqdm.auto import tqdm

    _check_collect_settings(
        episodes=episodes,
        action_noise=action_noise,
        codec=codec,
        checkpoint_every=checkpoint_every,
        resume=resume,
        overwrite=overwrite,
    )
    adapter = get_adapter(env)
    task_list = adapter.resolve_tasks(tasks)
    out = Path(out)
    max_attempts = _max_attempts(episodes, keep_failed, max_attempts)
    if max_attempts < episodes:
        raise ArgumentError(f"`max_attempts` ({max_attempts}) must be at least `episodes` ({episodes})")
    workers = max(1, workers or os.cpu_count() or 1)
    cameras, state, env_options = _env_settings(adapter, env, cameras=cameras, state=state, protocol=protocol)
    # everything that decides the dataset's contents (and its files): a resumed collection must repeat it
    settings = {
        "env": env,
        "tasks": list(task_list),
        "episodes": episodes,
        "seed": seed,
        "image_size": image_size,
        "protocol": protocol,
        "cameras": list(cameras) if cameras else None,
        "state": state,
        "action_noise": action_noise,
        "keep_failed": keep_failed,
        "max_attempts": max_attempts,
        "after_success": after_success,
        "max_steps": max_steps,
        "codec": codec,
        "crf": crf,
        "checkpoint_every": checkpoint_every,
    }
    tasks_arg = tasks if isinstance(tasks, str) or tasks is None else ",".join(tasks)
    resume_cmd = _resume_command(settings, tasks_arg, workers, out)
    partial, saved = _resume_point(out, settings, resume=resume, overwrite=overwrite)
    kwargs = {
        "image_size": image_size,
        "cameras": list(cameras) if cameras else None,
        "after_success": after_success,
        "max_steps": max_steps,
        "state": state,
        "action_noise": action_noise,
        "env_options": env_options,
    }
    run = _Collection(env, out, task_list, settings, kwargs, codec=codec, crf=crf, overwrite=overwrite)
    if saved is not None:
        run.restore(saved, partial)
        if progress:
            print(f"resuming {out}: {len(run.kept_episodes)} episodes kept at the last checkpoint", file=sys.stderr)
    bar = tqdm(
        total=len(task_list) * episodes,
        initial=len(run.kept_episodes),
        unit="ep",
        desc=f"collecting {env}",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        _run_jobs(run, workers, bar)
        bar.close()
        summary = _summary(
            env,
            task_list,
            run.stats,
            run.kept_episodes,
            time.time() - run.t0,
            seed=seed,
            episodes_per_task=episodes,
            settings={
                **kwargs,
                "keep_failed": keep_failed,
                "max_attempts": max_attempts,
                "workers": workers,
                "codec": codec,
                "crf": crf,
            },
        )
        _finalize(run, summary, max_attempts)
    except BaseException:
        bar.close()
        run.suspend(resume_cmd, checkpoint_every)
        raise
    finally:
        while _ENV_CACHE:  # environments run in this process (small collections): free their GL contexts
            _ENV_CACHE.popitem()[1].close()
    if progress:
        print_summary(summary, out)
    return summary


def _run_jobs(run: _Collection, workers: int, bar) -> None:
    """Run the collection's episodes until it has what it needs: in this process, or in `workers` processes when
    a round has more than twice as many episodes (a pool is not worth starting for a few)."""
    pool = None
    try:
        while jobs := run.next_jobs():
            if pool is None and workers > 1 and len(jobs) > 2 * workers:
                pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker)
            for res in pool.imap(_job, jobs) if pool is not None else map(_job, jobs):
                run.add(res, bar)
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def _finalize(run: _Collection, summary: dict, max_attempts: int) -> None:
    """Write meta/collection.json and move the finished dataset into place."""
    if run.writer is None:
        raise ArgumentError(
            f"no episode was kept (the expert never succeeded in {max_attempts} attempts per "
            f"task); pass `keep_failed=True` to keep failed episodes"
        )
    run.writer.add_meta_file("collection.json", json.dumps(summary, indent=2))
    run.writer.finalize()


def _max_attempts(episodes: int, keep_failed: bool, given: int | None) -> int:
    return given or (episodes if keep_failed else 4 * episodes)


# what decides a dataset's contents, as meta/collection.json records it (`recorded_settings`)
_RECORDED = ("image_size", "cameras", "state", "env_options", "after_success", "max_steps", "action_noise")
_RECORDED += ("keep_failed", "max_attempts", "codec", "crf")


def collection_settings(env: str, **kwargs: Any) -> dict[str, Any]:
    """The settings that decide the contents of the dataset `collect(env, **kwargs)` makes, as
    `recorded_settings` reads them back from its meta/collection.json: a dataset made by another command can be
    checked against a collection's arguments (`wam.recipe`). Arguments that do not change the data (`out`,
    `workers`, `checkpoint_every`, ...) are accepted and left out."""
    args = {k: p.default for k, p in inspect.signature(collect).parameters.items() if p.default is not p.empty}
    args.update(kwargs)
    adapter = get_adapter(env)
    cameras, state, env_options = _env_settings(
        adapter, env, cameras=args["cameras"], state=args["state"], protocol=args["protocol"]
    )
    resolved = {
        **args,
        "cameras": list(cameras) if cameras else None,
        "state": state,
        "env_options": env_options,
        "max_attempts": _max_attempts(args["episodes"], args["keep_failed"], args["max_attempts"]),
    }
    out = {
        "env": env,
        "tasks": list(adapter.resolve_tasks(args["tasks"])),
        "episodes": args["episodes"],
        "seed": args["seed"],
        **{k: resolved[k] for k in _RECORDED},
    }
    return json.loads(json.dumps(out))  # as the JSON file holds them (tuples as lists)


def recorded_settings(summary: dict[str, Any]) -> dict[str, Any]:
    """`collection_settings` as a dataset's meta/collection.json (the summary `collect` returns) records them."""
    s = summary["settings"]
    return {
        "env": summary["env"],
        "tasks": [t["task"] for t in summary["tasks"]],
        "episodes": summary["episodes_per_task"],
        "seed": summary["seed"],
        **{k: s.get(k) for k in _RECORDED},
    }


def _check_collect_settings(
    *, episodes: int, action_noise: float, codec: str, checkpoint_every: int, resume: bool, overwrite: bool
) -> None:
    from wam.data.video import CODECS

    if episodes < 1:
        raise ArgumentError(f"`episodes` must be at least 1, got {episodes}")
    if not action_noise >= 0:
        raise ArgumentError(f"`action_noise` must be >= 0 (a standard deviation in action units), got {action_noise}")
    if codec not in CODECS:
        raise ArgumentError(f"unknown video codec {codec!r}; choose one of: {', '.join(CODECS)}")
    if checkpoint_every < 0:
        raise ArgumentError(f"`checkpoint_every` must be >= 0 (0: never), got {checkpoint_every}")
    if resume and overwrite:
        raise ArgumentError(
            "`resume=True` continues an interrupted collection and `overwrite=True` starts over: pass one of them"
        )


def _env_settings(adapter, env: str, *, cameras, state: str | None, protocol: str | None):
    """The cameras, state and environment options of a collection: a named protocol's (`protocol`) unless given."""
    modes = getattr(adapter, "STATE_MODES", None)
    if state is not None and (modes is None or state not in modes):
        raise ArgumentError(
            f"unknown `state={state!r}` for {env}; "
            + (
                f"choose one of: {', '.join(modes)}"
                if modes
                else f"{env} has a single kind of state, leave `state` out"
            )
        )
    env_options = {}
    if protocol is not None:
        if not hasattr(adapter, "protocol"):
            raise ArgumentError(f"environment {env!r} has no named protocols")
        env_options = adapter.protocol(protocol)
        protocol_cameras, protocol_state = env_options.pop("cameras", None), env_options.pop("state", None)
        cameras = cameras or (list(protocol_cameras) if protocol_cameras else None)
        state = state or protocol_state
    return cameras, state, env_options


def _resume_point(out: Path, settings: dict, *, resume: bool, overwrite: bool):
    """(the interrupted write of `out`, its saved collection state) to resume from, or (it or None, None) for a
    fresh collection; refuses what cannot go on."""
    from wam.data.writer import find_resumable, read_checkpoint

    partial = find_resumable(out)
    if resume:
        if partial is None:
            if (out / "meta" / "info.json").is_file():
                raise ArgumentError(
                    f"nothing to resume: {out} is a complete dataset; choose another `out`, or pass "
                    f"`overwrite=True` (without `resume=True`) to collect it again"
                )
            raise NotFoundError(
                f"nothing to resume: no interrupted collection of {out} with a checkpoint was found "
                f"(a collection stopped before its first checkpoint, every `checkpoint_every` kept "
                f"episodes, leaves none); run the command without `resume=True`"
            )
        saved = read_checkpoint(partial)["extra"].get("collect")
        if saved is None:
            raise DatasetError(f"{partial} was not written by `wam collect`; it cannot be resumed from here")
        _check_same_settings(saved["settings"], settings)
        return partial, saved
    if partial is not None and not overwrite:
        n = len(read_checkpoint(partial)["episodes"])
        raise ArgumentError(
            f"an interrupted collection of {out} holds {n} episodes (in {partial}); pass "
            f"`resume=True` to continue it, or `overwrite=True` to start over (and delete it)"
        )
    if out.exists() and not overwrite:
        raise ArgumentError(f"{out} already exists; choose another `out` or pass `overwrite=True`")
    return partial, None


class _Collection:
    """A collection's progress: rounds of attempts planned per task, kept episodes written, checkpoints."""

    def __init__(
        self,
        env: str,
        out: Path,
        task_list: list[str],
        settings: dict,
        kwargs: dict,
        *,
        codec: str,
        crf,
        overwrite: bool,
    ):
        self.env, self.out, self.task_list, self.settings, self.kwargs = env, out, task_list, settings, kwargs
        self.codec, self.crf, self.overwrite = codec, crf, overwrite
        self.stats = {t: {"attempts": 0, "successes": 0, "kept": 0, "frames": 0} for t in task_list}
        self.kept_episodes: list[dict] = []
        self.next_attempt = {t: 0 for t in task_list}
        self.round_jobs: list[tuple[str, int]] = []  # the round being worked through: (task, attempt) in order
        self.processed = 0  # how many of round_jobs are done
        self.writer = None
        self.t0 = time.time()

    def restore(self, saved: dict, partial: Path) -> None:
        from wam.data.writer import LeRobotWriter

        self.writer = LeRobotWriter.resume(self.out, partial=partial)
        self.stats, self.kept_episodes, self.next_attempt = saved["stats"], saved["episodes"], saved["next_attempt"]
        self.round_jobs, self.processed = [(t, a) for t, a in saved["round"]], saved["processed"]
        self.t0 -= saved["seconds"]

    def next_jobs(self) -> list[tuple]:
        """The jobs left in this round; a new round when it is done: enough attempts to fill each task at its
        observed success rate. Empty: the collection is done."""
        s_ = self.settings
        episodes, max_attempts, keep_failed = s_["episodes"], s_["max_attempts"], s_["keep_failed"]
        if self.processed >= len(self.round_jobs):
            self.round_jobs, self.processed = [], 0
            for t in self.task_list:
                s = self.stats[t]
                need = episodes - s["kept"]
                left = max_attempts - s["attempts"]
                if need <= 0 or left <= 0:
                    continue
                rate = s["successes"] / s["attempts"] if s["attempts"] and not keep_failed else 1.0
                n = min(left, need if rate >= 1.0 else math.ceil(need / max(rate, 0.1)))
                self.round_jobs += [(t, a) for a in range(self.next_attempt[t], self.next_attempt[t] + n)]
                self.next_attempt[t] += n
        return [
            (self.env, t, episode_seed(s_["seed"], t, a), self.kwargs) for t, a in self.round_jobs[self.processed :]
        ]

    def add(self, res: dict, bar) -> None:
        """One attempt's result: counted, and written when it is kept; a checkpoint every checkpoint_every kept."""
        from wam.data.writer import LeRobotWriter

        self.processed += 1
        s = self.stats[res["task"]]
        s["attempts"] += 1
        s["successes"] += int(res["success"])
        if (res["success"] or self.settings["keep_failed"]) and s["kept"] < self.settings["episodes"]:
            if self.writer is None:
                self.writer = LeRobotWriter(
                    self.out,
                    fps=res["fps"],
                    robot_type=res["robot_type"],
                    codec=self.codec,
                    crf=self.crf,
                    overwrite=self.overwrite,
                    names={k: v for k, v in res["names"].items() if v},
                )
            index = self.writer.add_episode(res["data"], task=res["description"])
            s["kept"] += 1
            s["frames"] += res["length"]
            self.kept_episodes.append(
                {
                    "episode_index": index,
                    "task": res["task"],
                    "seed": res["seed"],
                    "success": res["success"],
                    "first_success": res["first_success"],
                    "length": res["length"],
                }
            )
            bar.update(1)
            every = self.settings["checkpoint_every"]
            if every and len(self.kept_episodes) % every == 0:
                # at fixed episode counts, so an uninterrupted run splits its files at the same places
                self.writer.checkpoint(
                    {
                        "collect": {
                            "settings": self.settings,
                            "stats": self.stats,
                            "episodes": self.kept_episodes,
                            "next_attempt": self.next_attempt,
                            "round": self.round_jobs,
                            "processed": self.processed,
                            "seconds": round(time.time() - self.t0, 2),
                        }
                    }
                )
        attempts = sum(v["attempts"] for v in self.stats.values())
        rate = sum(v["successes"] for v in self.stats.values()) / attempts
        bar.set_postfix(attempts=attempts, success=f"{100 * rate:.0f}%")

    def suspend(self, resume_cmd: str, checkpoint_every: int) -> None:
        """Stopped: keep the last checkpoint, if any (else delete everything), and say how to continue."""
        if self.writer is None:
            return
        kept = self.writer.suspend()
        if kept:
            print(
                f"wam collect: stopped; {kept} episodes are kept at the last checkpoint (in {self.writer.tmp}). "
                f"Continue with:\n  {resume_cmd}",
                file=sys.stderr,
            )
        elif checkpoint_every:
            print(
                f"wam collect: stopped before the first checkpoint ({checkpoint_every} kept episodes); "
                f"nothing was kept",
                file=sys.stderr,
            )


def _check_same_settings(saved: dict[str, Any], given: dict[str, Any]) -> None:
    """Refuse to resume with a setting that would change the data (naming it, with both values)."""
    for key, value in given.items():
        before = saved.get(key)
        if before != value:
            name = "the environment" if key == "env" else f"`{key}`"
            show = lambda v: ",".join(v) if isinstance(v, list) else repr(v)  # noqa: E731
            raise ArgumentError(
                f"cannot resume: {name} was {show(before)} in the interrupted collection, this "
                f"command gives {show(value)}; repeat the original settings, or pass "
                f"`overwrite=True` (without `resume=True`) to start over"
            )


def _resume_command(settings: dict[str, Any], tasks_arg: str | None, workers: int, out: Path) -> str:
    """The command line that continues this collection (the settings that differ from the defaults)."""
    s = settings
    args = ["wam", "collect", s["env"]] + (["--tasks", tasks_arg] if tasks_arg else [])
    args += ["--episodes", str(s["episodes"]), "--out", str(out), "--workers", str(workers)]
    default_attempts = s["episodes"] if s["keep_failed"] else 4 * s["episodes"]
    flags = {
        "--image-size": (s["image_size"], 64),
        "--cameras": (",".join(s["cameras"] or []), ""),
        "--max-attempts": (s["max_attempts"], default_attempts),
        "--after-success": (s["after_success"], 10),
        "--max-steps": (s["max_steps"], None),
        "--seed": (s["seed"], 0),
        "--codec": (s["codec"], "h264"),
        "--crf": (s["crf"], None),
        "--state": (s["state"], None),
        "--action-noise": (s["action_noise"], 0.0),
        "--checkpoint-every": (s["checkpoint_every"], CHECKPOINT_EVERY),
        "--protocol": (s.get("protocol"), None),
    }
    for flag, (value, default) in flags.items():
        if value != default:
            args += [flag, str(value)]
    args += ["--keep-failed"] * bool(s["keep_failed"]) + ["--resume"]
    return " ".join(shlex.quote(a) for a in args)


def _summary(env: str, tasks: list[str], stats: dict, kept: list[dict], elapsed: float, **extra) -> dict:
    rows = []
    for t in tasks:
        s = stats[t]
        rows.append(
            {
                "task": t,
                "attempts": s["attempts"],
                "successes": s["successes"],
                "success_rate": round(s["successes"] / s["attempts"], 4) if s["attempts"] else None,
                "kept": s["kept"],
                "mean_length": round(s["frames"] / s["kept"], 1) if s["kept"] else None,
            }
        )
    frames = sum(s["frames"] for s in stats.values())
    attempts = sum(s["attempts"] for s in stats.values())
    return {
        "env": env,
        "tasks": rows,
        "episodes_kept": len(kept),
        "frames": frames,
        "attempts": attempts,
        "success_rate": round(sum(s["successes"] for s in stats.values()) / max(attempts, 1), 4),
        "seconds": round(elapsed, 2),
        "frames_per_second": round(frames / max(elapsed, 1e-9), 1),
        **extra,
        "episodes": kept,
    }


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
    print(
        f"wrote {out}: {summary['episodes_kept']} episodes, {summary['frames']} frames in {summary['seconds']:.1f}s "
        f"({summary['frames_per_second']:.0f} frames/s)"
    )
