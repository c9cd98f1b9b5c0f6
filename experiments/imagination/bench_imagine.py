"""Does imagination rank policies as the simulator does? Several policies, each evaluated twice on the same
seeds: in the simulator (`wam eval`) and inside the world model (`wam imagine --start sim`, the simulator's
own first frames); then the Spearman rank correlation between imagined and simulated success over the
policies, overall and per task group.

Runbook (checkpoints/wam-tiny-mt50-44k is retired from the tree;
`git checkout 7945eea -- checkpoints/wam-tiny-mt50-44k` restores it):
    wam critic --checkpoint checkpoints/wam-tiny-mt50-44k --dataset data/mt50          # once: <checkpoint>/critic
    python experiments/imagination/bench_imagine.py --world checkpoints/wam-tiny-mt50-44k --tasks mt10 --episodes 5 \\
        --out experiments/imagination/imagine.json
    python experiments/imagination/bench_imagine.py --table experiments/imagination/imagine.json

The policies (POLICY_SETS below) differ in checkpoint, training recipe and inference setting, and some cannot
see (--blind), so that their true success spreads out. A policy whose checkpoint is missing is skipped
and named in the result. The "reference" set, with a critic trained on imagined frames too (README, "Policy
evaluation in imagination"):
    python experiments/imagination/bench_imagine.py --policy-set reference --sim-only --runs runs/bench-imagine-ref-s0
    wam critic --checkpoint runs/imagine-world/checkpoint --dataset data/mt50:tasks=mt10 \\
        --dataset data/mt10-noisy --dataset data/mt10-noisy-hi --imagined --action-guidance 2 \\
        --out runs/imagine-world/critic-imagined
    python experiments/imagination/bench_imagine.py --policy-set reference --world runs/imagine-world/checkpoint \\
        --critic runs/imagine-world/critic-imagined --action-guidance 2 --tag imagined --demos data/mt50 \\
        --runs runs/bench-imagine-ref-s0 --out experiments/imagination/imagine_ref_imagined_seed0.json
    (and --seed 1 into runs/bench-imagine-ref-s1; then --pool A.json,B.json --out POOLED.json)
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

ROOT = Path(__file__).resolve().parents[2]
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
V2, V2_AT = "checkpoints/wam-tiny-mt50-v2", "runs/mt50-v2/train/steps/step-{}"  # (the recipe's copies: keep_every)
LEROBOT = ["--protocol", "lerobot"]  # the scene v2 was trained on (its early copies do not record it)
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
    "mt50-v2": [  # the v2 reference on the published benchmark's scene, by inference setting and training length
        ("v2", V2, LEROBOT),
        ("v2, blind", V2, [*LEROBOT, "--blind"]),
        ("v2, 1 denoising step", V2, [*LEROBOT, "--steps", "1"]),
        ("v2, joint mode", V2, [*LEROBOT, "--mode", "joint"]),
        ("v2 at step 10,000", V2_AT.format(10000), LEROBOT),
        ("v2 at step 20,000", V2_AT.format(20000), LEROBOT),
        ("v2 at step 30,000", V2_AT.format(30000), LEROBOT),
        ("v2 at step 50,000", V2_AT.format(50000), LEROBOT),
        ("v2 at step 10,000, blind", V2_AT.format(10000), [*LEROBOT, "--blind"]),
        ("v2 at step 30,000, blind", V2_AT.format(30000), [*LEROBOT, "--blind"]),
    ],
    "mt50-v2-shipped": [  # only what a fresh clone holds: v2 by inference setting, sighted and blind (the other
        # shipped networks act at 64 or 96 px, and their recorded frames would not be the world model's 128 px)
        ("v2", V2, LEROBOT),
        ("v2, blind", V2, [*LEROBOT, "--blind"]),
        ("v2, 1 denoising step", V2, [*LEROBOT, "--steps", "1"]),
        ("v2, joint mode", V2, [*LEROBOT, "--mode", "joint"]),
        ("v2, 8 actions per chunk", V2, [*LEROBOT, "--n-action-steps", "8"]),
        ("v2, 1 denoising step, 8 actions per chunk", V2, [*LEROBOT, "--steps", "1", "--n-action-steps", "8"]),
        ("v2, guidance scale 3", V2, [*LEROBOT, "--cfg-scale", "3"]),
        ("v2, joint mode, blind", V2, [*LEROBOT, "--mode", "joint", "--blind"]),
        ("v2, 1 denoising step, blind", V2, [*LEROBOT, "--steps", "1", "--blind"]),
        ("v2, 8 actions per chunk, blind", V2, [*LEROBOT, "--n-action-steps", "8", "--blind"]),
    ],
}


def chosen_policies(policy_set: str, indices: str | None) -> list[tuple[int, str, str, list[str]]]:
    """(index, name, checkpoint, flags) of the set's policies, only those at `indices` ("I,J,...") when given."""
    keep = None if indices is None else {int(i) for i in indices.split(",")}
    return [(i, *p) for i, p in enumerate(POLICY_SETS[policy_set]) if keep is None or i in keep]


