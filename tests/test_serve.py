"""The policy server and client: remote actions equal local ones, batching does not change them, every
malformed request gets an error reply, tokens, health, and clients that leave mid-request."""

import http.client
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("websockets")
pytest.importorskip("msgpack")

from conftest import random_dot_checkpoint, tiny_config

from wam.client import PolicyClient, ServerError
from wam.envs.dot import TASKS, make_env
from wam.policy import WAMPolicy
from wam.protocol import pack, unpack
from wam.serve import PolicyServer, ServerThread

SIZE = 16
TASK = TASKS["reach-goal"]
MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The server's model thread and the test's local policy both run torch: one intra-op thread each keeps
    them (and anything else on the machine) from contending for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight tiny WAM for the dot world (identity normalisation, as in test_synthetic)."""
    cfg = tiny_config(image_size=SIZE, state_dim=4, action_dim=2, action_horizon=4, n_obs_steps=2, n_tasks=1)
    return random_dot_checkpoint(
        tmp_path_factory.mktemp("serve") / "ck", cfg, {"tasks": [TASK], "cameras": ["top"], "fps": 10}
    )


def local(checkpoint, **kw) -> WAMPolicy:
    return WAMPolicy.from_checkpoint(checkpoint, steps=2, **kw)


@pytest.fixture(scope="module")
def server(checkpoint):
    with ServerThread(
        PolicyServer(local(checkpoint), max_batch=8, max_wait_ms=20, max_message_bytes=MAX_BYTES)
    ) as running:
        yield running


def observation(env) -> dict:
    obs = env._obs()
    return {**obs, "task": TASK}


def connect(url):
    from websockets.sync.client import connect as ws_connect

    return ws_connect(url, proxy=None, compression=None)


def ask(ws, message) -> dict:
    ws.send(message if isinstance(message, (bytes, str)) else pack(message))
    return unpack(ws.recv(timeout=30))


def test_remote_actions_equal_local_actions(checkpoint, server):
    env = make_env(image_size=SIZE)
    for mode in ("policy", "inverse"):
        mine = local(checkpoint, seed=3, n_action_steps=3, mode=mode)
        with PolicyClient(server.url, seed=3, n_action_steps=3, mode=mode) as remote:
            assert remote.metadata["action_horizon"] == 4 and remote.metadata["cameras"] == {
                "observation.images.top": [SIZE, SIZE, 3]
            }
            for episode in range(2):  # reset re-seeds both sides
                mine.reset()
                remote.reset()
                env.reset(seed=episode)
                for step in range(8):  # chunks at steps 0, 3, 6, with queued steps between (history of 2)
                    obs = observation(env)
                    a, b = mine.select_action(obs), remote.select_action(obs)
                    assert a.dtype == b.dtype and np.array_equal(a, b), (mode, episode, step)
                    env.step(a)
            obs = observation(env)
            assert np.array_equal(mine.predict_action_chunk(obs), remote.predict_action_chunk(obs))
            mine.reset()
            remote.reset()
            batch = {**{k: np.stack([v, v[::-1]]) for k, v in obs.items() if k != "task"}, "task": TASK}
            for _ in range(3):
                a, b = mine.select_action(batch), remote.select_action(batch)
                assert a.shape == (2, 2) and np.array_equal(a, b)
            assert remote.settings["model_hash"] == mine.settings["model_hash"]
            assert {k: v for k, v in remote.settings.items() if k != "server"} == mine.settings


def test_concurrent_clients_share_forward_passes_and_get_their_unbatched_actions(checkpoint):
    n, steps = 4, 3
    barrier = threading.Barrier(n)
    seen: dict[int, tuple] = {}

    def run(i: int, url: str) -> None:
        env = make_env(image_size=SIZE)
        env.reset(seed=10 + i)
        observations, chunks = [], []
        with PolicyClient(url, seed=i) as client:
            for _ in range(steps):
                barrier.wait()  # every session has one request in flight: the batcher waits for all of them
                observations.append(observation(env))
                chunks.append(client.predict_action_chunk(observations[-1]))
                env.step(chunks[-1][0])
        seen[i] = (observations, chunks)

    server = PolicyServer(local(checkpoint), max_batch=8, max_wait_ms=5000)
    with ServerThread(server) as running:
        threads = [threading.Thread(target=run, args=(i, running.url)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(seen) == list(range(n))
    assert server.counters["requests"] == n * steps and server.counters["forward_passes"] == steps
    for i, (observations, chunks) in seen.items():
        alone = local(checkpoint, seed=i)
        for obs, chunk in zip(observations, chunks):
            np.testing.assert_allclose(chunk, alone.predict_action_chunk(obs), atol=1e-5, rtol=0)


def test_every_malformed_request_gets_an_error_reply_and_the_next_one_succeeds(server):
    env = make_env(image_size=SIZE)
    env.reset(seed=0)
    good = observation(env)
    nd = lambda dtype, shape, data: {"__nd__": True, "dtype": dtype, "shape": shape, "data": data}  # noqa: E731
    cam, state = "observation.images.top", "observation.state"
    without = lambda key: {k: v for k, v in good.items() if k != key}  # noqa: E731
    with connect(server.url) as ws:
        reply = ask(ws, {"type": "infer", "id": 1, "obs": good})
        assert reply["type"] == "error" and "say hello first" in reply["error"]
        assert ask(ws, {"type": "hello", "protocol": 1, "seed": 0})["type"] == "hello"
        assert ask(ws, {"type": "infer", "id": 2, "obs": good})["type"] == "action_chunk"
        cases = [
            (b"\xc1\x00 not msgpack", "not valid msgpack"),
            ("a text frame", "text frame"),
            (pack([1, 2, 3]), "msgpack map"),
            ({"type": "fly", "id": 3}, "unknown message type"),
            ({"type": "health", "id": [1]}, "'id' must be an int or a string"),
            ({"type": "infer", "id": 4}, "needs 'obs'"),
            ({"type": "infer", "id": 5, "obs": [1]}, "'obs' must be a map"),
            ({"type": "infer", "id": 6, "obs": without(cam)}, "lacks 'observation.images.top'"),
            ({"type": "infer", "id": 7, "obs": {**good, cam: np.zeros((SIZE, SIZE, 4), np.uint8)}}, "has shape"),
            ({"type": "infer", "id": 8, "obs": {**good, cam: np.zeros((SIZE, SIZE), np.uint8)}}, "has shape"),
            ({"type": "infer", "id": 9, "obs": {**good, cam: good[cam].astype(np.float32)}}, "dtype float32"),
            ({"type": "infer", "id": 10, "obs": {**good, cam: good[cam].tolist()}}, "must be an array"),
            ({"type": "infer", "id": 11, "obs": {**good, cam: nd("uint8", [SIZE, SIZE, 3], b"short")}}, "5 bytes"),
            ({"type": "infer", "id": 12, "obs": {**good, cam: nd("object", [1], b"x")}}, "not allowed"),
            ({"type": "infer", "id": 13, "obs": without(state)}, "lacks 'observation.state'"),
            ({"type": "infer", "id": 14, "obs": {**good, state: np.array([0, np.nan, 0, 0], np.float32)}}, "NaN"),
            ({"type": "infer", "id": 15, "obs": {**good, state: np.array([0, 0, np.inf, 0])}}, "NaN or inf"),
            ({"type": "infer", "id": 16, "obs": {**good, state: np.zeros(3, np.float32)}}, "the policy takes [4]"),
            ({"type": "infer", "id": 17, "obs": {**good, "task": "juggle"}}, "not in the training data"),
            ({"type": "infer", "id": 18, "obs": {**good, "task": 5}}, "out of range"),
            ({"type": "infer", "id": 19, "obs": good, "mode": "forward"}, "does not act"),
            (
                {
                    "type": "infer",
                    "id": 20,
                    "obs": {cam: np.stack([good[cam]] * 2), state: np.stack([good[state]] * 2), "task": TASK},
                },
                "reset() before",
            ),  # history holds 1 env
            (
                {
                    "type": "infer",
                    "id": 21,
                    "obs": {cam: np.stack([good[cam]] * 9), state: np.stack([good[state]] * 9), "task": TASK},
                },
                "at most 8",
            ),
            ({"type": "observe", "id": 22, "obs": {**good, state: np.array([np.nan] * 4)}}, "NaN"),
            ({"type": "hello", "protocol": 1}, "already said hello"),
        ]
        for message, text in cases:
            reply = ask(ws, message)
            assert reply["type"] == "error" and text in reply["error"], (text, reply)
            if isinstance(message, dict) and isinstance(message.get("id"), int):
                assert reply["id"] == message["id"]
            ok = ask(ws, {"type": "infer", "id": 100, "obs": good})  # the connection and the session still work
            assert ok["type"] == "action_chunk" and ok["id"] == 100 and ok["actions"].shape == (4, 2), text


def test_an_oversized_message_closes_only_its_connection(server):
    from websockets.exceptions import ConnectionClosed

    env = make_env(image_size=SIZE)
    env.reset(seed=0)
    good = observation(env)
    with connect(server.url) as ws:
        ask(ws, {"type": "hello", "protocol": 1})
        ws.send(pack({"type": "infer", "id": 1, "obs": {**good, "pad": b"x" * (2 * MAX_BYTES)}}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1009  # message too big
    with PolicyClient(server.url) as client:
        with pytest.raises(ValueError, match="more than the server accepts"):  # caught before sending
            client.select_action({**good, "observation.images.top": np.zeros((200, 200, 3), np.uint8)})
        assert client.select_action(good).shape == (2,)


def test_a_wrong_token_is_refused(checkpoint, monkeypatch):
    monkeypatch.delenv("WAM_SERVE_TOKEN", raising=False)
    with ServerThread(PolicyServer(local(checkpoint), token="s3cret")) as running:
        with pytest.raises(ConnectionRefusedError, match="wrong or missing token"):
            PolicyClient(running.url, token="guess")
        with pytest.raises(ConnectionRefusedError, match="wrong or missing token"):
            PolicyClient(running.url)
        from websockets.exceptions import ConnectionClosed

        with connect(running.url) as ws:
            assert ask(ws, {"type": "hello", "protocol": 1, "token": 123})["type"] == "error"
            with pytest.raises(ConnectionClosed):  # closed by the server (policy violation)
                ws.recv(timeout=30)
            assert ws.close_code == 1008
        with PolicyClient(running.url, token="s3cret") as client:
            assert client.health()["ok"]
        monkeypatch.setenv("WAM_SERVE_TOKEN", "s3cret")
        with PolicyClient(running.url) as client:
            assert client.health()["sessions"] == 1


def test_health_before_and_after_hello_and_over_http(server):
    with connect(server.url) as ws:
        before = ask(ws, {"type": "health", "id": "h"})
        assert before["ok"] and before["id"] == "h" and "sessions" not in before  # liveness only
        ask(ws, {"type": "hello", "protocol": 1})
        after = ask(ws, {"type": "health"})
        assert after["ok"] and after["sessions"] >= 1 and "mean_batch" in after and "uptime_s" in after
    host, port = server.url.removeprefix("ws://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"ok\n"


def test_a_client_leaving_mid_request_costs_nothing(checkpoint):
    env = make_env(image_size=SIZE)
    env.reset(seed=1)
    obs = observation(env)
    server = PolicyServer(local(checkpoint), max_wait_ms=1000)
    with ServerThread(server) as running, PolicyClient(running.url, seed=5) as staying:
        for _ in range(2):
            with connect(running.url) as ws:  # a second session: its request waits for the other's
                ask(ws, {"type": "hello", "protocol": 1})
                ws.send(pack({"type": "infer", "id": 1, "obs": obs}))
                time.sleep(0.2)  # read and queued by the server
            # gone before its answer
        chunk = staying.predict_action_chunk(obs)
        np.testing.assert_array_equal(chunk, local(checkpoint, seed=5).predict_action_chunk(obs))
        assert staying.health()["dropped"] >= 1
        assert staying.health()["sessions"] == 1


def test_a_failed_forward_pass_is_an_error_reply_and_the_server_goes_on(checkpoint):
    env = make_env(image_size=SIZE)
    env.reset(seed=2)
    obs = observation(env)
    server = PolicyServer(local(checkpoint))
    real, calls = server._forward, {"n": 0}

    def fails_once(batch, mode):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return real(batch, mode)

    server._forward = fails_once
    with ServerThread(server) as running, PolicyClient(running.url) as client:
        with pytest.raises(ServerError, match="out of memory"):
            client.predict_action_chunk(obs)
        assert client.predict_action_chunk(obs).shape == (4, 2)


def test_wam_eval_through_the_server_equals_local_eval(checkpoint, server, tmp_path):
    import json

    from wam.cli import main

    common = [
        "--env",
        "dot",
        "--episodes",
        "2",
        "--n-action-steps",
        "2",
        "--videos",
        "0",
        "--no-expert",
        "--quiet",
        "--max-steps",
        "12",
    ]
    assert (
        main(["eval", "--checkpoint", str(checkpoint), "--steps", "2", "--out", str(tmp_path / "local"), *common]) == 0
    )
    assert main(["eval", "--server", server.url, "--out", str(tmp_path / "remote"), *common]) == 0
    here, there = (json.loads((tmp_path / d / "eval_info.json").read_text()) for d in ("local", "remote"))
    for key in ("seeds", "successes", "steps", "sum_rewards"):
        assert here["per_task"][0][key] == there["per_task"][0][key], key
    assert there["settings"]["server"] == server.url and there["settings"]["sampling_steps"] == 2
    # the server's time per chunk is recorded: 2 episodes x ceil(12 steps / 2 actions per chunk) chunks
    assert "server_ms" not in here and there["server_ms"]["n_chunks"] == 2 * 6
    assert 0 < there["server_ms"]["median"] <= there["server_ms"]["p90"]
    assert main(["eval", "--server", server.url, "--steps", "4", *common]) == 2  # a server setting
    with pytest.raises(ServerError):
        with PolicyClient(server.url) as client:
            client.predict_action_chunk({"task": TASK})


def test_wam_serve_cli_serves_and_stops_on_sigterm(checkpoint):
    import os
    import re
    import select
    import signal
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WAM_SERVE_TOKEN": "t0k"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wam.cli",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            "0",
            "--steps",
            "2",
            "--device",
            "cpu",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url, log, deadline = None, "", time.time() + 60
        while url is None and time.time() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                log += proc.stderr.readline()
                found = re.search(r"on (ws://127\.0\.0\.1:\d+)", log)
                url = found and found.group(1)
        assert url, log
        with PolicyClient(url, token="t0k") as client:  # the token came from $WAM_SERVE_TOKEN
            assert client.settings["sampling_steps"] == 2 and client.health()["sessions"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_connections_past_the_limit_are_refused_with_a_reason(checkpoint):
    """--max-connections: the next connection gets an error naming the limit and is closed (1013); once one
    closes, a new one is served."""
    from websockets.exceptions import ConnectionClosed

    server = PolicyServer(local(checkpoint), max_connections=2)
    with ServerThread(server) as running:
        a = PolicyClient(running.url, seed=1)
        with connect(running.url):
            with pytest.raises(ConnectionRefusedError, match="limit of 2 open connections.*--max-connections"):
                PolicyClient(running.url)
            with connect(running.url) as extra:
                reply = unpack(extra.recv(timeout=30))
                assert reply["type"] == "error" and "--max-connections" in reply["error"]
                with pytest.raises(ConnectionClosed):
                    extra.recv(timeout=30)
                assert extra.protocol.close_code == 1013
            assert a.health()["refused_connections"] == 2 and a.health()["open_connections"] == 2
        deadline = time.time() + 30
        while server.open_connections > 1 and time.time() < deadline:
            time.sleep(0.02)
        with PolicyClient(running.url) as c:
            assert c.health()["sessions"] == 2
        a.close()
    with pytest.raises(ValueError, match="max_connections"):
        PolicyServer(local(checkpoint), max_connections=0)


def test_a_connection_that_never_says_hello_is_closed(checkpoint):
    """The hello deadline counts from the connection's opening: health checks before hello do not extend it,
    and a session that did say hello is not affected."""
    from websockets.exceptions import ConnectionClosed

    server = PolicyServer(local(checkpoint), hello_timeout_s=0.5)
    with (
        ServerThread(server) as running,
        PolicyClient(running.url) as greeted,
        connect(running.url) as silent,
        connect(running.url) as chatty,
    ):
        for i in range(3):  # health before hello is answered, but the clock keeps running
            assert ask(chatty, {"type": "health", "id": i})["ok"]
            time.sleep(0.1)
        for ws in (silent, chatty):
            deadline = time.time() + 30
            reply = unpack(ws.recv(timeout=30))
            while reply.get("type") == "health" and time.time() < deadline:
                reply = unpack(ws.recv(timeout=30))
            assert reply["type"] == "error" and "no hello within 0.5 s" in reply["error"], reply
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
            assert ws.protocol.close_code == 1008
        time.sleep(0.6)
        assert greeted.health()["hello_timeouts"] == 2  # the greeted session is still served
