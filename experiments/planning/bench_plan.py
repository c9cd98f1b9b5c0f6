"""Test-time planning: closed-loop success and chunk latency at --plan N = 1, 4, 16 (joint mode, best of N
imagined futures by the critic), on the same seeds, beside policy mode; with --forward-plans, also policy mode
proposing N chunks that the world model checks (`--plan-score forward`: each candidate's future predicted
from its actions alone, in forward mode, then scored).

Runbook (checkpoints/wam-tiny-mt50-44k is retired from the tree;
`git checkout 7945eea -- checkpoints/wam-tiny-mt50-44k` restores it):
    wam critic --checkpoint checkpoints/wam-tiny-mt50-44k --dataset data/mt50:tasks=hard,very_hard \\
        --out runs/critic-wam-tiny-mt50-hard-vhard
    python experiments/planning/bench_plan.py --checkpoint checkpoints/wam-tiny-mt50-44k \\
        --critic runs/critic-wam-tiny-mt50-hard-vhard \\
        --tasks hard,very_hard --episodes 5 --plans 1,4,16 --forward-plans 4,16 --workers 1 \\
        --out experiments/planning/plan.json
    python experiments/planning/bench_plan.py --table experiments/planning/plan.json     # the README's table

With --critic DIR the critic is read from DIR instead (`wam critic --out DIR`). A setting whose evaluation
is already in --runs is reused, so the benchmark resumes. Each setting is one `wam eval` (same seeds, same
step limits, no expert: its rate is in the reference evaluation). Latency: the median and p90 of
`predict_action_chunk` on observations of the tasks' first frames, measured in this process at the same
torch threads, after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def chunk_latency(
    checkpoint: str,
    tasks: str,
    plan: int,
    mode: str,
    critic: str | None = None,
    repeats: int = 20,
    plan_score: str = "imagined",
    plan_guidance: float = 1.0,
) -> dict:
    """Median / p90 milliseconds of one fresh chunk (batch 1) at this setting, on real first frames."""
    import torch

    from wam.envs import get_adapter, make_env
    from wam.policy import WAMPolicy

    policy = WAMPolicy.from_checkpoint(
        checkpoint,
        mode=mode,
        plan=plan,
        critic=critic if plan > 1 else None,
        plan_score=plan_score,
        plan_guidance=plan_guidance,
    )
    task = get_adapter("metaworld").resolve_tasks(tasks)[0]
    env = make_env(
        "metaworld",
        task,
        image_size=policy.cfg.image_size,
        cameras=[c.removeprefix("observation.images.") for c in policy.cameras],
    )
    try:
        obs, _ = env.reset(seed=0)
        obs = {**obs, "task": env.task_description}
        ms = []
        with torch.no_grad():
            for i in range(repeats + 2):
                policy.reset()
                t0 = time.perf_counter()
                policy.predict_action_chunk(obs)
                if i >= 2:
                    ms.append(1000 * (time.perf_counter() - t0))
    finally:
        env.close()
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "repeats": repeats}


def run_eval(args, mode: str, plan: int, out: Path, plan_score: str = "imagined", guidance: float = 1.0) -> dict:
    wam = str(ROOT / ".venv" / "bin" / "wam") if (ROOT / ".venv" / "bin" / "wam").exists() else "wam"
    cmd = [
        wam,
        "eval",
        "--checkpoint",
        args.checkpoint,
        "--tasks",
        args.tasks,
        "--episodes",
        str(args.episodes),
        "--mode",
        mode,
        "--plan",
        str(plan),
        "--workers",
        str(args.workers),
        "--videos",
        "0",
        "--no-expert",
        "--quiet",
        "--out",
        str(out),
        *(["--critic", args.critic] if args.critic and plan > 1 else []),
        *(["--plan-score", plan_score] if plan_score != "imagined" else []),
        *(["--plan-guidance", f"{guidance:g}"] if guidance != 1 else []),
    ]
    t0, wall = time.perf_counter(), None
    if not (out / "eval_info.json").is_file():  # a finished evaluation is reused: the benchmark resumes
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
    info = json.loads((out / "eval_info.json").read_text())
    return {
        "command": shlex.join(cmd),
        "wall_s": wall if wall is not None else info.get("eval_s"),
        "pc_success": info["pc_success"],
        "ci95": info["ci95"],
        "n_episodes": info["n_episodes"],
        "groups": info.get("groups"),
        "per_task": {r["task"]: r["pc_success"] for r in info["per_task"]},
    }


def table(result: dict) -> str:
    groups = sorted(
        {g for r in result["runs"] for g in (r["eval"].get("groups") or {})},
        key=["easy", "medium", "hard", "very_hard"].index,
    )
    head = (
        ["setting", "success % [95% CI]"] + [g.replace("_", " ") for g in groups] + ["chunk latency median / p90 (ms)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["runs"]:
        e, lat = r["eval"], r["latency"]
        cells = [r["name"], f"**{e['pc_success']:.1f}** [{e['ci95'][0]:.0f}, {e['ci95'][1]:.0f}]"]
        cells += [f"{e['groups'][g]['pc_success']:.0f}" if g in (e.get("groups") or {}) else "-" for g in groups]
        cells.append(f"{lat['median_ms']:.0f} / {lat['p90_ms']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/wam-tiny-mt50-44k")
    p.add_argument("--critic", default=None, help="the critic --plan scores with (default: <checkpoint>/critic)")
    p.add_argument("--tasks", default="hard,very_hard")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--plans", default="1,4,16", help="comma-separated N (joint mode); policy mode is run beside")
    p.add_argument(
        "--forward-plans",
        default="",
        help="comma-separated N: policy mode proposes N chunks, the "
        "world model predicts each one's future from its actions, the critic picks (--plan-score forward)",
    )
    p.add_argument(
        "--plan-guidance",
        type=float,
        default=1.0,
        metavar="W",
        help="the --forward-plans predict the candidates' futures with guidance W on their actions (--plan-guidance)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="experiments/planning/plan.json")
    p.add_argument("--runs", default="runs/bench-plan", help="where the evaluations are written")
    p.add_argument("--table", default=None, metavar="JSON", help="print the README table of a result file")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    critic = Path(args.critic) if args.critic else Path(args.checkpoint) / "critic"
    if not (critic / "critic.json").is_file():
        raise SystemExit(
            f"no critic at {critic}; train one first: wam critic --checkpoint {args.checkpoint} "
            f"--dataset DATASET --out {critic}"
        )
    import torch

    from wam.atomic import write_json_atomic

    settings = [("policy", 1, "policy mode", "imagined")]
    settings += [("joint", int(n), f"joint, plan {n}", "imagined") for n in args.plans.split(",") if n]
    guided = f", action guidance {args.plan_guidance:g}" if args.plan_guidance != 1 else ""
    settings += [
        ("policy", int(n), f"policy, plan {n}, forward-checked{guided}", "forward")
        for n in args.forward_plans.split(",")
        if n
    ]
    result = {
        "checkpoint": args.checkpoint,
        "critic": str(critic),
        "tasks": args.tasks,
        "episodes_per_task": args.episodes,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "runs": [],
    }
    for mode, n, name, score in settings:
        w = args.plan_guidance if score == "forward" else 1.0
        run = Path(args.runs) / (
            f"{mode}-plan{n}" + ("-forward" if score == "forward" else "") + (f"-guidance{w:g}" if w != 1 else "")
        )
        ev = run_eval(args, mode, n, run, score, w)
        lat = chunk_latency(args.checkpoint, args.tasks, n, mode, str(critic), plan_score=score, plan_guidance=w)
        result["runs"].append(
            {"name": name, "mode": mode, "plan": n, "plan_score": score, "plan_guidance": w, "eval": ev, "latency": lat}
        )
        print(
            f"[plan] {name}: {ev['pc_success']:.1f}% [{ev['ci95'][0]:.0f}, {ev['ci95'][1]:.0f}], chunk "
            f"{lat['median_ms']:.0f} ms",
            flush=True,
        )
        write_json_atomic(Path(args.out), result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
