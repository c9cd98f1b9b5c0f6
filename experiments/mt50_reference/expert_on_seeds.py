"""MetaWorld's scripted expert on the episodes of a seed set, and its rates written beside a policy's evaluation.

    python experiments/mt50_reference/expert_on_seeds.py --seed test --max-steps 500 \
        --out experiments/mt50_reference/expert_test_500.json
    python experiments/mt50_reference/expert_on_seeds.py --merge experiments/mt50_reference/expert_test_500.json \
        --into experiments/mt50_reference/mt50_test_eval_62k.json

The expert acts on the simulator's state, so what the camera shows does not change its episodes: it runs here with
a small fast-look camera and only the step limit of the protocol (500: wam's, 400: LeRobot's). `--merge` copies its
per-task rates into an `eval_info.json` of the same seeds (refusing other seeds), with the group means and the
per-episode rate, so `mt50_table.py` prints the expert's column.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def run(seed: str, max_steps: int, tasks: str, episodes: int) -> dict:
    from wam.envs.metaworld import make_env, resolve_tasks
    from wam.evaluate import eval_seeds, resolve_seed
    from wam.rollout import ExpertPolicy, rollout

    value, name = resolve_seed(seed)
    rows = {}
    for task in resolve_tasks(tasks):
        env = make_env(task, image_size=16, goal_marker=0.0, max_episode_steps=max_steps)
        seeds = eval_seeds(value, task, episodes)
        rows[task] = {
            "seeds": seeds,
            "successes": [bool(s) for s in rollout(env, ExpertPolicy("metaworld", task), seeds)["success"]],
        }
        env.close()
        print(task, sum(rows[task]["successes"]), flush=True)
    return {"seed": value, "seed_set": name, "max_episode_steps": max_steps, "tasks": rows}


def merge(expert: dict, info: dict) -> dict:
    from wam.envs.metaworld import DIFFICULTY

    every = []
    for r in info["per_task"]:
        e = expert["tasks"][r["task"]]
        if e["seeds"][: len(r["seeds"])] != r["seeds"]:
            raise SystemExit(f"the expert ran other seeds than the evaluation for {r['task']}")
        ok = e["successes"][: len(r["seeds"])]
        r["expert_pc_success"] = 100.0 * float(np.mean(ok))
        every += ok
    by_task = {r["task"]: r["expert_pc_success"] for r in info["per_task"]}
    for group, g in info.get("groups", {}).items():
        g["expert_pc_success"] = float(np.mean([by_task[t] for t in DIFFICULTY[group] if t in by_task]))
    if info.get("groups") and "group_mean" in info:
        info["group_mean"]["expert_pc_success"] = float(
            np.mean([g["expert_pc_success"] for g in info["groups"].values()])
        )
    info["expert"] = {"pc_success": 100.0 * float(np.mean(every)), "max_episode_steps": expert["max_episode_steps"]}
    return info


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", default="test", help="a seed set (dev, test) or an integer seed")
    ap.add_argument("--max-steps", type=int, default=500, help="the protocol's step limit (lerobot: 400)")
    ap.add_argument("--tasks", default="mt50")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--out", help="where to write the expert's episodes (JSON)")
    ap.add_argument("--merge", help="an expert JSON written by this script ...")
    ap.add_argument("--into", help="... whose rates go into this eval_info.json (rewritten)")
    args = ap.parse_args()
    if args.merge:
        info = merge(json.load(open(args.merge)), json.load(open(args.into)))
        json.dump(info, open(args.into, "w"), indent=2)
    else:
        json.dump(run(args.seed, args.max_steps, args.tasks, args.episodes), open(args.out, "w"), indent=1)
