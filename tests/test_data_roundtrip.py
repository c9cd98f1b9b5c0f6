"""LeRobot v3.0 writing and reading: layout, bit-exact parquet data, video fidelity, caps, atomicity."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wam.data import LeRobotDataset, LeRobotWriter, write_dataset
from wam.data.video import psnr
from wam.envs.dot import render
from wam.errors import DatasetError

TASKS = ["move the red dot to the green goal", "circle around the goal"]


def make_episodes(n_episodes=3, length=20, size=32, seed=0, cameras=("top", "side")):
    """Tiny episodes: a dot moving in a random walk (camera `side` sees it mirrored and dimmer)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(n_episodes):
        pos, goal = rng.uniform(-0.7, 0.7, 2), rng.uniform(-0.7, 0.7, 2)
        frames, states, actions = [], [], []
        for _ in range(length):
            a = rng.uniform(-1, 1, 2)
            frames.append(render(pos.astype(np.float32), goal.astype(np.float32), size))
            states.append(np.concatenate([pos, goal]))
            actions.append(a)
            pos = np.clip(pos + 0.1 * a, -1, 1)
        top = np.stack(frames)
        ep = {
            "observation.images.top": top,
            "observation.state": np.stack(states).astype(np.float32),
            "action": np.stack(actions).astype(np.float32),
            "next.reward": rng.normal(size=length).astype(np.float32),
            "next.success": np.arange(length) >= length - 3,
            "task": TASKS[e % 2],
        }
        if "side" in cameras:
            ep["observation.images.side"] = (top[:, :, ::-1] * 0.8).astype(np.uint8)
        episodes.append(ep)
    return episodes


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("rt") / "demo"
    episodes = make_episodes()
    write_dataset(root, episodes, fps=10, robot_type="dot")
    return root, episodes


