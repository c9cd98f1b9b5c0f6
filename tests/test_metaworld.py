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
    assert set(obs) == {
        "observation.images.corner4",
        "observation.images.topview",
        "observation.state",
        "observation.environment_state",
    }
    image = obs["observation.images.corner4"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    # the robot's own reading (hand xyz + gripper) is the state; object and goal poses are the environment's
    state, full = obs["observation.state"], obs["observation.environment_state"]
    assert state.shape == (4,) and state.dtype == np.float32 and full.shape == (39,) and full.dtype == np.float32
    assert np.array_equal(state, full[:4]) and env.state_names == ["hand_x", "hand_y", "hand_z", "gripper_opening"]
    assert env.observation_space.contains(obs) and info == {"success": False}
    assert (env.fps, env.max_episode_steps, env.task_description) == (80, 500, "move the gripper to the goal position")
    assert env.camera_names == ("corner4", "topview")
    assert np.allclose(full[36:], env._env._target_pos, atol=1e-5)  # the goal is only in the environment state


def test_full_state_for_ablations():
    e = mw.make_env("push-v3", state="full")
    obs, _ = e.reset(seed=0)
    assert obs["observation.state"].shape == (39,) and np.array_equal(
        obs["observation.state"], obs["observation.environment_state"]
    )
    assert e.observation_space.contains(obs) and len(e.state_names) == 39
    e.close()
    assert mw.state_mode(4) == "proprio" and mw.state_mode(39) == "full"
    with pytest.raises(ValueError, match="4 values.*or 39"):
        mw.state_mode(7)
    with pytest.raises(ValueError, match="unknown state 'joints'.*proprio"):
        mw.make_env("push-v3", state="joints")


def test_the_expert_reads_the_environment_state_whatever_the_policy_is_given(env):
    expert = mw.make_expert("reach-v3")
    obs, _ = env.reset(seed=3)
    full = {**obs, "observation.state": obs["observation.environment_state"]}
    full.pop("observation.environment_state")
    assert np.array_equal(expert(obs), expert(full))
    with pytest.raises(ValueError, match="39-D observation"):
        expert({"observation.state": obs["observation.state"]})


def test_goal_markers_show_goals_that_nothing_else_shows():
    # reach-v3's goal is a point in the air: drawn as a 4 cm sphere, it covers several pixels at 64 px;
    # with MetaWorld's own 2 cm marker far fewer; in a task whose goal is a visible object nothing changes
    def pixels_changed(task, seed=0):
        images = []
        for marker in (0.0, mw.GOAL_MARKER):
            e = mw.make_env(task, image_size=64, goal_marker=marker)
            obs, _ = e.reset(seed=seed)
            images.append(obs["observation.images.corner4"].astype(int))
            e.close()
        return int((np.abs(images[0] - images[1]).sum(-1) > 30).sum())

    assert "reach-v3" in mw.GOAL_MARKER_TASKS and "button-press-v3" not in mw.GOAL_MARKER_TASKS
    assert pixels_changed("reach-v3") >= 6
    assert pixels_changed("button-press-v3") == 0


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


def test_corner4_is_the_view_of_lerobots_metaworld_environment():
    """LeRobot's MetaWorld environment renders `corner2` moved to (0.75, 0.075, 0.7): that is `corner4`."""
    import mujoco

    e = mw.make_env("drawer-open-v3", image_size=64, cameras=["corner4", "corner2"], seed=0)
    obs, _ = e.reset(seed=3)
    assert not np.array_equal(obs["observation.images.corner2"], obs["observation.images.corner4"])
    model = e._env.model
    model.cam_pos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")] = (0.75, 0.075, 0.7)
    mujoco.mj_forward(model, e._env.data)
    assert np.array_equal(e.render_camera("corner2"), e.render_camera("corner4"))
    e.close()


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
    assert not np.allclose(a["observation.environment_state"][36:], c["observation.environment_state"][36:])


def test_frames_left_unrendered_change_no_later_frame(env):
    """render_images=False gives black images and leaves the simulation and the next rendered frame as they are."""
    actions = [np.array([0.5, -0.3, 0.2, 0.1], np.float32)] * 6
    env.reset(seed=3)
    every = [env.step(a)[0] for a in actions]
    env.reset(seed=3)
    lazy = []
    for i, a in enumerate(actions):
        env.render_images = i % 3 == 2
        lazy.append(env.step(a)[0])
    env.render_images = True
    for i, (x, y) in enumerate(zip(every, lazy)):
        for k in x:
            same = np.array_equal(x[k], y[k])
            if k.startswith("observation.images.") and i % 3 != 2:
                assert not y[k].any() and y[k].shape == x[k].shape
            else:
                assert same, (i, k)


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


def test_the_lerobot_protocol_renders_the_frames_of_lerobots_environment():
    """LeRobot's environment: an MT1 task class, `corner2` moved to (0.75, 0.075, 0.7), MetaWorld's own renderer at
    480 px (multisampling, 4096 px shadows), both axes flipped. The `lerobot` protocol's look gives the same frames
    once both are resized to a model's input (within a fraction of one level); the fast look does not."""
    import metaworld

    from wam.data.windows import resize_frames

    task = "push-v3"
    bench = metaworld.MT1(task, seed=42)
    theirs = bench.train_classes[task](render_mode="rgb_array", camera_name="corner2")
    theirs.set_task(bench.train_tasks[0])
    theirs.model.cam_pos[2] = [0.75, 0.075, 0.7]
    theirs.reset(seed=3)
    for _ in range(5):
        theirs.step(np.array([0.5, -0.3, 0.2, 1.0]))
    reference = np.flip(theirs.render(), (0, 1))
    settings = mw.protocol("lerobot")
    assert settings["render_size"] == 480 and settings["max_episode_steps"] == 400 and settings["goal_marker"] == 0
    size = 96
    opts = {k: v for k, v in settings.items() if k != "max_episode_steps"}
    ours = mw.make_env(task, image_size=size, **opts)
    fast = mw.make_env(task, image_size=size, render_size=480, goal_marker=0.0, cameras=("corner4",))
    try:
        for e in (ours, fast):  # the same simulator state as theirs
            e._env.model.site_pos[:] = theirs.model.site_pos
            e._env.model.body_pos[:] = theirs.model.body_pos
            e._env.data.qpos[:], e._env.data.qvel[:] = theirs.data.qpos, theirs.data.qvel
            e._env.data.mocap_pos[:], e._env.data.mocap_quat[:] = theirs.data.mocap_pos, theirs.data.mocap_quat
            import mujoco

            mujoco.mj_forward(e._env.model, e._env.data)
        want = resize_frames(np.ascontiguousarray(reference)[None], (size, size))[0].transpose(1, 2, 0).astype(float)
        got = ours.render_camera("corner4").astype(float)
        assert got.shape == (size, size, 3)
        assert np.abs(got - want).mean() < 0.5 and np.percentile(np.abs(got - want), 99) <= 6
        assert np.abs(fast.render_camera("corner4").astype(float) - want).mean() > 10  # the fast look is another scene
    finally:
        ours.close(), fast.close(), theirs.close()


def test_protocols_are_named_and_checked():
    assert set(mw.PROTOCOLS) >= {"lerobot", "wam"}
    with pytest.raises(ValueError, match="unknown MetaWorld protocol 'lerobo'"):
        mw.protocol("lerobo")
    with pytest.raises(ValueError, match="unknown look"):
        mw.make_env("reach-v3", look="pretty")
    e = mw.make_env("reach-v3", image_size=32, render_size=64, max_episode_steps=400, seed=0)
    assert e.reset(seed=0)[0]["observation.images.corner4"].shape == (32, 32, 3) and e.max_episode_steps == 400
    e.close()
    e = mw.make_env("reach-v3", image_size=32, protocol="lerobot")  # the whole protocol in one word
    assert (e.look, e.render_size, e.max_episode_steps, tuple(e.camera_names), e.state_mode) == (
        "metaworld",
        480,
        400,
        ("corner4",),
        "proprio",
    )
    e.close()
    with pytest.raises(ValueError, match="gives the camera"):
        mw.make_env("reach-v3", protocol="lerobot", cameras=["gripperPOV"])
    with pytest.raises(ValueError, match="unknown MetaWorld protocol 'lerobo'"):
        mw.make_env("reach-v3", protocol="lerobo")
    # a misspelt setting is refused by name, never silently ignored
    from wam.envs import make_env

    with pytest.raises(ValueError, match=r"has no setting\(s\) protocl; its settings are: .*protocol"):
        make_env("metaworld", "reach-v3", protocl="lerobot")
    with pytest.raises(TypeError):
        mw.make_env("reach-v3", goal_markr=0.0)


def test_wam_eval_on_the_lerobot_protocol_and_the_test_seeds(tmp_path):
    """The command line sets the whole protocol and records it with the seed set (5 steps of one episode)."""
    import json
    from pathlib import Path

    from wam.cli import main

    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "wam-tiny-mt50"
    out = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(ckpt), "--tasks", "reach", "--episodes", "1", "--max-steps", "5"]
    assert (
        main(
            [
                *args,
                "--seed",
                "test",
                "--protocol",
                "lerobot",
                "--no-expert",
                "--videos",
                "0",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    settings = json.loads((out / "eval_info.json").read_text())["settings"]
    assert settings["seed_set"] == "test" and settings["protocol"] == "lerobot" and settings["render_size"] == 480
    assert settings["protocol_settings"]["goal_marker"] == 0 and settings["protocol_settings"]["look"] == "metaworld"
    assert settings["image_size"] == 96


def test_a_checkpoint_is_evaluated_under_the_protocol_its_data_was_collected_under(tmp_path):
    """`wam collect --protocol lerobot` records the scene; training reads it into the checkpoint (run.protocol)
    and `wam eval` without --protocol uses it, saying so; a named --protocol still decides."""
    import json

    from wam.cli import main
    from wam.collect import collect
    from wam.train import collection_protocol

    data = tmp_path / "data"
    collect("metaworld", tasks="reach-v3", episodes=1, image_size=32, protocol="lerobot", out=data, workers=1)
    assert collection_protocol(data) == "lerobot"
    assert collection_protocol(tmp_path) is None  # no meta/collection.json: not made by wam collect
    assert mw.protocol_of({"env_options": {}, "cameras": ["corner4"], "state": "proprio"}) is None
    lerobot = {k: v for k, v in mw.PROTOCOLS["lerobot"].items() if k not in ("cameras", "state")}
    assert mw.protocol_of({"env_options": lerobot, "cameras": ["corner4"], "state": "full"}) is None

    tiny = ["--model", "width=32", "--model", "depth=2", "--model", "image_size=32", "--model", "tokenizer_width=8"]
    tiny += ["--batch-size", "4", "--tokenizer-steps", "2", "--val-fraction", "0", "--steps", "2", "--quiet"]
    assert main(["train", "--dataset", str(data), "--out", str(tmp_path / "run"), *tiny]) == 0
    ckpt = tmp_path / "run" / "checkpoint"
    assert json.loads((ckpt / "config.json").read_text())["run"]["protocol"] == "lerobot"
    args = ["eval", "--checkpoint", str(ckpt), "--tasks", "reach", "--episodes", "1", "--max-steps", "3"]
    args += ["--no-expert", "--videos", "0", "--quiet"]
    for extra, protocol, source, render in [
        ([], "lerobot", "checkpoint", 480),
        (["--protocol", "wam"], "wam", "given", 32),
    ]:
        out = tmp_path / f"eval-{protocol}"
        assert main([*args, *extra, "--out", str(out)]) == 0
        settings = json.loads((out / "eval_info.json").read_text())["settings"]
        assert (settings["protocol"], settings["protocol_from"], settings["render_size"]) == (protocol, source, render)

    # the quickstart makes its demonstrations the way its reference's were: the same scene and frame size
    from wam.quickstart import quickstart

    quickstart(
        tmp_path / "qs", tasks="reach-v3", episodes=4, steps=2, tokenizer_steps=1, eval_episodes=1, max_steps=3,
        reference=ckpt, reference_tasks="reach-v3", reference_episodes=1, workers=1,
        model_changes={"width": 32, "depth": 2, "image_size": 32, "tokenizer_width": 8},
    )  # fmt: skip
    assert collection_protocol(tmp_path / "qs" / "data") == "lerobot"
    assert (
        json.loads((tmp_path / "qs" / "data" / "meta" / "collection.json").read_text())["settings"]["image_size"] == 32
    )
    for name in ("eval-policy", "eval-reference"):
        assert json.loads((tmp_path / "qs" / name / "eval_info.json").read_text())["settings"]["protocol"] == "lerobot"


def test_an_interrupted_evaluation_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """Each finished task is kept (out/tasks/); `resume=True` runs only the others, and only rows the same
    evaluation wrote are taken."""
    from pathlib import Path

    import wam.evaluate as ev
    from wam.policy import WAMPolicy

    policy = WAMPolicy.from_checkpoint(Path(__file__).resolve().parents[1] / "checkpoints" / "wam-tiny-mt50")
    kw = dict(env="metaworld", tasks="reach-v3,push-v3,drawer-open-v3", episodes=2, max_steps=8, expert=False)
    kw.update(videos_per_task=0, progress=False)
    whole = ev.evaluate(policy, out=tmp_path / "whole", **kw)
    real, ran, dies = ev.evaluate_task, [], [True]

    def dies_in_the_second_task(policy, env, task, **k):
        ran.append(task)
        if len(ran) == 2 and dies and dies.pop():
            raise KeyboardInterrupt
        return real(policy, env, task, **k)

    monkeypatch.setattr(ev, "evaluate_task", dies_in_the_second_task)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(policy, out=tmp_path / "parts", **kw)
    assert [f.stem for f in (tmp_path / "parts" / "tasks").glob("*.json")] == ["reach-v3"]
    ran.clear()
    parts = ev.evaluate(policy, out=tmp_path / "parts", resume=True, **kw)
    assert ran == ["push-v3", "drawer-open-v3"]
    for a, b in zip(whole["per_task"], parts["per_task"]):
        for key in ("task", "seeds", "successes", "steps", "sum_rewards"):
            assert a[key] == b[key], key
    assert parts["pc_success"] == whole["pc_success"]
    ran.clear()  # another setting takes none of the kept rows
    ev.evaluate(policy, out=tmp_path / "parts", resume=True, **{**kw, "max_steps": 9})
    assert ran == ["reach-v3", "push-v3", "drawer-open-v3"]
    with pytest.raises(ValueError, match="cannot resume"):
        ev.evaluate(policy, out=tmp_path / "parts", resume=True, record=tmp_path / "rec", **kw)
