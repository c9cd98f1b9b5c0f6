"""The training loop: window gathering, determinism, resuming, the NaN guard, the lr schedule."""

import numpy as np
import pytest
import torch
from conftest import tiny_config

from wam.episodes import shift_latents
from wam.tokenizer import PixelTokenizer
from wam.train import (
    TrainConfig,
    TrainingDiverged,
    episodes_to_tensors,
    fit,
    load_train_state,
    lr_at,
    make_state,
    train_state_dict,
    validation_losses,
)


def episodes(n=3, length=6, A=2, S=3, size=16):
    rng = np.random.default_rng(0)
    return [
        {
            "frames": rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
            "actions": rng.uniform(-1, 1, (length, A)).astype(np.float32),
            "states": rng.normal(size=(length, S)).astype(np.float32),
            "task_index": i % 2,
        }
        for i in range(n)
    ]


def tensors(**kw):
    return episodes_to_tensors(episodes(**kw), PixelTokenizer(3, 4))


def pixel_cfg(**changes):
    return tiny_config(tokenizer="pixel", latent_channels=48, **changes)


def test_gather_windows_and_padding():
    cfg = pixel_cfg()  # 2 history, 2 future (stride 1), 3 actions
    data = tensors()
    b = data.gather(torch.tensor([1, 1]), torch.tensor([0, 5]), cfg)
    # step 0: the first history frame is before the episode start (padded, repeats row 0)
    assert b["frame_is_pad"][0].tolist() == [True, False, False, False]
    assert torch.equal(b["latents"][0, 0], b["latents"][0, 1])
    # step 5 (last): future frames and actions 1, 2 run past the end
    assert b["frame_is_pad"][1].tolist() == [False, False, True, True]
    assert b["action_is_pad"][1].tolist() == [False, True, True]
    start = int(data.starts[1])
    assert torch.equal(b["actions"][1, 0], data.actions[start + 5])
    assert torch.equal(b["latents"][1, 1], data.latents[start + 5])
    assert b["task"].tolist() == [1, 1]
    assert data.num_windows == 18


def test_mixed_action_dims_are_padded_and_masked():
    eps = episodes(n=2)
    eps[1]["actions"] = eps[1]["actions"][:, :1]
    data = episodes_to_tensors(eps, PixelTokenizer(3, 4))
    assert data.actions.shape[1] == 2
    assert data.action_dim_mask.tolist() == [[True, True], [True, False]]


def test_training_is_deterministic_and_resumes_exactly():
    cfg, data = pixel_cfg(), tensors()
    tc = TrainConfig(steps=8, batch_size=4, lr=1e-3, warmup_steps=2, log_every=4, precision="fp32")
    straight = make_state(cfg, tc)
    fit(straight, data, tc)
    # stop after 3 steps, save, restore into fresh objects, continue
    first = make_state(cfg, tc)
    fit(first, data, tc, until=3)
    saved = {"model": {k: v.clone() for k, v in first.model.state_dict().items()}, **train_state_dict(first, tc)}
    resumed = make_state(cfg, tc)
    resumed.model.load_state_dict(saved["model"])
    load_train_state(resumed, saved)
    assert resumed.step == 3
    fit(resumed, data, tc)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_a_resumed_run_keeps_the_precision_auto_chose_and_an_explicit_one_still_decides(monkeypatch):
    import wam.train as train_mod

    cfg, data = pixel_cfg(), tensors()
    tc = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, log_every=2, precision="auto")
    monkeypatch.setattr(train_mod, "resolve_precision", lambda p, d="cpu": "fp32" if p == "auto" else p)
    first = make_state(cfg, tc)
    fit(first, data, tc, until=2)
    saved = {"model": first.model.state_dict(), **train_state_dict(first, tc)}
    assert saved["precision"] == "fp32"
    # the next sitting's timing would choose bf16: the run keeps fp32
    monkeypatch.setattr(train_mod, "resolve_precision", lambda p, d="cpu": "bf16" if p == "auto" else p)
    resumed = make_state(cfg, tc)
    load_train_state(resumed, saved)
    fit(resumed, data, tc, until=3)
    assert resumed.precision == "fp32"
    fit(resumed, data, TrainConfig(**{**tc.__dict__, "precision": "bf16"}))  # asked for by name: it decides
    assert resumed.precision == "bf16"


