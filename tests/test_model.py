"""The WAM network: shapes, adaLN-zero at init, left-out tokens, masks, presets."""

import pytest
import torch
from conftest import random_batch, tiny_config

from wam import PRESETS, WAM
from wam.config import ModelConfig, replace
from wam.model import patchify, unpatchify


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_forward_shapes():
    cfg = tiny_config()
    model = WAM(cfg)
    b = random_batch(cfg, B=3)
    v_lat, v_act = model(b["latents"], torch.rand(3, cfg.frames), b["actions"], torch.rand(3), b["task"], b["state"])
    assert v_lat.shape == b["latents"].shape
    assert v_act.shape == b["actions"].shape


def test_adaln_zero_outputs_zero_at_init():
    cfg = tiny_config()
    model = WAM(cfg)
    b = random_batch(cfg, B=2)
    v_lat, v_act = model(b["latents"], torch.rand(2, cfg.frames), b["actions"], torch.rand(2), b["task"], b["state"])
    assert torch.count_nonzero(v_lat) == 0 and torch.count_nonzero(v_act) == 0


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 4, 8, 16)
    assert torch.equal(unpatchify(patchify(x, 2), 3, 4, 8, 16, 2), x)


def test_left_out_tokens_equal_masked_tokens():
    """Physically removing future frames (inference) == masking them as keys (training)."""
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    b = random_batch(cfg, B=2)
    t_act = torch.full((2,), 0.5)
    t_vid = torch.zeros(2, cfg.frames)
    _, a_removed = model(
        b["latents"][:, : cfg.n_obs_steps], t_vid[:, : cfg.n_obs_steps], b["actions"], t_act, b["task"], b["state"]
    )
    keep = torch.zeros(2, cfg.frames, dtype=torch.bool)
    keep[:, : cfg.n_obs_steps] = True
    _, a_masked = model(b["latents"], t_vid, b["actions"], t_act, b["task"], b["state"], frame_keep=keep)
    torch.testing.assert_close(a_removed, a_masked, atol=1e-5, rtol=1e-5)
    # and the future frames do change the answer when they are kept
    _, a_full = model(b["latents"], t_vid, b["actions"], t_act, b["task"], b["state"])
    assert (a_full - a_masked).abs().max() > 1e-4


def test_omitted_actions_equal_masked_actions():
    cfg = tiny_config()
    model = randomise(WAM(cfg), seed=1)
    b = random_batch(cfg, B=2)
    t_vid = torch.rand(2, cfg.frames)
    v_removed, _ = model(b["latents"], t_vid, None, None, b["task"], b["state"])
    v_masked, _ = model(
        b["latents"],
        t_vid,
        b["actions"],
        torch.rand(2),
        b["task"],
        b["state"],
        action_keep=torch.zeros(2, dtype=torch.bool),
    )
    torch.testing.assert_close(v_removed, v_masked, atol=1e-5, rtol=1e-5)


def test_frame_causal_mask_hides_later_frames():
    cfg = replace(tiny_config(), attention="causal")  # 2 history + 2 future frames, stride 1, 3 actions
    model = randomise(WAM(cfg), seed=2)
    b = random_batch(cfg, B=1)
    t_vid, t_act = torch.rand(1, cfg.frames), torch.rand(1)
    v1, a1 = model(b["latents"], t_vid, b["actions"], t_act, b["task"], b["state"])
    changed = b["latents"].clone()
    changed[:, -1] += 1.0  # perturb only the last frame
    v2, a2 = model(changed, t_vid, b["actions"], t_act, b["task"], b["state"])
    torch.testing.assert_close(v1[:, :-1], v2[:, :-1], atol=1e-5, rtol=1e-5)  # earlier frames unaffected
    assert (v1[:, -1] - v2[:, -1]).abs().max() > 1e-4
    # action j sits between frames n_obs-1+j and n_obs+j: actions 0 and 1 come before the last frame
    torch.testing.assert_close(a1[:, :2], a2[:, :2], atol=1e-5, rtol=1e-5)
    assert (a1[:, 2] - a2[:, 2]).abs().max() > 1e-4
    # the bidirectional model does let the last frame change earlier outputs
    bi = randomise(WAM(replace(cfg, attention="full")), seed=2)
    w1, _ = bi(b["latents"], t_vid, b["actions"], t_act, b["task"], b["state"])
    w2, _ = bi(changed, t_vid, b["actions"], t_act, b["task"], b["state"])
    assert (w1[:, 0] - w2[:, 0]).abs().max() > 1e-4


