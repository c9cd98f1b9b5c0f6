"""Evaluation, apart from training: closed-loop rollouts in simulation and world-model metrics offline.

Runbook:
    # closed loop: 20 episodes per MT10 task in policy mode, the scripted expert on the same seeds beside it
    wam eval --checkpoint runs/mt10/checkpoint --env metaworld --tasks mt10 --episodes 20 --mode policy
    # the same, plus frame PSNR/SSIM of forward and video mode on the run's held-out episodes
    wam eval --checkpoint runs/mt10/checkpoint --tasks mt10 --episodes 20 --world-model --dataset data/mt10

`wam.rollout.rollout(env, policy, seeds)` runs one episode per seed and returns documented arrays;
`evaluate(...)` runs it for every task, writes `eval_info.json` (LeRobot's aggregate keys `pc_success`,
`avg_sum_reward`, `avg_max_reward`, per-task rows with Wilson 95% intervals from `wam.stats`, every setting that
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
import os
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wam.atomic import write_json_atomic
from wam.collect import env_metadata
from wam.episodes import map_tasks
from wam.errors import ArgumentError
from wam.rollout import ExpertPolicy, rollout, rollout_vector, write_video
from wam.stats import aggregate, group_results, psnr, ssim, task_row, to_unit

EVAL_STREAM = 0x5EED  # mixes into evaluation seeds so they differ from collection seeds of the same seed

# Named evaluation seed sets. `dev`: tune, compare and choose on it as often as you like (every choice of the
# earlier references was made on it). `test`: evaluated once per shipped checkpoint, never used to choose
# anything; the headline numbers come from it. Each names the `seed` that `eval_seeds` derives episodes from.
SEED_SETS: dict[str, int] = {"dev": 0, "test": 7919}


def resolve_seed(seed: int | str) -> tuple[int, str | None]:
    """(seed, name of its seed set or None) from an integer seed or a seed set's name (`SEED_SETS`)."""
    if isinstance(seed, str) and not seed.lstrip("-").isdigit():
        if seed not in SEED_SETS:
            raise ArgumentError(f"unknown seed set {seed!r}; give an integer seed or one of: {', '.join(SEED_SETS)}")
        return SEED_SETS[seed], seed
    value = int(seed)
    return value, next((name for name, s in SEED_SETS.items() if s == value), None)


def eval_seeds(seed: int, task: str, n: int) -> list[int]:
    """n reproducible episode seeds for one task, disjoint in derivation from `wam collect`'s."""
    return [
        int(np.random.SeedSequence([seed, EVAL_STREAM, zlib.crc32(task.encode()), i]).generate_state(1)[0] >> 1)
        for i in range(n)
    ]


class _RolloutDataset:
    """The policy's rollouts, task by task, into a LeRobot dataset (written aside and moved into place at
    the end, so an interrupted evaluation leaves nothing half-written at `root`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists():
            raise ArgumentError(
                f"`record={str(self.root)!r}` already exists; choose a new path for the rollouts' dataset"
            )
        self.writer = None
        self.episodes: list[dict] = []

    def add(self, row: dict) -> dict:
        """Writes the row's episodes; returns the row without them (what eval_info.json keeps)."""
        from wam.data.writer import LeRobotWriter

        episodes, meta = row.pop("_episodes"), row.pop("_env")
        if self.writer is None:
            self.writer = LeRobotWriter(self.root, fps=meta["fps"], robot_type=meta["robot_type"], names=meta["names"])
        for i, data in enumerate(episodes):
            index = self.writer.add_episode(data, task=row["description"])
            self.episodes.append(
                {
                    "episode_index": index,
                    "task": row["task"],
                    "seed": row["seeds"][i],
                    "success": row["successes"][i],
                    "first_success": row["first_success"][i],
                    "length": len(data["action"]),
                }
            )
        return row

    def finalize(self, settings: dict) -> dict:
        if self.writer is None:
            raise ArgumentError("no episode was run; nothing to record")
        summary = {
            "source": "wam eval",
            "settings": settings,
            "episodes": self.episodes,
            "pc_success": 100.0 * float(np.mean([e["success"] for e in self.episodes])),
        }
        self.writer.add_meta_file("rollouts.json", json.dumps(summary, indent=2))
        self.writer.finalize()
        return {
            "path": str(self.root),
            "episodes": len(self.episodes),
            "frames": int(sum(e["length"] for e in self.episodes)),
        }

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def evaluate_task(
    policy,
    env: str,
    task: str,
    *,
    episodes: int,
    out: Path,
    seed: int = 0,
    max_steps: int | None = None,
    after_success: int = 0,
    expert: bool = True,
    videos_per_task: int = 2,
    image_size: int = 64,
    cameras: list[str] | None = None,
    num_envs: int = 1,
    progress: Callable[[], None] | None = None,
    env_options: dict | None = None,
    keep_episodes: bool = False,
    protocol_options: dict | None = None,
) -> dict:
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
        res = rollout_vector(
            env_fn, policy, seeds, num_envs=num_envs, record=videos_per_task, keep_episodes=keep_episodes, **kw
        )
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
    row = task_row(task, description, seeds, res, ref, paths)
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


