"""The speed-quality table of the README: every inference option alone, then the chosen default, each
against the reference path (joint mode, 50 Euler steps, no caches, fp32) on the same replayed episodes
and noise (`wam.bench`).

    python benchmarks/bench_inference.py --checkpoint checkpoints/wam-tiny-mt10 --out benchmarks/inference.json

Prints one line per setting as it finishes, then a markdown table; writes every measurement as JSON.
Runs on one thread (`--threads`), the way a robot-side process or one `wam eval` worker runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wam.bench import Bench, matmul_peak
from wam.checkpoint import load_checkpoint
from wam.inference import REFERENCE, InferenceConfig, TaylorSeer


def settings() -> list[tuple[str, str, InferenceConfig]]:
    """(label, mode, setting): the reference's own options one at a time, then few-step policy settings."""
    ref = REFERENCE
    r = lambda **kw: InferenceConfig(**{**ref.to_dict(), "taylor": ref.taylor, **kw})  # noqa: E731
    default = InferenceConfig()
    return [
        ("reference: joint, 50 Euler steps, fp32", "joint", ref),
        ("action-only (policy mode)", "policy", r()),
        ("cache of observed tokens", "joint", r(cache=True)),
        ("TaylorSeer order 1, every 2nd step", "joint", r(taylor=TaylorSeer(1, 2))),
        ("TaylorSeer order 2, every 3rd step", "joint", r(taylor=TaylorSeer(2, 3))),
        ("TaylorSeer order 1, every 3rd, gate 0.05", "joint", r(taylor=TaylorSeer(1, 3, 0.05))),
        ("bf16 autocast", "joint", r(precision="bf16")),
        ("int8 dynamic quantisation", "joint", r(quantize="int8")),
        ("torch.compile", "joint", r(compile=True)),
        ("block-sparse attention", "joint", r(attention="block_sparse")),
        ("8 steps", "joint", r(steps=8)),
        ("4 steps", "joint", r(steps=4)),
        ("2 steps", "joint", r(steps=2)),
        ("1 step", "joint", r(steps=1)),
        ("policy, warm start 0.5 (50 steps: 25 per chunk)", "policy", r(warm_start=0.5)),
        ("policy + cache, 8 steps", "policy", InferenceConfig(steps=8)),
        ("policy + cache, 4 steps", "policy", InferenceConfig(steps=4)),
        ("policy + cache, 4 steps AB2", "policy", InferenceConfig(steps=4, solver="ab2")),
        ("policy + cache, 4 steps, warm start 0.5", "policy", InferenceConfig(steps=4, warm_start=0.5)),
        ("policy + cache, 1 step", "policy", InferenceConfig(steps=1)),
        ("policy + cache, 2 steps + int8", "policy", InferenceConfig(steps=2, quantize="int8")),
        ("policy + cache, 2 steps + compile", "policy", InferenceConfig(steps=2, compile=True)),
        ("policy + cache, 1 step + compile", "policy", InferenceConfig(steps=1, compile=True)),
        (f"default: policy + cache, {default.steps} steps", "policy", default),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/wam-tiny-mt10")
    p.add_argument("--dataset", default=None)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated label prefixes to run (default: all)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    bench = Bench(ckpt, args.dataset, episodes=args.episodes)
    rows = []
    for label, mode, ic in settings():
        if args.only and not any(label.startswith(x) for x in args.only.split(",")):
            continue
        t = time.time()
        res = bench.measure(mode, ic)
        res["label"], res["wall_s"] = label, round(time.time() - t, 1)
        rows.append(res)
        q = res["quality"]
        print(
            f"{label:<50} {res['median_ms']:9.2f} ms  x{res['speedup']:<7} "
            f"mse vs ref {q['action_mse_vs_reference']:.5f}  vs data {q['action_mse_vs_data']:.5f}",
            flush=True,
        )
    doc = {
        "checkpoint": args.checkpoint,
        "model_hash": ckpt.model_hash,
        "episodes": len(bench.episodes),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "peak_fp32_GFLOPs": round(matmul_peak() * 1e-9, 1),
        "results": rows,
    }
    print(
        "\n| setting | mode | median ms | p90 ms | speed-up | GFLOP/call | action MSE vs reference "
        "| action MSE vs data |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        q = r["quality"]
        print(
            f"| {r['label']} | {r['mode']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['speedup']:.1f}x | "
            f"{r['flops_per_call'] / 1e9:.3f} | {q['action_mse_vs_reference']:.5f} | {q['action_mse_vs_data']:.5f} |"
        )
    if args.out:
        out = Path(args.out)
        if args.only and out.is_file():  # a partial rerun replaces its rows in the recorded file
            old = json.loads(out.read_text())
            fresh = {r["label"] for r in rows}
            order = [label for label, _, _ in settings()]
            kept = [r for r in old["results"] if r["label"] not in fresh]
            doc["results"] = sorted(kept + rows, key=lambda r: order.index(r["label"]) if r["label"] in order else 99)
            doc["reruns"] = sorted(set(old.get("reruns", [])) | fresh)
        out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
