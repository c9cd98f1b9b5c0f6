"""Train a LeRobot peer (Diffusion Policy or ACT) with LeRobot's own lerobot-train on a dataset written by
`wam collect metaworld`, and record the exact command and its wall-clock in <out>/peer_train.json.

Runbook (any Python 3 runs this script; the training runs in .venv-lerobot, made by setup.sh):
    python benchmarks/peers/train.py --dataset data/mt10 --policy diffusion --steps 2000 --out runs/peers/dp
    python benchmarks/peers/train.py --dataset data/mt10 --policy act --budget-s 3600 --out runs/peers/act
    # -> runs/peers/dp/checkpoints/last/pretrained_model (serve it with lerobot_server.py; run.py does both)

What each peer sees is what wam sees: the dataset's camera(s) at its size and observation.state (the 4-D
hand and gripper state of the vision protocol). observation.environment_state (the simulator's object and
goal poses, which wam keeps for analysis only) is left out of the policy's inputs explicitly: LeRobot
would otherwise feed it to both policies, as its ENV feature. Everything else is LeRobot's default for the
policy, except:
    diffusion   crop_shape = image side - 12 (84 for 96 px: a random crop in training, the centre crop at
                inference, as in the Diffusion Policy paper's 96 -> 84 setting)
    act         pretrained_backbone_weights = none unless --imagenet-backbone (the default downloads
                ImageNet ResNet-18 weights through torchvision, which an offline machine cannot; wam and
                Diffusion Policy train their encoders from scratch too)
and the machine's settings: device cpu, no hub push, no online logging (WANDB_MODE=disabled,
HF_HUB_OFFLINE=1), no simulator evaluation during training (eval_freq 0: evaluation is wam eval's),
num_workers 0, and OMP/MKL threads = --threads.

--steps N trains N optimizer steps. --budget-s S trains for about S seconds of wall-clock: a probe of
--probe-steps steps measures seconds per step (from lerobot-train's own updt_s + data_s), then the main
run gets floor((S - startup) / seconds_per_step) steps; the probe's time is recorded apart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".venv-lerobot"
POLICIES = ("diffusion", "act")


def policy_inputs(dataset: Path) -> dict:
    """The policy's input features, written out: every camera and observation.state, nothing else."""
    info = json.loads((dataset / "meta" / "info.json").read_text())
    out = {}
    for key, ft in info["features"].items():
        if key.startswith("observation.images.") and ft["dtype"] in ("video", "image"):
            h, w, c = ft["shape"]
            out[key] = {"type": "VISUAL", "shape": [c, h, w]}
        elif key == "observation.state":
            out[key] = {"type": "STATE", "shape": list(ft["shape"])}
    if not any(k.startswith("observation.images.") for k in out):
        raise SystemExit(f"{dataset} has no camera; the peers are trained on the vision protocol")
    return out


def build_command(args, steps: int, out: Path) -> list[str]:
    dataset = Path(args.dataset).resolve()
    inputs = policy_inputs(dataset)
    cmd = [
        str(Path(args.venv) / "bin" / "lerobot-train"),
        f"--dataset.repo_id=local/{dataset.name}",
        f"--dataset.root={dataset}",
        "--dataset.video_backend=pyav",
        f"--policy.type={args.policy}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--policy.input_features={json.dumps(inputs, separators=(',', ':'))}",
        f"--batch_size={args.batch_size}",
        f"--steps={steps}",
        "--num_workers=0",
        "--eval_freq=0",
        f"--log_freq={args.log_freq}",
        f"--save_freq={max(steps, 1)}",
        f"--seed={args.seed}",
        "--wandb.enable=false",
        f"--output_dir={out}",
        f"--job_name={out.name}",
    ]
    if args.policy == "diffusion":
        side = min(min(v["shape"][1:]) for k, v in inputs.items() if k.startswith("observation.images."))
        crop = args.crop if args.crop is not None else side - 12
        cmd.append(f"--policy.crop_shape=[{crop},{crop}]")
    if args.policy == "act" and not args.imagenet_backbone:
        cmd.append("--policy.pretrained_backbone_weights=null")
    return cmd + list(args.extra)


