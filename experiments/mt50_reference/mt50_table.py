"""The README's MT50 tables from `wam eval` outputs: per difficulty group and overall, seeing and blind.

    wam eval --checkpoint checkpoints/wam-tiny-mt50 --tasks mt50 --episodes 20 --num-envs 4 --out runs/eval-mt50
    wam eval --checkpoint checkpoints/wam-tiny-mt50 --tasks mt50 --episodes 20 --num-envs 4 --blind --no-expert \\
        --out runs/eval-mt50-blind
    python experiments/mt50_reference/mt50_table.py runs/eval-mt50/eval_info.json \\
        --blind runs/eval-mt50-blind/eval_info.json
    # the same checkpoint acting in joint mode, against its policy-mode evaluation on the same seeds:
    wam eval --checkpoint checkpoints/wam-tiny-mt50 --tasks mt50 --episodes 20 --mode joint --no-expert \\
        --out runs/eval-mt50-joint
    python experiments/mt50_reference/mt50_table.py runs/eval-mt50-joint/eval_info.json \\
        --expert experiments/mt50_reference/mt50_eval.json \\
        --versus experiments/mt50_reference/mt50_eval.json

Groups are MetaWorld's difficulty groups (easy 28, medium 11, hard 6, very hard 5 tasks); "mean of group
means" is the published convention, "per episode" weighs every episode alike. Intervals: Wilson 95% per
group and per episode; normal approximation for the mean of group means (`wam.stats.group_results`).
`--versus` adds the paired difference from another evaluation of the same seeds (bootstrap interval over
episodes and McNemar's exact p, `wam.stats.paired_difference`), per group and per episode; with `--common`, on
the episodes both ran when one ran fewer per task.
"""

from __future__ import annotations

import argparse
import json


def fmt(pc: float, ci: list[float] | None = None) -> str:
    return f"{pc:.1f}" + (f" [{ci[0]:.0f}, {ci[1]:.0f}]" if ci else "")


def rate(pc: float | None) -> str:
    """A rate that may be missing (the expert's, when no evaluation of these seeds ran it)."""
    return "-" if pc is None else f"{pc:.1f}"


def take_expert(info: dict, other: dict, name: str) -> None:
    """Copy the expert's rates of `other` into `info`, refusing unless every task ran the same seeds."""
    by_task = {r["task"]: r for r in other["per_task"]}
    for r in info["per_task"]:
        o = by_task.get(r["task"])
        if o is None or o.get("seeds") != r.get("seeds") or "expert_pc_success" not in o:
            raise SystemExit(
                f"{name} has no expert result for {r['task']} on the same seeds; run wam eval on "
                f"those seeds without --no-expert"
            )
        r["expert_pc_success"] = o["expert_pc_success"]
    for key, g in info["groups"].items():
        g["expert_pc_success"] = other["groups"][key]["expert_pc_success"]
    info["group_mean"]["expert_pc_success"] = other["group_mean"].get("expert_pc_success")
    info["expert"] = other.get("expert")


def paired_outcomes(info: dict, other: dict, tasks: list[str], name: str) -> tuple[list[bool], list[bool]]:
    """The episode outcomes of `other` and `info` on `tasks`, refusing unless both ran the same seeds."""
    mine, theirs = {r["task"]: r for r in info["per_task"]}, {r["task"]: r for r in other["per_task"]}
    a, b = [], []
    for t in tasks:
        r, o = mine[t], theirs.get(t)
        if o is None or o.get("seeds") != r.get("seeds") or len(o["successes"]) != len(r["successes"]):
            raise SystemExit(
                f"{name} did not evaluate {t} on the same seeds as {info['settings'].get('checkpoint')};"
                f" compare two evaluations with the same --episodes and --seed"
            )
        a += o["successes"]
        b += r["successes"]
    return a, b


def versus(info: dict, other: dict, tasks: list[str], name: str) -> str:
    """' points [95% CI], p=... |': the paired difference of `info` minus `other` on `tasks`."""
    from wam.stats import paired_difference

    d = paired_difference(*paired_outcomes(info, other, tasks, name))
    return f" {d['difference']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}], p={d['mcnemar_p']:.2g} |"


def on_common_seeds(info: dict, other: dict) -> tuple[dict, dict]:
    """`info` and `other` cut down to the episodes both ran (per task, the seeds in both), their group and
    overall rates recomputed (`wam.stats.group_results`, `aggregate`): two evaluations of different lengths
    compared on the episodes they share."""
    from wam.stats import aggregate, group_results

    theirs = {r["task"]: r for r in other["per_task"]}
    groups = {k: g["tasks"] for k, g in info["groups"].items()}
    cut = ([], [])
    for r in info["per_task"]:
        o = theirs.get(r["task"])
        shared = [s for s in r["seeds"] if o is not None and s in o["seeds"]]
        if not shared:
            continue
        for rows, e in zip(cut, (r, o)):
            at = [e["seeds"].index(s) for s in shared]
            row = {k: [e[k][i] for i in at] for k in ("successes", "sum_rewards", "max_rewards")}
            rows.append(
                {**row, "task": r["task"], "seeds": shared, "pc_success": 100.0 * sum(row["successes"]) / len(at)}
            )
    if not cut[0]:
        raise SystemExit("the two evaluations share no episode (no task with a seed in both)")
    return tuple(
        {**aggregate(rows), **group_results(rows, groups), "per_task": rows, "settings": e.get("settings", {})}
        for e, rows in zip((info, other), cut)
    )


