"""Training-step speed of each preset on this machine, beside the measured matmul peak.

    python benchmarks/bench_model.py --out benchmarks/model.json
    python benchmarks/bench_model.py --presets wam-tiny --batch-size 32 --steps 5

Prints one JSON document: for each preset, the median time of a full training step (forward,
backward, AdamW) at the given batch size in fp32 and in bf16 autocast, samples/s, FLOPs per step
(torch's flop counter) and achieved FLOP/s; and the peak of a plain square matmul in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from wam import PRESETS, WAM, training_loss
from wam.bench import matmul_peak
from wam.config import LossConfig


def fake_batch(cfg, B: int, g: torch.Generator) -> dict:
    return {
        "latents": torch.randn(
            B, cfg.frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size * cfg.n_cameras, generator=g
        ),
        "actions": torch.rand(B, cfg.action_horizon, cfg.action_dim, generator=g) * 2 - 1,
        "task": torch.randint(0, cfg.n_tasks, (B,), generator=g),
        "state": torch.randn(B, cfg.n_obs_steps, cfg.state_dim, generator=g) if cfg.state_dim else None,
    }


def bench_preset(name: str, B: int, steps: int, precision: str) -> dict:
    cfg = PRESETS[name]
    torch.manual_seed(0)
    model = WAM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = fake_batch(cfg, B, g)
    # every modality present, so the count is the full joint-mode step
    lc = LossConfig(p_omit_future=0.0, p_omit_action=0.0, p_clean_future=0.0, p_clean_action=0.0)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else None

    def step() -> None:
        if ctx is None:
            loss, _ = training_loss(model, batch, lc, generator=g)
        else:
            with ctx():
                loss, _ = training_loss(model, batch, lc, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "preset": name,
        "precision": precision,
        "batch_size": B,
        "tokens": cfg.tokens,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "step_s": round(med, 4),
        "samples_per_s": round(B / med, 1),
        "flops_per_step": flops,
        "achieved_GFLOPs": round(flops / med / 1e9, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per preset (after one warm-up step)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument(
        "--bf16-presets",
        default="wam-tiny",
        help="presets also timed in bf16 (where bf16 is emulated it is tens of times slower)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = {
        "fp32_GFLOPs": round(matmul_peak(torch.float32, n=2048) / 1e9, 1),
        "bf16_GFLOPs": round(matmul_peak(torch.bfloat16, n=1024, reps=3) / 1e9, 1),
    }
    rows = []
    for name in args.presets.split(","):
        for prec in args.precisions.split(","):
            if prec == "bf16" and name not in args.bf16_presets.split(","):
                continue
            r = bench_preset(name, args.batch_size, args.steps, prec)
            r["fraction_of_peak"] = round(r["achieved_GFLOPs"] / peak[f"{prec}_GFLOPs"], 3)
            rows.append(r)
            print(json.dumps(r), flush=True)
    doc = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "matmul_peak": peak,
        "train_step": rows,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