def spearman(a, b) -> float | None:
    """Spearman's rank correlation over the policies (None for fewer than 3 points or a constant side)."""
    from wam.stats import spearman as rank_correlation

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
    progress = {r["task"]: r.get("avg_max_reward") for r in info["per_task"]}
    return {
        "pc_success": info["pc_success"],
        "ci95": info["ci95"],
        "n_episodes": info["n_episodes"],
        "avg_max_reward": info.get("avg_max_reward"),
        "groups": {g: v["pc_success"] for g, v in (info.get("groups") or {}).items()},
        "groups_progress": {
            g: float(np.mean([progress[t] for t in v["tasks"]]))  # tasks have equal episodes
            for g, v in (info.get("groups") or {}).items()
            if all(progress.get(t) is not None for t in v["tasks"])
        },
        "per_task": {r["task"]: r["pc_success"] for r in info["per_task"]},
        "episodes": {
            r["task"]: {
                "success": [bool(x) for x in r["successes"]],
                "progress": [float(x) for x in r["max_rewards"]],
                "first_success": [None if f is None else int(f) for f in r["first_success"]],
            }
            for r in info["per_task"]
        },
    }


def early_successes(rows: list[dict], dataset: str | Path) -> dict:
    """How many imagined successes come sooner than the scripted expert ever succeeded at the task (its fastest
    first success among the dataset's demonstrations, meta/collection.json): a success imagined before it is
    possible. Per policy and over all."""
    fastest: dict[str, int] = {}
    for e in json.loads((Path(dataset) / "meta" / "collection.json").read_text())["episodes"]:
        if e.get("success") and e.get("first_success") is not None:
            fastest[e["task"]] = min(fastest.get(e["task"], 10**9), int(e["first_success"]))
    out, early_all, n_all = {}, 0, 0
    for r in rows:
        early = n = 0
        for task, v in r["imagined"]["episodes"].items():
            for ok, first in zip(v["success"], v.get("first_success") or []):
                if ok and first is not None and task in fastest:
                    n += 1
                    early += first < fastest[task]
        out[r["name"]] = {"imagined_successes": n, "sooner_than_the_expert": early}
        early_all, n_all = early_all + early, n_all + n
    out["all"] = {
        "imagined_successes": n_all,
        "sooner_than_the_expert": early_all,
        "share": early_all / n_all if n_all else None,
    }
    return out


def bootstrap(rows: list[dict], by: str, n: int = 2000, seed: int = 0) -> list[float] | None:
    """95% interval of the overall Spearman correlation (simulated success against the imagined `by`: "success"
    or "progress"), resampling every policy's episodes within each task, simulated and imagined apart."""
    rng = np.random.default_rng(seed)
    if any("episodes" not in r[side] for r in rows for side in ("simulated", "imagined")) or len(rows) < 3:
        return None

    def draw(episodes: dict, key: str) -> float:
        return float(np.mean([np.mean(rng.choice(np.asarray(v[key], float), len(v[key]))) for v in episodes.values()]))

    values = []
    for _ in range(n):
        sim = [draw(r["simulated"]["episodes"], "success") for r in rows]
        im = [draw(r["imagined"]["episodes"], by) for r in rows]
        rho = spearman(sim, im)
        if rho is not None:
            values.append(rho)
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def correlations(rows: list[dict]) -> dict:
    out = {
        "overall": spearman([r["simulated"]["pc_success"] for r in rows], [r["imagined"]["pc_success"] for r in rows]),
        "overall_by_imagined_progress": spearman(
            [r["simulated"]["pc_success"] for r in rows], [r["imagined"]["avg_max_reward"] for r in rows]
        ),
    }
    groups = sorted({g for r in rows for g in r["simulated"]["groups"]})
    for g in groups:
        have = [r for r in rows if g in r["simulated"]["groups"] and g in r["imagined"]["groups"]]
        out[g] = spearman([r["simulated"]["groups"][g] for r in have], [r["imagined"]["groups"][g] for r in have])
    out["overall_ci95"] = bootstrap(rows, "success")
    out["overall_by_imagined_progress_ci95"] = bootstrap(rows, "progress")
    for g in groups:  # simulated success against the imagined episodes' progress (each one's best), per group
        have = [r for r in rows if g in r["simulated"]["groups"] and g in r["imagined"].get("groups_progress", {})]
        out[f"{g}_by_imagined_progress"] = spearman(
            [r["simulated"]["groups"][g] for r in have], [r["imagined"]["groups_progress"][g] for r in have]
        )
    return out


