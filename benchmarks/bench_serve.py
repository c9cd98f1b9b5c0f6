"""Load test of `wam serve` on loopback: 1, 8 and 32 concurrent clients, each phase bounded in time and count.

    python benchmarks/bench_serve.py --checkpoint runs/mt10/checkpoint --out benchmarks/serve.json
    python benchmarks/bench_serve.py --url ws://127.0.0.1:8765 --token T   # a server already running here

Starts `wam serve` on a free loopback port with a random token (unless --url names a running one; only
loopback URLs are accepted), then for each client count runs that many clients for --seconds (and at most
--max-requests answers in all). Each client says hello with its own seed and sends `infer` requests back to
back, one in flight, as a robot waiting for its next chunk does, with an observation built from the
server's metadata (random images of the model's size, a zero state, the first task). Prints, and writes to
--out as JSON, per phase: p50/p99 latency (the client's round trip), throughput (answers per second),
failed requests, and the mean batch the server formed (rows per forward pass, from its health counters).
Exits with status 1 when a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import connect

from wam.protocol import PROTOCOL_VERSION, TOKEN_ENV, pack, unpack
from wam.serve import is_loopback

REPLY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_loopback_url(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


async def session(url: str, token: str | None, seed: int):
    ws = await connect(url, proxy=None, compression=None, max_size=2**26, open_timeout=REPLY_TIMEOUT_S)
    await ws.send(pack({"type": "hello", "protocol": PROTOCOL_VERSION, "token": token, "seed": seed}))
    hello = unpack(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
    if hello.get("type") != "hello":
        await ws.close()
        raise RuntimeError(f"the server refused the session: {hello.get('error')}")
    return ws, hello


async def health(url: str, token: str | None) -> dict:
    ws, _ = await session(url, token, 0)
    try:
        await ws.send(pack({"type": "health", "id": 0}))
        return unpack(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
    finally:
        await ws.close()


def observation(meta: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    obs = {k: rng.integers(0, 256, shape, dtype=np.uint8) for k, shape in meta["cameras"].items()}
    if meta["state_dim"]:
        obs["observation.state"] = np.zeros(meta["state_dim"], np.float32)
    obs["task"] = meta["tasks"][0] if meta["tasks"] else 0
    return obs


async def client(
    url: str,
    token: str | None,
    seed: int,
    deadline: float,
    budget: list[int],
    latencies: list[float],
    failures: list[str],
) -> None:
    try:
        ws, meta = await session(url, token, seed)
    except Exception as e:  # noqa: BLE001 (a refused or failed connection: counted as this client's failure)
        failures.append(f"connect: {type(e).__name__}: {e}")
        return
    obs = observation(meta, seed)
    i = 0
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            i += 1
            t0 = time.perf_counter()
            await ws.send(pack({"type": "infer", "id": i, "obs": obs}))
            reply = unpack(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
            if reply.get("type") == "action_chunk" and reply.get("id") == i:
                latencies.append(time.perf_counter() - t0)
            else:
                failures.append(str(reply.get("error", reply.get("type"))))
    except Exception as e:  # noqa: BLE001 (a closed connection or a timeout: this client stops, counted)
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        await ws.close()


async def phase(url: str, token: str | None, clients: int, seconds: float, max_requests: int) -> dict:
    before = await health(url, token)
    latencies: list[float] = []
    failures: list[str] = []
    budget = [max_requests]
    t0 = time.perf_counter()
    await asyncio.gather(
        *(client(url, token, seed, t0 + seconds, budget, latencies, failures) for seed in range(clients))
    )
    elapsed = time.perf_counter() - t0
    after = await health(url, token)
    passes = after["forward_passes"] - before["forward_passes"]
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "seconds": round(elapsed, 3),
        "requests": len(latencies),
        "failed": len(failures),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
        "mean_batch": round((after["rows"] - before["rows"]) / passes, 2) if passes else 0.0,
        "first_failures": sorted(set(failures))[:5],
    }


def start_server(args: argparse.Namespace, token: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "wam.cli",
        "serve",
        "--checkpoint",
        args.checkpoint,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if args.device:
        cmd += ["--device", args.device]
    proc = subprocess.Popen(cmd, env={**os.environ, TOKEN_ENV: token})
    deadline = time.time() + 120  # loading the checkpoint
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"wam serve exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"ws://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("wam serve did not start listening within 120 s")


async def run(args: argparse.Namespace, url: str, token: str | None) -> dict:
    ws, meta = await session(url, token, 0)
    await ws.close()
    rows = []
    for n in [int(c) for c in args.clients.split(",")]:
        row = await phase(url, token, n, args.seconds, args.max_requests)
        rows.append(row)
        print(
            f"{row['clients']:>7} {row['requests']:>9} {row['throughput_rps']:>10.1f} {row['p50_ms']:>9.2f} "
            f"{row['p99_ms']:>9.2f} {row['mean_batch']:>10.2f} {row['failed']:>7}",
            flush=True,
        )
    settings = {
        k: meta[k]
        for k in (
            "model_hash",
            "device",
            "max_batch",
            "sampling",
            "image_size",
            "action_horizon",
            "n_obs_steps",
            "mode",
        )
    }
    return {
        "settings": {
            **settings,
            "checkpoint": args.checkpoint,
            "url": url,
            "max_wait_ms": args.max_wait_ms,
            "seconds_per_phase": args.seconds,
            "max_requests_per_phase": args.max_requests,
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "phases": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint to serve (a `wam serve` is started on a free loopback port)")
    ap.add_argument("--url", help="a running server on this machine instead (ws://127.0.0.1:PORT)")
    ap.add_argument("--token", default=None, help=f"the running server's token (default: ${TOKEN_ENV})")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated concurrent client counts, one phase each")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    ap.add_argument("--max-requests", type=int, default=200_000, help="cap on answers per phase")
    ap.add_argument("--max-batch", type=int, default=32, help="the started server's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="the started server's --max-wait-ms")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="the started server's denoising steps per chunk (default: wam serve's, the library default)",
    )
    ap.add_argument("--device", default=None, help="the started server's --device")
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args()
    if bool(args.checkpoint) == bool(args.url):
        ap.error("pass --checkpoint (to start a server) or --url (a running one), not both")
    counts = [int(c) for c in args.clients.split(",")]
    if not all(1 <= c <= 256 for c in counts) or not 0 < args.seconds <= 600:
        ap.error("client counts must be in 1..256 and --seconds in (0, 600]")
    proc = None
    if args.url:
        if not is_loopback_url(args.url):
            ap.error(f"{args.url} is not a loopback address; this benchmark sends traffic to this machine only")
        url, token = args.url, args.token or os.environ.get(TOKEN_ENV)
    else:
        token = secrets.token_hex(16)
        proc, url = start_server(args, token)
    print(
        f"{'clients':>7} {'answers':>9} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'mean batch':>10} {'failed':>7}",
        flush=True,
    )
    try:
        result = asyncio.run(run(args, url, token))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if any(r["failed"] for r in result["phases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