def test_layout_is_lerobot_v30(written):
    root, episodes = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"], info["fps"]) == (3, 60, 2, 10)
    assert info["splits"] == {"train": "0:3"}
    feats = info["features"]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in feats
    assert feats["observation.state"] == {"dtype": "float32", "shape": [4], "names": None}
    top = feats["observation.images.top"]
    assert top["dtype"] == "video" and top["shape"] == [32, 32, 3] and top["names"] == ["height", "width", "channels"]
    assert top["info"]["video.codec"] == "h264" and top["info"]["video.fps"] == 10
    for rel in (
        "meta/stats.json",
        "meta/tasks.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "data/chunk-000/file-000.parquet",
        "videos/observation.images.top/chunk-000/file-000.mp4",
        "videos/observation.images.side/chunk-000/file-000.mp4",
    ):
        assert (root / rel).is_file(), rel

    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0, 1], "task": TASKS}
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert eps["episode_index"] == [0, 1, 2] and eps["length"] == [20, 20, 20]
    assert eps["dataset_from_index"] == [0, 20, 40] and eps["dataset_to_index"] == [20, 40, 60]
    assert eps["tasks"] == [[TASKS[0]], [TASKS[1]], [TASKS[0]]]
    assert eps["videos/observation.images.top/from_timestamp"] == [0.0, 2.0, 4.0]
    assert eps["videos/observation.images.top/to_timestamp"] == [2.0, 4.0, 6.0]
    assert np.allclose(eps["stats/action/mean"][1], episodes[1]["action"].mean(0))

    stats = json.loads((root / "meta/stats.json").read_text())
    for stat in ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"):
        assert stat in stats["action"] and stat in stats["observation.images.top"]
    all_actions = np.concatenate([e["action"] for e in episodes])
    assert np.allclose(stats["action"]["min"], all_actions.min(0))
    assert np.allclose(stats["action"]["std"], all_actions.std(0), atol=1e-6)
    assert stats["action"]["count"] == [60]
    assert np.asarray(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    assert not any(p.name.startswith(".demo.partial") for p in root.parent.iterdir())


def test_read_back_is_bit_exact_and_frames_within_codec_tolerance(written):
    root, episodes = written
    ds = LeRobotDataset(root)
    assert (ds.version, ds.fps, ds.num_episodes, ds.num_frames) == ("v3.0", 10, 3, 60)
    assert ds.camera_keys == ["observation.images.top", "observation.images.side"]
    assert ds.tasks == TASKS
    assert ds.episode_ranges == [(0, 20), (20, 40), (40, 60)]
    for i, ep in enumerate(episodes):
        s, t = ds.episode_ranges[i]
        for key in ("observation.state", "action", "next.reward"):
            assert ds.data[key][s:t].dtype == np.float32
            assert np.array_equal(ds.data[key][s:t], ep[key]), key  # bit-exact
        assert np.array_equal(ds.data["next.success"][s:t], ep["next.success"])
        assert np.array_equal(ds.data["frame_index"][s:t], np.arange(20))
        assert np.array_equal(ds.data["index"][s:t], np.arange(s, t))
        for cam in ds.camera_keys:
            assert psnr(ds.episode_frames(i, cam), ep[cam]) >= 35
    row = ds[27]
    assert row["task"] == TASKS[1] and row["observation.images.top"].shape == (32, 32, 3)
    assert np.array_equal(row["action"], episodes[1]["action"][7])


def test_images_stored_in_parquet_round_trip_losslessly(tmp_path):
    episodes = make_episodes(2, 6, cameras=("top",))
    root = write_dataset(tmp_path / "img", episodes, fps=5, use_videos=False)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.images.top"]["dtype"] == "image" and info["video_path"] is None
    assert not (root / "videos").exists()
    ds = LeRobotDataset(root)
    assert ds.image_keys == ["observation.images.top"]
    for i, ep in enumerate(episodes):
        assert np.array_equal(ds.episode_frames(i, "observation.images.top"), ep["observation.images.top"])


def test_size_caps_roll_over_to_new_files_and_chunks(tmp_path):
    episodes = make_episodes(5, 12, cameras=("top",))
    root = write_dataset(
        tmp_path / "caps",
        episodes,
        fps=10,
        chunks_size=2,
        data_files_size_in_mb=600 / 2**20,
        video_files_size_in_mb=1500 / 2**20,
    )
    data_files = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    video_files = sorted(p.relative_to(root).as_posix() for p in (root / "videos").rglob("*.mp4"))
    assert len(data_files) >= 3 and "data/chunk-001/file-000.parquet" in data_files
    assert len(video_files) >= 2
    meta_files = sorted((root / "meta/episodes").rglob("*.parquet"))
    assert len(meta_files) > 1  # the episode metadata honours the data cap too
    eps = pa.concat_tables([pq.read_table(f) for f in meta_files]).to_pydict()
    assert eps["episode_index"] == [0, 1, 2, 3, 4]
    files = list(zip(eps["data/chunk_index"], eps["data/file_index"]))
    assert files[0] == (0, 0) and files == sorted(files) and len(set(files)) == len(data_files)
    starts = eps["videos/observation.images.top/from_timestamp"]
    assert 0.0 in starts[1:]  # a later episode starts a new video file at time 0
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 5
    for i, ep in enumerate(episodes):
        s, t = ds.episode_ranges[i]
        assert np.array_equal(ds.data["action"][s:t], ep["action"])
        assert psnr(ds.episode_frames(i, "observation.images.top"), ep["observation.images.top"]) >= 35


def test_a_failed_or_abandoned_write_never_looks_complete(tmp_path, monkeypatch):
    episodes = make_episodes(2, 5, cameras=("top",))
    # an exception half way through finalising: nothing at the target, nothing left behind
    w = LeRobotWriter(tmp_path / "a", fps=10)
    for ep in episodes:
        w.add_episode({k: v for k, v in ep.items() if k != "task"}, task=ep["task"])
    monkeypatch.setattr(w, "_write_tasks", lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        w.finalize()
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []
    # an exception inside the context manager
    with pytest.raises(RuntimeError):
        with LeRobotWriter(tmp_path / "b", fps=10) as w:
            w.add_episode({k: v for k, v in episodes[0].items() if k != "task"}, task="t")
            raise RuntimeError("collection crashed")
    assert list(tmp_path.iterdir()) == []
    # the target already exists: refused unless overwrite
    write_dataset(tmp_path / "c", episodes, fps=10)
    with pytest.raises(FileExistsError):
        LeRobotWriter(tmp_path / "c", fps=10)
    write_dataset(tmp_path / "c", episodes[:1], fps=10, overwrite=True)
    assert LeRobotDataset(tmp_path / "c").num_episodes == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_killed_writer_leaves_only_a_hidden_partial_directory(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, numpy as np
        from wam.data import LeRobotWriter
        w = LeRobotWriter({str(tmp_path / "k")!r}, fps=10)
        for e in range(3):
            w.add_episode({{"observation.images.top": np.zeros((8, 32, 32, 3), np.uint8),
                           "action": np.zeros((8, 2), np.float32)}}, task="t")
        w._flush_data()
        print("written", flush=True)
        sys.stdin.read()  # wait to be killed before finalize
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "k").exists()
    partial = [p for p in tmp_path.iterdir()]
    assert len(partial) == 1 and partial[0].name.startswith(".k.partial-")
    assert (partial[0] / "data/chunk-000/file-000.parquet").exists()
    assert not (partial[0] / "meta/info.json").exists()
    with pytest.raises(DatasetError, match="interrupted write"):
        LeRobotDataset(partial[0])
    # the next writer of the same dataset deletes what the dead one left
    with LeRobotWriter(tmp_path / "k", fps=10) as w:
        w.add_episode(
            {"observation.images.top": np.zeros((8, 32, 32, 3), np.uint8), "action": np.zeros((8, 2), np.float32)},
            task="t",
        )
    assert [p.name for p in tmp_path.iterdir()] == ["k"]
    assert LeRobotDataset(tmp_path / "k").num_episodes == 1


def test_writer_refuses_inconsistent_episodes(tmp_path):
    ep = {k: v for k, v in make_episodes(1, 6, cameras=("top",))[0].items() if k != "task"}
    with LeRobotWriter(tmp_path / "x", fps=10) as w:
        w.add_episode(ep, task="t")
        with pytest.raises(ValueError, match="missing"):
            w.add_episode({k: v for k, v in ep.items() if k != "action"}, task="t")
        with pytest.raises(ValueError, match="same length"):
            w.add_episode({**ep, "action": ep["action"][:3]}, task="t")
        bad = ep["action"].copy()
        bad[2, 1] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            w.add_episode({**ep, "action": bad}, task="t")
        with pytest.raises(ValueError, match="uint8 frames"):
            w.add_episode({**ep, "observation.images.top": ep["observation.images.top"][:, :16]}, task="t")
    assert LeRobotDataset(tmp_path / "x").num_episodes == 1


def test_rows_stored_out_of_episode_order_are_put_back_in_order(tmp_path):
    episodes = make_episodes(3, 5, cameras=("top",))
    root = write_dataset(tmp_path / "perm", episodes, fps=10, use_videos=False)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.take(np.r_[10:15, 0:5, 5:10]), path)  # episodes 2, 0, 1
    ds = LeRobotDataset(root)
    assert ds.episode_ranges == [(0, 5), (5, 10), (10, 15)]
    for i, ep in enumerate(episodes):
        s, t = ds.episode_ranges[i]
        assert np.array_equal(ds.data["action"][s:t], ep["action"])
        assert np.array_equal(ds.episode_frames(i, "observation.images.top"), ep["observation.images.top"])


def test_a_checkpointed_write_resumes_without_what_followed_the_checkpoint(tmp_path):
    from wam.data.writer import find_resumable, read_checkpoint

    episodes = make_episodes(5, 6, cameras=("top",))
    arrays = [{k: v for k, v in ep.items() if k != "task"} for ep in episodes]
    root = tmp_path / "r"
    w = LeRobotWriter(root, fps=10)
    for ep, arr in zip(episodes[:2], arrays):
        w.add_episode(arr, task=ep["task"])
    w.checkpoint({"progress": 2})
    w.add_episode(arrays[2], task=episodes[2]["task"])  # after the checkpoint: dropped on resume ...
    w._flush_data()  # ... even once its files are complete
    assert w.suspend() == 2
    partial = find_resumable(root)
    assert partial == w.tmp and read_checkpoint(partial)["extra"] == {"progress": 2}
    assert (partial / "data/chunk-000/file-001.parquet").exists()
    w = LeRobotWriter.resume(root)
    assert not (partial / "data/chunk-000/file-001.parquet").exists()
    assert not (partial / "videos/observation.images.top/chunk-000/file-001.mp4").exists()
    assert len(w.episodes) == 2 and w.total_frames == 12
    for ep, arr in zip(episodes[2:], arrays[2:]):
        assert w.add_episode(arr, task=ep["task"]) == len(w.episodes) - 1
    w.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"] and not (root / ".writer-state.json").exists()
    data_files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet") if "data" in p.parts)
    assert data_files == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet"]  # one per checkpoint
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 5 and ds.tasks == TASKS
    for i, ep in enumerate(episodes):
        s, t = ds.episode_ranges[i]
        assert np.array_equal(ds.data["action"][s:t], ep["action"])
        assert np.array_equal(ds.data["index"][s:t], np.arange(s, t))
        assert psnr(ds.episode_frames(i, "observation.images.top"), ep["observation.images.top"]) >= 35
    plain = write_dataset(tmp_path / "plain", episodes, fps=10)  # the same statistics as a write in one go
    assert (root / "meta/stats.json").read_text() == (plain / "meta/stats.json").read_text()


def test_a_killed_checkpointed_writer_can_be_resumed_or_is_deleted_by_a_new_writer(tmp_path):
    from wam.data.writer import find_resumable

    def killed_after_checkpoint(root):  # 2 episodes, a checkpoint, a third episode, SIGKILL
        script = textwrap.dedent(f"""
            import numpy as np
            from wam.data import LeRobotWriter
            w = LeRobotWriter({str(root)!r}, fps=10)
            for e in range(3):
                w.add_episode({{"observation.images.top": np.full((8, 32, 32, 3), e, np.uint8),
                               "action": np.full((8, 2), e, np.float32)}}, task="t")
                if e == 1:
                    w.checkpoint()
            print("written", flush=True)
            input()  # wait to be killed
        """)
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "written"
            assert find_resumable(root) is None  # its writer is alive
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        partial = find_resumable(root)
        assert partial is not None
        return partial

    killed_after_checkpoint(tmp_path / "k")
    w = LeRobotWriter.resume(tmp_path / "k")
    w.add_episode(
        {"observation.images.top": np.full((4, 32, 32, 3), 9, np.uint8), "action": np.full((4, 2), 9, np.float32)},
        task="t",
    )
    w.finalize()
    ds = LeRobotDataset(tmp_path / "k")
    assert ds.num_episodes == 3 and ds.episode_ranges == [(0, 8), (8, 16), (16, 20)]
    assert np.array_equal(ds.data["action"][:, 0], np.r_[np.zeros(8), np.ones(8), np.full(4, 9)])
    # an ordinary writer of the same path deletes it, as any abandoned partial write
    partial = killed_after_checkpoint(tmp_path / "j")
    write_dataset(tmp_path / "j", make_episodes(1, 4, cameras=("top",)), fps=10)
    assert not partial.exists() and LeRobotDataset(tmp_path / "j").num_episodes == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j", "k"]
