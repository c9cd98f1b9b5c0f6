"""What the world model adds at the MT50 reference's budget: mt50-v2 against its policy-only twin, same episodes.

    wam recipe run mt50-v2-policy --out runs/mt50-v2-policy --data runs/mt50-v2/data    # the twin (~4.5 h)
    python experiments/world_model/mt50_v2_worth.py --wam runs/mt50-v2/train/checkpoint \
        --policy runs/mt50-v2-policy/train/checkpoint --out runs/mt50-v2-worth \
        --record experiments/world_model/mt50_v2_worth.json

The two recipes share the data, the tokenizer stage, the network, the schedule and the seed; the twin never sees
the future frames (no video loss). Each model is evaluated with `wam eval` on the development seeds (`--seed dev`)
of the benchmark as published (`--protocol lerobot`), every MT50 task with the same episodes: the WAM acting in
policy mode and in joint mode, the twin in policy mode (it has no video to denoise). Each WAM row is paired with
the twin's on the same episodes: the mean of group means (stratified bootstrap interval) and every episode alike
(bootstrap interval, McNemar's exact p). An evaluation already in `--out` is not run again, so an interrupted
study continues where it stopped. This is a measurement, not a choice: nothing is tuned on it.

`--at 20000,50000` adds the gap along training: the two runs' weights at those steps (both recipes' `keep_every`
copies, in `--wam-at` and `--policy-at`), both in policy mode, paired the same way. A copy at
step N is the weights N steps into the same 100,000-step schedule, not a run trained for N steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mt50_reference"))  # tune_on_dev, mt50_table

from tune_on_dev import ci, eval_command, outcomes, versus_base

# name -> (which checkpoint, the flags of `wam eval` it adds)
RUNS: dict[str, tuple[str, list[str]]] = {
    "policy-only": ("policy", []),
    "wam, policy mode": ("wam", []),
    "wam, joint mode": ("wam", ["--mode", "joint"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wam", required=True, help="the mt50-v2 checkpoint")
    ap.add_argument("--policy", required=True, help="the mt50-v2-policy checkpoint")
    ap.add_argument("--out", required=True, help="a directory: one evaluation per row")
    ap.add_argument("--record", required=True, help="the JSON record (rewritten)")
    ap.add_argument("--episodes", type=int, default=6, help="episodes per task (default 6: 300 episodes a row)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--at", default="", help="comma-separated steps: the gap along training (policy mode)")
    ap.add_argument("--wam-at", default="runs/mt50-v2/train/steps/step-{}", help="mt50-v2's weights at step {}")
    ap.add_argument("--policy-at", default="runs/mt50-v2-policy/train/steps/step-{}", help="the twin's at step {}")
    args = ap.parse_args()
    checkpoints = {"wam": args.wam, "policy": args.policy}
    record = {"what": __doc__.split("\n\n")[0], "checkpoints": checkpoints, "episodes": args.episodes, "runs": {}}
    infos = {}
    for name, (which, flags) in RUNS.items():
        out = Path(args.out) / name.replace(", ", "-").replace(" ", "-")
        cmd = eval_command(checkpoints[which], out, flags, "mt50", args.episodes, args.workers)
        if not (out / "eval_info.json").is_file():
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True)
        info = infos[name] = json.loads((out / "eval_info.json").read_text())
        gm = info["group_mean"]
        record["runs"][name] = {
            "checkpoint": checkpoints[which],
            "command": "wam " + " ".join(cmd[3:]),
            "group_mean": {"pc_success": gm["pc_success"], "ci95": gm["ci95"]},
            "groups": {k: {"pc_success": g["pc_success"], "ci95": g["ci95"]} for k, g in info["groups"].items()},
            "pc_success": info["pc_success"],
            "ci95": info["ci95"],
            "n_episodes": info["n_episodes"],
            "successes": outcomes(info),
        }
        if name != "policy-only":
            record["runs"][name]["versus_policy_only"] = versus_base(info, infos["policy-only"])
        Path(args.record).write_text(json.dumps(record, indent=1))
    record["curve"] = []
    for step in [int(x) for x in args.at.split(",") if x.strip()]:
        pair = {}
        for which, pattern in (("policy", args.policy_at), ("wam", args.wam_at)):
            out = Path(args.out) / f"{which}-at-{step}"
            cmd = eval_command(pattern.format(step), out, [], "mt50", args.episodes, args.workers)
            if not (out / "eval_info.json").is_file():
                print("$", " ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True)
            pair[which] = json.loads((out / "eval_info.json").read_text())
        gm = {w: pair[w]["group_mean"]["pc_success"] for w in pair}
        record["curve"].append({"step": step, **gm, "wam_minus_policy": versus_base(pair["wam"], pair["policy"])})
        Path(args.record).write_text(json.dumps(record, indent=1))
    print_table(record)


def print_table(record: dict) -> None:
    print("| model | mean of group means % [95% CI] | per episode % [95% CI] | minus policy-only: group means "
          "[95% CI] | per episode [95% CI], McNemar p |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, r in record["runs"].items():
        v, gm = r.get("versus_policy_only"), r["group_mean"]
        gdiff = f"{v['group_mean']['difference']:+.1f} {ci(v['group_mean']['ci95'], '+')}" if v else ""
        e = v["per_episode"] if v else None
        ediff = f"{e['difference']:+.1f} {ci(e['ci95'], '+')}, p={e['mcnemar_p']:.2g}" if e else ""
        print(
            f"| {name} | {gm['pc_success']:.1f} {ci(gm['ci95'])} | {r['pc_success']:.1f} {ci(r['ci95'])} "
            f"| {gdiff} | {ediff} |"
        )
    if record.get("curve"):
        print("\n| WAM step | policy-only | WAM, policy mode | difference (group means) [95% CI] |\n|---|---|---|---|")
        for c in record["curve"]:
            d = c["wam_minus_policy"]["group_mean"]
            print(
                f"| {c['step']:,} | {c['policy']:.1f} | {c['wam']:.1f} | {d['difference']:+.1f} {ci(d['ci95'], '+')} |"
            )


if __name__ == "__main__":
    main()
