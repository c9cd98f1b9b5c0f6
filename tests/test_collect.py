"""`wam collect`: expert episodes -> a LeRobot v3.0 dataset that loads, deterministically, in one or
several processes; MetaWorld collection runs for real."""

import json

import numpy as np
import pytest

from wam.cli import main
from wam.collect import collect
from wam.config import PRESETS
from wam.data import LeRobotDataset, WindowDataset, check_dataset
from wam.errors import ArgumentError


def test_collect_dot_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "dot"
    rc = main(["collect", "dot", "--episodes", "3", "--out", str(out), "--image-size", "32", "--workers", "1"])
    printed = capsys.readouterr().out
    assert rc == 0 and "reach-goal" in printed and "100%" in printed
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 3 and ds.fps == 10 and ds.tasks == ["move the red dot to the green goal"]
    assert ds.camera_keys == ["observation.images.top"] and ds.features["action"]["shape"] == [2]
    for s, t in ds.episode_ranges:
        assert ds.data["next.success"][t - 1] and ds.data["next.done"][t - 1]
        assert not ds.data["next.done"][s : t - 1].any()
    summary = json.loads((out / "meta/collection.json").read_text())
    assert summary["tasks"][0]["success_rate"] == 1.0 and len(summary["episodes"]) == 3
    assert check_dataset(out).ok
    rc = main(["collect", "dot", "--episodes", "3", "--out", str(out)])  # refuses to overwrite silently
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_failed_attempts_are_retried_then_reported_or_kept(tmp_path, capsys):
    # two steps are never enough to reach the goal: every attempt fails
    with pytest.raises(ArgumentError, match="no episode was kept"):
        collect("dot", episodes=2, out=tmp_path / "none", image_size=16, max_steps=2, workers=1, progress=False)
    assert not (tmp_path / "none").exists()
    summary = collect(
        "dot",
        episodes=2,
        out=tmp_path / "kept",
        image_size=16,
        max_steps=2,
        workers=1,
        keep_failed=True,
        progress=False,
    )
    assert summary["tasks"][0] == {
        "task": "reach-goal",
        "attempts": 2,
        "successes": 0,
        "success_rate": 0.0,
        "kept": 2,
        "mean_length": 2.0,
    }
    assert LeRobotDataset(tmp_path / "kept").num_frames == 4


def test_parallel_collection_gives_the_same_dataset(tmp_path):
    kw = dict(episodes=6, image_size=16, progress=False, seed=3)
    collect("dot", out=tmp_path / "one", workers=1, **kw)
    collect("dot", out=tmp_path / "two", workers=2, **kw)  # 6 episodes > 2 per worker: a process pool
    a, b = LeRobotDataset(tmp_path / "one"), LeRobotDataset(tmp_path / "two")
    assert a.episode_ranges == b.episode_ranges
    for k in ("action", "observation.state", "next.reward"):
        assert np.array_equal(a.data[k], b.data[k])
    # The frames agree up to a level of rounding: float rendering in another process and the encoder may
    # round a pixel differently (seen on one CI machine: one value of 2,304 off by one level).
    fa = a.episode_frames(5, "observation.images.top").astype(int)
    fb = b.episode_frames(5, "observation.images.top").astype(int)
    assert fa.shape == fb.shape
    assert np.abs(fa - fb).max() <= 2
    assert (fa != fb).mean() < 0.01


def test_action_noise_perturbs_the_expert_deterministically(tmp_path):
    kw = dict(episodes=4, image_size=16, progress=False, workers=1, keep_failed=True, max_steps=12)
    collect("dot", out=tmp_path / "clean", **kw)
    collect("dot", out=tmp_path / "noisy", action_noise=0.5, **kw)
    collect("dot", out=tmp_path / "again", action_noise=0.5, **kw)
    clean, noisy, again = (LeRobotDataset(tmp_path / d) for d in ("clean", "noisy", "again"))
    assert np.array_equal(noisy.data["action"], again.data["action"])  # same seed, same noise
    first = lambda ds: ds.data["action"][ds.episode_ranges[0][0]]  # noqa: E731 (the same start state)
    assert not np.allclose(first(clean), first(noisy))
    assert np.abs(noisy.data["action"]).max() <= 1.0  # clipped to the action space
    summary = json.loads((tmp_path / "noisy" / "meta/collection.json").read_text())
    assert summary["settings"]["action_noise"] == 0.5
    with pytest.raises(ArgumentError, match="action_noise"):
        collect("dot", out=tmp_path / "bad", action_noise=-1, **kw)


