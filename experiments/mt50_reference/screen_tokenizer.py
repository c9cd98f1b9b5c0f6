"""What would lift v2: its training on MT10 of the published benchmark with other frame tokenizers, each paired
with v2's own tokenizer on the development seeds.

    wam collect metaworld --tasks mt10 --episodes 50 --image-size 128 --protocol lerobot --workers 2 \\
        --out data/mt10-lerobot                         # v2's own MT10 demonstrations (the same seeds), ~30 min
    python experiments/mt50_reference/screen_tokenizer.py --dataset data/mt10-lerobot --steps 20000 \\
        --runs runs/screen --record experiments/mt50_reference/screen_tokenizer.json
    python experiments/mt50_reference/screen_tokenizer.py ... --only c16 --threads 1     # one, beside another
    python experiments/mt50_reference/screen_tokenizer.py --table experiments/mt50_reference/screen_tokenizer.json

v2 sees a frame only through its tokenizer's latents, and at 128 px they keep little of the goal markers of
`reach`, `push` and `pick-place` (a few pixels each): the goal-marker tasks are v2's weakest on the test seeds.
Each candidate is v2's training (network, loss, schedule, seed and validation split: the `mt50-v2` recipe's) on
v2's own MT10 demonstrations for --steps WAM steps, with a tokenizer stage of its own. They differ only in the
tokenizer, and all make 16 tokens per frame, so the transformer costs what v2's does:

    v2     8 latent channels, 8x downsampling (16 x 16 cells), 4 x 4 latent patches: v2's own
    c16   16 channels, 8x downsampling, 4 x 4 patches
    ds4    8 channels, 4x downsampling (32 x 32 cells), 8 x 8 patches

Each run is scored twice. Its tokenizer: how well it reconstructs the frames of the held-out episodes (PSNR over
whole frames and over each frame's 2% most detailed pixels, where markers live: `bench_tokenizer.measure`). Its
policy: `wam eval --seed dev --protocol lerobot` on MT10 (--episodes per task), paired with the `v2` row on the
same episodes (mean of group means with a stratified bootstrap interval; per episode with McNemar's p). Nothing
here touches the test seeds: a candidate that wins here goes into a recipe, which is scored there once. Runs and
evaluations already in --runs are reused (an interrupted one resumes), so the script can be stopped and started
again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tune_on_dev, mt50_table
sys.path.insert(0, str(HERE.parent / "tokenizer"))  # bench_tokenizer

from tune_on_dev import ci, eval_command, outcomes, versus_base  # noqa: E402

# name -> the model settings it changes in the mt50-v2 recipe's (all 16 tokens per 128 px frame)
CANDIDATES: dict[str, dict] = {
    "v2": {},
    "c16": {"latent_channels": 16},
    "ds4": {"tokenizer_downsample": 4, "patch_size": 8},
}


def steps_done(run: Path) -> int:
    """The last WAM step the run logged (0 before its WAM stage)."""
    log = run / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    return max((r["step"] for r in rows if r.get("kind") == "train"), default=0)


def train_run(name: str, args, run: Path) -> dict:
    """Train (or finish training) one candidate in this process, as `wam recipe run mt50-v2` trains."""
    from wam.config import LossConfig
    from wam.recipe import get_recipe
    from wam.train import TrainConfig, resumable, train

    recipe = get_recipe("mt50-v2")
    changes = {"steps": args.steps, "keep_every": 0, "val_every": args.steps}
    if args.tokenizer_steps is not None:
        changes["tokenizer_steps"] = args.tokenizer_steps
    tc = TrainConfig(**{**recipe.train, **changes})
    model = {**recipe.model, **CANDIDATES[name]}
    if steps_done(run) < args.steps:
        t0 = time.time()
        try:
            resume = resumable(run)
            train(args.dataset, run, preset=recipe.preset, model_changes=model, tc=tc, lc=LossConfig(**recipe.loss),
                  val_fraction=recipe.val_fraction, resume=resume, overwrite=not resume and run.exists(),
                  progress=not args.quiet)  # fmt: skip
        finally:  # the wall-clock, summed over the sittings that trained it
            wall = run / "wall_s.txt"
            wall.write_text(f"{(float(wall.read_text()) if wall.is_file() else 0.0) + time.time() - t0:.1f}\n")
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in rows if r.get("kind") == "val"]
    return {
        "model": model,
        "steps": args.steps,
        "threads": args.threads,
        "wall_s": float((run / "wall_s.txt").read_text()) if (run / "wall_s.txt").is_file() else None,
        "val": vals[-1] if vals else None,
    }


def tokenizer_quality(run: Path, dataset: str) -> dict:
    """The run's tokenizer on the frames of its held-out episodes (the run's own validation split)."""
    import numpy as np
    from bench_tokenizer import measure

    from wam.checkpoint import load_checkpoint
    from wam.episodes import DatasetSpec, load_episodes, split_episodes
    from wam.recipe import get_recipe

    ck, spec = load_checkpoint(run / "checkpoint"), DatasetSpec.parse(dataset)
    eps = load_episodes(spec.path, image_size=ck.model.cfg.image_size, tasks=spec.tasks, lazy_frames=True).episodes
    held_out = split_episodes(eps, get_recipe("mt50-v2").val_fraction)[1]
    frames = np.concatenate([e["frames"]() for e in held_out])
    return {"held_out_episodes": len(held_out), **measure(ck.tokenizer.eval(), frames)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="data/mt10-lerobot", help="v2's MT10 demonstrations (see above)")
    ap.add_argument("--steps", type=int, default=20000, help="WAM steps of every candidate")
    ap.add_argument("--tokenizer-steps", type=int, default=None, help="(default: the recipe's, 3,000)")
    ap.add_argument("--tasks", default="mt10", help="the tasks evaluated (the dataset's)")
    ap.add_argument("--episodes", type=int, default=20, help="development episodes per task")
    ap.add_argument("--only", default=",".join(CANDIDATES), help="candidates to run, comma-separated")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training (1 beside another run)")
    ap.add_argument("--workers", type=int, default=2, help="evaluation processes")
    ap.add_argument("--runs", default="runs/screen")
    ap.add_argument("--record", default="experiments/mt50_reference/screen_tokenizer.json")
    ap.add_argument("--table", default=None, metavar="JSON", help="print the table of a record and stop")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return

    import torch

    from wam.inference.precision import cpu_description

    torch.set_num_threads(args.threads)
    for name in args.only.split(","):
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
        run = Path(args.runs) / name
        entry = {"train": train_run(name, args, run), "tokenizer": tokenizer_quality(run, args.dataset)}
        out = Path(args.runs) / f"{name}-eval"
        cmd = eval_command(str(run / "checkpoint"), out, [], args.tasks, args.episodes, args.workers)
        if not (out / "eval_info.json").is_file():
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True)
        info = json.loads((out / "eval_info.json").read_text())
        entry["eval"] = {
            "command": "wam " + " ".join(cmd[3:]),
            "group_mean": {k: info["group_mean"][k] for k in ("pc_success", "ci95")},
            "pc_success": info["pc_success"],
            "ci95": info["ci95"],
            "n_episodes": info["n_episodes"],
            "per_task": {r["task"]: r["pc_success"] for r in info["per_task"]},
            "successes": outcomes(info),
            "eval_info": str(out / "eval_info.json"),
        }
        record_path = Path(args.record)  # read again: another invocation may have added its candidates
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        record.update(
            {"what": __doc__.split("\n\n")[0], "dataset": args.dataset, "steps": args.steps, "cpu": cpu_description()}
        )
        record.setdefault("runs", {})[name] = entry
        base = Path(args.runs) / "v2-eval" / "eval_info.json"
        for other, e in record["runs"].items():
            if other != "v2" and base.is_file():
                e["versus_v2"] = versus_base(json.loads(Path(e["eval"]["eval_info"]).read_text()),
                                             json.loads(base.read_text()))  # fmt: skip
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(record_path)
        print(table(record), flush=True)


def table(record: dict) -> str:
    lines = [
        "| tokenizer | held-out PSNR / detail PSNR dB | MT10 dev success %, per episode [95% CI] | mean of group "
        "means | minus v2, same episodes: per episode [95% CI], McNemar p | mean of group means | training |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in record.get("runs", {}).items():
        t, i, v = e["tokenizer"], e["eval"], e.get("versus_v2")
        pair, group_pair = "-", "-"
        if v:
            pe, gm = v["per_episode"], v["group_mean"]
            pair = f"{pe['difference']:+.1f} {ci(pe['ci95'], '+')}, p={pe['mcnemar_p']:.2g}"
            group_pair = f"{gm['difference']:+.1f} {ci(gm['ci95'], '+')}"
        wall = f"{e['train']['wall_s'] / 60:.0f} min ({e['train']['threads']} threads)" if e["train"]["wall_s"] else "?"
        lines.append(
            f"| {name} | {t['psnr']:.2f} / {t['detail_psnr']:.2f} | {i['pc_success']:.1f} {ci(i['ci95'])} | "
            f"{i['group_mean']['pc_success']:.1f} {ci(i['group_mean']['ci95'])} | {pair} | {group_pair} | {wall} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
