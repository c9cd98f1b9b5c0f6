"""`wam bench --runtime onnx`: an exported policy (wam export) beside the PyTorch policy, in one process, on the
same inputs and the same noise.

    wam export checkpoints/wam-tiny-mt50-v2 --out exports/mt50-v2
    wam bench --checkpoint checkpoints/wam-tiny-mt50-v2 --runtime onnx --export exports/mt50-v2 --threads 2
    wam bench --checkpoint checkpoints/wam-tiny-mt50-v2 --runtime onnx --export exports/mt50-v2 --threads 2 --sweep

Both replay the held-out episodes `wam bench` replays (wam.bench.Bench: the training dataset's, or fresh scripted-
expert episodes when it is not on this machine), one chunk every n_action_steps control steps as in closed loop; a
call is one chunk (encoding the new frame, sampling, un-normalising). Each chunk's initial noise is drawn once with
numpy and given to every path, so their actions differ by float rounding only (int8: by its quantisation error).
The paths run interleaved, call by call, their order rotating, so that a neighbour's load on a shared machine falls
on all of them alike: read the ratios before the absolute times.

Reported per path: median, p90 and min ms per chunk, achieved GFLOP/s (FLOPs counted once by torch's flop counter on the
PyTorch path, the same arithmetic for every path), the fraction of the fp32 matmul peak at that path's thread count,
the PyTorch median divided by the path's; for ONNX paths the actions' largest and mean |difference| from PyTorch's
(normalised units), and each path's action MSE against the recorded actions.

`--sweep` adds onnxruntime's options, one path each: graph optimisation levels (disabled, basic, extended, all),
1 and 2 intra-op threads, the int8 graph.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wam.errors import ArgumentError

OPTIMIZATIONS = ("disabled", "basic", "extended", "all")


def sweep_variants(threads: int) -> list[dict]:
    """The onnxruntime options `--sweep` measures: each optimisation level at `threads`, 1 and 2 threads, int8."""
    out = [{"name": f"onnx-{level}", "optimization": level, "threads": threads} for level in OPTIMIZATIONS]
    out += [{"name": f"onnx-all-{n}t", "optimization": "all", "threads": n} for n in (1, 2) if n != threads]
    out.append({"name": "onnx-int8", "optimization": "all", "threads": threads, "int8": True})
    return out


def cpu_info() -> dict:
    """The CPU's name and the vector extensions that decide its fp32/bf16/int8 throughput."""
    name, flags = platform.processor() or None, set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and name in (None, "", platform.processor()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    keep = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni")))
    return {
        "cpu": name,
        "cpu_flags": keep,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _summary(times: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in times)
    if not ms:
        return {"median_ms": None, "p90_ms": None, "min_ms": None}
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3),
        "min_ms": round(ms[0], 3),
    }  # (the least a neighbour's load added: closest to the unshared time)


def peak_at(threads: int) -> float:
    """fp32 matmul peak (GFLOP/s) with `threads` torch threads."""
    from wam.bench import matmul_peak

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return round(matmul_peak(torch.float32) * 1e-9, 1)
    finally:
        torch.set_num_threads(before)


def bench_onnx(
    checkpoint,
    *,
    export_dir: str | Path | None = None,
    dataset=None,
    episodes: int = 5,
    warmup: int = 3,
    seed: int = 0,
    threads: int | None = None,
    sweep: bool = False,
    variants: list[dict] | None = None,
    progress: bool = False,
) -> dict:
    """The PyTorch policy and ONNX paths on the same chunks (module docstring); returns the JSON `wam bench
    --runtime onnx` prints. `export_dir`: an export of this checkpoint (default: exported into a temporary
    directory first); `threads`: torch's threads and the ONNX paths' default (default: torch's current)."""
    from wam.bench import Bench
    from wam.export import export_policy
    from wam.inference import InferenceConfig
    from wam.policy import WAMPolicy
    from wam.runtime import ONNXPolicy, read_manifest

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    tmp = None
    if export_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="wam-export-")
        export_dir = Path(tmp.name) / "export"
        export_policy(checkpoint, export_dir, check=False, progress=progress)
    manifest = read_manifest(export_dir)
    if manifest["model_hash"] != checkpoint.model_hash:
        raise ArgumentError(
            f"{export_dir} is an export of model {manifest['model_hash']}, not of "
            f"{checkpoint.path} ({checkpoint.model_hash}); export this checkpoint: wam export "
            f"{checkpoint.path} --out DIR"
        )
    bench = Bench(checkpoint, dataset, episodes=episodes, warmup=warmup, seed=seed, progress=progress)
    ic = InferenceConfig.from_dict(manifest["inference"])
    torch_policy = WAMPolicy(checkpoint, mode="policy", inference=ic, seed=seed)
    given: dict = {}
    torch_policy._noise = lambda state, batch_size, mode, latent_shape: {  # the chunk's shared noise
        "policy": {"actions": torch.from_numpy(given["noise"])}
    }
    variants = variants or (
        [{"name": "onnx", "optimization": "all", "threads": threads}] + (sweep_variants(threads) if sweep else [])
    )
    onnx = {
        v["name"]: ONNXPolicy(
            export_dir,
            seed=seed,
            optimization=v.get("optimization", "all"),
            threads=v.get("threads", threads),
            int8=v.get("int8", False),
        )
        for v in variants
    }
    names = ["torch", *onnx]
    flops = _chunk_flops(torch_policy, bench.episodes[0], seed, given)
    times, outputs, truths, calls = _replay(bench, torch_policy, onnx, names, seed, given)
    peaks = {n: peak_at(n) for n in sorted({threads, *(v.get("threads", threads) for v in variants)})}

    result: dict = {
        "checkpoint": str(checkpoint.path),
        "model_hash": checkpoint.model_hash,
        "export": str(export_dir),
        "dataset": bench.dataset,
        "episodes": len(bench.episodes),
        "calls": calls - warmup,
        "warmup": warmup,
        "inference": manifest["inference"],
        "flops_per_chunk": flops,
        "torch_threads": threads,
        "peak_fp32_GFLOPs": {str(t): p for t, p in peaks.items()},
        **cpu_info(),
        "torch": torch.__version__,
        "onnxruntime": _ort_version(),
        "paths": _path_rows(
            names, variants, times, outputs, truths, flops=flops, peaks=peaks, threads=threads, warmup=warmup
        ),
    }
    if tmp is not None:
        tmp.cleanup()
    return result


