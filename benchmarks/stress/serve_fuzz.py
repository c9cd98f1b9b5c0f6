"""Protocol fuzz of `wam serve` on loopback: thousands of random and mutated messages, a well-formed client beside.

    python benchmarks/stress/serve_fuzz.py --checkpoint checkpoints/wam-tiny-mt10 --messages 5000 \\
        --out benchmarks/stress/serve_fuzz.json

Runs a PolicyServer (the checkpoint, default inference settings, --max-connections 16, --hello-timeout 2) in
this process on a free loopback port. --fuzzers connections send, one message at a time, --messages messages
in all, each drawn (seeded) from:

- random bytes (0-2,000 of them), a text frame, an empty frame;
- random msgpack values (nested maps, lists, ints up to 2**64, floats with NaN/inf, strings, bytes, nil, bools);
- mutations of the protocol's own messages (hello, infer, observe, reset, health) taken from a valid session:
  a key dropped or renamed, a value's type changed, an array's dtype, shape or data bytes changed (negative,
  huge or too many dimensions, truncated data), NaN/inf in the state, unknown tasks, modes and message types,
  bad ids, a second hello, a wrong protocol version, bit flips and truncation of the packed bytes, and
  messages larger than --max-message-bytes (the server closes that connection, code 1009);
- new connections past the connection limit, and connections that never say hello.

Half the fuzz connections say hello first (so requests reach the model's input checks); a connection the
server closes is reopened. Beside them a well-formed PolicyClient asks for an action chunk back to back the
whole time. Counted: messages sent, replies by kind (error replies, answers), connections the server closed
(by close code), crashes (target 0: a reply that is not a protocol message, a request that got no answer
within --reply-timeout, an error reply saying the server failed on a request (an unhandled exception), an
exception logged by the server, or the server no longer answering), and whether the well-formed client was
served throughout (every request answered, the longest gap between answers). JSON to --out; exit status 1
on a crash or a well-formed request that failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import threading
import time
from collections import Counter

import msgpack
import numpy as np
import torch
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from wam.checkpoint import load_checkpoint
from wam.client import PolicyClient
from wam.policy import WAMPolicy
from wam.protocol import PROTOCOL_VERSION, ProtocolError, pack, unpack
from wam.serve import PolicyServer, ServerThread


class ErrorLog(logging.Handler):
    """Collects the server's logged exceptions (`log.exception`: a request or a forward pass failed)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(self.format(record)[-2000:])


# ---- messages -------------------------------------------------------------------------------------


def valid_observation(meta: dict, rng: np.random.Generator) -> dict:
    obs = {k: rng.integers(0, 256, tuple(shape), dtype=np.uint8) for k, shape in meta["cameras"].items()}
    if meta["state_dim"]:
        obs["observation.state"] = rng.normal(size=meta["state_dim"]).astype(np.float32)
    obs["task"] = meta["tasks"][0] if meta["tasks"] else 0
    return obs


def random_value(r: random.Random, depth: int = 0):
    kinds = ["int", "bigint", "float", "str", "bytes", "nil", "bool"] + (["list", "map"] if depth < 4 else [])
    k = r.choice(kinds)
    if k == "int":
        return r.randint(-1000, 1000)
    if k == "bigint":
        return r.choice([2**63, 2**64 - 1, -(2**63), 2**31])
    if k == "float":
        return r.choice([0.0, -1.5, float("nan"), float("inf"), -float("inf"), 1e308, r.random()])
    if k == "str":
        return "".join(r.choice("abcxyz_.\u00e9\u4e2d\x00") for _ in range(r.randint(0, 20)))
    if k == "bytes":
        return r.randbytes(r.randint(0, 64))
    if k == "nil":
        return None
    if k == "bool":
        return r.random() < 0.5
    if k == "list":
        return [random_value(r, depth + 1) for _ in range(r.randint(0, 5))]
    keys = [
        "type",
        "id",
        "obs",
        "mode",
        "token",
        "seed",
        "protocol",
        "__nd__",
        "dtype",
        "shape",
        "data",
        "task",
        "observation.state",
        "observation.images.corner4",
    ]
    return {
        r.choice(keys) if r.random() < 0.7 else random_value(r, 99): random_value(r, depth + 1)
        for _ in range(r.randint(0, 5))
    }


