"""`wam train` and `wam eval` end to end on a tiny dot-world dataset: checkpoints, exact resume after a
kill, the NaN guard, the closed-loop policy API, evaluation files and the report."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import wam.train as train_mod
from wam.checkpoint import load_checkpoint
from wam.cli import main
from wam.collect import collect
from wam.policy import WAMPolicy

TINY = [
    "--model",
    "width=32",
    "--model",
    "depth=2",
    "--model",
    "image_size=32",
    "--model",
    "tokenizer_width=8",
    "--model",
    "future_stride=1",
    "--model",
    "action_horizon=4",
    "--batch-size",
    "4",
    "--tokenizer-steps",
    "6",
    "--log-every",
    "2",
    "--val-every",
    "4",
    "--checkpoint-every",
    "4",
    "--val-fraction",
    "0.25",
    "--quiet",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "dot"
    collect("dot", episodes=8, out=out, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(["train", "--dataset", str(dataset), "--out", str(out), "--steps", "12", *TINY]) == 0
    return out


def test_train_writes_checkpoint_logs_and_settings(run):
    ckpt = run / "checkpoint"
    for name in ("model.safetensors", "tokenizer.safetensors", "config.json", "stats.json", "train_state/state.pt"):
        assert (ckpt / name).is_file(), name
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"tokenizer", "train", "val"}
    val = [r for r in records if r["kind"] == "val"]
    assert set(val[-1]) >= {"policy", "forward", "inverse", "video", "joint"}
    assert [r["step"] for r in records if r["kind"] == "train"][-1] == 12
    assert list((run / "tb").iterdir()), "TensorBoard event files"
    saved = load_checkpoint(ckpt, with_train_state=True)
    assert saved.train_state["step"] == 12
    settings = json.loads((run / "run.json").read_text())
    assert settings["train"]["steps"] == 12 and settings["val_episodes"]
    assert not set(settings["val_episodes"]) & set(settings["train_episodes"])


def test_kill_and_resume_gives_the_weights_of_an_uninterrupted_run(dataset, run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real_update = train_mod.ema_update
    calls = {"n": 0}

    def dies_at_step_7(ema, model, decay):  # the process dies after the step-4 checkpoint, mid-run
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        real_update(ema, model, decay)

    monkeypatch.setattr(train_mod, "ema_update", dies_at_step_7)
    assert main(["train", "--dataset", str(dataset), "--out", str(out), "--steps", "12", *TINY]) == 130
    assert load_checkpoint(out / "checkpoint", with_train_state=True).train_state["step"] == 4
    monkeypatch.setattr(train_mod, "ema_update", real_update)
    # the next sitting takes the encoded frames the first one kept instead of encoding every frame again
    assert (out / train_mod.LATENTS_CACHE).is_file()
    import wam.episodes

    def no_encoding(*a, **k):
        raise AssertionError("the frames were encoded again")

    monkeypatch.setattr(wam.episodes, "encode_frames", no_encoding)
    assert main(["train", "--dataset", str(dataset), "--out", str(out), "--resume", "--quiet"]) == 0
    for name in ("model.safetensors", "tokenizer.safetensors"):
        a, b = load_file(run / "checkpoint" / name), load_file(out / "checkpoint" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    raw_a = torch.load(run / "checkpoint/train_state/state.pt", weights_only=False)["model"]
    raw_b = torch.load(out / "checkpoint/train_state/state.pt", weights_only=False)["model"]
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)


def test_keep_every_keeps_copies_of_the_weights_along_the_run(dataset, run, tmp_path, capsys):
    args = ["train", "--dataset", str(dataset), "--steps", "12", *TINY]
    assert main([*args, "--out", str(tmp_path / "refused"), "--keep-every", "6"]) == 2
    assert "--keep-every 6 must be a multiple of --checkpoint-every 4" in capsys.readouterr().err
    out = tmp_path / "kept"
    assert main([*args, "--out", str(out), "--keep-every", "4"]) == 0
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["step-12", "step-4", "step-8"]
    assert not (out / "steps" / "step-4" / "train_state").exists()
    final = load_file(out / "checkpoint" / "model.safetensors")
    kept = load_file(out / "steps" / "step-12" / "model.safetensors")
    assert all(torch.equal(final[k], kept[k]) for k in final)
    earlier = load_file(out / "steps" / "step-4" / "model.safetensors")
    assert not all(torch.equal(final[k], earlier[k]) for k in final)
    # keeping copies changes no weight of the run
    same = load_file(run / "checkpoint" / "model.safetensors")
    assert all(torch.equal(final[k], same[k]) for k in final)


def test_existing_run_and_missing_resume_are_refused(dataset, run, tmp_path, capsys):
    assert main(["train", "--dataset", str(dataset), "--out", str(run), "--steps", "2", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--dataset", str(dataset), "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--dataset", str(dataset), "--out", str(tmp_path / "y"), "--model", "widht=3"]) == 2
    assert "widht" in capsys.readouterr().err


def test_nan_loss_stops_the_run_with_a_message_and_a_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    real_loss = train_mod.modes.training_loss
    calls = {"n": 0}

    def goes_nan(*args, **kwargs):
        loss, parts = real_loss(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), parts) if calls["n"] == 6 else (loss, parts)

    monkeypatch.setattr(train_mod.modes, "training_loss", goes_nan)
    out = tmp_path / "nan"
    assert main(["train", "--dataset", str(dataset), "--out", str(out), "--steps", "12", *TINY]) == 2
    assert "loss became nan at step 5" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint", with_train_state=True).train_state["step"] == 5


def test_policy_queues_actions_and_predicts_chunks(run):
    policy = WAMPolicy.from_checkpoint(run / "checkpoint", n_action_steps=3, steps=2)
    from wam.envs.dot import make_env

    env = make_env(image_size=32)
    obs, _ = env.reset(seed=0)
    obs = {**obs, "task": env.task_description}
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (4, 2) and np.isfinite(chunk).all()
    policy.reset()
    calls = {"n": 0}
    real_chunk = policy._chunk

    def counting(task):
        calls["n"] += 1
        return real_chunk(task)

    policy._chunk = counting
    actions = [policy.select_action(obs) for _ in range(7)]
    assert calls["n"] == 3  # steps 0, 3, 6 predict; the others pop the queue
    assert all(a.shape == (2,) for a in actions)
    batch = {k: np.stack([v, v]) for k, v in obs.items() if k != "task"}
    policy.reset()
    assert policy.select_action({**batch, "task": env.task_description}).shape == (2, 2)
    with pytest.raises(ValueError, match="not in the training data"):
        policy.predict_action_chunk({**obs, "task": "juggle"})
    with pytest.raises(ValueError, match="does not act"):
        WAMPolicy.from_checkpoint(run / "checkpoint", mode="forward")


def test_policy_reads_only_the_keys_it_was_trained_on(run):
    from wam.envs.dot import make_env

    policy = WAMPolicy.from_checkpoint(run / "checkpoint", steps=1)
    env = make_env(image_size=32)
    obs, _ = env.reset(seed=0)
    obs = {**obs, "task": env.task_description}
    extra = {**obs, "observation.environment_state": np.full(39, np.nan, np.float32)}  # never read
    chunks = []
    for o in (obs, extra):
        policy.reset()  # the same sampling noise for both
        chunks.append(policy.predict_action_chunk(o))
    assert np.array_equal(*chunks)
    no_state = {k: v for k, v in obs.items() if k != "observation.state"}
    with pytest.raises(KeyError, match="lacks 'observation.state'.*4 values"):
        policy.predict_action_chunk(no_state)
    with pytest.raises(ValueError, match="observation.state has 39 values; the model was trained on 4"):
        policy.predict_action_chunk({**obs, "observation.state": np.zeros(39, np.float32)})
    with pytest.raises(KeyError, match="lacks.*observation.images.top"):
        policy.predict_action_chunk(
            {
                "observation.images.side": obs["observation.images.top"],
                "observation.images.front": obs["observation.images.top"],
                "observation.state": obs["observation.state"],
                "task": obs["task"],
            }
        )
    assert policy.state_size() == 4


def test_blind_policy_sees_black_frames(run):
    from wam.envs.dot import make_env

    env = make_env(image_size=32)
    obs, _ = env.reset(seed=0)
    obs = {**obs, "task": env.task_description}
    blind = WAMPolicy.from_checkpoint(run / "checkpoint", steps=1, blind=True)
    seeing = WAMPolicy.from_checkpoint(run / "checkpoint", steps=1)
    black = {**obs, "observation.images.top": np.zeros_like(obs["observation.images.top"])}

    def chunk(policy, o):
        policy.reset()  # the same sampling noise every time
        return policy.predict_action_chunk(o)

    assert np.array_equal(chunk(blind, obs), chunk(seeing, black))
    assert not blind.read_observation(obs).frames.any() and seeing.read_observation(obs).frames.any()
    assert blind.settings["blind"] is True and "blind" not in seeing.settings
    assert dict(blind.spec[1])["blind"] is True  # rebuilt blind in evaluation workers


@pytest.mark.parametrize("mode", ["inverse", "joint"])
def test_policy_acts_in_planning_modes(run, mode):
    policy = WAMPolicy.from_checkpoint(run / "checkpoint", mode=mode, steps=2)
    from wam.envs.dot import make_env

    env = make_env(image_size=32)
    obs, _ = env.reset(seed=0)
    a = policy.select_action({**obs, "task": env.task_description})
    assert a.shape == (2,) and np.isfinite(a).all()
    assert policy.last_plan["latents"].shape[1] == policy.cfg.frames  # the frames it planned through


def test_eval_cli_writes_eval_info_videos_and_report(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run / "checkpoint"),
                "--env",
                "dot",
                "--episodes",
                "3",
                "--steps",
                "2",
                "--world-model",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    info = json.loads((out / "eval_info.json").read_text())
    for key in ("pc_success", "avg_sum_reward", "avg_max_reward", "ci95", "per_task", "settings", "expert"):
        assert key in info, key
    s = info["settings"]
    for key in ("seed", "mode", "n_action_steps", "sampling_steps", "solver", "model_hash", "checkpoint"):
        assert key in s, key
    row = info["per_task"][0]
    assert len(row["seeds"]) == 3 and row["expert_pc_success"] is not None
    assert all((out / p).is_file() for p in row["video_paths"])
    wm = info["world_model"]
    assert len(wm["forward"]["psnr"]) == 2 and len(wm["copy_last_frame"]["ssim"]) == 2
    assert len(wm["forward_other_actions"]["psnr"]) == 2  # the same windows, given other windows' actions
    html = (out / "report.html").read_text()
    assert "reach-goal" in html and "<video" in html
    assert "report:" in capsys.readouterr().out


def test_eval_renders_at_render_size_and_the_policy_resizes(run, tmp_path, capsys):
    import av

    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run / "checkpoint"),
                "--env",
                "dot",
                "--episodes",
                "2",
                "--steps",
                "1",
                "--render-size",
                "64",
                "--no-expert",
                "--videos",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    info = json.loads((out / "eval_info.json").read_text())
    assert info["settings"]["image_size"] == 32 and info["settings"]["render_size"] == 64
    with av.open(str(out / info["per_task"][0]["video_paths"][0])) as video:
        assert video.streams.video[0].codec_context.width == 2 * 64  # the camera at 64 px (videos are shown at 2x)
    assert main(["eval", "--checkpoint", str(run / "checkpoint"), "--env", "dot", "--render-size", "8"]) == 2
    assert "--render-size must be at least 16 pixels" in capsys.readouterr().err


def test_evaluation_in_two_processes_matches_one(run, tmp_path):
    from wam.evaluate import evaluate

    policy = WAMPolicy.from_checkpoint(run / "checkpoint", steps=2)
    kw = dict(env="dot", tasks="reach-goal,reach-goal", episodes=3, videos_per_task=0, expert=False, progress=False)
    one = evaluate(policy, out=tmp_path / "one", workers=1, **kw)
    two = evaluate(policy, out=tmp_path / "two", workers=2, **kw)
    for a, b in zip(one["per_task"], two["per_task"]):
        for key in ("seeds", "successes", "steps", "sum_rewards"):
            assert a[key] == b[key], key


def test_bench_cli_reports_latency_flops_and_quality_against_the_reference(run, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--checkpoint",
                str(run / "checkpoint"),
                "--mode",
                "policy",
                "--steps",
                "1",
                "--episodes",
                "1",
                "--warmup",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == res
    for key in (
        "median_ms",
        "p90_ms",
        "calls_per_s",
        "flops_per_call",
        "achieved_GFLOPs",
        "speedup",
        "peak_fp32_GFLOPs",
        "fraction_of_peak",
    ):
        assert res[key] is not None and res[key] > 0, key
    assert res["inference"]["steps"] == 1 and res["inference"]["cache"] is True
    ref = res["reference"]
    assert ref["mode"] == "joint" and ref["inference"]["steps"] == 50 and ref["inference"]["cache"] is False
    assert res["flops_per_call"] < ref["flops_per_call"] / 20  # 1 cached step vs 50 full joint steps
    q = res["quality"]
    assert all(np.isfinite(v) and v >= 0 for v in q.values()) and q["action_mse_vs_reference"] > 0
    # world-model modes compare decoded frames
    assert (
        main(
            [
                "bench",
                "--checkpoint",
                str(run / "checkpoint"),
                "--mode",
                "forward",
                "--steps",
                "2",
                "--windows",
                "4",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["calls"] >= 1 and 0 < res["quality"]["psnr_vs_reference_dB"] < 100
    assert main(["bench", "--checkpoint", str(run / "checkpoint"), "--mode", "forward", "--warm-start", "0.5"]) == 2


def test_warm_start_continues_from_the_previous_chunk(run, monkeypatch):
    import wam.policy as policy_mod
    from wam.envs.dot import make_env

    starts = []
    real = policy_mod.sample

    def spy(model, batch, mode, **kw):
        starts.append((kw.get("t_start", 1.0), kw["steps"], kw.get("noise", {}).get("actions")))
        return real(model, batch, mode, **kw)

    monkeypatch.setattr(policy_mod, "sample", spy)
    policy = WAMPolicy.from_checkpoint(run / "checkpoint", n_action_steps=2, steps=4, warm_start=0.5)
    env = make_env(image_size=32)
    obs, _ = env.reset(seed=0)
    obs = {**obs, "task": env.task_description}
    for _ in range(5):
        policy.select_action(obs)
    assert [(t, n) for t, n, _ in starts] == [(1.0, 4), (0.5, 2), (0.5, 2)]  # chunks at steps 0, 2, 4
    # the second chunk started from the first one shifted by the 2 executed actions, half re-noised
    first = policy.state.last_chunk  # (the third chunk; the spy kept every start)
    assert first.shape == (1, 4, 2)
    with pytest.raises(ValueError, match="warm_start"):
        WAMPolicy.from_checkpoint(run / "checkpoint", mode="joint", warm_start=0.5)


def test_vectorised_evaluation_gives_the_sequential_results(run, tmp_path):
    from wam.evaluate import evaluate

    policy = WAMPolicy.from_checkpoint(run / "checkpoint", steps=2)
    kw = dict(env="dot", tasks="reach-goal", episodes=5, videos_per_task=1, progress=False)
    seq = evaluate(policy, out=tmp_path / "seq", **kw)["per_task"][0]
    vec = evaluate(policy, out=tmp_path / "vec", num_envs=3, **kw)["per_task"][0]
    for key in ("seeds", "successes", "first_success", "steps", "expert_successes"):
        assert seq[key] == vec[key], key
    np.testing.assert_allclose(seq["sum_rewards"], vec["sum_rewards"], rtol=1e-5)
    assert (tmp_path / "vec" / vec["video_paths"][0]).is_file()


def test_eval_records_the_policys_episodes_as_a_dataset_that_replays(run, tmp_path, capsys):
    from wam.data import LeRobotDataset
    from wam.envs import get_adapter

    ckpt = str(run / "checkpoint")
    args = [
        "eval",
        "--checkpoint",
        ckpt,
        "--env",
        "dot",
        "--episodes",
        "3",
        "--steps",
        "2",
        "--no-expert",
        "--videos",
        "0",
        "--after-success",
        "2",
        "--quiet",
    ]
    assert main([*args, "--record", str(tmp_path / "seq"), "--out", str(tmp_path / "e1")]) == 0
    assert main([*args, "--record", str(tmp_path / "vec"), "--num-envs", "2", "--out", str(tmp_path / "e2")]) == 0
    info = json.loads((tmp_path / "e1" / "eval_info.json").read_text())
    row = info["per_task"][0]
    seq, vec = LeRobotDataset(tmp_path / "seq"), LeRobotDataset(tmp_path / "vec")
    assert seq.num_episodes == 3 and info["recorded"]["episodes"] == 3
    assert [hi - lo for lo, hi in seq.episode_ranges] == row["steps"]  # every step the policy took, no more
    for key in ("action", "observation.state", "next.reward"):
        np.testing.assert_allclose(seq.data[key], vec.data[key], atol=1e-4)
    meta = json.loads((tmp_path / "seq" / "meta" / "rollouts.json").read_text())
    assert [e["success"] for e in meta["episodes"]] == row["successes"]
    assert [e["seed"] for e in meta["episodes"]] == row["seeds"]
    # the recorded actions, replayed from the episode's seed, give the recorded states, rewards and successes
    env = get_adapter("dot").make_env("reach-goal", image_size=32)
    for i, (lo, hi) in enumerate(seq.episode_ranges):
        obs, _ = env.reset(seed=row["seeds"][i])
        camera = seq.episode_frames(i, seq.camera_keys[0])
        for t in range(lo, hi):
            np.testing.assert_allclose(obs["observation.state"], seq.data["observation.state"][t], atol=1e-6)
            np.testing.assert_array_equal(obs[seq.camera_keys[0]].shape, camera[t - lo].shape)
            obs, reward, *_, step_info = env.step(np.asarray(seq.data["action"][t]))
            assert reward == pytest.approx(float(seq.data["next.reward"][t]), abs=1e-6)
            assert bool(step_info.get("success", False)) == bool(seq.data["next.success"][t])
        assert seq.data["next.done"][hi - 1] and not seq.data["next.done"][lo : hi - 1].any()
    # a dataset is never written over
    assert main([*args, "--record", str(tmp_path / "seq"), "--out", str(tmp_path / "e3")]) == 2
    assert "--record" in capsys.readouterr().err


def test_observations_the_policy_will_not_look_at_are_not_rendered(run, dataset, tmp_path, monkeypatch):
    """Lazy rendering: only the observations that enter a chunk's history are rendered, and the episodes are
    exactly those of rendering every step, in one environment or several (n_obs_steps 1 and 2)."""
    import wam.envs.dot as dot
    from wam.evaluate import evaluate

    two = tmp_path / "run2"
    args = ["train", "--dataset", str(dataset), "--out", str(two), "--steps", "4", "--model", "n_obs_steps=2"]
    assert main([*args, *TINY]) == 0
    renders = []
    real_render = dot.render
    monkeypatch.setattr(dot, "render", lambda *a: renders.append(1) or real_render(*a))
    kw = dict(env="dot", tasks="reach-goal", episodes=4, videos_per_task=0, expert=False, progress=False)
    # n_obs_steps 1, 4 actions a chunk: 1 observation in 4 is looked at; n_obs_steps 2, 3 a chunk: 2 in 3
    for ckpt, n_obs, n_act in ((run / "checkpoint", 1, 4), (two / "checkpoint", 2, 3)):
        policy = WAMPolicy.from_checkpoint(ckpt, steps=2, n_action_steps=n_act)
        assert policy.cfg.n_obs_steps == n_obs
        renders.clear()
        lazy = evaluate(policy, out=tmp_path / "lazy", **kw)["per_task"][0]
        lazy_renders = len(renders)
        with monkeypatch.context() as m:
            m.setattr(WAMPolicy, "needs_images", lambda self, queued=None: True)
            renders.clear()
            full = evaluate(policy, out=tmp_path / "full", **kw)["per_task"][0]
            full_renders = len(renders)
        for key in ("seeds", "successes", "first_success", "steps"):
            assert lazy[key] == full[key], key
        np.testing.assert_allclose(lazy["sum_rewards"], full["sum_rewards"], rtol=1e-6)
        assert full_renders == sum(full["steps"]) + 4  # every step and every reset
        chunks = sum(-(-n // n_act) for n in full["steps"])
        assert lazy_renders <= 4 + chunks * n_obs < full_renders
    vec = evaluate(policy, out=tmp_path / "vec", num_envs=2, **kw)["per_task"][0]
    for key in ("seeds", "successes", "first_success", "steps"):
        assert vec[key] == full[key], key
    np.testing.assert_allclose(vec["sum_rewards"], full["sum_rewards"], rtol=1e-5)


def test_a_chunk_from_an_unrendered_observation_is_refused(run):
    """Were needs_images ever wrong, the black frame would be refused, never acted on."""
    policy = WAMPolicy.from_checkpoint(run / "checkpoint", steps=2)
    state = policy.new_state()
    obs = {"observation.images.top": np.zeros((32, 32, 3), np.uint8), "observation.state": np.zeros(4, np.float32)}
    ob = policy.read_observation(obs)
    with pytest.raises(ValueError, match="first observation"):
        policy.push(state, ob, unseen=True)
    policy.push(state, ob)
    policy.predict_chunks([state], [ob.task])
    policy.push(state, ob, unseen=True)
    with pytest.raises(RuntimeError, match="left unrendered"):
        policy.predict_chunks([state], [ob.task])
