"""Measure a trained LeRobot peer with wam's own harness: serve its checkpoint with lerobot_server.py (in
LeRobot's venv), run `wam eval --server` on it (same seeds, step limits and success rule as any wam
policy), and write benchmarks/peers/<peer>_<tasks>.json with the success table, the policy's latency per
action chunk (median and p90 of the server's server_ms, which spans decoding, preprocessing, the forward
pass and postprocessing) and the training record train.py left beside the checkpoint.

Runbook (run it with wam's venv; the server runs with .venv-lerobot/bin/python):
    python benchmarks/peers/run.py --peer dp --checkpoint runs/peers/dp/checkpoints/last/pretrained_model \\
        --tasks mt10 --episodes 20
    python benchmarks/peers/run.py --peer act --checkpoint runs/peers/act/checkpoints/last/pretrained_model \\
        --tasks reach-v3 --episodes 1 --max-steps 50        # a smoke run
    python benchmarks/peers/run.py --peer wam --checkpoint runs/wm/policy/checkpoint --tasks mt10 --episodes 20

--peer wam measures a wam checkpoint the same way: `wam serve`'s PolicyServer in this process (with --threads
torch threads), the same `wam eval --server` command, the same latency (the server_ms of every chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def start_server(args, ready: Path, stats: Path, log) -> subprocess.Popen:
    python = Path(args.venv) / "bin" / "python"
    cmd = [
        str(python),
        str(HERE / "lerobot_server.py"),
        "--checkpoint",
        str(args.checkpoint),
        "--port",
        "0",
        "--ready-file",
        str(ready),
        "--stats-file",
        str(stats),
        "--threads",
        str(args.threads),
    ]
    if args.n_action_steps is not None:
        cmd += ["--n-action-steps", str(args.n_action_steps)]
    if args.num_inference_steps is not None:
        cmd += ["--num-inference-steps", str(args.num_inference_steps)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + args.start_timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the peer server did not start (exit {proc.poll()}); see {log.name}")
        time.sleep(0.2)
    return proc


def start_wam_server(args):
    """wam's own server for a wam checkpoint, in this process, at the same --threads as a peer's server."""
    import torch

    from wam.policy import WAMPolicy
    from wam.serve import PolicyServer, ServerThread

    torch.set_num_threads(args.threads)
    policy = WAMPolicy.from_checkpoint(
        args.checkpoint, **({"n_action_steps": args.n_action_steps} if args.n_action_steps is not None else {})
    )
    # max_wait_ms 0: one client, nothing to batch with (LeRobot's server does not wait either)
    return ServerThread(PolicyServer(policy, max_wait_ms=0), port=0).start()


def wam_parameters(checkpoint: Path) -> int:
    """Parameters of a wam checkpoint: the network and its frame tokenizer."""
    from safetensors import safe_open

    total = 0
    for name in ("model.safetensors", "tokenizer.safetensors"):
        if (checkpoint / name).is_file():
            with safe_open(str(checkpoint / name), "np") as f:
                total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    return total


def latency(ms: list[float]) -> dict:
    """Median and p90 of server_ms, over all chunks and without the first (warm-up) one."""
    out = {"n_chunks": len(ms)}
    if ms:
        out.update(median_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)), first_ms=ms[0])
    if len(ms) > 1:
        out.update(median_ms_after_first=float(np.median(ms[1:])), p90_ms_after_first=float(np.percentile(ms[1:], 90)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", required=True, help="name of the peer in the result file (e.g. dp, act)")
    p.add_argument("--checkpoint", required=True, help="the pretrained_model directory lerobot-train wrote")
    p.add_argument("--tasks", required=True, help="wam eval --tasks (a task set or comma-separated tasks)")
    p.add_argument("--label", default=None, help="the method's name in the table (default: --peer)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--n-action-steps", type=int, default=None, help="override the checkpoint's n_action_steps")
    p.add_argument(
        "--num-inference-steps",
        type=int,
        default=None,
        help="diffusion: fewer denoising steps than the checkpoint's (not LeRobot's default; recorded)",
    )
    p.add_argument("--videos", type=int, default=0)
    p.add_argument(
        "--server-timeout",
        type=float,
        default=600,
        help="seconds wam eval waits for each chunk (Diffusion Policy's 100 steps take tens of seconds)",
    )
    p.add_argument(
        "--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")), help="torch threads of the server"
    )
    p.add_argument("--venv", default=str(ROOT / ".venv-lerobot"))
    p.add_argument("--out", default=None, help="result JSON (default: benchmarks/peers/<peer>_<tasks>.json)")
    p.add_argument("--eval-out", default=None, help="wam eval's output directory (default: runs/peers/eval-...)")
    p.add_argument("--start-timeout", type=float, default=300)
    p.add_argument(
        "--success-from",
        default=None,
        metavar="EVAL_INFO",
        help="--peer wam: take the success table from this eval_info.json (a local `wam eval` of the same "
        "checkpoint on the same tasks and seeds, whose actions the server path reproduces exactly; "
        "tests/test_serve.py) and run the server only long enough to measure the latency",
    )
    args = p.parse_args(argv)

    args.checkpoint = Path(args.checkpoint).resolve()
    tag = args.tasks.replace(",", "+")
    out = Path(args.out or HERE / f"{args.peer}_{tag}.json")
    eval_out = Path(args.eval_out or ROOT / "runs" / "peers" / f"eval-{out.stem}")  # one per result file
    wam = shutil.which("wam") or str(ROOT / ".venv" / "bin" / "wam")
    work = Path(tempfile.mkdtemp(prefix="peers-run-"))
    ready, stats, log_path = work / "ready.json", work / "stats.json", eval_out.with_name(eval_out.name + "-server.log")
    eval_out.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        server = start_wam_server(args) if args.peer == "wam" else start_server(args, ready, stats, log)
        startup = time.perf_counter() - t0
        url = server.url if args.peer == "wam" else json.loads(ready.read_text())["url"]
        try:
            from wam.client import PolicyClient

            with PolicyClient(url) as client:
                hello = dict(client.metadata)
            cmd = [
                wam,
                "eval",
                "--server",
                url,
                "--env",
                "metaworld",
                "--tasks",
                args.tasks,
                "--episodes",
                str(args.episodes),
                "--seed",
                str(args.seed),
                "--no-expert",
                "--videos",
                str(args.videos),
                "--server-timeout",
                str(args.server_timeout),
                "--out",
                str(eval_out),
            ]
            if args.max_steps is not None:
                cmd += ["--max-steps", str(args.max_steps)]
            if args.n_action_steps is not None:
                cmd += ["--n-action-steps", str(args.n_action_steps)]
            print("[peers]", shlex.join(cmd), flush=True)
            t1 = time.perf_counter()
            rc = subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            eval_s = time.perf_counter() - t1
        finally:
            if args.peer == "wam":
                server.stop()
            else:
                server.terminate()
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
    served = json.loads(stats.read_text()) if stats.exists() else {"server_ms": []}
    shutil.rmtree(work, ignore_errors=True)
    if rc != 0:
        raise SystemExit(f"wam eval failed (exit {rc}); the server's log is {log_path}")
    info = json.loads((eval_out / "eval_info.json").read_text())
    served_eval = None
    if args.success_from:
        if args.peer != "wam":
            raise SystemExit("--success-from is for --peer wam (a peer is measured by its own run)")
        local = json.loads(Path(args.success_from).read_text())
        want = {r["task"]: r["seeds"][: args.episodes] for r in info["per_task"]}
        have = {r["task"]: r["seeds"][: args.episodes] for r in local["per_task"]}
        other_model = local["settings"].get("model_hash") != hello.get("model_hash")
        if any(have.get(t) != s for t, s in want.items()) or other_model:
            raise SystemExit(f"{args.success_from} is not an evaluation of this checkpoint on these tasks and seeds")
        served_eval = {k: info[k] for k in ("pc_success", "n_episodes", "ci95")}
        info = {**local, "server_ms": info.get("server_ms")}
    if not served["server_ms"] and info.get("server_ms"):  # wam's server: wam eval recorded every chunk's time
        served = {"server_ms": None, "summary": info["server_ms"]}
    train_record = (
        args.checkpoint.parent / "peer_train.json"
        if args.peer == "wam"  # <out>/checkpoint
        else args.checkpoint.parents[2] / "peer_train.json"
    )  # <out>/checkpoints/last/pretrained_model
    result = {
        "peer": args.peer,
        "label": args.label or args.peer,
        "policy": hello.get("policy"),
        "checkpoint": str(args.checkpoint),
        "tasks": args.tasks,
        "episodes_per_task": args.episodes,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "num_inference_steps_override": args.num_inference_steps,
        "eval_command": shlex.join(cmd),
        "eval_wall_s": eval_s,
        "success_from": args.success_from,
        "latency_run": served_eval,
        "server_startup_s": startup,
        "server_threads": args.threads,
        "eval_info": args.success_from or str(eval_out / "eval_info.json"),
        "pc_success": info["pc_success"],
        "ci95": info["ci95"],
        "n_episodes": info["n_episodes"],
        "groups": info.get("groups"),
        "group_mean": info.get("group_mean"),
        "per_task": [
            {k: r[k] for k in ("task", "pc_success", "ci95", "n_episodes", "avg_steps")} for r in info["per_task"]
        ],
        "latency_per_chunk": (
            latency(served["server_ms"])
            if served["server_ms"] is not None
            else {
                "n_chunks": served["summary"]["n_chunks"],
                "median_ms": served["summary"]["median"],
                "p90_ms": served["summary"]["p90"],
                "first_ms": served["summary"]["first"],
            }
        ),
        "chunk": {k: hello.get(k) for k in ("action_horizon", "n_action_steps", "n_obs_steps", "sampling")},
        "parameters": wam_parameters(args.checkpoint) if args.peer == "wam" else hello.get("parameters"),
        "model_hash": hello.get("model_hash"),
        "checkpoint_bytes": sum(f.stat().st_size for f in args.checkpoint.iterdir() if f.is_file()),
        "train": json.loads(train_record.read_text()) if train_record.is_file() else None,
    }
    out.write_text(json.dumps(result, indent=2))
    lat = result["latency_per_chunk"]
    print(
        f"[peers] {args.peer} on {args.tasks}: {info['pc_success']:.1f}% over {info['n_episodes']} episodes; "
        f"chunk latency median {lat.get('median_ms', float('nan')):.1f} ms, "
        f"p90 {lat.get('p90_ms', float('nan')):.1f} ms "
        f"over {lat['n_chunks']} chunks; wrote {out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