def trained_protocol(policy, env: str) -> str | None:
    """The benchmark protocol `policy`'s training data was collected under (recorded in its checkpoint), if `env`
    has it: what an evaluation uses when none is named, so a model is scored on the scene it was trained for."""
    name = getattr(policy, "protocol", None)
    if name is None:
        return None
    from wam.envs import get_adapter

    return name if name in getattr(get_adapter(env), "PROTOCOLS", {}) else None


def protocol_env_options(
    policy, env: str, tasks: list[str], protocol: str | None, cameras: list[str] | None, render_size: int | None
) -> dict:
    """The environment settings of a named protocol, checked against what `policy` reads ({} for none)."""
    if protocol is None:
        return {}
    from wam.envs import get_adapter

    adapter = get_adapter(env)
    if not hasattr(adapter, "protocol"):
        raise ArgumentError(f"environment {env!r} has no named protocols")
    opts = adapter.protocol(protocol)
    if render_size is not None and render_size != opts.get("render_size"):
        raise ArgumentError(f"protocol {protocol!r} renders at {opts.get('render_size')} px; leave render_size out")
    wanted = list(opts.pop("cameras", ()) or ())
    if wanted and cameras and cameras != wanted:
        raise ArgumentError(f"protocol {protocol!r} gives the camera(s) {wanted}; this policy reads {cameras}")
    policy_state = env_options_for(policy, env, tasks[0]).get("state")
    if policy_state and opts.get("state") and policy_state != opts["state"]:
        raise ArgumentError(
            f"protocol {protocol!r} gives observation.state={opts['state']!r}; this policy was trained "
            f"on state={policy_state!r}"
        )
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


def _task_rows(
    policy,
    env: str,
    task_names: list[str],
    kwargs: dict,
    *,
    workers: int,
    bar,
    per_task: int,
    on_row: Callable[[dict], dict] | None = None,
) -> list:
    """`evaluate_task` for every task, in this process or spread over `workers` processes (a WAMPolicy only);
    each row goes through `on_row` as it comes (the recorder writes its episodes and drops them)."""
    on_row = on_row or (lambda row: row)
    workers = max(1, min(workers, len(task_names)))
    if workers == 1:
        rows = []
        for task in task_names:
            if bar is not None:
                bar.set_postfix(task=task)
            rows.append(
                on_row(
                    evaluate_task(
                        policy, env, task, **kwargs, progress=(lambda: bar.update(1)) if bar is not None else None
                    )
                )
            )
        return rows
    spec = getattr(policy, "spec", None)
    if spec is None:
        raise ArgumentError(
            "evaluation in several processes needs a WAMPolicy (it is rebuilt from its checkpoint "
            "in each process); use workers=1 for other policies"
        )
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    # (not multiprocessing.Pool: its daemonic workers may not start the environments' own processes)
    rows = []
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    ) as pool:
        for row in pool.map(_task_job, [(spec, env, t, kwargs) for t in task_names]):
            rows.append(on_row(row))
            if bar is not None:
                bar.update(per_task)
    return rows


