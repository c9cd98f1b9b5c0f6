"""`wam bench`: latency, FLOPs and quality of one inference setting against the reference path.

    wam bench --checkpoint checkpoints/wam-tiny-mt10 --mode policy
    wam bench --checkpoint checkpoints/wam-tiny-mt10 --mode policy --steps 1 --quantize int8
    wam bench --checkpoint checkpoints/wam-tiny-mt10 --mode forward --steps 4

The reference path is joint mode, 50 Euler steps, no caches, fp32 (`wam.inference.REFERENCE`). Both run on
the same inputs, the checkpoint's held-out episodes, and the same noise. When the training dataset is not on
this machine (a shipped checkpoint), the environment's scripted expert collects a few fresh episodes of the
checkpoint's tasks first, once, into a cache (`expert_episodes`; it says so), and both replay those:

- acting modes (policy, joint, inverse) replay each episode's recorded observations through a
  `WAMPolicy`, one chunk every n_action_steps control steps, exactly as in closed loop (encoding the new
  frame, sampling, un-normalising; warm start sees its previous chunk). A call is one chunk.
- world-model modes (forward, video) sample the future frames of windows of those episodes and decode
  them to pixels. A call is one window.

Latency is the median and p90 over the calls after `warmup`, at batch size 1. FLOPs are counted by
torch's flop counter on one call (int8 layers are not counted). Quality: action MSE (normalised units)
and frame PSNR against the reference path's output, and each path's own error against the recorded data.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from wam.errors import ArgumentError, DatasetError, NotFoundError, WamError
from wam.inference import REFERENCE, InferenceConfig, autocast, prepare
from wam.stats import frames_psnr

ACTING = ("policy", "joint", "inverse")


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 5) -> float:
    """FLOP/s of a plain square matmul in `dtype` on this machine (the ceiling achieved FLOP/s is read against)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


@dataclass
class Run:
    """What one setting produced over the bench's inputs."""

    times: list[float] = field(default_factory=list)  # seconds per call
    outputs: list[torch.Tensor] = field(default_factory=list)  # actions (1, H, A) normalised, or frames (1, F, ...)
    flops: int = 0


