"""`wam imagine`: an environment inside the world model, driven by the same rollout loop as the simulator; its
imagined frames come every future_stride actions, deterministically, with the exact cache."""

import json

import numpy as np
import pytest
import torch
from conftest import random_dot_checkpoint, tiny_config
from test_critic import SIZE, dot_data  # noqa: F401  (the module's dot dataset fixture)

from wam.checkpoint import load_checkpoint
from wam.critic import load_critic, train_critic
from wam.imagine import (
    ImaginedEnv,
    dataset_starts,
    first_done,
    imagine,
    imagine_along,
    replay,
    replay_summary,
    sim_starts,
)
from wam.policy import WAMPolicy

STRIDE = 2


@pytest.fixture(scope="module")
def world(dot_data, tmp_path_factory):  # noqa: F811
    """A random-weight tiny WAM over the dot world (frames every 2 steps) and a critic trained on the data."""
    from wam.data import LeRobotDataset

    ds = LeRobotDataset(dot_data)
    cfg = tiny_config(
        image_size=SIZE,
        state_dim=4,
        action_dim=2,
        action_horizon=4,
        n_obs_steps=1,
        future_frames=2,
        future_stride=STRIDE,
        n_tasks=len(ds.tasks),
        attention="prefix",
    )
    path = random_dot_checkpoint(
        tmp_path_factory.mktemp("imagine") / "ck",
        cfg,
        {"tasks": list(ds.tasks), "cameras": ["top"], "fps": 10, "dataset": str(dot_data), "val_episodes": [0, 1, 2]},
    )
    train_critic(path, [dot_data], steps=30, batch_size=32, progress=False)
    return path


def _env(world, **kw):
    ck = load_checkpoint(world)
    starts, limit = sim_starts("dot", "reach-goal", [11, 12], image_size=SIZE, cameras=["top"], state_size=4)
    return ImaginedEnv(
        ck, load_critic(world / "critic"), starts, "reach-goal", ck.config["run"]["tasks"][0], max_steps=limit, **kw
    )


def test_imagined_frames_come_every_future_stride_actions(world):
    env = _env(world)
    obs, info = env.reset(seed=0)
    assert obs["observation.images.top"].shape == (SIZE, SIZE, 3) and obs["observation.state"].shape == (4,)
    first = obs["observation.images.top"].copy()
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, -0.5]))
    assert np.array_equal(obs["observation.images.top"], first)  # one action queued: nothing imagined yet
    obs, reward, _, _, info = env.step(np.array([0.5, -0.5]))
    assert not np.array_equal(obs["observation.images.top"], first)  # STRIDE actions: the next frame
    assert 0 <= reward <= 1 and 0 <= info["p_success"] <= 1 and isinstance(info["success"], bool)


def test_success_needs_persist_imagined_frames_in_a_row(world):
    for persist in (1, 2, 3):
        env = _env(world, threshold=0.0, persist=persist)  # every frame judged done: success after `persist`
        _, info = env.reset(seed=0)
        judged, successes = 1, [info["success"]]
        for i in range(3 * STRIDE):
            _, _, _, _, info = env.step(np.array([0.5, -0.5]))
            judged += (i + 1) % STRIDE == 0
            successes.append((judged, info["success"]))
        assert successes[0] == (persist == 1)
        assert all(ok == (n >= persist) for n, ok in successes[1:])
    env = _env(world, threshold=1.01, persist=1)  # never done
    env.reset(seed=0)
    assert not any(env.step(np.array([0.5, -0.5]))[4]["success"] for _ in range(3 * STRIDE))
    with pytest.raises(ValueError, match="persist must be >= 1"):
        _env(world, persist=0)


def _run(env, seed=3, n=3):
    frames = [env.reset(seed=seed)[0]["observation.images.top"]]
    for i in range(n * STRIDE):
        frames.append(env.step(np.array([np.sin(i), np.cos(i)]))[0]["observation.images.top"])
    return np.stack(frames), torch.stack(env.history)


