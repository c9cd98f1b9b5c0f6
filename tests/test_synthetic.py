"""A short CPU training run on the synthetic dot world, then every mode checked on held-out episodes."""

import pytest
import torch

from wam import MODES, load_checkpoint, sample, save_checkpoint
from wam.synthetic import SyntheticSetup, evaluate_synthetic, train_synthetic
from wam.train import TrainConfig, make_state, validation_losses

SETUP = SyntheticSetup()  # 2000 steps: 92-113 s of training on 2 cores


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
def test_inverse_mode_reads_the_action_from_the_next_frame(metrics):
    # at most a tenth of the error of predicting the mean action; and far below the policy mode, which sees
    # the same history but not the next frame, so cannot know the expert's exploration noise
    assert metrics["inverse"]["action_mse"] <= 0.1 * metrics["baseline_mean_action_mse"], metrics
    assert metrics["inverse"]["action_mse"] < 0.5 * metrics["policy"]["action_mse"], metrics


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
            assert torch.equal(out["latents"][:, : cfg.n_obs_steps], batch["latents"][:, : cfg.n_obs_steps])
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
    torch.testing.assert_close(
        sample(run.state.ema, batch, "joint", steps=2, generator=g())["actions"],
        sample(ck.model, batch, "joint", steps=2, generator=g())["actions"],
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.slow
def test_wam_eval_of_the_trained_model_beats_a_random_policy(run, tmp_path, capsys):
    """The trained synthetic model as a checkpoint (identity normalisation: the dot world's actions and
    states are already in [-1, 1]), evaluated closed loop by `wam eval` beside a random policy."""
    import json

    from wam.cli import main
    from wam.envs.dot import TASKS, make_env
    from wam.evaluate import eval_seeds
    from wam.rollout import RandomPolicy, rollout

    cfg = run.state.ema.cfg
    stats = {
        "action_key": "action",
        "state_key": "observation.state",
        "stats": {
            "action": {"min": [-1.0] * cfg.action_dim, "max": [1.0] * cfg.action_dim},
            "observation.state": {"mean": [0.0] * cfg.state_dim, "std": [1.0] * cfg.state_dim},
        },
    }
    save_checkpoint(
        tmp_path / "ck",
        run.state.ema,
        run.tokenizer,
        stats=stats,
        config={"run": {"tasks": [TASKS["reach-goal"]], "cameras": ["top"], "fps": 10}},
    )
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "ck"),
                "--env",
                "dot",
                "--episodes",
                "20",
                "--steps",
                "2",
                "--n-action-steps",
                "1",
                "--out",
                str(tmp_path / "eval"),
                "--videos",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    env = make_env(image_size=cfg.image_size)
    seeds = eval_seeds(0, "reach-goal", 20)
    assert info["per_task"][0]["seeds"] == seeds
    random = rollout(env, RandomPolicy(env.action_space, seed=0), seeds)
    assert info["pc_success"] >= 50.0
    assert info["pc_success"] > 100 * random["success"].mean() + 25, (info["pc_success"], random["success"].mean())


@pytest.mark.slow
def test_fast_inference_options_keep_the_trained_models_answer(run):
    """Every speed option of wam.inference on the trained model (attention "full"; the cache's exactness is
    pinned in test_inference.py), held-out windows, the same noise: the exact attention kernel to float
    rounding; the approximate options within the tolerance
    the README states (deviation from the exact 8-step answer at most 2% of the actions' variance; few-step
    and warm-started answers no more than 1.5x the exact answer's error against the data, plus 1% of the
    variance)."""
    from wam.inference import InferenceConfig, TaylorSeer, autocast, prepare
    from wam.inference.attention import using_attention
    from wam.modes import initial_noise

    model = run.state.ema.eval()
    cfg = model.cfg
    ep, step = run.val.window_index()
    k = max(1, cfg.action_horizon // 2)  # the chunk is k steps old when the next one is sampled
    ok = step + k + cfg.action_horizon < run.val.lengths[ep]
    ep, step = ep[ok][:48], step[ok][:48]
    now, later = run.val.gather(ep, step, cfg), run.val.gather(ep, step + k, cfg)
    B = len(ep)
    g = torch.Generator().manual_seed(0)
    shape = tuple(now["latents"].shape[2:])
    noise_now, noise_later = (initial_noise(cfg, "policy", B, shape, g)["actions"] for _ in range(2))
    var = float(now["actions"].var())

    def act(batch=now, noise=noise_now, m=model, **kw):
        return sample(m, batch, "policy", noise={"actions": noise}, **{"steps": 8, **kw})["actions"]

    exact = act()
    dev = lambda a: float((a - exact).pow(2).mean()) / var  # noqa: E731
    err = lambda a, batch=now: float((a - batch["actions"]).pow(2).mean())  # noqa: E731
    assert cfg.attention == "full"
    devs = {}
    with using_attention("block_sparse"):
        devs["block_sparse"] = dev(act())
    assert devs["block_sparse"] < 1e-9, devs
    devs["taylor 1:2"] = dev(act(taylor=TaylorSeer(1, 2)))
    devs["taylor 1:3 gated"] = dev(act(taylor=TaylorSeer(1, 3, gate=0.05)))
    devs["int8"] = dev(act(m=prepare(model, InferenceConfig(quantize="int8", cache=False))))
    with autocast(InferenceConfig(precision="bf16")):
        devs["bf16"] = dev(act())
    assert max(devs.values()) < 0.02, devs
    # few steps, judged against the data
    for steps in (1, 2, 4):
        assert err(act(steps=steps)) < 1.5 * err(exact) + 0.01 * var, (steps, err(exact))
    # warm start: the chunk of k steps earlier, shifted by k and re-noised to t = 0.5, then 2 steps
    guess = torch.cat([exact[:, k:], exact[:, -1:].expand(B, k, exact.shape[2])], 1)
    warm = sample(model, later, "policy", noise={"actions": 0.5 * guess + 0.5 * noise_later}, t_start=0.5, steps=2)[
        "actions"
    ]
    cold = act(batch=later, noise=noise_later)
    assert err(warm, later) < 1.5 * err(cold, later) + 0.01 * var, (err(warm, later), err(cold, later))
