"""A LeRobot v2.1 dataset, built here from the format's description (one parquet and one AV1 mp4 per
episode, JSON-lines metadata, an image feature stored as PNG files), is read correctly."""

import json
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wam.data import LeRobotDataset, WindowDataset
from wam.data.video import psnr
from wam.envs.dot import render

FPS = 10
TASKS = ["push the dot up", "push the dot down"]


def write_av1(path, frames):
    """An mp4 as LeRobot v2.1 encodes it (AV1, 4:2:0), written with PyAV directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libsvtav1", rate=FPS)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "30", "g": "2"}
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def v21(tmp_path_factory):
    root = tmp_path_factory.mktemp("v21") / "legacy"
    rng = np.random.default_rng(7)
    lengths = [14, 9, 11]
    episodes, index = [], 0
    for e, n in enumerate(lengths):
        pos = rng.uniform(-0.5, 0.5, 2)
        goal = np.array([0.0, 0.8 if e % 2 == 0 else -0.8])
        states, actions, top, wrist = [], [], [], []
        for _ in range(n):
            a = np.clip(goal - pos, -1, 1) * 0.5 + rng.normal(0, 0.1, 2)
            states.append(np.concatenate([pos, goal]))
            actions.append(a)
            top.append(render(pos.astype(np.float32), goal.astype(np.float32), 32))
            wrist.append(render(-pos.astype(np.float32), goal.astype(np.float32), 24))
            pos = np.clip(pos + 0.1 * a, -1, 1)
        ep = {
            "state": np.array(states, np.float32),
            "action": np.array(actions, np.float32),
            "top": np.stack(top),
            "wrist": np.stack(wrist),
            "task_index": e % 2,
            "start": index,
        }
        episodes.append(ep)
        # data/chunk-000/episode_00000e.parquet: plain lists, as HF datasets wrote v2.x files
        wrist_paths = []
        for i, img in enumerate(ep["wrist"]):
            rel = f"images/observation.images.wrist/episode_{e:06d}/frame_{i:06d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / rel)
            wrist_paths.append({"bytes": None, "path": rel})
        table = pa.table(
            {
                "observation.state": pa.array(ep["state"].tolist(), pa.list_(pa.float32())),
                "action": pa.array(ep["action"].tolist(), pa.list_(pa.float32())),
                "observation.images.wrist": pa.array(
                    wrist_paths, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
                ),
                "timestamp": pa.array(np.arange(n, dtype=np.float32) / FPS),
                "frame_index": pa.array(np.arange(n), pa.int64()),
                "episode_index": pa.array(np.full(n, e), pa.int64()),
                "index": pa.array(np.arange(index, index + n), pa.int64()),
                "task_index": pa.array(np.full(n, e % 2), pa.int64()),
            }
        )
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
        write_av1(root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4", ep["top"])
        index += n
    meta = root / "meta"
    video_info = {
        "video.fps": float(FPS),
        "video.height": 32,
        "video.width": 32,
        "video.channels": 3,
        "video.codec": "av1",
        "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False,
        "has_audio": False,
    }
    info = {
        "codebase_version": "v2.1",
        "robot_type": "dot",
        "total_episodes": 3,
        "total_frames": sum(lengths),
        "total_tasks": 2,
        "total_videos": 3,
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": "0:3"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.images.top": {
                "dtype": "video",
                "shape": [32, 32, 3],
                "names": ["height", "width", "channel"],
                "info": video_info,
            },
            "observation.images.wrist": {
                "dtype": "image",
                "shape": [24, 24, 3],
                "names": ["height", "width", "channel"],
            },
            "observation.state": {"dtype": "float32", "shape": [4], "names": {"motors": ["x", "y", "gx", "gy"]}},
            "action": {"dtype": "float32", "shape": [2], "names": {"motors": ["vx", "vy"]}},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    (meta / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS))
    )
    (meta / "episodes.jsonl").write_text(
        "".join(
            json.dumps({"episode_index": e, "tasks": [TASKS[e % 2]], "length": n}) + "\n" for e, n in enumerate(lengths)
        )
    )
    lines = []
    for e, ep in enumerate(episodes):
        st = {
            k: {
                "min": v.min(0).tolist(),
                "max": v.max(0).tolist(),
                "mean": v.mean(0).tolist(),
                "std": v.std(0).tolist(),
                "count": [len(v)],
            }
            for k, v in (("action", ep["action"]), ("observation.state", ep["state"]))
        }
        lines.append(json.dumps({"episode_index": e, "stats": st}) + "\n")
    (meta / "episodes_stats.jsonl").write_text("".join(lines))
    return root, episodes


def test_v21_metadata_and_columns(v21):
    root, episodes = v21
    ds = LeRobotDataset(root)
    assert ds.version == "v2.1" and ds.num_episodes == 3 and ds.num_frames == 34
    assert ds.tasks == TASKS
    assert ds.video_keys == ["observation.images.top"] and ds.image_keys == ["observation.images.wrist"]
    assert ds.episode_ranges == [(0, 14), (14, 23), (23, 34)]
    assert ds.episodes[1].videos["observation.images.top"] == (
        "videos/chunk-000/observation.images.top/episode_000001.mp4",
        0.0,
        0.9,
    )
    for i, ep in enumerate(episodes):
        s, t = ds.episode_ranges[i]
        assert np.array_equal(ds.data["observation.state"][s:t], ep["state"])
        assert np.array_equal(ds.data["action"][s:t], ep["action"])
        assert (ds.data["task_index"][s:t] == ep["task_index"]).all()
    all_actions = np.concatenate([ep["action"] for ep in episodes])
    assert np.allclose(ds.stats["action"]["mean"], all_actions.mean(0), atol=1e-6)
    assert np.allclose(ds.stats["action"]["std"], all_actions.std(0), atol=1e-6)
    assert ds.stats["action"]["count"][0] == 34


def test_v21_frames_av1_video_and_png_files(v21):
    root, episodes = v21
    ds = LeRobotDataset(root)
    for i, ep in enumerate(episodes):
        assert psnr(ds.episode_frames(i, "observation.images.top"), ep["top"]) >= 30  # AV1 4:2:0
        assert np.array_equal(ds.episode_frames(i, "observation.images.wrist"), ep["wrist"])  # PNG: exact
    w = WindowDataset(ds, n_obs_steps=1, future_frames=2, future_stride=3, action_horizon=4, image_size=16)
    item = w[len(w) - 1]
    assert item["frames"].shape == (3, 3, 16, 32)  # two cameras side by side, each resized to 16x16
    assert item["task"] == TASKS[0] and item["frame_is_pad"].tolist() == [False, True, True]


def test_v21_passes_the_checker(v21):
    from wam.data import check_dataset

    root, _ = v21
    report = check_dataset(root, decode="all")
    assert report.ok and not report.warnings, report.problems + report.warnings
    assert report.summary["version"] == "v2.1" and report.summary["video_files"] == 3