def _chunk_flops(torch_policy, ep0: dict, seed: int, given: dict) -> int:
    """FLOPs of one chunk of the PyTorch policy, on a state of its own (counting encodes its history in place)."""
    from torch.utils.flop_counter import FlopCounterMode

    from wam.policy import Observation

    cfg = torch_policy.cfg
    s0 = torch_policy.new_state(seed)
    st0 = torch.as_tensor(np.asarray(ep0["states"][:1], dtype=np.float32)) if cfg.state_dim else None
    torch_policy.push(
        s0, Observation(np.asarray(ep0["frames"][0])[None], st0, torch.tensor([ep0["task_index"]]), False)
    )
    given["noise"] = np.zeros((1, cfg.action_horizon, cfg.action_dim), np.float32)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        torch_policy.predict_chunks([s0], [torch.tensor([ep0["task_index"]])])
    return fc.get_total_flops()


def _replay(bench, torch_policy, onnx: dict, names: list[str], seed: int, given: dict):
    """Every episode through every path, one chunk every n_action_steps steps, the same noise for all paths and
    the order of the paths rotated call by call. Returns (times, outputs, truths, calls)."""
    from wam.policy import Observation
    from wam.runtime import RuntimeObservation

    k, cfg = torch_policy.n_action_steps, torch_policy.cfg
    times = {n: [] for n in names}
    outputs = {n: [] for n in names}
    truths = []
    calls = 0
    for ep in bench.episodes:
        rng = np.random.default_rng(seed)
        states = {n: (torch_policy.new_state(seed) if n == "torch" else onnx[n].new_state(seed)) for n in names}
        task_np = np.array([ep["task_index"]], dtype=np.int64)
        task_t = torch.from_numpy(task_np)
        ep_states = np.asarray(ep["states"], dtype=np.float32) if cfg.state_dim else None
        for step in range(len(ep["frames"])):
            frame = np.asarray(ep["frames"][step])[None]
            st = None if ep_states is None else ep_states[step][None]
            for n in names:
                if n == "torch":
                    torch_policy.push(
                        states[n], Observation(frame, None if st is None else torch.from_numpy(st), task_t, False)
                    )
                else:
                    onnx[n].push(states[n], RuntimeObservation(frame, st, task_np, False))
            if step % k:
                continue
            noise = rng.standard_normal((1, cfg.action_horizon, cfg.action_dim), dtype=np.float32)
            given["noise"] = noise
            order = names[calls % len(names) :] + names[: calls % len(names)]  # rotate who goes first
            for n in order:
                t0 = time.perf_counter()
                if n == "torch":
                    with torch.no_grad():
                        torch_policy.predict_chunks([states[n]], [task_t])
                    out = states[n].last_chunk.clamp(-1, 1).numpy()
                else:
                    onnx[n].predict_chunks([states[n]], [task_np], noise=[noise])
                    out = states[n].last_chunk
                times[n].append(time.perf_counter() - t0)
                outputs[n].append(np.array(out, dtype=np.float32))
            truths.append(bench._truth(ep, step).numpy())
            calls += 1
    return times, outputs, truths, calls


def _path_rows(
    names: list[str],
    variants: list[dict],
    times: dict,
    outputs: dict,
    truths: list,
    *,
    flops: int,
    peaks: dict,
    threads: int,
    warmup: int,
) -> dict:
    """Each path's latency, achieved FLOP/s and error (against the data and, for the ONNX paths, PyTorch)."""

    def mse(xs, ys):
        return float(np.mean([np.mean((x - y) ** 2) for x, y in zip(xs, ys)]))

    rows = {}
    base = _summary(times["torch"][warmup:])["median_ms"]
    for n in names:
        lat = _summary(times[n][warmup:])
        t = threads if n == "torch" else next(v.get("threads", threads) for v in variants if v["name"] == n)
        gflops = flops / lat["median_ms"] * 1e-6 if lat["median_ms"] else None
        row = {
            **lat,
            "threads": t,
            "achieved_GFLOPs": round(gflops, 2) if gflops else None,
            "fraction_of_peak": round(gflops / peaks[t], 4) if gflops else None,
            "speedup_vs_torch": round(base / lat["median_ms"], 2) if lat["median_ms"] else None,
            "action_mse_vs_data": mse(outputs[n], truths),
        }
        if n != "torch":
            v = next(v for v in variants if v["name"] == n)
            d = np.concatenate([np.abs(a - b).ravel() for a, b in zip(outputs[n], outputs["torch"])])
            row.update(
                options={k: v[k] for k in v if k != "name"},
                max_abs_diff_vs_torch=float(d.max()),
                mean_abs_diff_vs_torch=float(d.mean()),
                action_mse_vs_torch=mse(outputs[n], outputs["torch"]),
            )
        rows[n] = row
    return rows


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return None
