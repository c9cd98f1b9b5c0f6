"""The critic (wam.critic) and test-time planning (`--plan N`): it learns outcomes from a dataset's rewards and
success flags, best-of-N acts on the highest-scored imagined future, and planning is deterministic."""

import json

import numpy as np
import pytest
import torch
from conftest import random_dot_checkpoint, tiny_config

from wam.critic import Critic, CriticConfig, load_critic, longest_run, outcome_rows, train_critic
from wam.policy import WAMPolicy
from wam.stats import auc

SIZE = 32


@pytest.fixture(scope="module")
def dot_data(tmp_path_factory):
    from wam.cli import main

    out = tmp_path_factory.mktemp("critic") / "dot"
    assert (
        main(
            [
                "collect",
                "dot",
                "--episodes",
                "24",
                "--image-size",
                str(SIZE),
                "--workers",
                "1",
                "--keep-failed",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def checkpoint(dot_data, tmp_path_factory):
    """A random-weight tiny WAM over the dot dataset's tasks and camera."""
    from wam.data import LeRobotDataset

    ds = LeRobotDataset(dot_data)
    camera = ds.camera_keys[0].removeprefix("observation.images.")
    tasks = list(ds.tasks)
    cfg = tiny_config(image_size=SIZE, state_dim=4, action_dim=2, action_horizon=4, n_obs_steps=1, n_tasks=len(tasks))
    return random_dot_checkpoint(
        tmp_path_factory.mktemp("critic-ck") / "ck", cfg, {"tasks": tasks, "cameras": [camera], "fps": 10}
    )


def test_outcome_rows_pair_each_frame_with_the_step_that_reached_it():
    eps = [
        {
            "frames": np.zeros((4, 8, 8, 3), np.uint8),
            "task_index": 1,
            "rewards": np.array([1, 2, 3, 4.0]),
            "successes": np.array([0, 0, 1, 1.0]),
        },
        {"frames": np.zeros((3, 8, 8, 3), np.uint8), "task_index": 7, "rewards": np.ones(3)},
    ]  # unknown task
    rows = outcome_rows(eps, {1: 0})
    assert rows["row"].tolist() == [1, 2, 3] and rows["episode"].tolist() == [0, 0, 0]
    assert rows["reward"].tolist() == [1, 2, 3] and rows["success"].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="next.reward"):
        outcome_rows([{"frames": np.zeros((3, 8, 8, 3)), "task_index": 0}], {0: 0})
    assert auc(np.array([0.1, 0.9, 0.4]), np.array([0, 1, 0])) == 1.0
    assert auc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0
    assert [longest_run(np.array(f, bool)) for f in ([], [0, 1, 1, 0, 1], [1, 1, 1], [0, 0])] == [0, 2, 3, 0]


def test_train_critic_learns_progress_and_writes_it_atomically(checkpoint, dot_data, tmp_path):
    out = tmp_path / "critic"
    metrics = train_critic(checkpoint, [dot_data], out=out, steps=200, batch_size=64, progress=False, val_fraction=0.34)
    assert sorted(p.name for p in out.iterdir()) == ["critic.json", "critic.safetensors"]
    assert metrics["val_episodes"] == 8 and metrics["train_frames"] > 0
    # the dot world's reward is minus the distance to the goal: the critic learns to rank frames by it
    assert metrics["train_progress_spearman"] > 0.8, metrics
    assert -1 <= metrics["val_progress_spearman"] <= 1 and 0 <= metrics["val_success_accuracy"] <= 1
    critic = load_critic(out)
    assert critic.cfg.model_hash and critic.cfg.tokenizer_hash
    assert list(critic.cfg.reward_range) == metrics["reward_range"]
    z = torch.randn(3, *((critic.cfg.latent_channels,) + critic.cfg.grid))
    p, logit, state = critic(z, torch.zeros(3, dtype=torch.long))
    assert p.shape == logit.shape == (3,) and bool(((p >= 0) & (p <= 1)).all())
    assert critic.cfg.state_dim == 4 and state.shape == (3, 4) and "val_state_mae" in metrics
    with pytest.raises(FileNotFoundError, match="wam critic"):
        load_critic(tmp_path / "nothing")


class Ranked(Critic):
    """A critic whose score is one latent value: the test knows which future it prefers."""

    def score(self, latents, task):
        return latents.flatten(1)[:, 0]


def _policy(checkpoint, **kw):
    from wam.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    cfg = ck.model.cfg
    critic = Ranked(CriticConfig(latent_channels=cfg.latent_channels, grid=(SIZE // 4, SIZE // 4), n_tasks=cfg.n_tasks))
    return WAMPolicy(ck, mode="joint", steps=2, critic=critic, **kw)


def _obs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "observation.images.top": rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=(2, 4)).astype(np.float32),
        "task": 0,
    }


def test_plan_acts_on_the_highest_scored_future_and_is_deterministic(checkpoint):
    policy = _policy(checkpoint, plan=4)
    cams = policy.cameras
    obs = {**_obs(), cams[0]: _obs()["observation.images.top"]}
    chunk = policy.predict_action_chunk(obs)  # (B=2, H, A)
    scores, cands = policy.state.last_scores, policy.state.last_candidates
    assert scores.shape == (2, 4) and cands.shape == (2, 4, 4, 2)
    assert len({tuple(c.flatten().tolist()) for c in cands[0]}) == 4  # four different futures
    best = scores.argmax(1)
    want = policy.normalizer.unnormalize_action(cands[torch.arange(2), best].clamp(-1, 1)).numpy()
    np.testing.assert_allclose(chunk, want, atol=1e-5)
    assert policy.settings["plan"] == 4
    again = _policy(checkpoint, plan=4)
    np.testing.assert_array_equal(again.predict_action_chunk(obs), chunk)  # same seed, same plan
    one = _policy(checkpoint, plan=1)
    assert one.predict_action_chunk(obs).shape == chunk.shape and "plan" not in one.settings


def test_forward_plan_scores_what_the_world_model_predicts_from_each_candidates_actions(checkpoint, monkeypatch):
    import wam.policy as policy_mod

    calls = []
    real = policy_mod.sample

    def recording(model, batch, mode, **kw):
        out = real(model, batch, mode, **kw)
        calls.append((mode, {k: v.clone() for k, v in batch.items()}, {k: v.clone() for k, v in out.items()}))
        return out

    monkeypatch.setattr(policy_mod, "sample", recording)
    imagined = _policy(checkpoint, plan=4)
    cams = imagined.cameras
    obs = {**_obs(), cams[0]: _obs()["observation.images.top"]}
    imagined.predict_action_chunk(obs)
    calls.clear()
    forward = _policy(checkpoint, plan=4, plan_score="forward")
    chunk = forward.predict_action_chunk(obs)
    assert [c[0] for c in calls] == ["joint", "forward"]
    (_, _, joint_out), (_, given, fwd_out) = calls
    torch.testing.assert_close(given["actions"], joint_out["actions"].clamp(-1, 1))  # each candidate's own actions
    assert not torch.equal(fwd_out["latents"][:, -1], joint_out["latents"][:, -1])  # another future is scored
    # the same candidates as the imagined-future planner (same noise), chosen by the forward futures' scores
    torch.testing.assert_close(forward.state.last_candidates, imagined.state.last_candidates)
    best = forward.state.last_scores.argmax(1)
    want = forward.normalizer.unnormalize_action(forward.state.last_candidates[torch.arange(2), best].clamp(-1, 1))
    np.testing.assert_allclose(chunk, want.numpy(), atol=1e-5)
    assert forward.settings["plan_score"] == "forward"
    calls.clear()  # policy mode proposes the candidates, the world model checks them
    ck = forward.checkpoint
    pol = WAMPolicy(ck, mode="policy", steps=2, critic=forward.critic, plan=3, plan_score="forward")
    assert pol.predict_action_chunk(obs).shape == chunk.shape and [c[0] for c in calls] == ["policy", "forward"]
    with pytest.raises(ValueError, match="plan_score"):
        WAMPolicy(ck, mode="joint", plan=2, critic=forward.critic, plan_score="best")
    plain_fwd = calls[1][2]["latents"]
    calls.clear()  # guided forward futures: the same candidates, scored on futures that follow their actions more
    guided = WAMPolicy(
        ck, mode="policy", steps=2, critic=forward.critic, plan=3, plan_score="forward", plan_guidance=3.0
    )
    guided.predict_action_chunk(obs)
    assert [c[0] for c in calls] == ["policy", "forward"]
    assert not torch.allclose(plain_fwd, calls[1][2]["latents"])
    torch.testing.assert_close(guided.state.last_candidates, pol.state.last_candidates)
    assert guided.settings["plan_guidance"] == 3.0 and "plan_guidance" not in pol.settings
    with pytest.raises(ValueError, match="plan_guidance"):
        WAMPolicy(ck, mode="joint", plan=2, critic=forward.critic, plan_guidance=2.0)  # imagined futures: no


def test_plan_needs_frames_and_a_critic(checkpoint, tmp_path):
    from wam.checkpoint import load_checkpoint

    with pytest.raises(ValueError, match="joint"):
        WAMPolicy(load_checkpoint(checkpoint), mode="policy", plan=2)
    with pytest.raises(FileNotFoundError, match="wam critic"):
        WAMPolicy(load_checkpoint(checkpoint), mode="joint", plan=2, critic=tmp_path / "none")
    with pytest.raises(ValueError, match="plan must be"):
        WAMPolicy(load_checkpoint(checkpoint), mode="joint", plan=0)


def test_cli_critic_then_eval_with_plan(checkpoint, dot_data, tmp_path):
    from wam.cli import main

    assert (
        main(
            [
                "critic",
                "--checkpoint",
                str(checkpoint),
                "--dataset",
                str(dot_data),
                "--steps",
                "20",
                "--batch-size",
                "32",
                "--quiet",
            ]
        )
        == 0
    )
    assert (checkpoint / "critic" / "critic.json").is_file()
    common = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--env",
        "dot",
        "--episodes",
        "1",
        "--max-steps",
        "8",
        "--videos",
        "0",
        "--no-expert",
        "--quiet",
        "--steps",
        "2",
    ]
    assert main([*common, "--mode", "joint", "--plan", "3", "--out", str(tmp_path / "e")]) == 0
    info = json.loads((tmp_path / "e" / "eval_info.json").read_text())
    assert info["settings"]["plan"] == 3
    assert main([*common, "--plan", "3", "--out", str(tmp_path / "p")]) == 2  # policy mode imagines nothing
    assert main([*common, "--plan", "3", "--plan-score", "forward", "--out", str(tmp_path / "f")]) == 0
    info = json.loads((tmp_path / "f" / "eval_info.json").read_text())
    assert info["settings"]["plan"] == 3 and info["settings"]["plan_score"] == "forward"
    assert (
        main([*common, "--plan", "2", "--plan-score", "forward", "--plan-guidance", "2", "--out", str(tmp_path / "g")])
        == 0
    )
    assert json.loads((tmp_path / "g" / "eval_info.json").read_text())["settings"]["plan_guidance"] == 2.0
