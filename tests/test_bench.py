"""`wam bench` on a checkpoint whose training dataset is not on this machine (a shipped checkpoint): it collects
a few fresh episodes with the scripted expert, says so, caches them, and replays the same ones for the setting
under test and the reference path."""

import json

import pytest
import torch
from conftest import tiny_config

from wam.checkpoint import save_checkpoint
from wam.cli import main
from wam.envs.dot import TASKS
from wam.model import WAM
from wam.tokenizer import make_tokenizer

TASK = TASKS["reach-goal"]


def shipped_checkpoint(root, **run_extra):
    """A random-weight tiny dot-world checkpoint that records a training dataset that does not exist here."""
    cfg = tiny_config(image_size=16, state_dim=4, action_dim=2, action_horizon=8, n_obs_steps=1, n_tasks=1, depth=1)
    torch.manual_seed(0)
    stats = {
        "action_key": "action",
        "state_key": "observation.state",
        "stats": {
            "action": {"min": [-1.0] * 2, "max": [1.0] * 2},
            "observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4},
        },
    }
    run = {
        "dataset": str(root / "not-here" / "dot"),
        "tasks": [TASK],
        "cameras": ["top"],
        "fps": 10,
        "val_episodes": [7],
        **run_extra,
    }
    return save_checkpoint(root / "ck", WAM(cfg), make_tokenizer(cfg), stats=stats, config={"run": run})


def test_bench_without_the_training_dataset_replays_fresh_expert_episodes(tmp_path, monkeypatch, capsys):
    from wam.bench import expert_episodes
    from wam.checkpoint import load_checkpoint

    monkeypatch.setenv("WAM_CACHE", str(tmp_path / "cache"))
    ck = shipped_checkpoint(tmp_path)
    args = ["bench", "--checkpoint", str(ck), "--mode", "policy", "--steps", "1", "--episodes", "1", "--warmup", "1"]
    assert main(args) == 0
    out = capsys.readouterr()
    res = json.loads(out.out)
    assert "is not here: collecting 1 fresh episodes of dot's scripted expert" in out.err
    cached = tmp_path / "cache" / "bench-episodes"
    assert res["dataset"].startswith(str(cached)) and res["episodes"] == 1
    assert res["calls"] >= 1 and res["quality"]["reference_action_mse_vs_data"] >= 0
    # the second time: the cached episodes
    assert expert_episodes(load_checkpoint(ck), 1) == (res["dataset"], [0])
    assert "collected earlier" in capsys.readouterr().err
    assert main([*args, "--dataset", str(tmp_path / "nope")]) == 2  # a --dataset that does not exist: named
    assert "--dataset" in capsys.readouterr().err


def test_fresh_episodes_are_collected_on_the_scene_the_checkpoint_was_trained_on(tmp_path, monkeypatch):
    """A checkpoint trained on a benchmark protocol's frames (run.protocol) replays frames made on that scene, kept
    apart from episodes collected for another scene."""
    import wam.collect
    from wam.bench import expert_episodes
    from wam.checkpoint import load_checkpoint

    monkeypatch.setenv("WAM_CACHE", str(tmp_path / "cache"))
    seen = {}

    def collect(env, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("collected")

    monkeypatch.setattr(wam.collect, "collect", collect)
    ck = load_checkpoint(shipped_checkpoint(tmp_path, protocol="lerobot"))
    with pytest.raises(RuntimeError, match="collected"):
        expert_episodes(ck, 2)
    assert seen["protocol"] == "lerobot" and seen["image_size"] == 16
    assert "dot-lerobot-2ep-seed0" in str(seen["out"])
