"""Action-free video co-training: does adding videos (no actions) of other tasks improve the world model on
those tasks, without lowering policy success on the tasks that have actions?

    # the two runs: the same 7 MetaWorld tasks with actions; B adds videos of 3 more tasks, actions dropped
    wam collect metaworld --tasks reach-v3,push-v3,pick-place-v3,drawer-close-v3,button-press-topdown-v3,\\
        peg-insert-side-v3,window-close-v3 --episodes 50 --out data/mt7
    wam collect metaworld --tasks door-open-v3,drawer-open-v3,window-open-v3 --episodes 50 --out data/mt3
    COMMON="--preset wam-tiny --steps 4000 --batch-size 32 --lr 1e-3 --tokenizer-from checkpoints/wam-tiny-mt10 \\
        --tokenizer-steps 0 --loss p_omit_future=0.3"
    wam train --dataset data/mt7 --out runs/cotrain-A $COMMON
    wam train --dataset data/mt7 --dataset data/mt3:no-actions --out runs/cotrain-B $COMMON
    python experiments/cotrain/bench_cotrain.py --without runs/cotrain-A/checkpoint --with runs/cotrain-B/checkpoint \\
        --videos data/mt3 --out experiments/cotrain/cotrain.json

World model: forward and video mode PSNR on the video tasks' episodes that run B held out (never trained on),
the same windows and noise for both models. Run A never saw those tasks, so it predicts them with its "no
task" token; B is measured both ways (its own task rows and "no task"). Policy: closed-loop success on the
action tasks (`wam eval`, policy mode, default inference settings, same seeds for both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def world_model(ckpt_dir: str, videos: str, episodes: list[int], steps: int, windows: int) -> dict:
    """Frame quality with the model's own task rows (when it has them) and with its "no task" token."""
    from wam.checkpoint import load_checkpoint
    from wam.data import LeRobotDataset
    from wam.evaluate import evaluate_world_model

    ckpt = load_checkpoint(ckpt_dir)
    knows = set(LeRobotDataset(videos).tasks) <= set(ckpt.config.get("run", {}).get("tasks", []))
    out = {}
    for label, drop in (("task", False), ("no_task", True)):
        if drop or knows:
            r = evaluate_world_model(
                ckpt,
                videos,
                episodes=episodes,
                steps=steps,
                windows=windows,
                strips=0,
                unknown_tasks="drop",
                drop_task=drop,
            )
            out[label] = {
                k: r[k]
                for k in ("forward", "video", "copy_last_frame", "tokenizer_reconstruction", "horizons", "windows")
            }
    return out


def policy(ckpt_dir: str, tasks: str, episodes: int, num_envs: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "wam.cli",
        "eval",
        "--checkpoint",
        ckpt_dir,
        "--env",
        "metaworld",
        "--tasks",
        tasks,
        "--episodes",
        str(episodes),
        "--mode",
        "policy",
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
    return {
        "pc_success": info["pc_success"],
        "ci95": info.get("ci95"),
        "n_episodes": info["n_episodes"],
        "per_task": {r["task"]: r["pc_success"] for r in info["per_task"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--without", required=True, help="checkpoint trained on the action data alone")
    p.add_argument("--with", dest="with_", required=True, help="checkpoint trained with the action-free videos too")
    p.add_argument("--videos", required=True, help="the action-free dataset (its held-out episodes are measured)")
    p.add_argument("--tasks", default=None, help="action tasks for the closed loop (default: run A's tasks)")
    p.add_argument("--episodes", type=int, default=20, help="closed-loop episodes per task")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="sampling steps of the world-model measurement")
    p.add_argument("--windows", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from wam.checkpoint import load_checkpoint

    run_b = load_checkpoint(args.with_).config["run"]
    held = next(
        d["val_episodes"] for d in run_b["datasets"] if Path(d["path"]).resolve() == Path(args.videos).resolve()
    )
    run_a = load_checkpoint(args.without).config["run"]
    tasks = args.tasks or ",".join(_task_names(run_a["tasks"]))
    doc = {
        "videos": args.videos,
        "held_out_episodes": held,
        "sampling_steps": args.steps,
        "tasks": tasks,
        "episodes_per_task": args.episodes,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, ckpt in (("without_videos", args.without), ("with_videos", args.with_)):
            doc[label] = {
                "checkpoint": ckpt,
                "world_model": world_model(ckpt, args.videos, held, args.steps, args.windows),
            }
            print(label, json.dumps(doc[label]["world_model"]), flush=True)
            doc[label]["policy"] = policy(ckpt, tasks, args.episodes, args.num_envs, Path(tmp) / label)
            print(label, json.dumps(doc[label]["policy"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


def _task_names(descriptions: list[str]) -> list[str]:
    """MetaWorld task names of a run's task descriptions."""
    from wam.envs import get_adapter

    mw = get_adapter("metaworld")
    by_text = {mw.describe(t): t for t in mw.resolve_tasks("mt50")}
    return [by_text[d] for d in descriptions if d in by_text]


if __name__ == "__main__":
    main()