def test_latent_shift_moves_every_frame_of_an_example_alike_within_each_camera():
    x = torch.randn(6, 3, 2, 5, 10)  # (B, T, c, h, w): two cameras of 5x5 cells side by side
    assert torch.equal(shift_latents(x, 0, 2, torch.Generator().manual_seed(0)), x)
    y = shift_latents(x, 2, 2, torch.Generator().manual_seed(0))

    def moved(b, oy, ox):  # example b moved by (oy, ox) cells, edge cells repeated, each camera on its own
        rows = (torch.arange(5) - oy).clamp(0, 4)
        cols = torch.cat([cam * 5 + (torch.arange(5) - ox).clamp(0, 4) for cam in range(2)])
        return x[b][..., rows, :][..., cols]

    offsets = []
    for b in range(6):
        fits = [(oy, ox) for oy in range(-2, 3) for ox in range(-2, 3) if torch.equal(y[b], moved(b, oy, ox))]
        assert len(fits) == 1  # one offset explains every frame, channel and camera of the example
        offsets += fits
    assert len(set(offsets)) > 1  # each example draws its own
    assert torch.equal(shift_latents(x, 2, 2, torch.Generator().manual_seed(0)), y)  # the generator decides


def test_training_with_latent_shift_is_deterministic_and_differs_from_without():
    cfg, data = pixel_cfg(), tensors()
    weights = []
    for shift in (1, 1, 0):
        tc = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, precision="fp32", latent_shift=shift)
        state = make_state(cfg, tc)
        fit(state, data, tc)
        weights.append(torch.cat([v.flatten() for v in state.model.state_dict().values()]))
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_nan_guard_stops_and_keeps_the_last_good_state():
    cfg = pixel_cfg()
    data = tensors()
    data.actions[:] = float("nan")
    tc = TrainConfig(steps=5, batch_size=4, warmup_steps=1, precision="fp32")
    state = make_state(cfg, tc)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    saved = []
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        fit(state, data, tc, on_checkpoint=lambda s: saved.append(s.step))
    assert saved == [0]
    for k, v in state.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_lr_schedule():
    tc = TrainConfig(steps=100, lr=1.0, warmup_steps=10, lr_min_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(0.1)
    assert lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(10, tc) == pytest.approx(1.0)
    assert lr_at(100, tc) == pytest.approx(0.1)
    assert lr_at(55, tc) < lr_at(20, tc)


def test_validation_losses_per_mode():
    cfg, data = pixel_cfg(), tensors()
    state = make_state(cfg, TrainConfig())
    out = validation_losses(state.model, data, batches=1, batch_size=4)
    assert set(out) == {"policy", "forward", "inverse", "video", "joint"}
    assert all(np.isfinite(v) for v in out.values())


def test_the_tokenizer_budget_follows_the_steps_unless_set():
    """A 5-step run used to train the tokenizer for 2000 steps first; now a fifth of --steps, at most 2000."""
    from wam.train import tokenizer_budget

    assert tokenizer_budget(TrainConfig(steps=5)) == 1
    assert tokenizer_budget(TrainConfig(steps=1500)) == 300
    assert tokenizer_budget(TrainConfig(steps=20000)) == 2000
    assert tokenizer_budget(TrainConfig(steps=5, tokenizer_steps=50)) == 50
    assert tokenizer_budget(TrainConfig(steps=5000, tokenizer_steps=0)) == 0


def test_the_plan_names_both_stages_and_leaves_the_random_state_alone(monkeypatch):
    import wam.train as train_mod
    from wam.config import LossConfig
    from wam.train import plan_text

    cfg, tc = tiny_config(image_size=16), TrainConfig(steps=40, batch_size=4, tokenizer_batch_size=4, precision="fp32")
    before = torch.get_rng_state()
    text = plan_text(cfg, tc, LossConfig(), 8, 0, 100)
    assert torch.equal(before, torch.get_rng_state())  # (the measurement must not change the run)
    assert "tokenizer stage: 8 steps" in text and "WAM stage: 40 steps" in text and "about" in text
    monkeypatch.setattr(train_mod, "measure_step_seconds", lambda *a, **k: (0.5, 3.0))
    resumed = plan_text(cfg, tc, LossConfig(), 0, 30, 100)
    assert "tokenizer stage: none" in resumed and "10 steps" in resumed and "resuming at step 30" in resumed
    assert "about 30 s" in resumed
    assert "about 4 s" in plan_text(cfg, tc, LossConfig(), 8, 39, 100)  # 8 x 0.5 s