def _fingerprint(policy, env: str, kwargs: dict) -> dict:
    """Everything that decides a task's row: the policy's settings (its checkpoint's hash among them), the
    environment and scene, the seeds and the episode rules. Not the number of processes or environments."""
    decides = {k: v for k, v in kwargs.items() if k not in ("out", "num_envs", "keep_episodes")}
    decides = {k: list(v) if isinstance(v, tuple) else v for k, v in decides.items()}
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in (decides.pop("protocol_options") or {}).items()}
    return json.loads(
        json.dumps({"env": env, **decides, "protocol_options": options, **getattr(policy, "settings", {})})
    )


class _TaskRows:
    """The rows of the tasks done so far, one file each (`<task>.json`: the row, the fingerprint of the evaluation
    that made it and its seconds), kept so an interrupted evaluation can resume. Without `resume` the folder
    starts empty."""

    def __init__(self, root: Path, fingerprint: dict, *, resume: bool):
        import shutil

        self.root, self.fingerprint = root, fingerprint
        self.rows: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        if not resume:
            shutil.rmtree(root, ignore_errors=True)
        for f in sorted(root.glob("*.json")) if root.is_dir() else []:
            saved = json.loads(f.read_text())
            if saved.get("fingerprint") == fingerprint:
                self.rows[saved["row"]["task"]] = saved["row"]
                self.seconds[saved["row"]["task"]] = saved.get("seconds", 0.0)
        self._t = time.perf_counter()

    def add(self, row: dict) -> dict:
        now = time.perf_counter()
        self.rows[row["task"]], self.seconds[row["task"]] = row, now - self._t
        self._t = now
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"fingerprint": self.fingerprint, "seconds": self.seconds[row["task"]], "row": row}
        write_json_atomic(self.root / f"{row['task']}.json", entry)
        return row


def _scene(policy, env: str, tasks: list[str], protocol: str | None, render_size: int | None) -> dict:
    """What the environment shows `policy`: its cameras and sizes, and the protocol (given, else the one its
    checkpoint records, `trained_protocol`) with that protocol's settings."""
    image_size = getattr(policy, "image_size", None) or getattr(getattr(policy, "cfg", None), "image_size", 64)
    if render_size is not None and render_size < 16:
        raise ArgumentError(f"render_size must be at least 16 pixels, got {render_size}")
    cameras = [c.removeprefix("observation.images.") for c in getattr(policy, "cameras", [])] or None
    protocol_from = "given" if protocol is not None else None
    if protocol is None and render_size is None:
        protocol = trained_protocol(policy, env)
        protocol_from = "checkpoint" if protocol is not None else None
    options = protocol_env_options(policy, env, tasks, protocol, cameras, render_size)
    render_size = options.get("render_size") or (int(render_size) if render_size else image_size)
    return {
        "image_size": image_size,
        "render_size": render_size,
        "env_size": image_size if options else render_size,  # a protocol's env resizes; else the policy does
        "cameras": cameras,
        "protocol": protocol,
        "protocol_from": protocol_from,
        "protocol_options": options,
    }


def _run_tasks(policy, env: str, tasks: list[str], kwargs: dict, *, workers: int, on_row, recorder, progress: bool):
    """Every task's row (`_task_rows`, each through `on_row`) under a progress bar; the recording is dropped if
    anything fails."""
    per_task = kwargs["episodes"] * (2 if kwargs["expert"] else 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks) * per_task, desc="evaluating", unit="ep", dynamic_ncols=True)
    try:
        rows = _task_rows(
            policy,
            env,
            tasks,
            kwargs,
            workers=workers,
            bar=bar,
            per_task=per_task,
            on_row=on_row,
        )
    except BaseException:
        if recorder is not None:
            recorder.abort()
        raise
    if bar is not None:
        bar.close()
    return rows


