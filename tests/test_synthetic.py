"""A short CPU training run on the synthetic dot world, then every mode checked on held-out episodes."""

import pytest
import torch

from wam import MODES, load_checkpoint, sample, save_checkpoint
from wam.synthetic import SyntheticSetup, evaluate_synthetic, train_synthetic
from wam.train import TrainConfig, make_state, validation_losses

SETUP = SyntheticSetup(steps=1500)  # about 2 minutes of training on 2 cores


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    return train_synthetic(SETUP)


@pytest.fixture(scope="module")
def metrics(run):
    return evaluate_synthetic(run, steps=1)


@pytest.mark.slow
def test_training_loss_falls(run):
    # the loss of the trained model on training windows is far below that of a fresh one
    losses = []
    fresh = make_state(SETUP.model, TrainConfig(seed=1)).model
    trained = validation_losses(run.state.ema, run.train, batches=2, batch_size=64)
    initial = validation_losses(fresh, run.train, batches=2, batch_size=64)
    for mode in MODES:
        losses.append((mode, trained[mode], initial[mode]))
        assert trained[mode] < 0.7 * initial[mode], losses


@pytest.mark.slow
def test_inverse_mode_beats_the_mean_action(metrics):
    assert metrics["inverse"]["action_mse"] < metrics["baseline_mean_action_mse"]


@pytest.mark.slow
def test_forward_and_video_modes_beat_copying_the_last_frame(metrics):
    assert metrics["forward"]["next_frame_mse"] < metrics["baseline_copy_last_frame_mse"]
    assert metrics["video"]["next_frame_mse"] < metrics["baseline_copy_last_frame_mse"]


@pytest.mark.slow
def test_given_tokens_pass_through_a_trained_model(run):
    cfg = run.state.ema.cfg
    ep, step = run.val.window_index()
    batch = run.val.gather(ep[:8], step[:8], cfg)
    for mode in MODES:
        out = sample(run.state.ema, batch, mode, steps=2)
        if "latents" in out:
            assert torch.equal(out["latents"][:, :cfg.n_obs_steps], batch["latents"][:, :cfg.n_obs_steps])
        if MODES[mode].future == "given":
            assert torch.equal(out["latents"], batch["latents"])
        if MODES[mode].actions == "given":
            assert torch.equal(out["actions"], batch["actions"])


@pytest.mark.slow
def test_trained_checkpoint_round_trips_bit_exactly(run, tmp_path):
    save_checkpoint(tmp_path / "ck", run.state.ema, run.tokenizer)
    ck = load_checkpoint(tmp_path / "ck")
    for a, b in zip(run.state.ema.state_dict().values(), ck.model.state_dict().values()):
        assert torch.equal(a, b)
    ep, step = run.val.window_index()
    batch = run.val.gather(ep[:4], step[:4], ck.model.cfg)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(sample(run.state.ema, batch, "joint", steps=2, generator=g())["actions"],
                               sample(ck.model, batch, "joint", steps=2, generator=g())["actions"], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_wam_eval_of_the_trained_model_beats_a_random_policy(run, tmp_path, capsys):
    """The trained synthetic model as a checkpoint (identity normalisation: the dot world's actions and
    states are already in [-1, 1]), evaluated closed loop by `wam eval` beside a random policy."""
    import json

    from wam.cli import main
    from wam.envs.dot import TASKS, make_env
    from wam.evaluate import RandomPolicy, eval_seeds, rollout

    cfg = run.state.ema.cfg
    stats = {"action_key": "action", "state_key": "observation.state",
             "stats": {"action": {"min": [-1.0] * cfg.action_dim, "max": [1.0] * cfg.action_dim},
                       "observation.state": {"mean": [0.0] * cfg.state_dim, "std": [1.0] * cfg.state_dim}}}
    save_checkpoint(tmp_path / "ck", run.state.ema, run.tokenizer, stats=stats,
                    config={"run": {"tasks": [TASKS["reach-goal"]], "cameras": ["top"], "fps": 10}})
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--env", "dot", "--episodes", "20", "--steps", "2",
                 "--n-action-steps", "1", "--out", str(tmp_path / "eval"), "--videos", "0", "--quiet"]) == 0
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    env = make_env(image_size=cfg.image_size)
    seeds = eval_seeds(0, "reach-goal", 20)
    assert info["per_task"][0]["seeds"] == seeds
    random = rollout(env, RandomPolicy(env.action_space, seed=0), seeds)
    assert info["pc_success"] >= 50.0
    assert info["pc_success"] > 100 * random["success"].mean() + 25, (info["pc_success"], random["success"].mean())