def test_imagination_is_deterministic_and_the_cache_exact(world):
    a, za = _run(_env(world))
    b, zb = _run(_env(world))
    assert np.array_equal(a, b) and torch.equal(za, zb)  # same seed, same imagined episode
    c, zc = _run(_env(world, cache=False))  # every step recomputes the observed tokens
    torch.testing.assert_close(za, zc, atol=1e-4, rtol=1e-4)
    d, _ = _run(_env(world), seed=4)
    assert not np.array_equal(a, d)  # another seed, other noise
    e, ze = _run(_env(world, action_guidance=1.0))
    assert torch.equal(za, ze)  # guidance 1 is plain forward mode
    f, zf = _run(_env(world, action_guidance=3.0))
    assert not torch.allclose(za, zf)  # guided frames follow the actions more


def test_imagine_along_imagines_recorded_actions_exactly_as_the_imagined_env(world):
    from wam.data import Normalizer
    from wam.tokenizer import encode_frames

    ck, critic = load_checkpoint(world), load_critic(world / "critic")
    norm = Normalizer.from_dict(ck.stats)
    env = _env(world)
    actions = np.stack([np.array([np.sin(i), np.cos(i)], np.float32) for i in range(3 * STRIDE + 1)])  # 7 rows
    env.reset(seed=3)  # starts[3 % 2]
    by_env = []
    for i, a in enumerate(actions[:-1]):
        env.step(a)
        if (i + 1) % STRIDE == 0:
            by_env.append(env.history[-1][0])
    start = env.starts[1]
    z0 = encode_frames(ck.tokenizer, start["frame"][None])
    s0 = torch.as_tensor(np.asarray(norm.normalize_state(start["state"][None]), np.float32))
    task = env.task_index
    made = imagine_along(ck, critic, z0, s0, [np.asarray(norm.normalize_action(actions), np.float32)], task, seed=3)
    assert made[0].shape == (3, *z0.shape[1:])  # (7 - 1) // STRIDE frames, for rows 2, 4 and 6
    torch.testing.assert_close(made[0], torch.stack(by_env), atol=1e-5, rtol=1e-5)  # the same frames, exactly
    # a batch of episodes of other lengths: one frame list each, and the same call gives the same frames
    two = [np.asarray(norm.normalize_action(actions), np.float32)[:n] for n in (7, 2, 4)]
    a = imagine_along(ck, critic, z0.repeat(3, 1, 1, 1), s0.repeat(3, 1), two, task.repeat(3), seed=5, batch_size=2)
    b = imagine_along(ck, critic, z0.repeat(3, 1, 1, 1), s0.repeat(3, 1), two, task.repeat(3), seed=5, batch_size=2)
    assert [len(z) for z in a] == [3, 0, 1] and all(torch.equal(x, y) for x, y in zip(a, b))


def test_replay_judges_recorded_episodes_imagined_along_their_actions(world, dot_data):  # noqa: F811
    from wam.data import LeRobotDataset

    ck, critic = load_checkpoint(world), load_critic(world / "critic")
    ds = LeRobotDataset(dot_data)
    eps = [0, 3, 5]
    got = replay(ck, critic, dot_data, episodes=eps, progress=False, seed=2)
    assert got == replay(ck, critic, dot_data, episodes=eps, progress=False, seed=2)  # deterministic
    for v, e in zip(got, eps):
        lo, hi = ds.episode_ranges[ds.position_of(e)]
        success = np.asarray(ds.data["next.success"][lo:hi], bool)
        assert v["episode_index"] == e and v["length"] == hi - lo
        assert v["real_success"] == success.any()  # what really happened, from the recorded flags
        assert v["real_first_success"] == (int(np.argmax(success)) if success.any() else -1)
        assert v["imagined_frames"] == (hi - lo - 1) // STRIDE  # one imagined frame every STRIDE actions
        assert 0 <= v["imagined_progress"] <= 1 and len(v["p_done"]) == v["imagined_frames"] + 1
        first = first_done(v["p_done"], 0.5, 1)  # the verdict, from the probabilities kept
        assert v["imagined_first_done"] == (first * STRIDE if first >= 0 else -1)
    for persist in (1, 2):  # every frame judged done: the first success after `persist` frames, the start included
        always = replay(ck, critic, dot_data, episodes=eps, threshold=0.0, persist=persist, progress=False)
        assert all(v["imagined_success"] and v["imagined_first_done"] == (persist - 1) * STRIDE for v in always)
    never = replay(ck, critic, dot_data, episodes=eps, threshold=1.01, progress=False)
    assert not any(v["imagined_success"] or v["imagined_first_done"] >= 0 for v in never)