def pool(results: list[dict]) -> dict:
    """Several runs of the same policies on other seeds (--seed) as one: each policy's episodes put together."""
    from wam.envs.metaworld import DIFFICULTY

    names = [r["name"] for r in results[0]["policies"]]
    rows = []
    for name in names:
        runs = [next(r for r in res["policies"] if r["name"] == name) for res in results]
        row = {"name": name, "checkpoint": runs[0]["checkpoint"], "flags": runs[0]["flags"]}
        for side in ("simulated", "imagined"):
            eps = {
                t: {
                    k: [x for r in runs for x in r[side]["episodes"][t].get(k, [])]
                    for k in ("success", "progress", "first_success")
                }
                for t in runs[0][side]["episodes"]
            }
            groups = {g: [t for t in eps if t in members] for g, members in DIFFICULTY.items()}
            groups = {g: ts for g, ts in groups.items() if ts}
            row[side] = {
                "pc_success": 100 * float(np.mean([np.mean(v["success"]) for v in eps.values()])),
                "avg_max_reward": float(np.mean([np.mean(v["progress"]) for v in eps.values()])),
                "n_episodes": sum(len(v["success"]) for v in eps.values()),
                "groups": {
                    g: 100 * float(np.mean([np.mean(eps[t]["success"]) for t in ts])) for g, ts in groups.items()
                },
                "groups_progress": {
                    g: float(np.mean([np.mean(eps[t]["progress"]) for t in ts])) for g, ts in groups.items()
                },
                "episodes": eps,
            }
        rows.append(row)
    keep = ("world", "critic", "persist", "threshold", "action_guidance", "tasks", "policy_set")
    return {
        **{k: results[0].get(k) for k in keep},
        "pooled_seeds": [r.get("seed", 0) for r in results],
        "episodes_per_task": sum(r["episodes_per_task"] for r in results),
        "policies": rows,
        "spearman": correlations(rows),
    }


