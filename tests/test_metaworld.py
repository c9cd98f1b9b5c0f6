"""The MetaWorld adapter against the real simulator: task sets, observations, upright cameras, seeding,
the expert's success flag, truncation, and codec fidelity on rendered frames."""

import numpy as np
import pytest

pytest.importorskip("metaworld")
mw = pytest.importorskip("wam.envs.metaworld")

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def env():
    e = mw.make_env("reach-v3", image_size=64, cameras=["corner4", "topview"])
    yield e
    e.close()


def test_task_sets_and_descriptions():
    assert len(mw.resolve_tasks("mt10")) == 10 and mw.resolve_tasks("mt10")[0] == "reach-v3"
    every = mw.resolve_tasks("mt50")
    assert len(every) == 50 and mw.resolve_tasks(None) == every
    groups = [mw.resolve_tasks(g) for g in ("easy", "medium", "hard", "very_hard")]
    assert [len(g) for g in groups] == [28, 11, 6, 5] and sorted(sum(groups, [])) == sorted(every)
    assert mw.resolve_tasks("reach, push-v3,reach-v3") == ["reach-v3", "push-v3"]
    with pytest.raises(ValueError, match="did you mean pick-place-v3"):
        mw.resolve_tasks("pick-plce-v3")
    descriptions = [mw.describe(t) for t in every]
    assert all(d and d == d.strip() for d in descriptions) and len(set(descriptions)) == 50


def test_observation_layout(env):
    obs, info = env.reset(seed=0)
    assert set(obs) == {"observation.images.corner4", "observation.images.topview", "observation.state"}
    image = obs["observation.images.corner4"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert obs["observation.state"].shape == (39,) and obs["observation.state"].dtype == np.float32
    assert env.observation_space.contains(obs) and info == {"success": False}
    assert (env.fps, env.max_episode_steps, env.task_description) == (80, 500, "move the gripper to the goal position")
    assert env.camera_names == ("corner4", "topview")
    goal = obs["observation.state"][36:]
    assert np.allclose(goal, env._env._target_pos, atol=1e-5)  # the goal is part of the state


def test_corner_cameras_are_turned_upright(env):
    env.reset(seed=1)
    img = env.render_camera("corner4")
    env._renderer.update_scene(env._env.data, camera="corner4")
    for flag in env._flags:
        env._renderer.scene.flags[flag] = 0
    raw = env._renderer.render()
    assert np.array_equal(img, raw[::-1, ::-1])  # a 180-degree turn: MetaWorld mounts the corner cameras rolled over
    assert img[:16].mean() < img[-16:].mean()  # black sky on top, table and floor below
    assert env._upside_down == {"corner4": True, "topview": False}


@pytest.mark.parametrize("size", [96, 128])
def test_other_image_sizes(size):
    e = mw.make_env("drawer-open-v3", image_size=size, seed=0)
    obs, _ = e.reset(seed=0)
    assert obs["observation.images.corner4"].shape == (size, size, 3)
    e.close()


def test_seeding_reproduces_episodes_exactly(env):
    a, _ = env.reset(seed=5)
    for _ in range(5):
        env.step(env.action_space.sample())
    b, _ = env.reset(seed=5)
    c, _ = env.reset(seed=6)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["observation.state"][36:], c["observation.state"][36:])


def test_expert_reaches_success_and_frames_survive_the_codec(env, tmp_path):
    from wam.data.video import VideoEncoder, decode_frames, psnr

    expert = mw.make_expert("reach-v3")
    obs, _ = env.reset(seed=2)
    frames, success_at = [], None
    for step in range(env.max_episode_steps):
        frames.append(obs["observation.images.corner4"])
        obs, reward, terminated, truncated, info = env.step(expert(obs))
        assert isinstance(info["success"], bool) and not terminated
        if info["success"]:
            success_at = step
            break
    assert success_at is not None and success_at < 200
    frames = np.stack(frames)
    enc = VideoEncoder(tmp_path / "mw.mp4", width=64, height=64, fps=env.fps)
    enc.write(frames)
    enc.close()
    decoded = decode_frames(tmp_path / "mw.mp4", np.arange(len(frames)) / env.fps, tolerance_s=0.4 / env.fps)
    assert psnr(decoded, frames) >= 35  # the default codec on real 64x64 renders


def test_truncation_at_the_step_limit():
    e = mw.make_env("push-v3", max_episode_steps=3)
    e.reset(seed=0)
    flags = [e.step(np.zeros(4))[3] for _ in range(3)]
    assert flags == [False, False, True]
    e.close()