def group_mean_difference(info: dict, other: dict, name: str, resamples: int = 10_000) -> tuple[float, float, float]:
    """The paired difference of the mean of group means, `info` minus `other`, in points, with its 95% interval:
    the episodes are resampled within each group (a stratified bootstrap, seed 0)."""
    import numpy as np

    rng = np.random.default_rng(0)
    diffs, boot = [], np.zeros(resamples)
    for g in info["groups"].values():
        a, b = paired_outcomes(info, other, g["tasks"], name)
        d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
        diffs.append(d.mean())
        boot += d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    n = len(diffs)
    lo, hi = np.percentile(100 * boot / n, [2.5, 97.5])
    return 100 * float(sum(diffs)) / n, float(lo), float(hi)


def versus_group_mean(info: dict, other: dict, name: str) -> str:
    """' points [95% CI] |': `group_mean_difference` as a table cell."""
    diff, lo, hi = group_mean_difference(info, other, name)
    return f" **{diff:+.1f}** [{lo:+.1f}, {hi:+.1f}] |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_info", help="eval_info.json of the evaluation")
    ap.add_argument("--blind", default=None, help="eval_info.json of the same evaluation with --blind")
    ap.add_argument("--tasks", action="store_true", help="also print the per-task table")
    ap.add_argument(
        "--expert",
        default=None,
        metavar="EVAL_INFO",
        help="take the scripted expert's rates from this evaluation on the same seeds (for an "
        "evaluation run with --no-expert)",
    )
    ap.add_argument(
        "--versus",
        default=None,
        metavar="EVAL_INFO",
        help="add the paired difference from this evaluation of the same seeds (e.g. another mode)",
    )
    ap.add_argument(
        "--common",
        action="store_true",
        help="with --versus: compare on the episodes both evaluations ran (e.g. 10 episodes a task against 1)",
    )
    args = ap.parse_args()
    info = json.load(open(args.eval_info))
    other = json.load(open(args.versus)) if args.versus else None
    if other and args.common:
        if args.expert or args.blind or args.tasks:
            raise SystemExit("--common prints the paired table only; leave out --expert, --blind and --tasks")
        info, other = on_common_seeds(info, other)
    if other:  # refuse before printing anything
        paired_outcomes(info, other, [r["task"] for r in info["per_task"]], args.versus)
    if args.expert:
        take_expert(info, json.load(open(args.expert)), args.expert)
    blind = json.load(open(args.blind)) if args.blind else None
    head = "| | tasks | episodes | wam success % [95% CI] | scripted expert % |"
    sep = "|---|---|---|---|---|"
    if blind:
        head += " camera blacked out % [95% CI] | drop (points) |"
        sep += "---|---|"
    if other:
        head += " minus --versus: points [95% CI], McNemar p |"
        sep += "---|"
    print(head)
    print(sep)
    names = {"easy": "easy", "medium": "medium", "hard": "hard", "very_hard": "very hard"}
    for key, g in info["groups"].items():
        row = (
            f"| {names.get(key, key)} | {len(g['tasks'])} | {g['n_episodes']} | {fmt(g['pc_success'], g['ci95'])} | "
            f"{rate(g.get('expert_pc_success'))} |"
        )
        if blind:
            b = blind["groups"][key]
            row += f" {fmt(b['pc_success'], b['ci95'])} | {g['pc_success'] - b['pc_success']:.1f} |"
        if other:
            row += versus(info, other, g["tasks"], args.versus)
        print(row)
    gm = info["group_mean"]
    n_tasks = sum(len(g["tasks"]) for g in info["groups"].values())
    row = (
        f"| **mean of group means** | {n_tasks} | {info['n_episodes']} | "
        f"**{fmt(gm['pc_success'], gm['ci95'])}** | {rate(gm.get('expert_pc_success'))} |"
    )
    if blind:
        bg = blind["group_mean"]
        row += f" {fmt(bg['pc_success'], bg['ci95'])} | {gm['pc_success'] - bg['pc_success']:.1f} |"
    if other:
        row += versus_group_mean(info, other, args.versus)
    print(row)
    ex = info.get("expert") or {}
    row = (
        f"| per episode | | {info['n_episodes']} | {fmt(info['pc_success'], info['ci95'])} | "
        f"{rate(ex.get('pc_success'))} |"
    )
    if blind:
        row += f" {fmt(blind['pc_success'], blind['ci95'])} | {info['pc_success'] - blind['pc_success']:.1f} |"
    if other:
        row += versus(info, other, [r["task"] for r in info["per_task"]], args.versus)
    print(row)
    if args.tasks:
        print()
        print("| task | group | success % | expert % |" + (" blind % |" if blind else ""))
        print("|---|---|---|---|" + ("---|" if blind else ""))
        group_of = {t: k for k, g in info["groups"].items() for t in g["tasks"]}
        btask = {r["task"]: r for r in blind["per_task"]} if blind else {}
        for r in info["per_task"]:
            line = (
                f"| {r['task']} | {names.get(group_of.get(r['task']), '')} | {r['pc_success']:.0f} | "
                f"{r['expert_pc_success']:.0f} |"
            )
            if blind:
                line += f" {btask[r['task']]['pc_success']:.0f} |" if r["task"] in btask else " |"
            print(line)


if __name__ == "__main__":
    main()