def test_replay_beside_the_recorded_frames(world, dot_data):  # noqa: F811
    from wam.data import LeRobotDataset
    from wam.data.windows import resize_frames

    ck, critic = load_checkpoint(world), load_critic(world / "critic")
    ds = LeRobotDataset(dot_data)
    eps = [0, 3]
    plain = replay(ck, critic, dot_data, episodes=eps, progress=False, seed=2)
    got = replay(ck, critic, dot_data, episodes=eps, progress=False, seed=2, real=True)
    size = (ck.model.cfg.image_size, ck.model.cfg.image_size)
    for v, w, e in zip(got, plain, eps):
        assert {k: v[k] for k in w} == w  # the imagined side is unchanged
        k = v["imagined_frames"]
        assert len(v["real_p_done"]) == k + 1 and len(v["psnr"]) == len(v["psnr_still"]) == len(v["psnr_ceiling"]) == k
        assert v["real_p_done"][0] == v["p_done"][0]  # the same first frame, judged the same
        first = first_done(v["real_p_done"], 0.5, 1)
        assert v["real_judged_success"] == (first >= 0)
        assert v["real_judged_first_done"] == (first * STRIDE if first >= 0 else -1)
        assert 0 <= v["real_judged_progress"] <= 1
        pos = ds.position_of(e)
        rows = np.arange(k + 1) * STRIDE  # the recorded rows the imagined frames stand for
        frames = resize_frames(ds.episode_frames(pos, ds.camera_keys[0], rows=rows), size).astype(np.float64)
        mse = ((frames[1:] - frames[:1]) ** 2).reshape(k, -1).mean(1) / 255**2
        still = 10 * np.log10(1 / np.maximum(mse, 1e-10))
        np.testing.assert_allclose(v["psnr_still"], still, atol=0.01)  # the first frame held still, by hand
        assert all(0 < x < 100 for x in v["psnr"] + v["psnr_ceiling"])
    s = replay_summary(got)
    real = np.array([v["real_success"] for v in got])
    judged = np.array([v["real_judged_success"] for v in got])
    assert s["recorded_accuracy"] == pytest.approx(float((real == judged).mean()))
    assert s["psnr"] == pytest.approx(np.mean([x for v in got for x in v["psnr"]]))
    assert "recorded_accuracy" not in replay_summary(plain)


def test_first_done_needs_persist_frames_in_a_row_at_the_threshold():
    p = [0.2, 0.7, 0.4, 0.8, 0.9, 0.6]
    assert first_done(p, 0.5, 1) == 1 and first_done(p, 0.5, 2) == 4 and first_done(p, 0.5, 3) == 5
    assert first_done(p, 0.85, 1) == 4 and first_done(p, 0.85, 2) == -1 and first_done([], 0.5, 1) == -1


