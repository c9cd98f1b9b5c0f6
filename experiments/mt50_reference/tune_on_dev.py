"""Inference settings of a checkpoint compared on the development seeds, every run recorded.

    python experiments/mt50_reference/tune_on_dev.py --checkpoint runs/mt50-v2/train/checkpoint \
        --out runs/mt50-v2-tune --record experiments/mt50_reference/mt50_v2_dev_tuning.json
    python experiments/mt50_reference/tune_on_dev.py ... --only base,steps4     # a subset of the settings

Each setting is one `wam eval` on the development seed set (`--seed dev`) of the benchmark as published
(`--protocol lerobot`), every task of MT50 with the same episodes; a setting already evaluated in `--out` is
not run again, so an interrupted tuning continues where it stopped. The record holds every run (its command,
its episodes, the mean of group means with its interval) and each setting's paired difference from `base` on the
same episodes (the mean of group means with a stratified bootstrap interval; per episode with McNemar's p).
Choose on this record only; the test seeds are for the one evaluation of the chosen setting. The record's
`chosen` applies one rule, fixed before any run: the setting with the highest mean of group means among those
whose paired difference from `base` has a 95% interval above zero, else `base` (the defaults stay unless
something beats them clearly); `score_on_test.py --flags-from RECORD` takes its flags.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mt50_table, beside this script

# name -> the flags of `wam eval` it adds to the defaults (policy mode, 2 Euler steps, half the chunk executed)
SETTINGS: dict[str, list[str]] = {
    "base": [],
    "actions2": ["--n-action-steps", "2"],
    "steps4": ["--steps", "4"],
    "joint": ["--mode", "joint"],
}


def eval_command(checkpoint: str, out: Path, flags: list[str], tasks: str, episodes: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "wam.cli", "eval", "--checkpoint", checkpoint, "--tasks", tasks,
        "--episodes", str(episodes), "--seed", "dev", "--protocol", "lerobot", "--workers", str(workers),
        "--no-expert", "--videos", "0", "--quiet", "--resume", "--out", str(out), *flags,
    ]  # fmt: skip


def outcomes(info: dict) -> dict[str, list[bool]]:
    return {r["task"]: [bool(s) for s in r["successes"]] for r in info["per_task"]}


def versus_base(info: dict, base: dict) -> dict:
    """This run minus `base` on the same episodes: the mean of group means (`mt50_table.group_mean_difference`)
    and every episode alike (`wam.stats.paired_difference`)."""
    from mt50_table import group_mean_difference, paired_outcomes

    from wam.stats import paired_difference

    diff, lo, hi = group_mean_difference(info, base, "base")
    every = paired_difference(*paired_outcomes(info, base, [r["task"] for r in info["per_task"]], "base"))
    return {"group_mean": {"difference": diff, "ci95": [lo, hi]}, "per_episode": every}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True, help="a directory: one evaluation per setting")
    ap.add_argument("--record", required=True, help="the JSON record of every run (rewritten)")
    ap.add_argument("--tasks", default="mt50", help="the tasks (default mt50; the record is read per group)")
    ap.add_argument("--episodes", type=int, default=3, help="episodes per task (default 3: 150 episodes a run)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated names of SETTINGS (default: all, base first)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    if "base" not in names:
        names.insert(0, "base")
    record = {
        "what": __doc__.split("\n\n")[0],
        "checkpoint": args.checkpoint,
        "tasks": args.tasks,
        "episodes": args.episodes,
        "runs": {},
    }
    for name in names:
        out = Path(args.out) / name
        cmd = eval_command(args.checkpoint, out, SETTINGS[name], args.tasks, args.episodes, args.workers)
        if not (out / "eval_info.json").is_file():
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True)
        info = json.loads((out / "eval_info.json").read_text())
        gm = info["group_mean"]
        record["runs"][name] = {
            "flags": SETTINGS[name],
            "command": "wam " + " ".join(cmd[3:]),
            "group_mean": {"pc_success": gm["pc_success"], "ci95": gm["ci95"]},
            "pc_success": info["pc_success"],
            "ci95": info["ci95"],
            "n_episodes": info["n_episodes"],
            "seed": info["settings"].get("seed"),
            "successes": outcomes(info),
        }
        if name != "base":
            base = json.loads((Path(args.out) / "base" / "eval_info.json").read_text())
            record["runs"][name]["versus_base"] = versus_base(info, base)
        record["chosen"] = choose(record["runs"])
        Path(args.record).write_text(json.dumps(record, indent=1))
    print_table(record)
    print(f"chosen: {record['chosen']} ({' '.join(SETTINGS[record['chosen']]) or 'the defaults'})")


def choose(runs: dict) -> str:
    """The module docstring's rule: the best setting that beats `base` with a 95% interval above zero, else base."""
    better = [n for n, r in runs.items() if "versus_base" in r and r["versus_base"]["group_mean"]["ci95"][0] > 0]
    return max(better, key=lambda n: runs[n]["group_mean"]["pc_success"]) if better else "base"


def ci(lo_hi: list[float], sign: str = "") -> str:
    return f"[{lo_hi[0]:{sign}.1f}, {lo_hi[1]:{sign}.1f}]"


def print_table(record: dict) -> None:
    print(
        "| setting | mean of group means % [95% CI] | per episode % | minus base (group means) [95% CI] | McNemar p |"
    )
    print("|---|---|---|---|---|")
    for name, r in record["runs"].items():
        v, gm = r.get("versus_base"), r["group_mean"]
        diff = f"{v['group_mean']['difference']:+.1f} {ci(v['group_mean']['ci95'], '+')}" if v else ""
        p = f"{v['per_episode']['mcnemar_p']:.2g}" if v else ""
        print(f"| {name} | {gm['pc_success']:.1f} {ci(gm['ci95'])} | {r['pc_success']:.1f} | {diff} | {p} |")


if __name__ == "__main__":
    main()
