"""Episode windows: time layout, padding at episode edges, normalisation, cameras, resizing, cache."""

import json

import numpy as np
import pytest
import torch

from wam.config import PRESETS
from wam.data import LeRobotDataset, Normalizer, WindowDataset, write_dataset
from wam.data.video import psnr


def ramp_episodes(lengths=(20, 12, 16), size=32):
    """Frame k of every episode shows brightness 8*k in its top-left quarter, so steps are readable
    back from decoded frames; actions and states are known ramps."""
    episodes = []
    for e, n in enumerate(lengths):
        frames = np.zeros((n, size, size, 3), np.uint8)
        for k in range(n):
            frames[k, : size // 2, : size // 2] = 8 * k
            frames[k, size // 2 :, size // 2 :] = 200 - 40 * e
        steps = np.arange(n, dtype=np.float32)
        episodes.append(
            {
                "observation.images.top": frames,
                "observation.images.side": frames[:, ::-1].copy(),
                "observation.state": np.stack([steps, np.full(n, e, np.float32), np.ones(n, np.float32)], 1),
                "action": np.stack([steps / 10, -steps / 10 + e], 1).astype(np.float32),
                "task": f"task {e % 2}",
            }
        )
    return episodes


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("win") / "ramps"
    episodes = ramp_episodes()
    write_dataset(root, episodes, fps=10)
    return LeRobotDataset(root), episodes


def step_of(frame: torch.Tensor) -> float:
    """Read the encoded step back from a (C, H, W) frame in [-1, 1] (top-left quarter of the first camera)."""
    h = frame.shape[1] // 2
    return float(((frame[:, :h, :h] + 1) * 127.5).mean() / 8)


def test_window_layout_and_padding(ds):
    data, episodes = ds
    w = WindowDataset(data, n_obs_steps=2, future_frames=3, future_stride=4, action_horizon=6, cameras=["top"])
    assert len(w) == 20 + 12 + 16
    first = w[0]  # episode 0, t = 0
    assert first["frames"].shape == (5, 3, 32, 32) and first["frames"].dtype == torch.float32
    assert first["frame_is_pad"].tolist() == [True, False, False, False, False]
    assert [round(step_of(f)) for f in first["frames"]] == [0, 0, 4, 8, 12]  # pad copies the nearest frame
    assert first["state_is_pad"].tolist() == [True, False]
    assert first["action_is_pad"].tolist() == [False] * 6
    last = w[19]  # episode 0, t = 19 (its last step)
    assert last["frame_is_pad"].tolist() == [False, False, True, True, True]
    assert [round(step_of(f)) for f in last["frames"]] == [18, 19, 19, 19, 19]
    assert last["action_is_pad"].tolist() == [False] + [True] * 5
    mid = w[20 + 5]  # episode 1, t = 5
    assert mid["episode_index"].item() == 1 and mid["index"].item() == 25 and mid["task"] == "task 1"
    assert mid["frame_is_pad"].tolist() == [False] * 3 + [True] * 2  # steps 4, 5 | 9, 13, 17 of 0..11
    assert [round(step_of(f)) for f in mid["frames"]] == [4, 5, 9, 11, 11]
    norm = w.normalizer
    actions = norm.unnormalize_action(mid["action"].numpy())
    assert np.allclose(actions, episodes[1]["action"][5:11], atol=1e-5)
    states = norm.unnormalize_state(mid["state"].numpy())
    assert np.allclose(states, episodes[1]["observation.state"][4:6], atol=1e-4)


def test_normalisation_ranges_and_json_round_trip(ds):
    data, _ = ds
    w = WindowDataset(data, n_obs_steps=1, future_frames=0, future_stride=1, action_horizon=1, cameras=["top"])
    actions = torch.stack([w[i]["action"][0] for i in range(len(w))])
    assert actions.min() >= -1 - 1e-6 and actions.max() <= 1 + 1e-6
    assert torch.allclose(actions.min(0).values, torch.tensor([-1.0, -1.0]), atol=1e-5)
    states = torch.stack([w[i]["state"][0] for i in range(len(w))])
    assert torch.allclose(states[:, :2].mean(0), torch.zeros(2), atol=1e-4)  # standardised
    assert torch.isfinite(states).all()  # the constant third dimension stays finite
    restored = Normalizer.from_dict(json.loads(json.dumps(w.normalizer.to_dict())))
    x = torch.randn(5, 2)
    assert torch.allclose(restored.unnormalize_action(w.normalizer.normalize_action(x)), x, atol=1e-5)
    with pytest.raises(ValueError, match="min/max"):
        Normalizer({"observation.state": {"mean": [0.0], "std": [1.0]}})


def test_cameras_side_by_side_resized_with_wam_tiny_layout(ds):
    data, episodes = ds
    cfg = PRESETS["wam-tiny"]
    w = WindowDataset(
        data,
        n_obs_steps=cfg.n_obs_steps,
        future_frames=cfg.future_frames,
        future_stride=cfg.future_stride,
        action_horizon=cfg.action_horizon,
        cameras=["top", "observation.images.side"],
        image_size=cfg.image_size,
    )
    item = w[3]
    assert item["frames"].shape == (cfg.frames, 3, 64, 128)
    assert item["action"].shape == (cfg.action_horizon, 2) and item["state"].shape == (1, 3)
    top, side = item["frames"][0, :, :, :64], item["frames"][0, :, :, 64:]
    assert torch.allclose(side, top.flip(1), atol=2 / 127.5)  # the side camera is the top one upside down
    with pytest.raises(ValueError, match="cameras: top, side"):
        WindowDataset(data, n_obs_steps=1, future_frames=1, future_stride=1, action_horizon=1, cameras=["wrist"])


def test_decode_cache_decodes_each_episode_once_and_batches_collate(ds):
    data, episodes = ds
    w = WindowDataset(data, n_obs_steps=1, future_frames=2, future_stride=2, action_horizon=4, episodes=[2, 0])
    assert len(w) == 16 + 20 and w.decodes == 0
    assert w[0]["episode_index"].item() == 2
    for _ in range(2):
        for i in range(len(w)):
            w[i]
    assert w.decodes == 2 and w.cache_nbytes == w.estimated_cache_nbytes() == 36 * 3 * 32 * 64
    loader = torch.utils.data.DataLoader(w, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    assert batch["frames"].shape == (8, 3, 3, 32, 64) and len(batch["task"]) == 8
    cached = w.episode_frames(1).transpose(0, 2, 3, 1)[:, :, :32]  # episode 0, camera top
    assert psnr(cached, episodes[0]["observation.images.top"]) >= 35


def test_datasets_without_state_give_empty_state(tmp_path):
    episodes = ramp_episodes(lengths=(6,))
    for ep in episodes:
        del ep["observation.state"], ep["observation.images.side"]
    w = WindowDataset(
        write_dataset(tmp_path / "nostate", episodes, fps=10),
        n_obs_steps=2,
        future_frames=1,
        future_stride=1,
        action_horizon=2,
    )
    item = w[0]
    assert item["state"].shape == (2, 0) and item["state_is_pad"].tolist() == [True, False]
    assert w.normalizer.state_dim == 0 and w.normalizer.action_dim == 2
