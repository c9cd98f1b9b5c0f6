"""benchmarks/peers/lerobot_server.py speaks wam's protocol: its stand-in policy (no LeRobot needed) served in
a subprocess answers hello, infer (single and batched), observe, reset and health as wam.serve does, every
malformed request gets an error reply, and `wam eval --server` runs against it unchanged."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")
pytest.importorskip("msgpack")

from wam.client import PolicyClient
from wam.envs.dot import TASKS
from wam.protocol import PROTOCOL_VERSION, pack, unpack

SERVER = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "lerobot_server.py"
TASK = TASKS["reach-goal"]
SIZE, HORIZON, ACTION_DIM, STATE_DIM = 32, 4, 2, 4  # the dot world's shapes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The stand-in served on a free port, shaped like a dot-world policy."""
    ready = tmp_path_factory.mktemp("peers") / "ready.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SERVER),
            "--stand-in",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--camera",
            "top",
            "--image-size",
            str(SIZE),
            "--action-dim",
            str(ACTION_DIM),
            "--state-dim",
            str(STATE_DIM),
            "--horizon",
            str(HORIZON),
            "--n-action-steps",
            "2",
            "--n-obs-steps",
            "2",
            "--tasks",
            TASK,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the stand-in server did not start:\n{proc.stdout.read()}")
        time.sleep(0.05)
    try:
        yield json.loads(ready.read_text())["url"]
    finally:
        proc.terminate()
        proc.wait(10)


def _obs(seed: int = 0, batch: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    return {
        "observation.images.top": rng.integers(0, 256, (*lead, SIZE, SIZE, 3), dtype=np.uint8),
        "observation.state": rng.uniform(-1, 1, (*lead, STATE_DIM)).astype(np.float32),
        "task": TASK,
    }


def _connect(url: str):
    from websockets.sync.client import connect

    return connect(url, compression=None, proxy=None, open_timeout=10)


def _ask(ws, message: dict) -> dict:
    ws.send(pack(message))
    return unpack(ws.recv(timeout=10))


def test_hello_metadata_is_what_wam_eval_reads(server):
    with _connect(server) as ws:
        meta = _ask(ws, {"type": "hello", "protocol": PROTOCOL_VERSION, "token": None, "seed": 3})
    assert meta["type"] == "hello" and meta["protocol"] == PROTOCOL_VERSION and meta["seed"] == 3
    assert meta["cameras"] == {"observation.images.top": [SIZE, SIZE, 3]} and meta["image_size"] == SIZE
    assert meta["action_dim"] == ACTION_DIM and meta["state_dim"] == STATE_DIM and meta["tasks"] == [TASK]
    assert meta["action_horizon"] == HORIZON and meta["n_action_steps"] == 2 and meta["n_obs_steps"] == 2
    assert meta["mode"] in meta["modes"] and {"steps", "solver", "schedule", "cfg_scale"} <= set(meta["sampling"])
    assert isinstance(meta["model_hash"], str) and meta["max_message_bytes"] > 0


def test_infer_observe_reset_health(server):
    with _connect(server) as ws:
        assert _ask(ws, {"type": "health", "id": "before"}) == {
            "type": "health",
            "ok": True,
            "protocol": PROTOCOL_VERSION,
            "id": "before",
        }
        _ask(ws, {"type": "hello", "protocol": PROTOCOL_VERSION, "seed": 0})
        assert _ask(ws, {"type": "observe", "id": 1, "obs": _obs(1)}) == {"type": "observed", "id": 1}
        reply = _ask(ws, {"type": "infer", "id": "chunk-7", "obs": _obs(2)})
        assert reply["type"] == "action_chunk" and reply["id"] == "chunk-7" and reply["mode"] == "policy"
        assert reply["actions"].shape == (HORIZON, ACTION_DIM) and reply["actions"].dtype == np.float32
        assert np.all(np.abs(reply["actions"]) <= 1) and reply["server_ms"] > 0
        again = _ask(ws, {"type": "infer", "id": 8, "obs": _obs(2)})
        np.testing.assert_array_equal(again["actions"], reply["actions"])  # deterministic
        batched = _ask(ws, {"type": "infer", "id": 9, "obs": _obs(4, batch=3)})
        assert batched["actions"].shape == (3, HORIZON, ACTION_DIM) and batched["id"] == 9
        assert _ask(ws, {"type": "reset", "id": 10}) == {"type": "reset", "id": 10}
        health = _ask(ws, {"type": "health", "id": 11})
        assert health["ok"] and health["id"] == 11 and health["requests"] >= 3 and health["server_ms_median"] > 0


def test_malformed_messages_get_error_replies(server):
    with _connect(server) as ws:
        before = _ask(ws, {"type": "infer", "id": 1, "obs": _obs()})
        assert before["type"] == "error" and before["id"] == 1 and "hello" in before["error"]
        ws.send(b"\xc1 not msgpack")
        garbage = unpack(ws.recv(timeout=10))
        assert garbage["type"] == "error" and garbage["id"] is None and "msgpack" in garbage["error"]
        assert _ask(ws, {"type": "dance", "id": 2})["type"] == "error"
        _ask(ws, {"type": "hello", "protocol": PROTOCOL_VERSION, "seed": 0})
        bad = [
            ({**_obs(), "observation.images.top": np.zeros((SIZE, SIZE, 3), np.float32)}, "uint8"),
            ({**_obs(), "observation.state": np.zeros(STATE_DIM + 1, np.float32)}, f"takes [{STATE_DIM}]"),
            ({**_obs(), "observation.state": np.full(STATE_DIM, np.nan, np.float32)}, "NaN"),
            ({**_obs(), "task": "fly to the moon"}, "not in the training data"),
            ({"task": TASK}, "obs lacks 'observation.images.top'"),
        ]  # no camera
        for i, (obs, says) in enumerate(bad):  # the same checks, and words, as wam.serve (wam.protocol's)
            reply = _ask(ws, {"type": "infer", "id": 100 + i, "obs": obs})
            assert reply["type"] == "error" and reply["id"] == 100 + i and says in reply["error"], reply
        assert _ask(ws, {"type": "infer", "id": 5, "obs": _obs(), "mode": "joint"})["type"] == "error"
        assert _ask(ws, {"type": "infer", "id": 6, "obs": _obs()})["type"] == "action_chunk"  # still serving


def test_policy_client_and_wam_eval_run_unchanged(server, tmp_path):
    from wam.cli import main

    with PolicyClient(server, seed=0) as client:
        client.reset()
        first = client.select_action(_obs(0))
        assert first.shape == (ACTION_DIM,) and client.n_action_steps == 2
        client.select_action(_obs(1))  # popped from the queue, sent as "observe" with the next chunk
        assert client.select_action(_obs(2)).shape == (ACTION_DIM,)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--server",
                server,
                "--env",
                "dot",
                "--episodes",
                "1",
                "--no-expert",
                "--videos",
                "0",
                "--quiet",
                "--max-steps",
                "12",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    info = json.loads((out / "eval_info.json").read_text())
    assert info["settings"]["server"] == server and info["per_task"][0]["n_episodes"] == 1
    assert info["per_task"][0]["steps"][0] >= 1
