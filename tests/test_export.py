"""`wam export` and the torch-free runtime: an export loads and acts, its actions equal the PyTorch policy's given
the same noise (closed-loop timing and reset included), an observation that lacks a key is refused by name, the
runtime imports and acts with torch blocked, the CLI verbs (export, bench --runtime onnx, serve --runtime onnx's
policy) and serving an export over the policy protocol."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import random_dot_checkpoint, tiny_config

from wam.envs.dot import TASKS, make_env
from wam.errors import ObservationError
from wam.policy import WAMPolicy
from wam.runtime import ONNXPolicy, read_manifest, resize_frames

SIZE = 16
TASK = TASKS["reach-goal"]
TOLERANCE = 1e-4  # largest |difference| of an action (environment units, here [-1, 1]) from the PyTorch policy's


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = tiny_config(image_size=SIZE, state_dim=4, action_dim=2, action_horizon=4, n_obs_steps=2, n_tasks=1)
    return random_dot_checkpoint(
        tmp_path_factory.mktemp("export") / "ck", cfg, {"tasks": [TASK], "cameras": ["top"], "fps": 10}
    )


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """`wam export` on the tiny checkpoint, once for the module (tracing takes tens of seconds of CPU)."""
    from wam.cli import main

    out = tmp_path_factory.mktemp("export") / "onnx"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    return out


def observation(env) -> dict:
    return {**env._obs(), "task": TASK}


def test_export_writes_the_graphs_and_a_manifest(checkpoint, exported):
    from wam.checkpoint import load_checkpoint

    m = read_manifest(exported)
    ck = load_checkpoint(checkpoint)
    assert m["model_hash"] == ck.model_hash and m["mode"] == "policy"
    assert m["observation"]["cameras"] == {"observation.images.top": [SIZE, SIZE, 3]}
    assert m["observation"]["state"] == {"key": "observation.state", "size": 4}
    assert m["action_horizon"] == 4 and m["tasks"] == [TASK]
    assert m["inference"]["steps"] == 2 and m["inference"]["cache"] is True  # the checkpoint's defaults
    assert m["inputs"]["policy"] == ["latents", "task", "state", "noise"]
    for g in m["graphs"].values():
        assert (exported / g["file"]).is_file() and len(g["sha256"]) == 64
    assert m["check"]["encoder_max_abs_diff"] < 1e-4 and m["check"]["policy_max_abs_diff"] < 1e-4
    assert json.loads((exported / "stats.json").read_text()) == ck.stats


def test_actions_equal_the_pytorch_policy_given_the_same_noise(checkpoint, exported):
    """Closed loop in the dot world: select_action's queue, the history and reset() behave as WAMPolicy's, and every
    action is within TOLERANCE when the PyTorch policy is fed the runtime's noise."""
    onnx = ONNXPolicy(exported, seed=5, n_action_steps=3)
    mine = WAMPolicy.from_checkpoint(checkpoint, seed=5, n_action_steps=3)

    def numpy_noise(state, batch_size, mode, latent_shape):  # each PolicyState draws as a RuntimeState does
        rng = state.__dict__.setdefault("rng", np.random.default_rng(mine.seed))
        a = rng.standard_normal((batch_size, mine.cfg.action_horizon, mine.cfg.action_dim), dtype=np.float32)
        return {"policy": {"actions": torch.from_numpy(a)}}

    mine._noise = numpy_noise
    env = make_env(image_size=SIZE)
    worst = 0.0
    for episode in range(2):
        onnx.reset()
        mine.reset()
        env.reset(seed=episode)
        for _ in range(8):
            obs = observation(env)
            a, b = onnx.select_action(obs), mine.select_action(obs)
            worst = max(worst, float(np.abs(a - b).max()))
            env.step(b)
    assert worst < TOLERANCE
    # a batch of two environments, and predict_action_chunk
    obs = observation(env)
    batch = {k: np.stack([v, v]) if isinstance(v, np.ndarray) else v for k, v in obs.items()}
    onnx.reset()
    chunk = onnx.predict_action_chunk(batch)
    assert chunk.shape == (2, 4, 2) and np.abs(chunk).max() <= 1.0
    onnx.reset()
    assert np.array_equal(onnx.predict_action_chunk(batch), chunk)  # reset re-seeds: the same actions


def test_equivalence_on_recorded_episodes(checkpoint, exported):
    from wam.checkpoint import load_checkpoint
    from wam.export import equivalence

    rng = np.random.default_rng(0)
    episodes = [
        {
            "frames": rng.integers(0, 256, (9, SIZE, SIZE, 3), dtype=np.uint8),
            "states": rng.standard_normal((9, 4)).astype(np.float32),
            "task_index": 0,
        }
        for _ in range(2)
    ]
    res = equivalence(load_checkpoint(checkpoint), exported, episodes=episodes)
    assert res["chunks"] == 2 * 5 and res["max_abs_diff"] < TOLERANCE and res["max_abs_diff_normalised"] < TOLERANCE


def test_an_observation_without_a_key_the_export_needs_is_refused_by_name(exported):
    policy = ONNXPolicy(exported)
    env = make_env(image_size=SIZE)
    env.reset(seed=0)
    obs = observation(env)
    with pytest.raises(ObservationError, match="observation.images.top"):
        policy.select_action({k: v for k, v in obs.items() if k != "observation.images.top"})
    with pytest.raises(KeyError, match="observation.state"):  # (a KeyError, as WAMPolicy raises)
        policy.select_action({k: v for k, v in obs.items() if k != "observation.state"})
    with pytest.raises(ValueError, match="not in the training data"):
        policy.select_action({**obs, "task": "fly to the moon"})
    assert policy.select_action(obs).shape == (2,)


