"""The five modes as data; sample() in every mode; given tokens pass through; the training loss."""

import pytest
import torch
from conftest import random_batch, tiny_config
from test_model import randomise

from wam import MODES, WAM, sample, training_loss
from wam.config import LossConfig
from wam.modes import GENERATE, GIVEN, OMIT, initial_noise, mode_loss


def test_exactly_five_modes():
    assert set(MODES) == {"policy", "forward", "inverse", "video", "joint"}
    assert (MODES["policy"].future, MODES["policy"].actions) == (OMIT, GENERATE)
    assert (MODES["forward"].future, MODES["forward"].actions) == (GENERATE, GIVEN)
    assert (MODES["inverse"].future, MODES["inverse"].actions) == (GIVEN, GENERATE)
    assert (MODES["video"].future, MODES["video"].actions) == (GENERATE, OMIT)
    assert (MODES["joint"].future, MODES["joint"].actions) == (GENERATE, GENERATE)


@pytest.mark.parametrize("mode", list(MODES))
def test_given_tokens_come_back_unchanged(mode):
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    b = random_batch(cfg, B=2)
    out = sample(model, b, mode, steps=3, generator=torch.Generator().manual_seed(0))
    m = MODES[mode]
    if "latents" in out:  # history frames always clean; future frames given in inverse mode
        assert torch.equal(out["latents"][:, : cfg.n_obs_steps], b["latents"][:, : cfg.n_obs_steps])
        if m.future == GIVEN:
            assert torch.equal(out["latents"], b["latents"])
        else:
            assert not torch.equal(out["latents"][:, cfg.n_obs_steps :], b["latents"][:, cfg.n_obs_steps :])
        assert out["latents"].shape == b["latents"].shape
    if m.actions == GIVEN:
        assert torch.equal(out["actions"], b["actions"])
    if m.actions == GENERATE:
        assert out["actions"].shape == b["actions"].shape
    assert ("actions" in out) == (m.actions != OMIT)
    assert ("latents" in out) == (m.future != OMIT)


def test_policy_mode_ignores_future_frames():
    """Action-only inference: the future-video tokens are left out, so their content cannot matter."""
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    b = random_batch(cfg, B=2)
    b2 = dict(b, latents=b["latents"].clone())
    b2["latents"][:, cfg.n_obs_steps :] = 123.0
    a1 = sample(model, b, "policy", steps=2, generator=torch.Generator().manual_seed(0))["actions"]
    a2 = sample(model, b2, "policy", steps=2, generator=torch.Generator().manual_seed(0))["actions"]
    assert torch.equal(a1, a2)


def test_sample_is_seeded():
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    b = random_batch(cfg)
    o1 = sample(model, b, "joint", steps=2, generator=torch.Generator().manual_seed(5))
    o2 = sample(model, b, "joint", steps=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(o1["actions"], o2["actions"]) and torch.equal(o1["latents"], o2["latents"])


def test_initial_noise_is_the_noise_sample_draws():
    """What lets several generators share one batched sample() call (the policy server's batching)."""
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    b = random_batch(cfg)
    for mode in ("policy", "joint", "video", "inverse"):
        drawn = sample(model, b, mode, steps=2, generator=torch.Generator().manual_seed(5))
        noise = initial_noise(cfg, mode, 2, tuple(b["latents"].shape[2:]), torch.Generator().manual_seed(5))
        given = sample(model, b, mode, steps=2, noise=noise)
        assert drawn.keys() == given.keys() and all(torch.equal(drawn[k], given[k]) for k in drawn), mode
    with pytest.raises(ValueError, match="needs noise for"):
        sample(model, b, "joint", steps=2, noise={"actions": noise["actions"]})


def test_classifier_free_guidance_changes_the_answer():
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    b = random_batch(cfg)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a1 = sample(model, b, "policy", steps=2, generator=g())["actions"]
    a_same = sample(model, b, "policy", steps=2, generator=g(), cfg_scale=1.0)["actions"]
    a3 = sample(model, b, "policy", steps=2, generator=g(), cfg_scale=3.0)["actions"]
    assert torch.equal(a1, a_same)
    assert (a1 - a3).abs().max() > 1e-4


@pytest.mark.parametrize("cache", [False, True])
def test_action_guidance_extrapolates_from_video_mode_to_forward_mode(cache):
    """w = 1 is forward mode, w = 0 is video mode (the actions left out); one Euler step is linear in w."""
    cfg = tiny_config(attention="prefix")
    model = randomise(WAM(cfg))
    b = random_batch(cfg)
    noise = initial_noise(cfg, "forward", 2, tuple(b["latents"].shape[2:]), torch.Generator().manual_seed(3))
    run = lambda mode, **kw: sample(model, b, mode, steps=1, noise=noise, cache=cache, **kw)["latents"]  # noqa: E731
    plain, video = run("forward"), run("video")
    assert torch.equal(run("forward", action_guidance=1.0), plain)
    assert torch.equal(run("forward", action_guidance=0.0), video)
    assert not torch.allclose(plain, video)  # the actions do move this network's frames
    torch.testing.assert_close(run("forward", action_guidance=3.0), 3 * plain - 2 * video, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="action_guidance"):
        sample(model, b, "joint", steps=1, action_guidance=2.0)


def test_bad_mode_and_missing_inputs():
    cfg = tiny_config()
    model = WAM(cfg)
    b = random_batch(cfg)
    with pytest.raises(ValueError, match="unknown mode"):
        sample(model, b, "dream")
    with pytest.raises(ValueError, match="actions"):
        sample(model, dict(b, actions=None), "forward")
    with pytest.raises(ValueError, match="solver"):
        sample(model, b, "policy", solver="rk4")


def test_loss_falls_when_overfitting_one_batch():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = WAM(cfg)
    b = random_batch(cfg, B=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        loss, _ = training_loss(model, b, LossConfig(), generator=torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_action_free_examples_give_zero_action_gradient():
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    b = dict(random_batch(cfg, B=4), has_actions=torch.zeros(4, dtype=torch.bool))
    loss, parts = training_loss(model, b, LossConfig(p_omit_future=0.0), generator=torch.Generator().manual_seed(0))
    assert float(parts["loss_action"]) == 0.0
    loss.backward()
    assert model.final_action.linear.weight.grad is None or model.final_action.linear.weight.grad.abs().max() == 0


def test_padding_is_excluded_from_the_loss():
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    b = random_batch(cfg, B=4)
    pad = torch.zeros(4, cfg.action_horizon, dtype=torch.bool)
    pad[:, -1] = True
    b_pad = dict(b, action_is_pad=pad)
    b_changed = dict(b_pad, actions=b["actions"].clone())
    b_changed["actions"][:, -1] = 50.0  # garbage in the padded step (its token still exists as input)
    lc = LossConfig(p_omit_action=0.0, p_clean_action=0.0, p_omit_future=0.0, p_clean_future=1.0)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    _, p1 = training_loss(model, b_pad, lc, generator=g())
    _, p2 = training_loss(model, b, lc, generator=g())
    assert float(p1["loss_action"]) != float(p2["loss_action"])
    dims = torch.tensor([[True, False]] * 4)
    _, p3 = training_loss(model, dict(b, action_dim_mask=dims), lc, generator=g())
    assert float(p3["loss_action"]) != float(p2["loss_action"])


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_loss_is_finite(mode):
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    loss = mode_loss(model, random_batch(cfg, B=3), mode, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and float(loss.detach()) > 0
