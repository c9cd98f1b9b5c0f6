"""Every benchmark a user reruns on their own machine, one after the other, into one result file per machine.

    python benchmarks/run_all.py                  # the recorded settings (about an hour on 2 CPU cores)
    python benchmarks/run_all.py --quick          # the smallest settings of each (a few minutes): does it all run?
    python benchmarks/run_all.py --only model,inference --threads 4

Runs, each as its own process with its JSON written beside the others:

- `model`:     bench_model.py      a training step of each preset (fp32, bf16), FLOPs, share of the matmul peak;
- `inference`: bench_inference.py  latency of one action chunk per inference setting, against the reference path;
- `data`:      bench_data.py       scripted-expert collection, the window loader, video decoding;
- `scale`:     bench_scale.py      training in 1 and 2 processes (torchrun), evaluation with 1, 2 and 4 environments;
- `eval`:      bench_eval.py       an evaluation on the `lerobot` protocol, rendering only what the policy looks at
                                   against every step (the same episodes);
- `serve`:     bench_serve.py      the policy server under 1, 8 and 32 concurrent clients.

The result is `benchmarks/results/<cpu-model>.json` (`<cpu-model>-quick.json` with --quick): the machine (CPU
model, its instruction-set flags that matter to PyTorch, cores, threads, torch version and CPU capability, GPU),
the exact command of each benchmark, its wall time and exit status, and its own JSON. `scale` trains on a
dataset: `--dataset` (default `data/mt10`), or, when that is absent, a small MetaWorld collection made here first.
The exit status is 1 when a benchmark failed; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHECKPOINT = "checkpoints/wam-tiny-mt10"

# name -> (script, arguments at the recorded settings, arguments at the smallest ones)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "model": (
        "bench_model.py",
        ["--batch-size", "8", "--steps", "2"],
        ["--presets", "wam-tiny", "--batch-size", "8", "--steps", "2", "--precisions", "fp32"],
    ),
    "inference": (
        "bench_inference.py",
        ["--checkpoint", CHECKPOINT],
        ["--checkpoint", CHECKPOINT, "--episodes", "1", "--only", "reference,default"],
    ),
    "data": ("bench_data.py", [], ["--tasks", "reach-v3", "--episodes", "2", "--workers", "1"]),
    "scale": (
        "bench_scale.py",
        ["--checkpoint", CHECKPOINT],
        ["--checkpoint", CHECKPOINT, "--train-steps", "20", "--eval-tasks", "reach-v3", "--eval-episodes", "2"],
    ),
    "eval": (
        "bench_eval.py",
        ["--checkpoint", "checkpoints/wam-tiny-mt50"],
        ["--checkpoint", "checkpoints/wam-tiny-mt50", "--tasks", "reach", "--episodes", "1", "--max-steps", "40"],
    ),
    "serve": (
        "bench_serve.py",
        ["--checkpoint", CHECKPOINT],
        ["--checkpoint", CHECKPOINT, "--clients", "1,4", "--seconds", "5"],
    ),
}

CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "asimd",
    "sve",
)


def machine() -> dict:
    """What decides the numbers: the CPU model and flags, cores, torch and its CPU kernels, a GPU if any."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        info = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
        model = m.group(1).strip() if m else model
        f = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", info, re.M)
        flags = set(f.group(1).split()) if f else set()
    except OSError:
        pass
    out = {
        "cpu_model": model,
        "cpu_flags": sorted(x for x in CPU_FLAGS if x in flags),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }
    try:
        import torch

        out.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        )
    except ImportError:
        out["torch"] = None
    if hasattr(os, "getloadavg"):
        out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown-cpu"


def small_dataset(where: Path, env: dict) -> str:
    """A two-task MetaWorld collection for bench_scale when no dataset is given (as wam-tiny-mt10 was trained)."""
    out = where / "data-scale"
    cmd = [
        sys.executable,
        "-m",
        "wam.cli",
        "collect",
        "metaworld",
        "--tasks",
        "reach-v3,drawer-close-v3",
        "--episodes",
        "4",
        "--image-size",
        "64",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return str(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the smallest settings of each benchmark")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(BENCHMARKS)}")
    p.add_argument("--dataset", default="data/mt10", help="bench_scale's training data (collected when absent)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every benchmark (default: unset)")
    p.add_argument("--out", default=None, help="the result file (default: benchmarks/results/<cpu-model>.json)")
    args = p.parse_args()
    names = [n.strip() for n in (args.only or ",".join(BENCHMARKS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    info = machine()
    name = f"{slug(info['cpu_model'])}{'-quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else HERE / "results" / name
    result = {
        "command": "python benchmarks/run_all.py " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "machine": info,
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "benchmarks": {},
    }
    failed = []
    with tempfile.TemporaryDirectory(prefix="wam-bench-") as tmp:
        for name in names:
            script, full, quick = BENCHMARKS[name]
            extra = list(quick if args.quick else full)
            t0 = time.time()
            rec: dict = {}
            try:
                if name == "scale":
                    dataset = args.dataset if Path(ROOT, args.dataset).is_dir() else small_dataset(Path(tmp), env)
                    rec["dataset"] = dataset if dataset == args.dataset else "a 4-episode reach/drawer-close collection"
                    extra += ["--dataset", dataset]
                json_out = Path(tmp) / f"{name}.json"
                cmd = [sys.executable, str(HERE / script), *extra, "--out", str(json_out)]
                rec["command"] = " ".join(["python", f"benchmarks/{script}", *extra])
                print(f"[run_all] {name}: {rec['command']}", flush=True)
                proc = subprocess.run(cmd, cwd=ROOT, env=env)
                rec["returncode"] = proc.returncode
                if json_out.is_file():
                    rec["result"] = json.loads(json_out.read_text())
            except (subprocess.CalledProcessError, OSError) as e:
                rec["returncode"], rec["error"] = -1, f"{type(e).__name__}: {e}"
            rec["wall_s"] = round(time.time() - t0, 1)
            if rec["returncode"] != 0:
                failed.append(name)
            print(f"[run_all] {name}: exit {rec['returncode']} in {rec['wall_s']} s", flush=True)
            result["benchmarks"][name] = rec
    result["failed"] = failed
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[run_all] wrote {out} ({len(names) - len(failed)} of {len(names)} benchmarks ran)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