def evaluate(
    policy,
    *,
    env: str = "metaworld",
    tasks: str | Sequence[str] | None = "mt10",
    episodes: int = 20,
    out: str | Path = "runs/eval",
    seed: int | str = 0,
    max_steps: int | None = None,
    after_success: int = 0,
    expert: bool = True,
    videos_per_task: int = 2,
    workers: int = 1,
    num_envs: int = 1,
    world_model: dict | None = None,
    render_size: int | None = None,
    protocol: str | None = None,
    log_path: str | Path | None = None,
    settings: dict | None = None,
    progress: bool = True,
    record: str | Path | None = None,
    resume: bool = False,
) -> dict:
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
    camera and the state. A policy that reads another camera or state than the protocol gives is refused. Left
    out (and no `render_size` given), it is the protocol the policy's training data was collected under when its
    checkpoint records one (`policy.protocol`); eval_info.json says which (`protocol_from`).

    `workers` > 1 spreads the tasks over that many processes (a WAMPolicy only; each rebuilds it from its
    checkpoint with one thread). `num_envs` > 1 runs that many environments of a task at once in
    parallel processes, the policy's chunks batched (`rollout_vector`). Every episode starts from its own
    seed and the policy re-seeds its sampler at reset(), so the results do not depend on the number of
    workers or environments.

    `record` writes every episode the policy ran (not the expert's) to a LeRobot v3.0 dataset at that path,
    as `wam collect` writes the expert's: the cameras, the robot state, the simulator's state where it has
    one, the actions, rewards and success flags, failures included.

    Each task's row is kept in out/tasks/<task>.json as soon as the task is done; `resume=True` takes the rows
    there that the same evaluation wrote (the same policy, checkpoint, settings, seeds and scene) and runs only
    the other tasks: an interrupted evaluation continues, and gives the numbers an uninterrupted one gives."""
    from wam.envs import get_adapter

    task_names = get_adapter(env).resolve_tasks(tasks)
    seed, seed_set = resolve_seed(seed)
    scene = _scene(policy, env, task_names, protocol, render_size)
    recorder = _RolloutDataset(record) if record is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        episodes=episodes,
        out=out,
        seed=seed,
        max_steps=max_steps,
        after_success=after_success,
        expert=expert,
        videos_per_task=videos_per_task,
        image_size=scene["env_size"],
        cameras=scene["cameras"],
        num_envs=num_envs,
        keep_episodes=recorder is not None,
        protocol_options=scene["protocol_options"],
    )
    if resume and recorder is not None:
        raise ArgumentError("an evaluation that records its episodes cannot resume; run it again without resume")
    kept = _TaskRows(out / "tasks", _fingerprint(policy, env, kwargs), resume=resume)
    todo = [t for t in task_names if t not in kept.rows]
    if resume and progress:
        print(f"resuming {out}: {len(task_names) - len(todo)} of {len(task_names)} tasks done")

    def on_row(row: dict) -> dict:
        return kept.add(recorder.add(row) if recorder is not None else row)

    t0 = time.perf_counter()
    _run_tasks(policy, env, todo, kwargs, workers=workers, on_row=on_row, recorder=recorder, progress=progress)
    rows = [kept.rows[t] for t in task_names]
    elapsed = time.perf_counter() - t0 + sum(kept.seconds.get(t, 0.0) for t in task_names if t not in todo)
    run_settings = {
        "env": env,
        "tasks": task_names,
        "episodes_per_task": episodes,
        "seed": seed,
        "seed_set": seed_set,
        "max_steps": max_steps,
        "after_success": after_success,
        **getattr(policy, "settings", {}),
        **(settings or {}),
    }
    info = _eval_info(rows, getattr(get_adapter(env), "DIFFICULTY", None), elapsed, episodes, scene, run_settings)
    served = getattr(policy, "server_ms", None)
    if served:  # through a policy server: how long it took per chunk (decode, forward pass, encode)
        info["server_ms"] = {
            "n_chunks": len(served),
            "median": float(np.median(served)),
            "p90": float(np.percentile(served, 90)),
            "first": served[0],
        }
    if world_model is not None:
        info["world_model"] = world_model
    if recorder is not None:
        info["recorded"] = recorder.finalize(info["settings"])
    write_json_atomic(out / "eval_info.json", info)
    from wam.report import build_report

    build_report(out, info, world_model=world_model, log_path=log_path)
    return info


def _eval_info(rows: list[dict], groups, elapsed: float, episodes: int, scene: dict, run_settings: dict) -> dict:
    """eval_info.json's contents: the aggregate and group results of the task rows, the time, the rows, and the
    settings (the scene's, then the run's: its own, the policy's and the caller's, the later winning)."""
    scene_settings = {
        "protocol": scene["protocol"],
        "protocol_from": scene["protocol_from"],
        "protocol_settings": {k: list(v) if isinstance(v, tuple) else v for k, v in scene["protocol_options"].items()}
        or None,
        "image_size": scene["image_size"],
        "render_size": scene["render_size"],
        "cameras": scene["cameras"],
    }
    return {
        **aggregate(rows),
        **(group_results(rows, groups) if groups else {}),
        "eval_s": elapsed,
        "eval_ep_s": elapsed / max(1, len(rows) * episodes),
        "per_task": rows,
        "settings": {**scene_settings, **run_settings},
    }


# ---- world-model metrics ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate_world_model(
    checkpoint,
    dataset: str | Path,
    *,
    out: str | Path | None = None,
    windows: int = 256,
    steps: int = 10,
    seed: int = 0,
    strips: int = 4,
    episodes: list[int] | None = None,
    progress: bool = False,
    unknown_tasks: str = "refuse",
    drop_task: bool = False,
    action_guidance: float = 1.0,
) -> dict:
    """Forward/video-mode frame quality and inverse/policy action error on held-out episodes.

    Uses the episodes the training run held out (recorded in the checkpoint) unless `episodes` is given.
    Windows are drawn (fixed seed) among those whose future frames all lie inside the episode.
    Returns the dict described in the module docstring; with `out`, also writes real-vs-predicted
    frame strips as PNGs under out/world_model/. unknown_tasks="drop": episodes of tasks the model never
    saw are predicted with its "no task" token instead of being refused; drop_task=True: every window is.
    action_guidance: forward mode's guidance on the actions (`wam.modes.sample`), for both forward rows."""
    from wam.modes import sample

    model, cfg = checkpoint.model, checkpoint.model.cfg
    data, eps, batch, windows_at = _held_out_windows(
        checkpoint, dataset, episodes, windows=windows, seed=seed, progress=progress, unknown_tasks=unknown_tasks
    )
    batch["drop_task"] = torch.tensor([drop_task or data.episodes[e].get("no_task", False) for e, _ in windows_at])
    frames = _predicted_frames(checkpoint, data, batch, windows_at, steps=steps, seed=seed, guidance=action_guidance)
    n_obs, F = cfg.n_obs_steps, cfg.future_frames
    real_future = frames["real"][:, n_obs:]
    last = frames["real"][:, n_obs - 1 : n_obs]
    result: dict[str, Any] = {
        "windows": len(windows_at),
        "horizons": [(j + 1) * cfg.future_stride for j in range(F)],
        "sampling_steps": steps,
        "action_guidance": action_guidance,
        "episodes": list(eps),
    }

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
    result["inverse"] = {
        "action_mse": mse(inv["actions"]),
        "mean_action_mse": mse(true_actions.mean((0, 1), keepdim=True)),
    }
    result["policy"] = {"action_mse": mse(pol["actions"])}
    if out is not None and strips:
        result["strips"] = _write_strips(Path(out), frames, strips)
    return result


def _held_out_windows(checkpoint, dataset, episodes, *, windows: int, seed: int, progress: bool, unknown_tasks: str):
    """`evaluate_world_model`'s episodes (the run's held-out ones unless `episodes` is given), loaded as the model
    reads them, and up to `windows` of their windows (fixed seed) whose future frames all lie inside the episode.
    Returns the episodes, their indices, the windows' batch and each window's (episode, start)."""
    from wam.data import Normalizer
    from wam.episodes import episodes_to_tensors, load_episodes

    tok, cfg = checkpoint.tokenizer, checkpoint.model.cfg
    run = checkpoint.config.get("run", {})
    stats, held_out = checkpoint.stats, run.get("val_episodes")
    for d in run.get("datasets", []):  # a mixture: that dataset's held-out episodes (and its units, if it had actions)
        if Path(d["path"]).resolve() == Path(dataset).resolve():
            held_out = d.get("val_episodes", held_out)
            stats = d["stats"] if d.get("action_dim") else stats
    eps = episodes if episodes is not None else held_out
    if not eps:
        raise ArgumentError("no held-out episodes recorded in the checkpoint; pass episodes=[...]")
    data = load_episodes(
        dataset,
        image_size=cfg.image_size,
        cameras=run.get("cameras"),
        normalizer=Normalizer.from_dict(stats),
        episodes=eps,
        progress=progress,
    )
    map_tasks(data, run.get("tasks") or [], dataset, unknown_tasks)
    tensors = episodes_to_tensors(data.episodes, tok, cfg.action_dim, cfg.state_dim)
    ep, st = tensors.window_index()
    horizon = cfg.future_frames * cfg.future_stride
    full = st + horizon < tensors.lengths[ep]
    ep, st = ep[full], st[full]
    if len(ep) == 0:
        raise ArgumentError(
            f"no held-out episode is longer than {horizon} steps (the predicted horizon), so there is "
            f"no window to measure the world model on; hold out longer episodes"
        )
    pick = torch.randperm(len(ep), generator=torch.Generator().manual_seed(seed))[:windows]
    batch = tensors.gather(ep[pick], st[pick], cfg)
    return data, eps, batch, [(int(e), int(s)) for e, s in zip(ep[pick], st[pick])]


def _predicted_frames(checkpoint, data, batch: dict, windows_at: list, *, steps: int, seed: int, guidance: float):
    """Every window's frames in [0, 1], (B, T, C, H, W), history then future: the real ones, the tokenizer's
    reconstruction, and those predicted in forward mode (with the window's actions and with another window's:
    how much the prediction depends on the actions) and in video mode."""
    from wam.modes import sample

    model, tok, cfg = checkpoint.model, checkpoint.tokenizer, checkpoint.model.cfg
    n_obs, F = cfg.n_obs_steps, cfg.future_frames
    offsets = [*range(-n_obs + 1, 1), *[(j + 1) * cfg.future_stride for j in range(F)]]
    real = torch.stack([torch.as_tensor(data.episodes[e]["frames"][s + k]) for e, s in windows_at for k in offsets])
    frames = {"real": real.reshape(len(windows_at), n_obs + F, *real.shape[1:]).movedim(-1, 2).float() / 255.0}
    frames["tokenizer_reconstruction"] = to_unit(tok.decode(batch["latents"]))
    other = {**batch, "actions": batch["actions"].roll(1, 0), "action_is_pad": batch["action_is_pad"].roll(1, 0)}
    for name, mode, given in (
        ("forward", "forward", batch),
        ("video", "video", batch),
        ("forward_other_actions", "forward", other),
    ):
        kw = {"action_guidance": guidance} if mode == "forward" else {}
        res = sample(model, given, mode, steps=steps, generator=torch.Generator().manual_seed(seed), **kw)
        frames[name] = to_unit(tok.decode(res["latents"]))
    return frames


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