def test_prefix_attention_keeps_observed_tokens_apart_from_generated_ones():
    """With attention="prefix" (the default) the history's outputs do not depend on the future frames or the
    actions, which is what makes caching the observed tokens' keys and values exact; with "full" they do."""
    cfg = tiny_config()
    assert cfg.attention == "prefix"
    b = random_batch(cfg, B=2)
    t_vid, t_act = torch.rand(2, cfg.frames), torch.rand(2)
    changed_lat, changed_act = b["latents"].clone(), b["actions"] + 1.0
    changed_lat[:, cfg.n_obs_steps :] += 1.0
    for attention, independent in (("prefix", True), ("full", False)):
        model = randomise(WAM(replace(cfg, attention=attention)), seed=4)
        v1, a1 = model(b["latents"], t_vid, b["actions"], t_act, b["task"], b["state"])
        v2, a2 = model(changed_lat, t_vid, changed_act, t_act, b["task"], b["state"])
        hist_diff = (v1[:, : cfg.n_obs_steps] - v2[:, : cfg.n_obs_steps]).abs().max()
        assert (hist_diff < 1e-5) == independent, (attention, hist_diff)
        assert (a1 - a2).abs().max() > 1e-4  # the generated tokens see everything either way


def test_configs_written_with_causal_flag_still_load():
    from wam.config import from_dict, to_dict

    d = to_dict(tiny_config())
    del d["attention"]
    assert from_dict(ModelConfig, {**d, "causal": False}).attention == "full"
    assert from_dict(ModelConfig, {**d, "causal": True}).attention == "causal"
    with pytest.raises(ValueError, match="unknown attention"):
        replace(tiny_config(), attention="sparse")


def test_per_token_noise_levels_matter():
    cfg = tiny_config()
    model = randomise(WAM(cfg), seed=3)
    b = random_batch(cfg, B=1)
    t1 = torch.zeros(1, cfg.frames)
    t2 = t1.clone()
    t2[:, -1] = 0.9  # only the last frame's noise level differs
    v1, _ = model(b["latents"], t1, b["actions"], torch.rand(1), b["task"], b["state"])
    v2, _ = model(b["latents"], t2, b["actions"], torch.rand(1), b["task"], b["state"])
    assert (v1[:, -1] - v2[:, -1]).abs().max() > 1e-4


def test_streams_have_separate_weights():
    model = WAM(tiny_config())
    block = model.blocks[0]
    assert len(block.streams) == 3
    assert block.streams[0].qkv.weight.data_ptr() != block.streams[1].qkv.weight.data_ptr()


def test_bad_task_index_is_a_clear_error():
    cfg = tiny_config()
    model = WAM(cfg)
    b = random_batch(cfg, B=1)
    with pytest.raises(ValueError, match="task indices"):
        model(b["latents"], torch.zeros(1, cfg.frames), None, None, torch.tensor([cfg.n_tasks]), b["state"])


def test_text_embedding_context():
    cfg = replace(tiny_config(), text_dim=16)
    model = randomise(WAM(cfg), seed=4)
    b = random_batch(cfg, B=2)
    text = torch.randn(2, 16)
    v, a = model(b["latents"], torch.rand(2, cfg.frames), b["actions"], torch.rand(2), text, b["state"])
    assert a.shape == b["actions"].shape


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_consistent(name):
    cfg = PRESETS[name]
    assert isinstance(cfg, ModelConfig)
    if name == "wam-tiny":
        assert 50 <= cfg.tokens <= 100
    if name == "wam-base":
        n = sum(p.numel() for p in WAM(cfg).parameters())
        assert 80e6 <= n <= 140e6


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(width=100, heads=3)
