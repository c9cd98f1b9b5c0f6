"""Data pipeline throughput: expert collection (frames/s) and training windows (samples/s).

Runbook (the recorded numbers in benchmarks/data.json come from exactly this command):

    MUJOCO_GL=egl .venv/bin/python benchmarks/bench_data.py --out benchmarks/data.json

What it measures:
1. Collection: `wam.collect.collect("metaworld", ...)` on `--tasks` with `--episodes` per task and
   64x64 corner4 frames, once with one process and once with `--workers` processes. Frames/s counts
   stored dataset rows per wall-clock second, start-up of the worker processes, creation of the
   environments and the final write included. "steady_state_one_process" is the expert loop alone
   (physics, expert, rendering) in one process once its environment exists.
2. Loading: a `WindowDataset` with the wam-tiny layout (64x64, 1 history + 2 future frames at stride 4,
   8 actions) over the collected dataset, through a DataLoader (batch 32, shuffled, no worker
   processes, `collate_windows`). "cold" is the first epoch (every episode decoded once, on first use), "warm" a later
   epoch served from the decode cache; "decode" is raw video decoding in frames/s.

The machine is reported alongside (CPU count, load average at the start): numbers from a shared
machine move with the other work on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def bench_collect(tasks: str, episodes: int, workers: int, out: Path) -> dict:
    from wam.collect import collect

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    summary = collect("metaworld", tasks=tasks, episodes=episodes, out=out, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    return {
        "workers": workers,
        "episodes": summary["episodes_kept"],
        "frames": summary["frames"],
        "seconds": round(seconds, 2),
        "frames_per_s": round(summary["frames"] / seconds, 1),
        "expert_success_rate": summary["success_rate"],
    }


def bench_steady_state(task: str = "push-v3", episodes: int = 3) -> dict:
    """Expert + physics + rendering in one process once the environment exists (no start-up, no writing)."""
    from wam.collect import _ENV_CACHE, run_episode

    run_episode("metaworld", task, 0)  # creates and warms the environment
    t0 = time.perf_counter()
    frames = sum(run_episode("metaworld", task, seed)["length"] for seed in range(1, episodes + 1))
    seconds = time.perf_counter() - t0
    while _ENV_CACHE:
        _ENV_CACHE.popitem()[1].close()
    return {"task": task, "frames": frames, "frames_per_s": round(frames / seconds, 1)}


def bench_loader(root: Path, epochs: int = 3) -> dict:
    import torch

    from wam.config import PRESETS
    from wam.data import LeRobotDataset, WindowDataset, collate_windows

    cfg = PRESETS["wam-tiny"]
    ds = LeRobotDataset(root)
    t0 = time.perf_counter()
    n = 0
    for pos in range(ds.num_episodes):
        n += len(ds.episode_frames(pos, ds.camera_keys[0]))
    decode_fps = n / (time.perf_counter() - t0)

    windows = WindowDataset(
        ds,
        n_obs_steps=cfg.n_obs_steps,
        future_frames=cfg.future_frames,
        future_stride=cfg.future_stride,
        action_horizon=cfg.action_horizon,
        image_size=cfg.image_size,
    )
    loader = torch.utils.data.DataLoader(
        windows, batch_size=32, shuffle=True, collate_fn=collate_windows, generator=torch.Generator().manual_seed(0)
    )
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        seen = sum(len(batch["frames"]) for batch in loader)
        rates.append(seen / (time.perf_counter() - t0))
    return {
        "samples": len(windows),
        "batch_size": 32,
        "cold_samples_per_s": round(rates[0], 1),
        "warm_samples_per_s": round(max(rates[1:]), 1),
        "decode_frames_per_s": round(decode_fps, 1),
        "cache_mb": round(windows.cache_nbytes / 2**20, 1),
        "layout": "wam-tiny",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="reach-v3,push-v3,drawer-open-v3,button-press-topdown-v3")
    p.add_argument("--episodes", type=int, default=6, help="episodes per task")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()

    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    tmp = Path(tempfile.mkdtemp(prefix="wam-bench-"))
    try:
        steady = bench_steady_state()
        one = bench_collect(args.tasks, args.episodes, 1, tmp / "one")
        many = bench_collect(args.tasks, args.episodes, args.workers, tmp / "many")
        loader = bench_loader(tmp / "many")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "data",
        "command": " ".join(["MUJOCO_GL=egl .venv/bin/python benchmarks/bench_data.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_at_start": load,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "collection": {
            "env": "metaworld",
            "tasks": args.tasks.split(","),
            "episodes_per_task": args.episodes,
            "image_size": 64,
            "camera": "corner4",
            "steady_state_one_process": steady,
            "one_process": one,
            "parallel": many,
        },
        "loader": loader,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
