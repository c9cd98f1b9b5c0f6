"""Does imagination rank policies as the simulator does? Several policies, each evaluated twice on the same
seeds: in the simulator (`wam eval`) and inside the world model (`wam imagine --start sim`, the simulator's
own first frames); then the Spearman rank correlation between imagined and simulated success over the
policies, overall and per task group.

Runbook:
    wam critic --checkpoint checkpoints/wam-tiny-mt50-44k --dataset data/mt50          # once: <checkpoint>/critic
    python benchmarks/bench_imagine.py --world checkpoints/wam-tiny-mt50-44k --tasks mt10 --episodes 5 \\
        --out benchmarks/imagine.json
    python benchmarks/bench_imagine.py --table benchmarks/imagine.json

The policies (POLICIES below) differ in checkpoint, training recipe and inference setting, and one cannot
see (--blind), so that their true success spreads out. A policy whose checkpoint is missing is skipped
and named in the result.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF = "checkpoints/wam-tiny-mt50-44k"
POLICIES = [  # name, checkpoint, flags (the same for wam eval and wam imagine)
    ("reference", REF, []),
    ("reference, blind", REF, ["--blind"]),
    ("reference, 1 denoising step", REF, ["--steps", "1"]),
    ("reference, 8 actions per chunk", REF, ["--n-action-steps", "8"]),
    ("MT10 policy-only, 4k steps", "runs/wm/policy/checkpoint", []),
    ("MT10 WAM, 4k steps", "runs/wm/wam/checkpoint", []),
    ("MT10 WAM + videos, 4k steps", "runs/wm/wam-videos/checkpoint", []),
    ("MT10 policy-only, 4k steps, blind", "runs/wm/policy/checkpoint", ["--blind"]),
    ("MT10 policy-only, sharp tokenizer", "runs/wm-sharp/policy/checkpoint", []),
    ("MT10 WAM, sharp tokenizer, joint mode", "runs/wm-sharp/wam/checkpoint", ["--mode", "joint"]),
]
WORLD = "runs/imagine-world"  # the world model of the second set, and its early checkpoint (see the README)
POLICY_SETS = {
    "mt10-4k": POLICIES,  # the first measurements: MT10 networks of 4,000 steps beside the step-44,000 reference
    "reference": [  # the shipped reference and its step-44,000 weights, by inference setting; the world run's own
        ("reference", "checkpoints/wam-tiny-mt50", []),
        ("reference, blind", "checkpoints/wam-tiny-mt50", ["--blind"]),
        ("reference, 1 denoising step", "checkpoints/wam-tiny-mt50", ["--steps", "1"]),
        ("reference, joint mode", "checkpoints/wam-tiny-mt50", ["--mode", "joint"]),
        ("step 44,000", REF, []),
        ("step 44,000, blind", REF, ["--blind"]),
        ("MT10 world run, 1,000 steps", f"{WORLD}-1k", []),
        ("MT10 world run, 2,000 steps", f"{WORLD}-2k", []),
        ("MT10 world run, final", f"{WORLD}/checkpoint", []),
        ("MT10 world run, 2,000 steps, blind", f"{WORLD}-2k", ["--blind"]),
    ],
}


def spearman(a, b) -> float | None:
    """Spearman's rank correlation over the policies (None for fewer than 3 points or a constant side)."""
    from wam.critic import spearman as rank_correlation

    r = rank_correlation(a, b) if len(a) >= 3 else float("nan")
    return None if np.isnan(r) else r


def wam() -> str:
    local = ROOT / ".venv" / "bin" / "wam"
    return str(local) if local.exists() else "wam"


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def summary(info: dict) -> dict:
    return {"pc_success": info["pc_success"], "ci95": info["ci95"], "n_episodes": info["n_episodes"],
            "avg_max_reward": info.get("avg_max_reward"),
            "groups": {g: v["pc_success"] for g, v in (info.get("groups") or {}).items()},
            "per_task": {r["task"]: r["pc_success"] for r in info["per_task"]}}


def correlations(rows: list[dict]) -> dict:
    out = {"overall": spearman([r["simulated"]["pc_success"] for r in rows],
                               [r["imagined"]["pc_success"] for r in rows]),
           "overall_by_imagined_progress": spearman([r["simulated"]["pc_success"] for r in rows],
                                                    [r["imagined"]["avg_max_reward"] for r in rows])}
    groups = sorted({g for r in rows for g in r["simulated"]["groups"]})
    for g in groups:
        have = [r for r in rows if g in r["simulated"]["groups"] and g in r["imagined"]["groups"]]
        out[g] = spearman([r["simulated"]["groups"][g] for r in have], [r["imagined"]["groups"][g] for r in have])
    return out


