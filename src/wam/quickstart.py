"""`wam quickstart`: the main job on the embedded default, as far as this version of wam goes.

    bash scripts/quickstart.sh          # sets up .venv, then runs: wam quickstart

What it runs, with progress shown throughout (about 140 seconds on 2 CPU cores):
  1. The synthetic dot world: trains a WAM from scratch and evaluates it in all five modes, each
     beside its trivial baseline; writes a checkpoint and metrics.json.
  2. MetaWorld: runs the scripted experts on two tasks, writes their demonstrations as a LeRobot v3.0
     dataset, and validates it with the dataset checker.
Training on MetaWorld demonstrations and closed-loop evaluation are not part of this version yet;
the quickstart says so at the end instead of pretending.
"""

from __future__ import annotations

import json
from pathlib import Path


def _table(metrics: dict) -> str:
    lines = [f"{'mode':<8} {'action MSE':>11} {'next-frame MSE':>15}",
             f"{'baseline':<8} {metrics['baseline_mean_action_mse']:>11.4f} {metrics['baseline_copy_last_frame_mse']:>15.4f}"
             "   (mean action / copy last frame)"]
    for mode in ("policy", "forward", "inverse", "video", "joint"):
        row = metrics[mode]
        a = f"{row['action_mse']:.4f}" if "action_mse" in row else "-"
        f = f"{row['next_frame_mse']:.4f}" if "next_frame_mse" in row else "-"
        lines.append(f"{mode:<8} {a:>11} {f:>15}")
    return "\n".join(lines)


def quickstart(out: str = "runs/quickstart", seed: int = 0, synthetic_steps: int = 1500,
               metaworld_tasks: str = "reach-v3,drawer-close-v3", metaworld_episodes: int = 2) -> dict:
    from wam.checkpoint import save_checkpoint
    from wam.synthetic import SyntheticSetup, evaluate_synthetic, train_synthetic

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    summary: dict = {}

    print(f"[1/2] synthetic dot world: training a WAM for {synthetic_steps} steps, then all five modes")
    run = train_synthetic(SyntheticSetup(steps=synthetic_steps, seed=seed), progress=True)
    metrics = evaluate_synthetic(run)
    save_checkpoint(root / "synthetic" / "checkpoint", run.state.ema, run.tokenizer,
                    config={"setup": "wam.synthetic", "steps": synthetic_steps, "seed": seed})
    (root / "synthetic" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(_table(metrics))
    summary["synthetic"] = metrics

    print(f"\n[2/2] MetaWorld: scripted experts on {metaworld_tasks}, {metaworld_episodes} episodes each")
    try:
        from wam.collect import collect
        from wam.data.check import check_dataset
    except ImportError as e:
        print(f"skipped: MetaWorld needs the sim extra ({e}); pip install 'wam[sim]'")
    else:
        data = root / "data" / "metaworld"
        col = collect("metaworld", tasks=metaworld_tasks, episodes=metaworld_episodes, out=data, seed=seed,
                      overwrite=True)
        report = check_dataset(data)
        print(f"dataset check: {'ok' if report.ok else 'problems found'} ({data})")
        summary["metaworld"] = {"dataset": str(data), "check_ok": report.ok,
                                "expert_success": {r["task"]: r["success_rate"] for r in col["tasks"]}}

    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nwrote {root / 'summary.json'}, {root / 'synthetic'}")
    print("not yet in this version: training on MetaWorld demonstrations (wam train), closed-loop "
          "evaluation (wam eval) and the HTML report")
    return summary