def mutate_array(a: dict, r: random.Random) -> dict:
    a = dict(a)
    choice = r.randrange(8)
    if choice == 0:
        a["dtype"] = r.choice(["complex64", "object", "<U4", "float128", "", None, 3, "uint8"])
    elif choice == 1:
        a["shape"] = r.choice([[-1, 3], [2**40, 2**40, 3], [0, 0, 3], [1] * 12, "64,64,3", None, [64, 64], [3.5]])
    elif choice == 2:
        a["data"] = a["data"][: r.randint(0, len(a["data"]))]
    elif choice == 3:
        a["data"] = r.choice(["text", None, 5, [1, 2]])
    elif choice == 4:
        a["__nd__"] = r.choice([False, 1, "yes", None])
    elif choice == 5:
        del a[r.choice(["dtype", "shape", "data"])]
    elif choice == 6:  # a valid array of another size or dtype
        shape = [r.randint(1, 300), r.randint(1, 300), r.choice([1, 3, 4])]
        dt = r.choice(["uint8", "float32", "int64", "bool"])
        return {"__nd__": True, "dtype": dt, "shape": shape, "data": bytes(int(np.prod(shape)) * np.dtype(dt).itemsize)}
    else:
        a["data"] = r.randbytes(len(a["data"]))  # random pixels: a valid array
    return a


def mutate(msg: dict, r: random.Random) -> dict:
    """One structural mutation of a valid message (a copy)."""
    m = {**msg}  # (copied down to what is changed: obs and its arrays)
    if "obs" in m:
        m["obs"] = dict(m["obs"])
    choice = r.randrange(14)
    keys = list(m)
    if choice == 0 and keys:
        del m[r.choice(keys)]
    elif choice == 1 and keys:
        k = r.choice(keys)
        m[k + r.choice(["_", "x", " "])] = m.pop(k)
    elif choice == 2 and keys:
        m[r.choice(keys)] = random_value(r)
    elif choice == 3:
        m["type"] = r.choice(["infer ", "INFER", "shutdown", "", None, 7, "hello", "observe", "reset", "health"])
    elif choice == 4:
        m["id"] = random_value(r)
    elif choice == 5:
        m["mode"] = r.choice(["forward", "video", "Policy", "", None, 3, "joint", "inverse"])
    elif choice in (6, 7) and "obs" in m:
        obs = m["obs"]
        k = r.choice(list(obs))
        if isinstance(obs[k], dict) and obs[k].get("__nd__") is True:
            obs[k] = mutate_array(obs[k], r)
        else:
            obs[k] = random_value(r)
    elif choice == 8 and "obs" in m:
        obs = m["obs"]
        if "observation.state" in obs:
            st = np.frombuffer(obs["observation.state"]["data"], dtype="<f4").copy()
            st[r.randrange(len(st))] = r.choice([np.nan, np.inf, -np.inf])
            obs["observation.state"] = {**obs["observation.state"], "data": st.astype("<f4").tobytes()}
    elif choice == 9 and "obs" in m:
        m["obs"]["task"] = r.choice(["no such task", -1, 10**6, [0, 1], None, True, 2.5])
    elif choice == 10 and "obs" in m:
        m["obs"] = random_value(r)
    elif choice == 11:
        m["protocol"] = r.choice([0, 2, "1", None])
        m["type"] = "hello"
    elif choice == 12:
        m["seed"] = r.choice([-1, 2**63, 2**64 - 1, "0", None, 1.5])
        m["type"] = "hello"
    else:
        m[random_value(r, 99) if r.random() < 0.5 else "extra"] = random_value(r)
    return m


def raw_message(valid: dict, r: random.Random, max_bytes: int) -> tuple[bytes | str, str]:
    """(frame, kind) for the next fuzz message."""
    kind = r.choices(
        ["bytes", "msgpack", "mutated", "mutated", "mutated", "flipped", "valid", "big", "text"],
        weights=[8, 10, 25, 25, 20, 8, 6, 1, 2],
    )[0]
    if kind == "bytes":
        return r.randbytes(r.randint(0, 2000)), kind
    if kind == "text":
        return r.choice(["", "hello", '{"type": "hello"}']), kind
    if kind == "msgpack":
        try:
            return msgpack.packb(random_value(r), use_bin_type=True), kind
        except (OverflowError, TypeError, ValueError):
            return b"\xc1", kind  # (a value msgpack cannot pack: the one byte msgpack never uses)
    name = r.choice(list(valid))
    if kind == "valid":
        return pack(valid[name]), f"valid-{name}"
    if kind == "big":
        return b"\x00" * (max_bytes + r.randint(1, 4096)), kind
    try:
        data = pack(mutate(valid[name], r))
    except (OverflowError, TypeError, ValueError):
        data = pack(valid[name])
    if kind == "flipped":
        b = bytearray(data)
        for _ in range(r.randint(1, 8)):
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
        if r.random() < 0.3:
            b = b[: r.randrange(len(b))]
        return bytes(b), kind
    return data, f"mutated-{name}"