@pytest.mark.sim
def test_collect_metaworld_reach(tmp_path, capsys):
    pytest.importorskip("metaworld")
    out = tmp_path / "reach"
    rc = main(["collect", "metaworld", "--tasks", "reach-v3", "--episodes", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "reach-v3" in printed and "expert success rate: 100.0%" in printed
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 2 and ds.fps == 80 and ds.info["robot_type"] == "sawyer"
    assert ds.camera_keys == ["observation.images.corner4"]
    assert ds.features["observation.state"]["shape"] == [4]  # camera + proprioception, the vision protocol
    assert ds.features["observation.state"]["names"] == ["hand_x", "hand_y", "hand_z", "gripper_opening"]
    env_state = ds.features["observation.environment_state"]
    assert env_state["shape"] == [39] and len(env_state["names"]) == 39 and "goal_x" in env_state["names"]
    assert np.array_equal(ds.data["observation.state"], ds.data["observation.environment_state"][:, :4])
    assert ds.tasks == ["move the gripper to the goal position"]
    for s, t in ds.episode_ranges:
        success = ds.data["next.success"][s:t]
        first = int(np.argmax(success))
        assert success.any() and t - s == first + 11  # stops 10 steps after the first success
    cfg = PRESETS["wam-tiny"]
    w = WindowDataset(
        ds,
        n_obs_steps=cfg.n_obs_steps,
        future_frames=cfg.future_frames,
        future_stride=cfg.future_stride,
        action_horizon=cfg.action_horizon,
        image_size=cfg.image_size,
    )
    item = w[0]
    assert item["frames"].shape == (3, 3, 64, 64) and item["action"].shape == (8, 4) and item["state"].shape == (1, 4)
    assert check_dataset(out).ok


@pytest.mark.sim
def test_collect_metaworld_full_state_for_ablations(tmp_path, capsys):
    pytest.importorskip("metaworld")
    out = tmp_path / "full"
    assert (
        main(
            [
                "collect",
                "metaworld",
                "--tasks",
                "reach-v3",
                "--episodes",
                "1",
                "--state",
                "full",
                "--out",
                str(out),
                "--max-steps",
                "20",
                "--keep-failed",
            ]
        )
        == 0
    )
    ds = LeRobotDataset(out)
    assert ds.features["observation.state"]["shape"] == [39]
    assert np.array_equal(ds.data["observation.state"], ds.data["observation.environment_state"])
    with pytest.raises(ArgumentError, match="single kind of state"):
        collect("dot", episodes=1, out=tmp_path / "dot", state="full", progress=False)


def _stop_at(monkeypatch, k):
    """Make the collection's k-th episode raise KeyboardInterrupt, as Ctrl-C would (workers=1: one process)."""
    import wam.collect

    real, calls = wam.collect._job, []

    def job(args):
        calls.append(args)
        if len(calls) == k:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(wam.collect, "_job", job)


# the dot expert succeeds in 3 of 4 attempts within 4 steps: failed attempts, several rounds per task
RESUMABLE = dict(episodes=6, image_size=16, max_steps=4, seed=1, workers=1, progress=False, checkpoint_every=2)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_interrupted_collection_resumes_into_the_uninterrupted_dataset(tmp_path, monkeypatch, capsys):
    from wam.data.writer import find_resumable

    ref = collect("dot", out=tmp_path / "ref", **RESUMABLE)
    assert ref["attempts"] > 6  # failed attempts were retried in later rounds
    out, kept = tmp_path / "out", []
    for again, k in ((False, 6), (True, 6)):  # stopped twice: in the first round, then in the second, resumed
        with monkeypatch.context() as m:
            _stop_at(m, k)
            with pytest.raises(KeyboardInterrupt):
                collect("dot", out=out, resume=again, **RESUMABLE)
        err = capsys.readouterr().err
        kept.append(int(err.split("episodes are kept at the last checkpoint")[0].split()[-1]))
        assert not out.exists() and find_resumable(out) is not None
    assert kept == [2, 4]
    command = err.split("Continue with:\n")[1].strip()
    assert command.startswith("wam collect dot ") and command.endswith(" --resume") and "--seed 1" in command
    assert main(command.split()[1:] + ["--workers", "2"]) == 0  # the printed command; another worker count is fine
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing hidden left behind
    a, b = LeRobotDataset(tmp_path / "ref"), LeRobotDataset(out)
    summary = json.loads((out / "meta/collection.json").read_text())
    assert [e["seed"] for e in summary["episodes"]] == [e["seed"] for e in ref["episodes"]]
    assert summary["tasks"] == ref["tasks"] and a.episode_ranges == b.episode_ranges
    for k in ("action", "observation.state", "next.reward", "next.success"):
        assert np.array_equal(a.data[k], b.data[k])
    cam = "observation.images.top"
    for i in range(a.num_episodes):  # the same frames, encoded again: x264 may round a few pixels differently
        diff = np.abs(a.episode_frames(i, cam).astype(int) - b.episode_frames(i, cam).astype(int))
        assert diff.max() <= 32 and diff.mean() < 2.0
    # checkpoints fall on the same episode counts either way, so the files are the same, and all but the
    # videos (and the collection's timing) byte for byte
    ref_files, out_files = _files(tmp_path / "ref"), _files(out)
    assert ref_files.keys() == out_files.keys() and len([f for f in ref_files if f.startswith("data/")]) == 3
    assert all(
        ref_files[f] == out_files[f] for f in ref_files if f != "meta/collection.json" and not f.endswith(".mp4")
    )
    assert check_dataset(out).ok


def test_resuming_with_another_setting_is_refused_naming_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _stop_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            collect("dot", out=out, **RESUMABLE)
    with pytest.raises(ArgumentError, match=r"`seed` was 1 in the interrupted collection, this command gives 2"):
        collect("dot", out=out, resume=True, **{**RESUMABLE, "seed": 2})
    with pytest.raises(ArgumentError, match=r"`image_size` was 16 .* gives 32"):
        collect("dot", out=out, resume=True, **{**RESUMABLE, "image_size": 32})
    with pytest.raises(ArgumentError, match="pass one of them"):
        collect("dot", out=out, resume=True, overwrite=True, **RESUMABLE)
    collect("dot", out=out, resume=True, **RESUMABLE)  # the refusals left it resumable
    assert LeRobotDataset(out).num_episodes == 6


def test_an_interrupted_collection_is_refused_without_resume_and_overwrite_starts_over(tmp_path, monkeypatch, capsys):
    from wam.data.writer import find_resumable

    out = tmp_path / "out"
    args = [
        "collect",
        "dot",
        "--episodes",
        "6",
        "--image-size",
        "16",
        "--max-steps",
        "4",
        "--seed",
        "1",
        "--workers",
        "1",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
    ]
    assert main(args + ["--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with monkeypatch.context() as m:
        _stop_at(m, 5)
        assert main(args) == 130  # Ctrl-C
    assert "--resume" in capsys.readouterr().err
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "interrupted collection" in err and "holds 2 episodes" in err and "--resume" in err and "--overwrite" in err
    partial = find_resumable(out)
    assert main(args + ["--overwrite"]) == 0  # starts over, and the interrupted one is deleted
    assert not partial.exists() and LeRobotDataset(out).num_episodes == 6
    assert main(args + ["--resume"]) == 2
    assert "complete dataset" in capsys.readouterr().err
