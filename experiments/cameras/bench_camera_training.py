"""Camera and image size, trained: the same WAM recipe on the same MT10 demonstrations seen through different
cameras and image sizes, evaluated closed loop on the same seeds.

    MUJOCO_GL=egl wam collect metaworld --tasks mt10 --episodes 50 --image-size 128 \\
        --cameras corner4,gripperPOV --workers 1 --out data/mt10-128-2cam
    MUJOCO_GL=egl python experiments/cameras/bench_camera_training.py --out experiments/cameras/camera_training.json
    python experiments/cameras/bench_camera_training.py --table        # the README's table

Configurations (CONFIGS): one camera, `corner4`, at 64, 96 and 128 px; and `corner4` beside the wrist camera
`gripperPOV` at 96 px (two frames side by side, twice the tokens). Every run is `wam-tiny` with 16-channel
latents cut into 16 tokens per camera and frame (2x2, 3x3 and 4x4 patches of the 8x8, 12x12 and 16x16 latent
grids), the reference loss recipe (`p_omit_future=0.3`), 4,000 steps at batch 32, lr 1e-3, seed 0. Its frame
tokenizer starts from `runs/tokenizers/c16det-3k` (3,000 detail-weighted steps on `corner4` frames at 96 px,
`experiments/tokenizer/bench_tokenizer.py`) and trains 600 more steps on the run's own frames; the `corner4` 96 px run
keeps it as it is, since those are the frames it was trained on.

Frames come from two collections of the same expert on the same seeds: `data/mt50` (96 px `corner4`; its MT10
episodes) and `data/mt10-128-2cam` (128 px, `corner4` and `gripperPOV`). Where the model's size is smaller
than the dataset's, the training frames are resized with antialiasing and the evaluation renders at the
dataset's size (`wam eval --render-size`), so that the policy resizes its camera exactly as its training
frames were resized.

Evaluation: `wam eval` in policy mode, default inference settings, `--episodes` per MT10 task on the evaluation
seeds, Wilson intervals; the scripted expert is not rerun. Beside it, the world model: forward-mode PSNR 4
and 8 steps ahead on the run's held-out episodes against copying the last frame and the tokenizer's ceiling
(`wam eval --world-model`'s numbers; PSNR is not comparable across image sizes, the gain over copying is).
Finished runs and evaluations under --runs are reused (an interrupted training resumes), so the script can be
stopped and started again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "world_model"))
from bench_world_model import steps_done, world_model

TOKENIZER = "runs/tokenizers/c16det-3k"
CONFIGS = {
    # name: dataset, cameras, model image size, latent patch, tokenizer steps on the run's frames, render size
    "corner4-64": {
        "dataset": "data/mt50:tasks=mt10",
        "cameras": "corner4",
        "size": 64,
        "patch": 2,
        "tokenizer_steps": 600,
        "render": 96,
    },
    "corner4-96": {
        "dataset": "data/mt50:tasks=mt10",
        "cameras": "corner4",
        "size": 96,
        "patch": 3,
        "tokenizer_steps": 0,
        "render": None,
    },
    "corner4-128": {
        "dataset": "data/mt10-128-2cam",
        "cameras": "corner4",
        "size": 128,
        "patch": 4,
        "tokenizer_steps": 600,
        "render": None,
    },
    "corner4+wrist-96": {
        "dataset": "data/mt10-128-2cam",
        "cameras": "corner4,gripperPOV",
        "size": 96,
        "patch": 3,
        "tokenizer_steps": 600,
        "render": 128,
    },
}


def train(name: str, args, run: Path, env: dict) -> dict:
    c = CONFIGS[name]
    cmd = [
        sys.executable,
        "-m",
        "wam.cli",
        "train",
        "--out",
        str(run),
        "--dataset",
        c["dataset"],
        "--cameras",
        c["cameras"],
        "--preset",
        "wam-tiny",
        "--model",
        f"image_size={c['size']}",
        "--model",
        f"patch_size={c['patch']}",
        "--model",
        "latent_channels=16",
        "--tokenizer-from",
        TOKENIZER,
        "--tokenizer-steps",
        str(c["tokenizer_steps"]),
        "--steps",
        str(args.steps),
        "--batch-size",
        "32",
        "--lr",
        "1e-3",
        "--loss",
        "p_omit_future=0.3",
        "--val-every",
        str(args.steps),
        "--checkpoint-every",
        "1000",
        "--quiet",
    ]
    if (run / "checkpoint").exists():
        cmd.append("--resume")
    if steps_done(run) < args.steps:
        t0 = time.time()
        print(f"[{name}] training: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True, env=env)
        (run / "wall_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    trains = [r for r in rows if r.get("kind") == "train"]
    vals = [r for r in rows if r.get("kind") == "val"]
    sps = sorted(r["samples_per_s"] for r in trains if "samples_per_s" in r)
    return {
        "command": "wam " + " ".join(cmd[3:]).replace(" --resume", ""),
        "steps": trains[-1]["step"],
        "final_loss_action": trains[-1].get("loss_action"),
        "val": {k: v for k, v in vals[-1].items() if k.startswith("loss")} if vals else None,
        "median_samples_per_s": sps[len(sps) // 2] if sps else None,
    }


def evaluate(name: str, args, run: Path, env: dict) -> dict:
    c = CONFIGS[name]
    out = run.parent / f"{run.name}-eval"
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
        "mt10",
        "--episodes",
        str(args.episodes),
        "--workers",
        "1",
        "--videos",
        "0",
        "--no-expert",
        "--quiet",
        "--out",
        str(out),
    ]
    if c["render"]:
        cmd += ["--render-size", str(c["render"])]
    info = out / "eval_info.json"
    if not info.is_file():
        print(f"[{name}] evaluating: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    r = json.loads(info.read_text())
    return {
        "command": "wam " + " ".join(cmd[3:]),
        "pc_success": r["pc_success"],
        "ci95": r.get("ci95"),
        "n_episodes": r["n_episodes"],
        "eval_ep_s": r.get("eval_ep_s"),
        "per_task": {t["task"]: t["pc_success"] for t in r["per_task"]},
    }


def chunk_latency(names: list[str], runs: Path, rounds: int = 30) -> dict:
    """Median ms of one fresh policy-mode chunk (batch 1, default inference) per config, on a real first frame
    of `reach-v3` at the config's render size. Timed interleaved (one chunk of each config per round, in this
    process), so that a busy machine slows every config alike: read them as ratios."""
    import numpy as np
    import torch

    from wam.envs import make_env
    from wam.policy import WAMPolicy

    policies, obs = {}, {}
    for name in names:
        c = CONFIGS[name]
        policies[name] = WAMPolicy.from_checkpoint(runs / name / "checkpoint")
        env = make_env("metaworld", "reach-v3", image_size=c["render"] or c["size"], cameras=c["cameras"].split(","))
        try:
            o, _ = env.reset(seed=0)
            obs[name] = {**o, "task": env.task_description}
        finally:
            env.close()
    ms = {n: [] for n in names}
    with torch.no_grad():
        for r in range(rounds + 2):
            for n in names:
                policies[n].reset()
                t0 = time.perf_counter()
                policies[n].predict_action_chunk(obs[n])
                if r >= 2:  # warm-up rounds
                    ms[n].append(1000 * (time.perf_counter() - t0))
    return {
        n: {"median_ms": float(np.median(v)), "rounds": rounds, "threads": torch.get_num_threads()}
        for n, v in ms.items()
    }


def table(results: dict) -> str:
    tasks = sorted({t for r in results.values() for t in r["eval"]["per_task"]})
    lines = [
        "| camera(s) | px | tokens per frame | success % [95% CI] | forward PSNR 8 steps ahead - copying (dB) "
        "| chunk ms (ratio to the first) |",
        "|---|---|---|---|---|---|",
    ]
    first = next((r["chunk"]["median_ms"] for r in results.values() if r.get("chunk")), None)
    for name, r in results.items():
        c, e = CONFIGS[name], r["eval"]
        lo, hi = e["ci95"] if e.get("ci95") else (float("nan"), float("nan"))
        n_cams = len(c["cameras"].split(","))
        wm = r.get("world_model")
        gain = f"{wm['forward_psnr'][-1] - wm['copy_last_frame_psnr'][-1]:+.2f}" if wm else "-"
        ms = r.get("chunk", {}).get("median_ms")
        chunk = f"{ms:.1f} ({ms / first:.2f})" if ms else "-"
        lines.append(
            f"| {c['cameras'].replace(',', ' + ')} | {c['size']} | {16 * n_cams} | "
            f"{e['pc_success']:.1f} [{lo:.0f}, {hi:.0f}] | {gain} | {chunk} |"
        )
    lines += ["", "| task | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for t in tasks:
        lines.append(
            f"| {t.removesuffix('-v3')} | "
            + " | ".join(f"{r['eval']['per_task'].get(t, float('nan')):.0f}" for r in results.values())
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from " + ", ".join(CONFIGS))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--runs", default="runs/cams")
    p.add_argument("--threads", type=int, default=1, help="threads of each process")
    p.add_argument("--out", default="experiments/cameras/camera_training.json")
    p.add_argument("--table", action="store_true", help="print the README's tables from --out and exit")
    p.add_argument(
        "--latency",
        action="store_true",
        help="time a policy chunk of each finished config of "
        "--configs, interleaved in this process, record it in --out and exit",
    )
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())["results"]))
        return
    if args.latency:
        import torch

        from wam.atomic import write_json_atomic

        torch.set_num_threads(args.threads)
        record = json.loads(Path(args.out).read_text())
        names = [n for n in args.configs.split(",") if n in record["results"]]
        for n, lat in chunk_latency(names, Path(args.runs)).items():
            record["results"][n]["chunk"] = lat
            print(f"{n}: {lat['median_ms']:.1f} ms per chunk")
        write_json_atomic(Path(args.out), record)
        return
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
    }
    out = Path(args.out)
    results = {}
    for name in names:
        run = Path(args.runs) / name
        results[name] = {
            "config": CONFIGS[name],
            "train": train(name, args, run, env),
            "eval": evaluate(name, args, run, env),
        }
        args.dataset = CONFIGS[name]["dataset"].split(":")[0]
        results[name]["world_model"] = world_model(run, args)
        previous = json.loads(out.read_text())["results"] if out.is_file() else {}  # (read again: runs may share it)
        merged = {n: results.get(n) or previous[n] for n in CONFIGS if n in results or n in previous}
        from wam.atomic import write_json_atomic

        write_json_atomic(
            out, {"steps": args.steps, "episodes_per_task": args.episodes, "tokenizer": TOKENIZER, "results": merged}
        )
    print(table(results))


if __name__ == "__main__":
    main()
