"""Print the README's "wam beside LeRobot" table from the result files run.py wrote.

Runbook:
    python benchmarks/peers/table.py                       # every benchmarks/peers/*_mt10.json
    python benchmarks/peers/table.py benchmarks/peers/act_mt10.json benchmarks/peers/wam_mt10.json

A wam row's training record (steps, samples/s, wall-clock) is the one experiments/world_model/bench_world_model.py wrote
for the same checkpoint (experiments/world_model/world_model.json); a peer's is the peer_train.json train.py left beside
its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GROUPS = ("easy", "medium", "hard", "very_hard")


def wam_train_record(checkpoint: str, world_model: Path = ROOT / "benchmarks" / "world_model.json") -> dict | None:
    """The training record bench_world_model.py kept for this checkpoint (matched by its --out directory)."""
    if not world_model.is_file():
        return None
    run_dir = Path(checkpoint).parent
    for run in json.loads(world_model.read_text())["runs"].values():
        cmd = run["train"]["command"].split()
        if "--out" in cmd and (ROOT / cmd[cmd.index("--out") + 1]).resolve() == run_dir.resolve():
            t = run["train"]
            return {
                "steps": t["steps"],
                "samples_per_s": t["median_samples_per_s"],
                "wall_s": t["wall_s"],
                "batch_size": int(cmd[cmd.index("--batch-size") + 1]) if "--batch-size" in cmd else None,
                "threads": json.loads(world_model.read_text()).get("threads"),
            }
    return None


def row(result: dict) -> dict:
    """One result file -> the table's cells (numbers, not yet formatted)."""
    train = result.get("train")
    if result["peer"] == "wam" or train is None:
        train = wam_train_record(result["checkpoint"]) or {}
    groups = result.get("groups") or {}
    lat = result["latency_per_chunk"]
    return {
        "name": result.get("label") or result["peer"],
        "pc": result["pc_success"],
        "ci": result["ci95"],
        "n": result["n_episodes"],
        "groups": {g: groups.get(g) for g in GROUPS},
        "group_mean": (result.get("group_mean") or {}).get("pc_success"),
        "latency": (lat.get("median_ms"), lat.get("p90_ms")),
        "n_action_steps": result["chunk"].get("n_action_steps"),
        "params": result.get("parameters"),
        "mb": result["checkpoint_bytes"] / 1e6,
        "steps": train.get("steps"),
        "samples_per_s": train.get("samples_per_s"),
        "wall_s": train.get("wall_s"),
        "batch_size": train.get("batch_size"),
    }


def fmt_group(g: dict | None) -> str:
    return "-" if g is None else f"{g['pc_success']:.0f} [{g['ci95'][0]:.0f}, {g['ci95'][1]:.0f}]"


def table(results: list[dict]) -> str:
    rows = [row(r) for r in results]
    present = [g for g in GROUPS if any(r["groups"][g] for r in rows)]
    head = (
        ["method", "success % [95% CI]"]
        + [g.replace("_", " ") for g in present]
        + [
            "chunk latency median / p90 (ms)",
            "actions per chunk",
            "parameters",
            "checkpoint (MB)",
            "training steps x batch",
            "training samples/s",
            "training wall-clock (s)",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], f"**{r['pc']:.1f}** [{r['ci'][0]:.0f}, {r['ci'][1]:.0f}]"]
        cells += [fmt_group(r["groups"][g]) for g in present]
        med, p90 = r["latency"]
        cells += [
            f"{med:.0f} / {p90:.0f}" if med is not None else "-",
            str(r["n_action_steps"] or "-"),
            f"{r['params'] / 1e6:.1f} M" if r["params"] else "-",
            f"{r['mb']:.1f}",
            f"{r['steps']:,} x {r['batch_size']}" if r["steps"] and r["batch_size"] else "-",
            f"{r['samples_per_s']:.1f}" if r["samples_per_s"] else "-",
            f"{r['wall_s']:.0f}" if r["wall_s"] else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="*", help="result files (default: benchmarks/peers/*_mt10.json)")
    args = p.parse_args(argv)
    paths = [Path(f) for f in args.results] or sorted(HERE.glob("*_mt10.json"))
    if not paths:
        raise SystemExit("no result files; run benchmarks/peers/run.py first (see its runbook)")
    print(table([json.loads(f.read_text()) for f in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