class Bench:
    """A checkpoint, its held-out episodes, and the reference path's run on them (computed once)."""

    def __init__(
        self,
        checkpoint,
        dataset=None,
        *,
        episodes: int = 5,
        windows: int = 40,
        warmup: int = 3,
        seed: int = 0,
        progress: bool = False,
    ):
        from wam.data import Normalizer
        from wam.episodes import load_episodes, map_tasks

        self.ckpt, self.seed, self.warmup, self.windows = checkpoint, seed, warmup, windows
        self.cfg = checkpoint.model.cfg
        run = checkpoint.config.get("run", {})
        given = dataset is not None
        dataset = dataset or run.get("dataset")
        if given and not Path(dataset).exists():
            raise NotFoundError(
                f"`dataset={str(dataset)!r}` does not exist; give a LeRobot dataset directory, or "
                f"leave `dataset` out to replay the training dataset's held-out episodes"
            )
        if not dataset or not Path(dataset).exists():  # (a shipped checkpoint without its training data)
            dataset, chosen = expert_episodes(checkpoint, episodes, seed=seed, progress=progress)
        else:
            val = run.get("val_episodes") or []
            if not val:
                raise ArgumentError("the checkpoint records no held-out episodes to replay; pass `dataset=PATH`")
            # spread the episodes over tasks: the held-out list holds a few per task, in task order
            per_task = max(1, len(val) // max(1, len(run.get("tasks") or [1])))
            chosen = (val[::per_task] + [e for i, e in enumerate(val) if i % per_task])[:episodes]
        try:
            data = load_episodes(
                dataset,
                image_size=self.cfg.image_size,
                cameras=run.get("cameras"),
                normalizer=Normalizer.from_dict(checkpoint.stats),
                episodes=chosen,
                progress=progress,
            )
        except WamError as e:  # the dataset's own error, named
            raise DatasetError(f"cannot replay episodes of {dataset}: {e}") from None
        map_tasks(data, run.get("tasks") or [], dataset)
        self.episodes = data.episodes
        self.dataset = str(dataset)
        self._reference: dict[str, Run] = {}

    # -- acting modes: replay episodes through a WAMPolicy

    def _truth(self, ep: dict, step: int) -> torch.Tensor:
        acts = torch.as_tensor(np.asarray(ep["actions"]), dtype=torch.float32)
        idx = torch.arange(step, step + self.cfg.action_horizon).clamp(max=len(acts) - 1)
        out = torch.zeros(1, self.cfg.action_horizon, self.cfg.action_dim)
        out[0, :, : acts.shape[1]] = acts[idx]
        return out

    def _replay(self, mode: str, ic: InferenceConfig) -> Run:
        import dataclasses

        from wam.policy import Observation, WAMPolicy

        policy = WAMPolicy(self.ckpt, mode=mode, inference=ic, seed=self.seed)
        # FLOPs are counted on an uncompiled twin: a compiled function run under the counter's dispatch
        # mode would be traced again, and the count is the same
        counter = (
            policy
            if not ic.compile
            else WAMPolicy(self.ckpt, mode=mode, seed=self.seed, inference=dataclasses.replace(ic, compile=False))
        )
        k, run = policy.n_action_steps, Run()
        for ep in self.episodes:
            state = policy.new_state(self.seed)
            task = torch.tensor([ep["task_index"]])
            states = torch.as_tensor(np.asarray(ep["states"]), dtype=torch.float32) if self.cfg.state_dim else None
            for step in range(len(ep["frames"])):
                ob = Observation(ep["frames"][step][None], None if states is None else states[step][None], task, False)
                policy.push(state, ob)
                if step % k:
                    continue
                if not run.flops and len(run.times) == self.warmup:
                    with FlopCounterMode(display=False) as fc:
                        # count a copy of this call: a state's history is encoded in place, so use a twin
                        twin = counter.new_state(self.seed)
                        twin.history.extend([list(e) for e in state.history])
                        twin.states.extend(state.states)
                        twin.last_chunk, twin.since_chunk = state.last_chunk, state.since_chunk
                        counter.predict_chunks([twin], [task])
                    run.flops = fc.get_total_flops()
                t = time.perf_counter()
                policy.predict_chunks([state], [task])
                run.times.append(time.perf_counter() - t)
                run.outputs.append(state.last_chunk.clamp(-1, 1))
        return run

    def _truths(self) -> list[torch.Tensor]:
        k = max(1, self.cfg.action_horizon // 2)
        return [self._truth(ep, s) for ep in self.episodes for s in range(0, len(ep["frames"]), k)]

    # -- world-model modes: sample future frames of windows

    def _windows(self):
        from wam.episodes import episodes_to_tensors

        if not hasattr(self, "_batches"):
            tensors = episodes_to_tensors(self.episodes, self.ckpt.tokenizer, self.cfg.action_dim)
            ep, st = tensors.window_index()
            horizon = self.cfg.future_frames * self.cfg.future_stride
            full = st + horizon < tensors.lengths[ep]
            ep, st = ep[full], st[full]
            pick = torch.randperm(len(ep), generator=torch.Generator().manual_seed(self.seed))[: self.windows]
            self._batches = [tensors.gather(ep[i : i + 1], st[i : i + 1], self.cfg) for i in pick]
            n_obs = self.cfg.n_obs_steps
            self._true_frames = [
                self._to_unit(self.ckpt.tokenizer.decode(b["latents"][:, n_obs:])) for b in self._batches
            ]
        return self._batches

    @staticmethod
    def _to_unit(frames: torch.Tensor) -> torch.Tensor:
        return frames.float().add(1).div(2).clamp(0, 1)

    def _sample_windows(self, mode: str, ic: InferenceConfig) -> Run:
        import dataclasses

        from wam.modes import initial_noise, sample

        model, tok, run = prepare(self.ckpt.model, ic), self.ckpt.tokenizer, Run()
        eager = model if not ic.compile else prepare(self.ckpt.model, dataclasses.replace(ic, compile=False))
        kw = ic.sample_kwargs()
        for i, batch in enumerate(self._windows()):
            g = torch.Generator().manual_seed(self.seed + i)
            noise = initial_noise(self.cfg, "joint", 1, tuple(batch["latents"].shape[2:]), g)

            def call(net=model, batch=batch, noise=noise):
                with autocast(ic):
                    out = sample(net, batch, mode, noise=noise, **kw)
                return self._to_unit(tok.decode(out["latents"][:, self.cfg.n_obs_steps :]))

            if not run.flops and len(run.times) == self.warmup:
                with FlopCounterMode(display=False) as fc:  # (on the uncompiled network: see _replay)
                    call(eager)
                run.flops = fc.get_total_flops()
            t = time.perf_counter()
            frames = call()
            run.times.append(time.perf_counter() - t)
            run.outputs.append(frames)
        return run

    # -- public

    def run(self, mode: str, ic: InferenceConfig) -> Run:
        with torch.no_grad():
            return self._replay(mode, ic) if mode in ACTING else self._sample_windows(mode, ic)

    def reference(self, kind: str) -> Run:
        """The reference path's run for acting modes (kind "actions") or world-model modes (kind "frames")."""
        if kind not in self._reference:
            with torch.no_grad():  # joint mode: its actions, or its decoded frames
                self._reference[kind] = (
                    self._replay("joint", REFERENCE) if kind == "actions" else self._sample_windows("joint", REFERENCE)
                )
        return self._reference[kind]

    def measure(self, mode: str, ic: InferenceConfig) -> dict:
        """The JSON `wam bench` prints for one setting."""
        from wam.modes import get_mode

        get_mode(mode)
        acting = mode in ACTING
        ref = self.reference("actions" if acting else "frames")
        run = self.run(mode, ic)
        result = {
            "mode": mode,
            "inference": ic.to_dict(),
            "calls": len(run.times) - self.warmup,
            **_latency(run.times[self.warmup :]),
            "flops_per_call": run.flops,
        }
        result["achieved_GFLOPs"] = round(run.flops / result["median_ms"] * 1e-6, 3) if result["median_ms"] else None
        result["reference"] = {
            "mode": "joint",
            "inference": REFERENCE.to_dict(),
            **_latency(ref.times[self.warmup :]),
            "flops_per_call": ref.flops,
        }
        result["speedup"] = round(result["reference"]["median_ms"] / result["median_ms"], 2)
        if acting:
            truths = self._truths()
            mse = lambda xs, ys: float(  # noqa: E731
                torch.stack([(x - y).pow(2).mean() for x, y in zip(xs, ys)]).mean()
            )
            result["quality"] = {
                "action_mse_vs_reference": mse(run.outputs, ref.outputs),
                "action_mse_vs_data": mse(run.outputs, truths),
                "reference_action_mse_vs_data": mse(ref.outputs, truths),
            }
        else:
            truth = self._true_frames
            mean_psnr = lambda xs, ys: float(np.mean([frames_psnr(x, y) for x, y in zip(xs, ys)]))  # noqa: E731
            result["quality"] = {
                "psnr_vs_reference_dB": mean_psnr(run.outputs, ref.outputs),
                "psnr_vs_data_dB": mean_psnr(run.outputs, truth),
                "reference_psnr_vs_data_dB": mean_psnr(ref.outputs, truth),
            }
        return result

    def machine(self) -> dict:
        return {
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "peak_fp32_GFLOPs": round(matmul_peak(torch.float32) * 1e-9, 1),
        }


def episodes_cache(checkpoint) -> Path:
    """Where `expert_episodes` keeps what it collected for a checkpoint: $WAM_CACHE or ~/.cache/wam, then
    bench-episodes/<model hash>."""
    root = Path(os.environ.get("WAM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wam")
    return root / "bench-episodes" / checkpoint.model_hash


def expert_episodes(checkpoint, episodes: int, *, seed: int = 0, progress: bool = False) -> tuple[str, list[int]]:
    """Episodes to replay when the checkpoint's training dataset is not on this machine: the scripted expert of
    the environment family whose tasks the checkpoint knows runs `episodes` fresh episodes (one task after
    another, seeds no collection with --seed 0..999 uses), at the checkpoint's image size, cameras and state
    size and on the benchmark scene it was trained on (its `run.protocol`), written as a LeRobot dataset under
    `episodes_cache` (collected once, then reused); returns its path and the episode indices. The setting under
    test and the reference replay the same ones."""
    from wam.collect import collect
    from wam.data.lerobot import read_meta
    from wam.envs import ENVS, get_adapter

    cfg, run = checkpoint.model.cfg, checkpoint.config.get("run", {})
    tasks = list(run.get("tasks") or [])
    found = None
    for family in ENVS:
        try:
            adapter = get_adapter(family)
            names = {adapter.describe(t): t for t in adapter.resolve_tasks("all")}
        except Exception:  # noqa: BLE001 (an environment whose extra is missing cannot be the one)
            continue
        if tasks and all(t in names for t in tasks):
            found = family, adapter, [names[t] for t in tasks]
            break
    if found is None:
        raise ArgumentError(
            f"the checkpoint's training dataset {run.get('dataset')!r} is not here and no installed "
            f"environment's scripted expert knows its tasks ({', '.join(tasks[:3]) or 'none recorded'}"
            f"); pass `dataset=PATH` with episodes to replay"
        )
    family, adapter, names = found
    n_tasks = min(episodes, len(names))
    protocol = run.get("protocol")  # the benchmark scene it was trained on: replay frames like its own
    scene = f"-{protocol}" if protocol else ""
    out = episodes_cache(checkpoint) / f"{family}{scene}-{episodes}ep-seed{seed}"
    try:
        read_meta(out, with_stats=False)
        print(
            f"[bench] the training dataset {run.get('dataset')!r} is not here: replaying {episodes} scripted-expert "
            f"episodes collected earlier in {out}",
            file=sys.stderr,
        )
    except (DatasetError, FileNotFoundError):
        print(
            f"[bench] the training dataset {run.get('dataset')!r} is not here: collecting {episodes} fresh "
            f"episodes of {family}'s scripted expert ({', '.join(names[:n_tasks])}) into {out}",
            file=sys.stderr,
        )
        state = getattr(adapter, "state_mode", None)
        cams = run.get("cameras")
        collect(
            family,
            tasks=",".join(names[:n_tasks]),
            episodes=math.ceil(episodes / n_tasks),
            out=out,
            image_size=cfg.image_size,
            cameras=cams if family != "dot" else None,
            workers=1,
            seed=1000 + seed,
            state=state(cfg.state_dim) if state and cfg.state_dim else None,
            overwrite=True,
            progress=progress,
            protocol=protocol,
        )
    meta = read_meta(out, with_stats=False)
    by_task: dict[str, list[int]] = {}
    for ep in meta.episodes:
        by_task.setdefault(ep.tasks[0] if ep.tasks else "", []).append(ep.episode_index)
    rounds = [eps[i] for i in range(max(map(len, by_task.values()))) for eps in by_task.values() if i < len(eps)]
    return str(out), rounds[:episodes]


def _latency(times: list[float]) -> dict:
    if not times:
        return {"median_ms": None, "p90_ms": None, "calls_per_s": None}
    ms = sorted(t * 1e3 for t in times)
    med = statistics.median(ms)
    return {
        "median_ms": round(med, 3),
        "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3),
        "calls_per_s": round(1e3 / med, 1),
    }


def bench(
    checkpoint,
    mode: str = "policy",
    ic: InferenceConfig | None = None,
    *,
    dataset=None,
    episodes: int = 5,
    windows: int = 40,
    warmup: int = 3,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """One setting against the reference path: the dict `wam bench` prints."""
    b = Bench(checkpoint, dataset, episodes=episodes, windows=windows, warmup=warmup, seed=seed, progress=progress)
    ic = ic or InferenceConfig(cache=checkpoint.model.cfg.attention != "full")
    out = b.measure(mode, ic)
    out.update(
        checkpoint=str(checkpoint.path),
        model_hash=checkpoint.model_hash,
        dataset=b.dataset,
        episodes=len(b.episodes),
        **b.machine(),
    )
    out["fraction_of_peak"] = (
        round(out["achieved_GFLOPs"] / out["peak_fp32_GFLOPs"], 4) if out["achieved_GFLOPs"] is not None else None
    )
    return out