def table(result: dict) -> str:
    lines = ["| policy | simulated success % | imagined success % | imagined progress (mean of each episode's best) |",
             "|---|---|---|---|"]
    for r in result["policies"]:
        lines.append(f"| {r['name']} | {r['simulated']['pc_success']:.1f} | {r['imagined']['pc_success']:.1f} | "
                     f"{r['imagined']['avg_max_reward']:.2f} |")
    c = result["spearman"]
    lines.append("")
    lines.append("Spearman rank correlation over the policies: " + ", ".join(
        f"{k.replace('_', ' ')} {v:.2f}" if v is not None else f"{k.replace('_', ' ')} n/a" for k, v in c.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default=REF, help="the world model (a checkpoint with a critic)")
    p.add_argument("--critic", default=None, help="the world model's critic (default: <world>/critic)")
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--policy-set", default="mt10-4k", choices=sorted(POLICY_SETS),
                   help="which policies (POLICY_SETS): mt10-4k, the first measurements; reference, the shipped "
                        "weights by inference setting and the world run's own checkpoints")
    p.add_argument("--policies", default=None, metavar="I,J,...",
                   help="only these policies, by their index in the set (default: all)")
    p.add_argument("--persist", type=int, default=1, help="wam imagine --persist: imagined frames in a row "
                   "judged done for a success")
    p.add_argument("--action-guidance", type=float, default=1.0, metavar="W",
                   help="wam imagine --action-guidance: imagined frames follow the actions W times as strongly")
    p.add_argument("--workers", type=int, default=1, help="wam eval's processes")
    p.add_argument("--sim-only", action="store_true", help="only the simulated evaluations (no world model needed)")
    p.add_argument("--tag", default="", help="appended to the imagined runs' directory names (another critic "
                   "or world beside the same simulated runs)")
    p.add_argument("--out", default="benchmarks/imagine.json")
    p.add_argument("--runs", default="runs/bench-imagine")
    p.add_argument("--table", default=None, metavar="JSON")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    from wam.evaluate import write_json_atomic

    critic = Path(args.critic) if args.critic else Path(args.world) / "critic"
    if not args.sim_only and not (critic / "critic.json").is_file():
        raise SystemExit(f"no critic at {critic}; first: wam critic --checkpoint {args.world} --dataset DATASET "
                         f"--out {critic}")
    result = {"world": args.world, "critic": str(critic), "persist": args.persist,
              "action_guidance": args.action_guidance, "tasks": args.tasks,
              "episodes_per_task": args.episodes, "policies": [], "skipped": []}
    chosen = None if args.policies is None else {int(i) for i in args.policies.split(",")}
    result["policy_set"] = args.policy_set
    for i, (name, ckpt, flags) in enumerate(POLICY_SETS[args.policy_set]):
        if chosen is not None and i not in chosen:
            continue
        if not (ROOT / ckpt / "model.safetensors").is_file() and not (Path(ckpt) / "model.safetensors").is_file():
            result["skipped"].append({"name": name, "checkpoint": ckpt})
            continue
        sim_out = Path(args.runs) / f"{i}-sim"  # shared by every --persist
        im_out = Path(args.runs) / (f"{i}-imagined" + (f"-persist{args.persist}" if args.persist != 1 else "")
                                    + (f"-guidance{args.action_guidance:g}" if args.action_guidance != 1 else "")
                                    + (f"-{args.tag}" if args.tag else ""))
        common = ["--tasks", args.tasks, "--episodes", str(args.episodes), "--videos", "0", "--quiet", *flags]
        sim_cmd = [wam(), "eval", "--checkpoint", ckpt, "--no-expert", "--workers", str(args.workers),
                   "--out", str(sim_out), *common]
        im_cmd = [wam(), "imagine", "--checkpoint", args.world, "--critic", str(critic), "--policy", ckpt,
                  "--start", "sim", "--persist", str(args.persist), "--action-guidance", f"{args.action_guidance:g}",
                  "--out", str(im_out), *common]
        sim_s = run(sim_cmd) if not (sim_out / "eval_info.json").is_file() else None
        if args.sim_only:
            print(f"[imagine] {name}: simulated", flush=True)
            continue
        im_s = run(im_cmd) if not (im_out / "imagine_info.json").is_file() else None  # reused: resumable
        row = {"name": name, "checkpoint": ckpt, "flags": flags,
               "simulated": summary(json.loads((sim_out / "eval_info.json").read_text())),
               "imagined": summary(json.loads((im_out / "imagine_info.json").read_text())),
               "commands": [shlex.join(sim_cmd), shlex.join(im_cmd)], "wall_s": {"simulated": sim_s, "imagined": im_s}}
        result["policies"].append(row)
        print(f"[imagine] {name}: simulated {row['simulated']['pc_success']:.1f}%, imagined "
              f"{row['imagined']['pc_success']:.1f}%", flush=True)
        result["spearman"] = correlations(result["policies"])
        write_json_atomic(Path(args.out), result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
