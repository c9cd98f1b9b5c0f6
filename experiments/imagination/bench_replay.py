"""Open loop beside closed loop: does the world model judge the outcomes of the policies' own simulated episodes?

`bench_imagine.py` lets each policy act on imagined frames (closed loop) and ranks the policies by what the
critic makes of the imagined episodes. When that ranking fails, either the world model does not follow actions
unlike the expert's, or the closed loop (a policy acting on imagined frames) leads it astray. This benchmark
separates the two: each policy runs in the simulator with its episodes recorded (`wam eval --record`), and the
world model imagines every recorded episode along the actions the policy really took, from the same first frame
(`wam.imagine.replay`: no policy in the loop). The critic judges the imagined frames as `wam imagine` does; the
policies are ranked by those verdicts against their simulated success, overall and per task group, and every
episode's verdict is checked against what really happened.

Runbook (README, "Policy evaluation in imagination"):
    python experiments/imagination/bench_replay.py --policy-set reference --seed 0 --record-only \\
        --runs runs/bench-replay-s0
    python experiments/imagination/bench_replay.py --policy-set reference --seed 0 \\
        --world runs/imagine-world/checkpoint --critic runs/imagine-world/critic-real --action-guidance 2 \\
        --runs runs/bench-replay-s0 \\
        --closed-loop experiments/imagination/imagine_ref_real_seed0.json \\
        --out experiments/imagination/replay_ref_real_seed0.json
    python experiments/imagination/bench_replay.py \\
        --datasets A=data/rollouts/A,B=data/rollouts/B ...   # recorded elsewhere
    python experiments/imagination/bench_replay.py --pool runs/A/X.json,runs/B/Y.json --out POOLED.json
--out gets the aggregates; the same result with every per-episode verdict (what --pool reads) goes to
--runs under the same name. --policies I,J,... keeps only those policies of the set (by index).
The recorded episodes go on 10 steps after their first success (`--after-success 10`, as `wam collect`
records), so a success the world model imagines a little late still falls inside the episode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from bench_imagine import POLICY_SETS, chosen_policies, correlations, pool, run, wam  # (this script's own directory)

ROOT = Path(__file__).resolve().parents[2]


def record(name: str, ckpt: str, flags: list[str], args, i: int) -> Path:
    """The policy's simulated episodes as a dataset (once: an existing one is reused)."""
    data = Path(args.runs) / f"{i}-rollouts"
    if not (data / "meta" / "info.json").is_file():
        print(f"[{name}] simulating and recording", file=sys.stderr)
        run(
            [
                wam(),
                "eval",
                "--checkpoint",
                ckpt,
                "--no-expert",
                "--workers",
                str(args.workers),
                "--tasks",
                args.tasks,
                "--episodes",
                str(args.episodes),
                "--seed",
                str(args.seed),
                "--videos",
                "0",
                "--after-success",
                "10",
                "--record",
                str(data),
                "--out",
                str(Path(args.runs) / f"{i}-sim"),
                "--quiet",
                *flags,
            ]
        )
    return data


def side(verdicts: list[dict], by_text: dict[str, str], which: str) -> dict:
    """A bench_imagine result side ("simulated": what really happened; "imagined": the critic's verdicts;
    "recorded": the same critic's verdicts on the recorded frames, as a world model that imagined them exactly
    would be judged)."""
    from wam.envs.metaworld import DIFFICULTY

    key = {
        "simulated": ("real_success", "real_max_reward", "real_first_success"),
        "imagined": ("imagined_success", "imagined_progress", "imagined_first_done"),
        "recorded": ("real_judged_success", "real_judged_progress", "real_judged_first_done"),
    }[which]
    eps: dict[str, dict[str, list]] = {}
    for v in verdicts:
        e = eps.setdefault(by_text[v["task"]], {"success": [], "progress": [], "first_success": []})
        e["success"].append(bool(v[key[0]]))
        e["progress"].append(float(v[key[1]]))
        e["first_success"].append(int(v[key[2]]))
    groups = {g: [t for t in eps if t in members] for g, members in DIFFICULTY.items()}
    groups = {g: ts for g, ts in groups.items() if ts}
    return {
        "pc_success": 100 * float(np.mean([np.mean(v["success"]) for v in eps.values()])),
        "avg_max_reward": float(np.mean([np.mean(v["progress"]) for v in eps.values()])),
        "n_episodes": len(verdicts),
        "groups": {g: 100 * float(np.mean([np.mean(eps[t]["success"]) for t in ts])) for g, ts in groups.items()},
        "groups_progress": {g: float(np.mean([np.mean(eps[t]["progress"]) for t in ts])) for g, ts in groups.items()},
        "episodes": eps,
    }


