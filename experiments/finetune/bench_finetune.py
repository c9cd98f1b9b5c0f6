"""A task held out of pre-training, learned from 10 demonstrations: LoRA vs full fine-tuning vs from scratch.

    wam collect metaworld --tasks pick-place-wall-v3 --episodes 10 --out data/ppwall10
    wam finetune --checkpoint checkpoints/wam-tiny-mt10 --dataset data/ppwall10 --out runs/ft2-lora \\
        --adapter lora --rank 8 --steps 2000
    wam finetune --checkpoint checkpoints/wam-tiny-mt10 --dataset data/ppwall10 --out runs/ft2-full \\
        --adapter full --steps 2000
    wam train --dataset data/ppwall10 --out runs/ft2-scratch --preset wam-tiny --steps 2000 --batch-size 32 \\
        --lr 1e-3 --tokenizer-steps 1000 --loss p_omit_future=0.3
    python experiments/finetune/bench_finetune.py --task pick-place-wall-v3 --runs runs/ft2-lora runs/ft2-full \\
        runs/ft2-scratch --out experiments/finetune/finetune.json

The base (`checkpoints/wam-tiny-mt10`) never saw the task: it is not one of MT10's. Each run holds out one of
the 10 demonstrations (its validation episode), so all three train on the same 9. Closed loop: `wam eval`,
policy mode, default inference settings, the same evaluation seeds for every run, the expert beside them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def trainable(run: Path) -> dict:
    ft = run / "finetune.json"
    if ft.is_file():
        d = json.loads(ft.read_text())
        st = d["settings"]
        return {
            "kind": st["adapter"],
            "rank": st.get("rank") if st["adapter"] != "full" else None,
            "trainable_parameters": d["trainable_parameters"],
            "total_parameters": d["total_parameters"],
            "steps": st["train"]["steps"],
            "wall_s": d.get("wall_s"),
        }
    from wam.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoint")
    n = sum(p.numel() for p in ckpt.model.parameters())
    return {
        "kind": "scratch",
        "trainable_parameters": n,
        "total_parameters": n,
        "steps": ckpt.config["run"]["train"]["steps"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--runs", nargs="+", required=True, help="run directories (each with checkpoint/)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    doc = {"task": args.task, "episodes": args.episodes, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(map(Path, args.runs)):
            out = Path(tmp) / run.name
            cmd = [
                sys.executable,
                "-m",
                "wam.cli",
                "eval",
                "--checkpoint",
                str(run / "checkpoint"),
                "--env",
                "metaworld",
                "--tasks",
                args.task,
                "--episodes",
                str(args.episodes),
                "--mode",
                "policy",
                "--num-envs",
                str(args.num_envs),
                "--videos",
                "0",
                "--quiet",
                "--out",
                str(out),
            ]
            if i:
                cmd.append("--no-expert")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            info = json.loads((out / "eval_info.json").read_text())
            row = {**trainable(run), "pc_success": info["pc_success"], "ci95": info["ci95"]}
            if info.get("expert"):
                doc["expert"] = info["expert"]
            doc["runs"][run.name] = row
            print(run.name, json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