def test_a_critic_trained_on_imagined_frames_reports_both_critics_on_them(world, dot_data, tmp_path):  # noqa: F811
    out = tmp_path / "critic"
    m = train_critic(world, [dot_data], out=out, steps=40, batch_size=32, progress=False, imagined=True)
    from wam.data import LeRobotDataset

    ds = LeRobotDataset(dot_data)
    assert m["imagined_frames"] == sum((e.length - 1) // STRIDE for e in ds.episodes)  # every episode imagined
    assert m["imagined_val_frames"] == sum((e.length - 1) // STRIDE for e in ds.episodes if e.episode_index < 3)
    for metrics in (m, m["real_only"]):  # the kept critic, and the one trained on real frames only
        assert 0 <= metrics["imagined_val_episode_accuracy"] <= 1 and metrics["imagined_val_episodes"] == 3
        by = metrics["imagined_val_by_persist"]  # judged as wam imagine --persist K would
        assert sorted(by) == [1, 2, 3, 5] and by[1]["episode_accuracy"] == metrics["imagined_val_episode_accuracy"]
        lag = metrics["imagined_val_first_done_lag"]  # steps from the real first success to the first judged done
        assert lag is None or (lag["q25"] <= lag["median"] <= lag["q75"] and lag["episodes"] >= 1)
    assert load_critic(out).cfg.tasks == load_checkpoint(world).config["run"]["tasks"]


def test_imagine_writes_eval_info_videos_and_report(world, tmp_path):
    ck = load_checkpoint(world)
    policy = WAMPolicy(ck, steps=2)
    info = imagine(
        ck,
        load_critic(world / "critic"),
        policy,
        env="dot",
        tasks=["reach-goal"],
        episodes=2,
        max_steps=6,
        videos_per_task=1,
        out=tmp_path / "im",
        progress=False,
    )
    saved = json.loads((tmp_path / "im" / "imagine_info.json").read_text())
    assert saved["imagined"] and saved["n_episodes"] == 2 and saved["per_task"][0]["steps"] <= [6, 6]
    assert (tmp_path / "im" / "videos" / "reach-goal" / "imagined_000.mp4").is_file()
    assert (tmp_path / "im" / "report.html").is_file() and info["settings"]["start"] == "sim"
    starts = dataset_starts(ck, ck.config["run"]["dataset"])
    assert sum(len(v) for v in starts.values()) == 3  # the three held-out episodes' first frames


def test_cli_imagine(world, tmp_path, capsys):
    from wam.cli import main

    common = [
        "imagine",
        "--checkpoint",
        str(world),
        "--env",
        "dot",
        "--episodes",
        "1",
        "--max-steps",
        "4",
        "--videos",
        "0",
        "--quiet",
        "--steps",
        "2",
    ]
    assert main([*common, "--start", "dataset", "--action-guidance", "2", "--out", str(tmp_path / "a")]) == 0
    assert "imagined success" in capsys.readouterr().out
    saved = json.loads((tmp_path / "a" / "imagine_info.json").read_text())
    assert saved["settings"]["world_action_guidance"] == 2.0
    assert main([*common, "--critic", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert "wam critic" in capsys.readouterr().err


def test_cli_imagine_replay_judges_a_recorded_dataset(world, dot_data, tmp_path, capsys):  # noqa: F811
    from wam.cli import main

    common = ["imagine", "--checkpoint", str(world), "--quiet", "--seed", "2"]
    assert main([*common, "--replay", str(dot_data), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "r" / "replay.json").read_text())
    direct = replay(load_checkpoint(world), load_critic(world / "critic"), dot_data, seed=2, progress=False)
    assert saved["verdicts"] == direct  # the CLI is the function, with the same seed
    s = saved["summary"]
    assert s["episodes"] == len(direct) and "all" in printed
    assert s["real_pc_success"] == pytest.approx(100 * np.mean([v["real_success"] for v in direct]))
    assert s["accuracy"] == pytest.approx(np.mean([v["real_success"] == v["imagined_success"] for v in direct]))
    assert sum(r["episodes"] for r in s["per_task"].values()) == len(direct)
    assert main([*common, "--replay", str(dot_data), "--real", "--out", str(tmp_path / "rr")]) == 0
    both = json.loads((tmp_path / "rr" / "replay.json").read_text())
    assert "PSNR imagined / still" in capsys.readouterr().out and both["settings"]["real"]
    assert [v["imagined_success"] for v in both["verdicts"]] == [v["imagined_success"] for v in direct]
    assert 0 <= both["summary"]["recorded_accuracy"] <= 1 and both["summary"]["psnr"] > 0
    assert main([*common, "--replay", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    assert main([*common, "--replay", str(dot_data), "--policy", str(world), "--out", str(tmp_path / "p")]) == 2
    assert "leave out --policy" in capsys.readouterr().err