def run(cmd: list[str], env: dict, log_path: Path) -> tuple[int, float, str]:
    """Runs cmd, its output teed to log_path; returns (exit code, seconds, output)."""
    t0 = time.perf_counter()
    lines = []
    with (
        open(log_path, "w") as log,
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            lines.append(line)
        rc = proc.wait()
    return rc, time.perf_counter() - t0, "".join(lines)


def step_seconds(output: str) -> float | None:
    """Mean seconds per optimizer step over the last logged window (updt_s + data_s of lerobot-train's log)."""
    found = re.findall(r"updt_s:([0-9.]+).*?data_s:([0-9.]+)", output)
    return float(found[-1][0]) + float(found[-1][1]) if found else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a dataset directory written by wam collect")
    p.add_argument("--policy", required=True, choices=POLICIES)
    p.add_argument("--out", required=True, help="output directory (must not exist, or pass --overwrite)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--steps", type=int, help="optimizer steps")
    g.add_argument("--budget-s", type=float, help="training wall-clock budget in seconds")
    p.add_argument("--probe-steps", type=int, default=10, help="steps of the --budget-s probe")
    p.add_argument("--batch-size", type=int, default=8, help="LeRobot's default for both peers is 8")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--seed", type=int, default=1000, help="lerobot-train's seed (its default)")
    p.add_argument("--log-freq", type=int, default=None, help="log every N steps (default: about 20 logs)")
    p.add_argument("--crop", type=int, default=None, help="diffusion's crop side (default: image side - 12)")
    p.add_argument(
        "--imagenet-backbone",
        action="store_true",
        help="act: keep LeRobot's ImageNet ResNet-18 initialisation (needs the weights)",
    )
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="LeRobot's venv (setup.sh)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("extra", nargs="*", help="more lerobot-train arguments, after --")
    args = p.parse_args(argv)

    out = Path(args.out).resolve()
    if out.exists():
        if not args.overwrite:
            raise SystemExit(f"{out} exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    record: dict = {
        "policy": args.policy,
        "dataset": str(Path(args.dataset).resolve()),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "env": {k: env[k] for k in ("HF_HUB_OFFLINE", "WANDB_MODE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    steps = args.steps
    if args.budget_s is not None:
        probe_out = out.with_name(out.name + "-probe")
        shutil.rmtree(probe_out, ignore_errors=True)
        args.log_freq, saved = max(1, args.probe_steps // 2), args.log_freq
        cmd = build_command(args, args.probe_steps, probe_out)
        rc, seconds, output = run(cmd, env, out.parent / f"{out.name}-probe.log")
        shutil.rmtree(probe_out, ignore_errors=True)
        per_step = step_seconds(output)
        if rc != 0 or per_step is None:
            raise SystemExit(f"the probe run failed (exit {rc}); see {out.parent / (out.name + '-probe.log')}")
        startup = max(0.0, seconds - per_step * args.probe_steps)
        steps = max(1, int((args.budget_s - startup) // per_step))
        record["probe"] = {
            "steps": args.probe_steps,
            "wall_s": seconds,
            "s_per_step": per_step,
            "startup_s": startup,
            "command": shlex.join(cmd),
        }
        args.log_freq = saved
        print(
            f"[peers] probe: {per_step:.3f} s/step, startup {startup:.0f} s -> {steps} steps for {args.budget_s:.0f} s",
            flush=True,
        )
    if args.log_freq is None:
        args.log_freq = max(1, steps // 20)
    cmd = build_command(args, steps, out)
    print("[peers]", shlex.join(cmd), flush=True)
    log_path = out.parent / f"{out.name}.log"
    rc, seconds, output = run(cmd, env, log_path)
    pretrained = out / "checkpoints" / "last" / "pretrained_model"
    weights = pretrained / "model.safetensors"
    per_step = step_seconds(output)
    record.update(
        command=shlex.join(cmd),
        steps=steps,
        budget_s=args.budget_s,
        wall_s=seconds,
        exit_code=rc,
        s_per_step_last_window=per_step,
        samples_per_s=args.batch_size / per_step if per_step else None,
        pretrained_model=str(pretrained) if weights.is_file() else None,
        checkpoint_bytes=sum(f.stat().st_size for f in pretrained.iterdir()) if weights.is_file() else None,
        log=str(log_path),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer_train.json").write_text(json.dumps(record, indent=2))
    print(
        f"[peers] {args.policy}: {steps} steps in {seconds:.0f} s (exit {rc}); "
        f"{per_step if per_step is not None else float('nan'):.3f} s/step at batch {args.batch_size}; "
        f"record in {out / 'peer_train.json'}",
        flush=True,
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
