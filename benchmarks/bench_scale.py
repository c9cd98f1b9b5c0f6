"""Scale-out throughput on this machine: training samples/s in 1 and 2 data-parallel processes, and
closed-loop evaluation episodes/min with 1, 2 and 4 environments in parallel.

    python benchmarks/bench_scale.py --dataset data/mt10 --checkpoint checkpoints/wam-tiny-mt10 \\
        --out benchmarks/scale.json

Training: `wam train` of wam-tiny for --train-steps steps at global batch 32 (tokenizer stage excluded:
the samples/s of the run's log), single process vs `torchrun --nproc-per-node 2` (one thread each).
Evaluation: `wam eval` of the checkpoint, policy mode, on --eval-tasks, --eval-episodes per task, expert off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_rate(dataset: str, nproc: int, steps: int, out: Path) -> dict:
    args = [
        "train",
        "--dataset",
        dataset,
        "--preset",
        "wam-tiny",
        "--steps",
        str(steps),
        "--batch-size",
        "32",
        "--tokenizer-steps",
        "50",
        "--log-every",
        "10",
        "--val-every",
        "0",
        "--checkpoint-every",
        "0",
        "--quiet",
        "--out",
        str(out),
        "--overwrite",
    ]
    env = {**os.environ}
    if nproc > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "wam.cli",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "wam.cli", *args]
    t = time.time()
    subprocess.run(cmd, env=env, check=True)
    rates = [
        json.loads(x)["samples_per_s"] for x in (out / "log.jsonl").read_text().splitlines() if '"kind": "train"' in x
    ]
    return {
        "processes": nproc,
        "samples_per_s": round(statistics.median(rates[1:] or rates), 1),
        "wall_s": round(time.time() - t, 1),
    }


def eval_rate(checkpoint: str, num_envs: int, tasks: str, episodes: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "wam.cli",
        "eval",
        "--checkpoint",
        checkpoint,
        "--env",
        "metaworld",
        "--tasks",
        tasks,
        "--episodes",
        str(episodes),
        "--num-envs",
        str(num_envs),
        "--no-expert",
        "--videos",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    info = json.loads((out / "eval_info.json").read_text())
    n = info["n_episodes"]
    return {
        "num_envs": num_envs,
        "episodes": n,
        "pc_success": info["pc_success"],
        "eval_s": round(info["eval_s"], 1),
        "episodes_per_min": round(60 * n / info["eval_s"], 1),
        "per_episode": [r["successes"] for r in info["per_task"]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="data/mt10")
    p.add_argument("--checkpoint", default="checkpoints/wam-tiny-mt10")
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--eval-tasks", default="reach-v3,drawer-close-v3")
    p.add_argument("--eval-episodes", type=int, default=8)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    doc = {"cpu_count": os.cpu_count(), "train": [], "eval": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            doc["train"].append(train_rate(args.dataset, n, args.train_steps, Path(tmp) / f"train{n}"))
            print(json.dumps(doc["train"][-1]), flush=True)
        for k in (1, 2, 4):
            doc["eval"].append(
                eval_rate(args.checkpoint, k, args.eval_tasks, args.eval_episodes, Path(tmp) / f"eval{k}")
            )
            print(json.dumps({x: v for x, v in doc["eval"][-1].items() if x != "per_episode"}), flush=True)
    same = all(r["per_episode"] == doc["eval"][0]["per_episode"] for r in doc["eval"])
    doc["eval_results_identical"] = same
    print(json.dumps({"eval_results_identical": same}))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