def agreement(verdicts: list[dict], stride: int | None = None) -> dict:
    """Episode by episode: the imagined verdict against the real outcome (`wam.imagine.replay_summary`), with
    how well the imagined progress sorts the real outcomes and how early the imagined success comes."""
    from wam.imagine import replay_summary
    from wam.stats import auc

    s = replay_summary(verdicts)
    real = np.array([v["real_success"] for v in verdicts], bool)
    lags = [
        v["imagined_first_done"] - v["real_first_success"]
        for v in verdicts
        if v["real_success"] and v["imagined_success"]
    ]
    out = {
        "episodes": s["episodes"],
        "real_successes": int(real.sum()),
        "accuracy": s["accuracy"],
        "failed_judged_success": s["failed_judged_success"],
        "succeeded_judged_success": s["succeeded_judged_success"],
        "progress_auc": auc(np.array([v["imagined_progress"] for v in verdicts]), real.astype(float)),
        "first_done_lag_median": float(np.median(lags)) if lags else None,
    }
    if "recorded_accuracy" in s:  # --real: the same critic on the recorded frames, and the frames' PSNR
        out.update({k: s[k] for k in s if k.startswith(("recorded_", "psnr"))})
        out["recorded_progress_auc"] = auc(np.array([v["real_judged_progress"] for v in verdicts]), real.astype(float))
        if stride is not None:
            out["psnr_by_step"] = psnr_by_step(verdicts, stride)
    return out


PSNR_STEPS = (8, 20, 40, 60, 80, 120)


def psnr_by_step(verdicts: list[dict], stride: int) -> dict:
    """Mean PSNR of the imagined frames, of the first frame held still and of the tokenizer's reconstruction
    against the recorded frame at a few steps, over the episodes that reach them, apart by real outcome."""
    out = {}
    for step in PSNR_STEPS:
        k = step // stride - 1  # imagined frame k stands for row (k + 1) * stride
        row = {}
        for outcome, flag in (("succeeded", True), ("failed", False)):
            vs = [v for v in verdicts if v["real_success"] == flag and len(v["psnr"]) > k]
            row[outcome] = (
                (
                    {key: float(np.mean([v[key][k] for v in vs])) for key in ("psnr", "psnr_still", "psnr_ceiling")}
                    | {"episodes": len(vs)}
                )
                if vs
                else None
            )
        out[str(step)] = row
    return out


THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
PERSISTS = (1, 2, 3, 5, 8)


def rejudge(verdicts: list[dict], threshold: float, persist: int, stride: int) -> list[dict]:
    """The verdicts again under another decision rule, from each episode's per-frame probabilities of done."""
    from wam.imagine import first_done

    out = []
    for v in verdicts:
        k = first_done(v["p_done"], threshold, persist)
        out.append({**v, "imagined_success": k >= 0, "imagined_first_done": k * stride if k >= 0 else -1})
    return out