# ---- the run --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/wam-tiny-mt10")
    ap.add_argument("--messages", type=int, default=5000, help="fuzz messages in all")
    ap.add_argument("--fuzzers", type=int, default=4, help="fuzzing connections at once")
    ap.add_argument("--max-connections", type=int, default=16)
    ap.add_argument("--hello-timeout", type=float, default=2.0)
    ap.add_argument("--max-message-bytes", type=int, default=256 * 1024)
    ap.add_argument("--reply-timeout", type=float, default=30.0)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server's model")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    errors = ErrorLog()
    logging.getLogger("wam.serve").addHandler(errors)
    logging.getLogger("wam.serve").setLevel(logging.ERROR)  # (refusals and timeouts are warnings: expected here)
    policy = WAMPolicy(load_checkpoint(args.checkpoint), mode="policy")
    server = PolicyServer(
        policy,
        max_connections=args.max_connections,
        hello_timeout_s=args.hello_timeout,
        max_message_bytes=args.max_message_bytes,
    )
    counts: Counter = Counter()
    crashes: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    t_start = time.time()

    def count(key: str, n: int = 1) -> None:
        with lock:
            counts[key] += n

    def crash(text: str) -> None:
        with lock:
            crashes.append(text[:500])

    with ServerThread(server) as running:
        url = running.url
        with PolicyClient(url, seed=0) as probe:
            meta = probe.metadata
        rng = np.random.default_rng(args.seed)
        obs = valid_observation(meta, rng)
        valid = {
            "hello": {"type": "hello", "protocol": PROTOCOL_VERSION, "token": None, "seed": 3},
            "infer": {"type": "infer", "id": 1, "obs": obs},
            "observe": {"type": "observe", "id": 2, "obs": obs},
            "reset": {"type": "reset", "id": 3},
            "health": {"type": "health", "id": 4},
        }
        valid = {k: unpack(pack(v)) for k, v in valid.items()}  # arrays as the wire maps, for mutation
        for v in valid.values():
            if "obs" in v:
                v["obs"] = {
                    k: (
                        {
                            "__nd__": True,
                            "dtype": a.dtype.name,
                            "shape": list(a.shape),
                            "data": a.astype(a.dtype.newbyteorder("<")).tobytes(),
                        }
                        if isinstance(a, np.ndarray)
                        else a
                    )
                    for k, a in v["obs"].items()
                }

        # the well-formed client: chunks back to back for the whole run
        good = {"requests": 0, "answered": 0, "failed": 0, "errors": [], "max_gap_s": 0.0}

        def well_formed():
            try:
                client = PolicyClient(url, seed=1)
            except Exception as e:  # noqa: BLE001
                good["failed"] += 1
                good["errors"].append(f"connect: {e}")
                return
            last = time.time()
            with client:
                while not stop.is_set():
                    good["requests"] += 1
                    try:
                        chunk = client.predict_action_chunk(obs)
                        assert chunk.shape == (meta["action_horizon"], meta["action_dim"]) and np.isfinite(chunk).all()
                        good["answered"] += 1
                    except Exception as e:  # noqa: BLE001
                        good["failed"] += 1
                        good["errors"].append(f"{type(e).__name__}: {e}"[:300])
                        return
                    now = time.time()
                    good["max_gap_s"] = max(good["max_gap_s"], now - last)
                    last = now

        budget = {"left": args.messages}

        def take() -> bool:
            with lock:
                if budget["left"] <= 0 or time.time() - t_start > args.max_seconds:
                    return False
                budget["left"] -= 1
                return True

        def fuzzer(i: int):
            r = random.Random(args.seed * 1000 + i)
            greet = i % 2 == 0
            while not stop.is_set():
                try:
                    with connect(url, proxy=None, compression=None, max_size=2**26, open_timeout=30) as ws:
                        count("connections_opened")
                        if greet:
                            ws.send(pack(valid["hello"]))
                            reply = unpack(ws.recv(timeout=args.reply_timeout))
                            if reply.get("type") != "hello":
                                count(f"hello_refused: {str(reply.get('error'))[:60]}")
                                time.sleep(0.2)
                                continue
                        while True:
                            if not take():
                                return
                            frame, kind = raw_message(valid, r, args.max_message_bytes)
                            if r.random() < 0.01:  # now and then: stay silent past the hello deadline
                                count("silent_waits")
                                frame = None
                            count("messages_sent" if frame is not None else "messages_skipped")
                            count(f"sent:{kind.split('-')[0]}")
                            if frame is not None:
                                ws.send(frame)
                            try:
                                raw = ws.recv(
                                    timeout=args.reply_timeout if frame is not None else args.hello_timeout + 5
                                )
                            except TimeoutError:
                                if frame is not None:
                                    crash(f"no reply within {args.reply_timeout} s to a {kind} message")
                                    return
                                continue
                            try:
                                reply = unpack(raw)
                            except ProtocolError as e:
                                crash(f"a reply that is not a protocol message: {e}")
                                continue
                            t = reply.get("type")
                            count(f"reply:{t}")
                            if t == "error":
                                count("error_replies")
                                if "the server failed on this request" in str(reply.get("error")):
                                    crash(f"internal error for a {kind} message: {reply.get('error')}")
                            elif frame is None:
                                pass
                            else:
                                count("answers")
                except ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd is not None else None
                    count(f"closed_by_server:{code}")
                except (OSError, InvalidHandshake) as e:
                    count(f"connect_failed:{type(e).__name__}")
                    time.sleep(0.1)

        def flood():  # connections past the limit, opened and held briefly
            held = []
            try:
                for _ in range(args.max_connections + 4):
                    if stop.is_set():
                        break
                    try:
                        ws = connect(url, proxy=None, compression=None, open_timeout=30).__enter__()
                        held.append(ws)
                        count("flood_connections")
                    except (OSError, InvalidHandshake):
                        count("flood_connect_failed")
                time.sleep(1.0)
            finally:
                for ws in held:
                    try:
                        ws.close()
                    except Exception:  # noqa: BLE001
                        pass

        threads = [threading.Thread(target=well_formed, daemon=True)]
        threads += [threading.Thread(target=fuzzer, args=(i,), daemon=True) for i in range(args.fuzzers)]
        threads[0].start()
        time.sleep(0.5)
        for t in threads[1:]:
            t.start()
        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        for t in threads[1:]:
            t.join(args.max_seconds + 120)
        flooder.join(60)
        stop.set()
        threads[0].join(args.reply_timeout + 10)
        try:
            with PolicyClient(url, seed=2) as after:
                health = after.health()
                alive = after.predict_action_chunk(obs).shape == (meta["action_horizon"], meta["action_dim"])
        except Exception as e:  # noqa: BLE001
            crash(f"the server no longer answers after the fuzz: {e}")
            health, alive = {}, False
    for rec in errors.records:
        crash(f"server logged an exception: {rec}")

    result = {
        "command": "python benchmarks/stress/serve_fuzz.py " + " ".join(sys.argv[1:]),
        "checkpoint": args.checkpoint,
        "seed": args.seed,
        "fuzz_connections": args.fuzzers,
        "max_connections": args.max_connections,
        "hello_timeout_s": args.hello_timeout,
        "max_message_bytes": args.max_message_bytes,
        "wall_s": round(time.time() - t_start, 1),
        "requests_sent": counts["messages_sent"],
        "error_replies": counts["error_replies"],
        "answers": counts["answers"],
        "crashes": len(crashes),
        "crash_details": crashes[:20],
        "server_alive_at_end": alive,
        "well_formed_client": {
            "requests": good["requests"],
            "answered": good["answered"],
            "failed": good["failed"],
            "served_throughout": good["failed"] == 0 and good["answered"] > 0,
            "max_gap_between_answers_s": round(good["max_gap_s"], 3),
            "errors": good["errors"][:5],
        },
        "server_counters": {
            k: health.get(k)
            for k in (
                "connections",
                "refused_connections",
                "hello_timeouts",
                "errors",
                "requests",
                "forward_passes",
                "dropped",
            )
        },
        "counts": dict(sorted(counts.items())),
        "machine": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        from wam.atomic import write_text_atomic

        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return 1 if crashes or good["failed"] or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