def table(result: dict) -> str:
    lines = [
        "| policy | simulated success % | imagined success % | imagined progress (mean of each episode's best) |",
        "|---|---|---|---|",
    ]
    for r in result["policies"]:
        lines.append(
            f"| {r['name']} | {r['simulated']['pc_success']:.1f} | {r['imagined']['pc_success']:.1f} | "
            f"{r['imagined']['avg_max_reward']:.2f} |"
        )
    c = result["spearman"]
    if result.get("early_successes"):
        e = result["early_successes"]["all"]
        lines.append(
            f"\nimagined successes sooner than the scripted expert's fastest: "
            f"{e['sooner_than_the_expert']} of {e['imagined_successes']}"
        )
    lines.append("")
    lines.append(
        "Spearman rank correlation over the policies: "
        + ", ".join(
            f"{k.replace('_', ' ')} {v:.2f}"
            if isinstance(v, float)
            else f"{k.replace('_', ' ')} [{v[0]:.2f}, {v[1]:.2f}]"
            if isinstance(v, list)
            else f"{k.replace('_', ' ')} n/a"
            for k, v in c.items()
        )
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default=REF, help="the world model (a checkpoint with a critic)")
    p.add_argument("--critic", default=None, help="the world model's critic (default: <world>/critic)")
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument(
        "--policy-set",
        default="mt10-4k",
        choices=sorted(POLICY_SETS),
        help="which policies (POLICY_SETS): mt10-4k, the first measurements; reference, the shipped "
        "weights by inference setting and the world run's own checkpoints; mt50-v2, v2 by inference setting and "
        "its recipe's copies along training; mt50-v2-shipped, only the shipped checkpoints",
    )
    p.add_argument(
        "--policies",
        default=None,
        metavar="I,J,...",
        help="only these policies, by their index in the set (default: all)",
    )
    p.add_argument(
        "--persist",
        type=int,
        default=1,
        help="wam imagine --persist: imagined frames in a row judged done for a success",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="wam imagine --threshold: the critic's probability "
        "of done that counts (bench_replay.py --tune chooses one on other policies' episodes)",
    )
    p.add_argument(
        "--action-guidance",
        type=float,
        default=1.0,
        metavar="W",
        help="wam imagine --action-guidance: imagined frames follow the actions W times as strongly",
    )
    p.add_argument("--workers", type=int, default=1, help="wam eval's processes")
    p.add_argument("--seed", type=int, default=0, help="wam eval's and wam imagine's --seed (other episodes)")
    p.add_argument("--sim-only", action="store_true", help="only the simulated evaluations (no world model needed)")
    p.add_argument(
        "--tag",
        default="",
        help="appended to the imagined runs' directory names (another critic or world beside the same simulated runs)",
    )
    p.add_argument("--out", default="experiments/imagination/imagine.json")
    p.add_argument("--runs", default="runs/bench-imagine")
    p.add_argument("--table", default=None, metavar="JSON")
    p.add_argument(
        "--pool",
        default=None,
        metavar="JSON,JSON",
        help="put together results of the same policies on other --seed values into --out",
    )
    p.add_argument(
        "--demos",
        default=None,
        metavar="DATASET",
        help="a scripted-expert dataset: count the imagined successes sooner than its fastest success",
    )
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    from wam.atomic import write_json_atomic

    if args.pool:
        result = pool([json.loads(Path(f).read_text()) for f in args.pool.split(",")])
        if args.demos:
            result["early_successes"] = early_successes(result["policies"], args.demos)
        write_json_atomic(Path(args.out), result)
        print(table(result))
        return 0

    critic = Path(args.critic) if args.critic else Path(args.world) / "critic"
    if not args.sim_only and not (critic / "critic.json").is_file():
        raise SystemExit(
            f"no critic at {critic}; first: wam critic --checkpoint {args.world} --dataset DATASET --out {critic}"
        )
    result = {
        "world": args.world,
        "critic": str(critic),
        "persist": args.persist,
        "threshold": args.threshold,
        "seed": args.seed,
        "action_guidance": args.action_guidance,
        "tasks": args.tasks,
        "episodes_per_task": args.episodes,
        "policies": [],
        "skipped": [],
    }
    result["policy_set"] = args.policy_set
    for i, name, ckpt, flags in chosen_policies(args.policy_set, args.policies):
        if not (ROOT / ckpt / "model.safetensors").is_file() and not (Path(ckpt) / "model.safetensors").is_file():
            result["skipped"].append({"name": name, "checkpoint": ckpt})
            continue
        sim_out = Path(args.runs) / f"{i}-sim"  # shared by every --persist
        im_out = Path(args.runs) / (
            f"{i}-imagined"
            + (f"-persist{args.persist}" if args.persist != 1 else "")
            + (f"-threshold{args.threshold:g}" if args.threshold != 0.5 else "")
            + (f"-guidance{args.action_guidance:g}" if args.action_guidance != 1 else "")
            + (f"-{args.tag}" if args.tag else "")
        )
        common = [
            "--tasks",
            args.tasks,
            "--episodes",
            str(args.episodes),
            "--videos",
            "0",
            "--quiet",
            *flags,
            *(["--seed", str(args.seed)] if args.seed else []),
        ]
        sim_cmd = [
            wam(),
            "eval",
            "--checkpoint",
            ckpt,
            "--no-expert",
            "--workers",
            str(args.workers),
            "--out",
            str(sim_out),
            *common,
        ]
        im_cmd = [
            wam(),
            "imagine",
            "--checkpoint",
            args.world,
            "--critic",
            str(critic),
            "--policy",
            ckpt,
            "--start",
            "sim",
            "--persist",
            str(args.persist),
            "--threshold",
            f"{args.threshold:g}",
            "--action-guidance",
            f"{args.action_guidance:g}",
            "--out",
            str(im_out),
            *common,
        ]
        sim_s = run(sim_cmd) if not (sim_out / "eval_info.json").is_file() else None
        if args.sim_only:
            print(f"[imagine] {name}: simulated", flush=True)
            continue
        im_s = run(im_cmd) if not (im_out / "imagine_info.json").is_file() else None  # reused: resumable
        row = {
            "name": name,
            "checkpoint": ckpt,
            "flags": flags,
            "simulated": summary(json.loads((sim_out / "eval_info.json").read_text())),
            "imagined": summary(json.loads((im_out / "imagine_info.json").read_text())),
            "commands": [shlex.join(sim_cmd), shlex.join(im_cmd)],
            "wall_s": {"simulated": sim_s, "imagined": im_s},
        }
        result["policies"].append(row)
        print(
            f"[imagine] {name}: simulated {row['simulated']['pc_success']:.1f}%, imagined "
            f"{row['imagined']['pc_success']:.1f}%",
            flush=True,
        )
        result["spearman"] = correlations(result["policies"])
        if args.demos:
            result["early_successes"] = early_successes(result["policies"], args.demos)
        write_json_atomic(Path(args.out), result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