def tune(verdicts: list[dict], stride: int) -> dict:
    """The (threshold, persist) whose episode verdicts best match the real outcomes on the tuning episodes: the
    highest balanced accuracy (the mean of the rates at which successes and failures are judged right)."""
    grid = []
    for threshold in THRESHOLDS:
        for persist in PERSISTS:
            a = agreement(rejudge(verdicts, threshold, persist, stride))
            hit, reject = a["succeeded_judged_success"], a["failed_judged_success"]
            balanced = None if hit is None or reject is None else (hit + 1 - reject) / 2
            grid.append({"threshold": threshold, "persist": persist, "balanced_accuracy": balanced, **a})
    best = max((g for g in grid if g["balanced_accuracy"] is not None), key=lambda g: g["balanced_accuracy"])
    return {"threshold": best["threshold"], "persist": best["persist"], "best": best, "grid": grid}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default=None, help="the world model (checkpoint)")
    p.add_argument("--critic", default=None, help="the critic (default: <world>/critic)")
    p.add_argument(
        "--policy-set",
        default="reference",
        choices=sorted(POLICY_SETS),
        help="the policies simulated and recorded (bench_imagine's sets)",
    )
    p.add_argument(
        "--policies",
        default=None,
        metavar="I,J,...",
        help="only these policies of the set, by their index in it (default: all)",
    )
    p.add_argument(
        "--datasets",
        default=None,
        metavar="NAME=PATH,...",
        help="policies' recorded episodes instead (e.g. from `wam eval --record`)",
    )
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--episodes", type=int, default=5, help="episodes per task")
    p.add_argument("--seed", type=int, default=0, help="wam eval's --seed")
    p.add_argument("--workers", type=int, default=2, help="wam eval's processes")
    p.add_argument("--action-guidance", type=float, default=1.0)
    p.add_argument("--sampling-steps", type=int, default=2, help="denoising steps per imagined frame")
    p.add_argument("--persist", type=int, default=1, help="imagined frames in a row judged done for a success")
    p.add_argument("--record-only", action="store_true", help="only simulate and record (no world model needed)")
    p.add_argument(
        "--real",
        action="store_true",
        help="also judge the recorded frames with the same critic and measure the imagined frames against "
        "them (PSNR, beside the first frame held still and the tokenizer's reconstruction)",
    )
    p.add_argument(
        "--tune",
        default=None,
        metavar="NAME=PATH,...",
        help="other policies' recorded episodes: the decision rule (threshold, persist) that judges them "
        'best is chosen there, and the policies are judged by it too ("tuned")',
    )
    p.add_argument(
        "--closed-loop",
        default=None,
        metavar="JSON",
        help="a bench_imagine result of the same policies and seeds, for its correlations beside these",
    )
    p.add_argument("--runs", default="runs/bench-replay")
    p.add_argument("--pool", default=None, metavar="A.json,B.json", help="put results on other seeds together")
    p.add_argument("--out", default="experiments/imagination/replay.json")
    args = p.parse_args(argv)

    if args.pool:
        results = [json.loads(Path(f).read_text()) for f in args.pool.split(",")]
        out = {
            **pool(results),
            "open_loop": True,
            "pooled_from": args.pool.split(","),
            "agreement": {
                r["name"]: agreement(
                    [
                        v
                        for res in results
                        for v in next(x for x in res["policies"] if x["name"] == r["name"])["verdicts"]
                    ]
                )
                for r in results[0]["policies"]
            },
        }
        if all(r.get("closed_loop") for r in results):
            out["closed_loop"] = {"pooled_from": [r["closed_loop"]["file"] for r in results]}
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(json.dumps(out["spearman"], indent=1))
        return 0
    if args.datasets:
        policies = [(name, path, None, None) for name, path in (x.split("=", 1) for x in args.datasets.split(","))]
    else:
        policies = []
        for i, name, ckpt, flags in chosen_policies(args.policy_set, args.policies):
            if not (ROOT / ckpt / "config.json").is_file() and not Path(ckpt, "config.json").is_file():
                print(f"[{name}] skipped: {ckpt} not found", file=sys.stderr)
                continue
            policies.append((name, str(record(name, ckpt, flags, args, i)), ckpt, flags))
    if args.record_only:
        return 0
    if args.world is None:
        p.error("--world is needed (or --record-only)")

    from wam.checkpoint import load_checkpoint
    from wam.critic import load_critic
    from wam.envs import get_adapter
    from wam.imagine import replay

    adapter = get_adapter("metaworld")
    by_text = {adapter.describe(t): t for t in adapter.resolve_tasks(None)}
    world = load_checkpoint(args.world)
    critic = load_critic(args.critic or Path(args.world) / "critic")
    rows = []
    for name, data, ckpt, flags in policies:
        t0 = time.perf_counter()
        verdicts = replay(
            world,
            critic,
            data,
            sampling_steps=args.sampling_steps,
            persist=args.persist,
            action_guidance=args.action_guidance,
            seed=args.seed,
            real=args.real,
            progress=False,
        )
        row = {
            "name": name,
            "dataset": data,
            "checkpoint": ckpt,
            "flags": flags,
            "replay_s": time.perf_counter() - t0,
            "simulated": side(verdicts, by_text, "simulated"),
            "imagined": side(verdicts, by_text, "imagined"),
            "agreement": agreement(verdicts, world.model.cfg.future_stride),
            "verdicts": verdicts,
        }
        rows.append(row)
        a = row["agreement"]
        print(
            f"[{name}] simulated {row['simulated']['pc_success']:.0f}%, imagined along its actions "
            f"{row['imagined']['pc_success']:.0f}%; episode accuracy {a['accuracy']:.2f} "
            f"({row['replay_s']:.0f} s)",
            file=sys.stderr,
        )
        if args.real:
            print(
                f"[{name}] recorded frames judged right {a['recorded_accuracy']:.2f}; PSNR imagined "
                f"{a['psnr']:.1f} dB, still {a['psnr_still']:.1f}, ceiling {a['psnr_ceiling']:.1f}",
                file=sys.stderr,
            )
    tuned = None
    if args.tune:
        t0 = time.perf_counter()
        tuning = [
            v
            for name, data in (x.split("=", 1) for x in args.tune.split(","))
            for v in replay(
                world,
                critic,
                data,
                sampling_steps=args.sampling_steps,
                action_guidance=args.action_guidance,
                seed=args.seed,
                progress=False,
            )
        ]
        tuned = {
            "datasets": args.tune.split(","),
            **tune(tuning, world.model.cfg.future_stride),
            "replay_s": time.perf_counter() - t0,
        }
        print(
            f"tuned on {len(tuning)} episodes: threshold {tuned['threshold']}, persist {tuned['persist']} "
            f"(balanced accuracy {tuned['best']['balanced_accuracy']:.2f})",
            file=sys.stderr,
        )
        tuned_rows = []
        for row in rows:
            verdicts = rejudge(row["verdicts"], tuned["threshold"], tuned["persist"], world.model.cfg.future_stride)
            tuned_rows.append(
                {
                    **{k: row[k] for k in ("name", "dataset", "checkpoint", "flags")},
                    "simulated": row["simulated"],
                    "imagined": side(verdicts, by_text, "imagined"),
                    "agreement": agreement(verdicts),
                }
            )
        tuned.update(policies=tuned_rows, spearman=correlations(tuned_rows))
    recorded = None
    if args.real:  # the ranking a world model that imagined the recorded frames exactly would give, this critic
        rec_rows = [{**r, "imagined": side(r["verdicts"], by_text, "recorded")} for r in rows]
        recorded = {
            "policies": [{"name": r["name"], "recorded": r["imagined"]} for r in rec_rows],
            "spearman": correlations(rec_rows),
        }
    out = {
        "world": args.world,
        "critic": args.critic or str(Path(args.world) / "critic"),
        "open_loop": True,
        "persist": args.persist,
        "action_guidance": args.action_guidance,
        "sampling_steps": args.sampling_steps,
        "real": args.real,
        "all": agreement([v for r in rows for v in r["verdicts"]], world.model.cfg.future_stride),
        "tasks": args.tasks,
        "policy_set": None if args.datasets else args.policy_set,
        "seed": args.seed,
        "episodes_per_task": args.episodes,
        "policies": rows,
        "spearman": correlations(rows),
        "tuned": tuned,
        "recorded": recorded,
    }
    if args.closed_loop:
        closed = json.loads(Path(args.closed_loop).read_text())
        out["closed_loop"] = {"file": args.closed_loop, "spearman": closed["spearman"]}
    write_results(out, args)
    print(json.dumps(out["spearman"], indent=1))
    return 0


def write_results(out: dict, args) -> None:
    """Everything, per-episode verdicts included, to --runs (what --pool reads); the aggregates to --out."""
    full = Path(args.runs) / Path(args.out).name
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_text(json.dumps(out, indent=1))
    if full.resolve() == Path(args.out).resolve():  # --out already under --runs: keep the full result only
        return
    summary = {**out, "policies": [{k: v for k, v in r.items() if k != "verdicts"} for r in out["policies"]]}
    summary["summary_of"] = f"{full}: the per-episode verdicts (per-frame probabilities of done, PSNR) left out"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