def test_frames_of_another_size_are_resized_as_the_pytorch_policy_resizes_them():
    from wam.data.windows import resize_frames as torch_resize

    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    for size in ((16, 16), (64, 80)):
        want = torch_resize(frames, size).transpose(0, 2, 3, 1)
        assert np.abs(resize_frames(frames, size).astype(int) - want.astype(int)).max() <= 1


def test_the_runtime_imports_and_acts_without_torch(exported):
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from wam.runtime import ONNXPolicy
p = ONNXPolicy({str(exported)!r}, seed=0)
obs = {{"observation.images.top": np.zeros(({SIZE}, {SIZE}, 3), np.uint8), "observation.state": np.zeros(4, np.float32),
        "task": {TASK!r}}}
a = p.select_action(obs)
assert sys.modules["torch"] is None
print(a.shape, a.dtype)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2,) float32"


def test_export_refuses_settings_it_cannot_hold(checkpoint, tmp_path):
    from wam.errors import WamError
    from wam.export import export_policy
    from wam.inference import InferenceConfig

    with pytest.raises(WamError, match="warm_start"):
        export_policy(checkpoint, tmp_path / "x", inference=InferenceConfig(warm_start=0.5))
    with pytest.raises(WamError, match="exists"):
        export_policy(checkpoint, tmp_path)
    with pytest.raises(WamError, match="export it first"):
        ONNXPolicy(checkpoint)


def test_cli_export_bench_and_serve_policy(checkpoint, exported, tmp_path, monkeypatch, capsys):
    from wam.cli import _onnx_policy, build_parser, main

    assert main(["export", str(checkpoint), "--out", str(exported)]) == 2  # exists: one line, no traceback
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x"), "--warm-start", "0.5"]) == 2
    assert "warm_start" in capsys.readouterr().err

    # wam bench --runtime onnx: both runtimes on the same chunks (fresh dot-world expert episodes here)
    monkeypatch.setenv("WAM_CACHE", str(tmp_path / "cache"))
    assert (
        main(
            [
                "bench",
                "--checkpoint",
                str(checkpoint),
                "--runtime",
                "onnx",
                "--export",
                str(exported),
                "--episodes",
                "1",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    torch_row, onnx_row = res["paths"]["torch"], res["paths"]["onnx"]
    assert res["calls"] >= 1 and res["flops_per_chunk"] > 0
    assert onnx_row["max_abs_diff_vs_torch"] < TOLERANCE and onnx_row["median_ms"] > 0
    assert onnx_row["speedup_vs_torch"] > 0 and torch_row["fraction_of_peak"] > 0

    # wam serve --runtime onnx builds its policy from the export; torch-only settings are refused by name
    parse = lambda *a: build_parser().parse_args(["serve", "--checkpoint", str(exported), "--runtime", "onnx", *a])  # noqa: E731
    policy = _onnx_policy(parse("--onnx-threads", "1", "--int8"), str(exported))
    assert policy.options["int8"] and policy.options["threads"] == 1
    assert main(["serve", "--checkpoint", str(exported), "--runtime", "onnx", "--steps", "4"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_a_served_export_answers_as_the_local_runtime(exported):
    """wam serve --runtime onnx: the same protocol; a client's actions equal a local ONNXPolicy's with its seed,
    so `wam eval --server` reproduces the episodes of the export."""
    pytest.importorskip("websockets")
    from wam.client import PolicyClient
    from wam.serve import PolicyServer, ServerThread

    env = make_env(image_size=SIZE)
    with ServerThread(PolicyServer(ONNXPolicy(exported), max_batch=4, max_wait_ms=5)) as running:
        mine = ONNXPolicy(exported, seed=3, n_action_steps=3)
        with PolicyClient(running.url, seed=3, n_action_steps=3) as remote:
            assert remote.metadata["modes"] == ["policy"] and remote.state_size() == 4
            for episode in range(2):
                mine.reset()
                remote.reset()
                env.reset(seed=episode)
                for _ in range(7):
                    obs = observation(env)
                    a, b = mine.select_action(obs), remote.select_action(obs)
                    np.testing.assert_array_equal(a, b)
                    env.step(a)
            with pytest.raises(ValueError, match="not offered by the server"):
                PolicyClient(running.url, mode="joint")


def test_wam_serve_runtime_onnx_runs_without_torch(exported):
    """The whole `wam serve --runtime onnx` command, in a process where any import of torch fails, answers a
    client with the actions of a local ONNXPolicy given the same seed: a robot-side machine needs no torch."""
    pytest.importorskip("websockets")
    import socket
    import time

    from wam.client import PolicyClient

    with socket.socket() as s:  # a free port on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from wam.cli import main\n"
        f"sys.exit(main(['serve', '--checkpoint', {str(exported)!r}, '--runtime', 'onnx', '--port', '{port}']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    server = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"ws://127.0.0.1:{port}", time.monotonic() + 60
        while True:  # until the server listens
            assert server.poll() is None, server.stderr.read()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "wam serve --runtime onnx did not listen within 60 s"
                time.sleep(0.2)
        sim = make_env(image_size=SIZE)
        sim.reset(seed=4)
        mine = ONNXPolicy(exported, seed=9, n_action_steps=2)
        with PolicyClient(url, seed=9, n_action_steps=2) as remote:
            for _ in range(4):
                obs = observation(sim)
                a = mine.select_action(obs)
                np.testing.assert_array_equal(a, remote.select_action(obs))
                sim.step(a)
    finally:
        server.terminate()
        server.wait(timeout=30)
