"""wam.inference: the cached path equals the uncached one; every speed option keeps the answer within its
tolerance (on random weights here; on a trained model in test_synthetic.py)."""

import pytest
import torch
from conftest import random_batch, tiny_config
from test_model import randomise

from wam import MODES, WAM, sample
from wam.inference import InferenceConfig, TaylorSeer, prepare
from wam.inference.attention import block_sparse, using_attention
from wam.inference.taylor import newton_extrapolate
from wam.model import sdpa
from wam.modes import initial_noise
from wam.samplers import SCHEDULES, SOLVERS


def _noise(cfg, mode, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return initial_noise(cfg, mode, B, (cfg.latent_channels, cfg.latent_size, cfg.latent_size * cfg.n_cameras), g)


@pytest.mark.parametrize("attention", ["prefix", "causal"])
@pytest.mark.parametrize("mode", list(MODES))
def test_cached_path_equals_uncached_path(mode, attention):
    cfg = tiny_config(attention=attention)
    model = randomise(WAM(cfg), seed=5)
    b = random_batch(cfg, B=3)
    for cfg_scale in (1.0, 2.5):
        noise = _noise(cfg, mode, 3)
        plain = sample(model, b, mode, steps=4, noise=noise, cfg_scale=cfg_scale)
        cached = sample(model, b, mode, steps=4, noise=noise, cfg_scale=cfg_scale, cache=True)
        assert plain.keys() == cached.keys()
        for k in plain:
            torch.testing.assert_close(cached[k], plain[k], atol=1e-5, rtol=1e-5)


def test_forward_generated_equals_forward_restricted_to_generated_tokens():
    cfg = tiny_config()
    model = randomise(WAM(cfg), seed=6)
    b = random_batch(cfg, B=2)
    n_obs = cfg.n_obs_steps
    t_fut, t_act = torch.rand(2), torch.rand(2)
    t_vid = torch.cat([torch.zeros(2, n_obs), t_fut[:, None].expand(2, cfg.future_frames)], 1)
    v_lat, v_act = model(b["latents"], t_vid, b["actions"], t_act, b["task"], b["state"])
    kv = model.observed_kv(b["latents"][:, :n_obs], b["task"], b["state"])
    assert len(kv) == cfg.depth and kv[0][0].shape[2] == cfg.context_tokens + n_obs * cfg.tokens_per_frame
    g_lat, g_act = model.forward_generated(kv, b["latents"][:, n_obs:], t_fut, b["actions"], t_act)
    torch.testing.assert_close(g_lat, v_lat[:, n_obs:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_act, v_act, atol=1e-5, rtol=1e-5)


def test_cache_refused_for_full_attention_with_the_fix_named():
    model = WAM(tiny_config(attention="full"))
    with pytest.raises(ValueError, match="cannot be cached"):
        sample(model, random_batch(model.cfg), "policy", steps=1, cache=True)
    with pytest.raises(ValueError, match="no-cache"):
        prepare(model, InferenceConfig(cache=True))


def test_block_sparse_attention_equals_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 70, 8, generator=g) for _ in range(3))
    mask = torch.ones(70, 70, dtype=torch.bool)
    mask[:40, 40:] = False  # a prefix of 40 tokens that does not see the rest
    keep = torch.rand(2, 70, generator=g) > 0.2
    keep[:, :2] = True
    full = mask[None, None] & keep[:, None, None, :]
    for m in (mask[None, None], full, None):
        torch.testing.assert_close(block_sparse(q, k, v, m, block=16), sdpa(q, k, v, m), atol=1e-5, rtol=1e-5)
    # and through a model, training-time masks included
    cfg = tiny_config()
    model = randomise(WAM(cfg), seed=7)
    b = random_batch(cfg, B=2)
    args = (b["latents"], torch.rand(2, cfg.frames), b["actions"], torch.rand(2), b["task"], b["state"])
    keep = torch.tensor([[True, True, False, True], [True, True, True, False]])
    ref = model(*args, frame_keep=keep)
    with using_attention("block_sparse"):
        out = model(*args, frame_keep=keep)
    for a, r in zip(out, ref):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_sage_backend_names_what_it_needs():
    from wam.inference.attention import set_attention_backend

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may have sageattention")
    with pytest.raises(RuntimeError, match="sageattention|CUDA"):
        set_attention_backend("sage")


def test_newton_extrapolation_is_exact_for_polynomials_of_its_order():
    ts = [0.9, 0.7, 0.4]
    f = lambda t: [torch.tensor([1.0 + 2.0 * t - 3.0 * t * t])]  # noqa: E731
    out = newton_extrapolate(ts, [f(t) for t in ts], 0.1)
    torch.testing.assert_close(out[0], f(0.1)[0])
    lin = newton_extrapolate(ts[1:], [f(t) for t in ts[1:]], 0.4)  # at a node: the node's value
    torch.testing.assert_close(lin[0], f(0.4)[0])


def test_taylorseer_skips_blocks_and_interval_one_is_exact():
    cfg = tiny_config(depth=3)
    model = randomise(WAM(cfg), seed=8)
    b = random_batch(cfg, B=2)
    noise = _noise(cfg, "joint", 2)
    exact = sample(model, b, "joint", steps=8, noise=noise, cache=True)
    every = sample(model, b, "joint", steps=8, noise=noise, cache=True, taylor=TaylorSeer(order=1, interval=1))
    assert every["forecast"] == {"full": 8, "forecast": 0, "gated": 0}
    torch.testing.assert_close(every["actions"], exact["actions"])
    fast = sample(model, b, "joint", steps=8, noise=noise, cache=True, taylor=TaylorSeer(order=1, interval=2))
    assert fast["forecast"]["forecast"] == 3 and fast["forecast"]["full"] == 5  # steps 0,1 full; then 1 in 2
    gated = sample(
        model, b, "joint", steps=8, noise=noise, cache=True, taylor=TaylorSeer(order=1, interval=2, gate=1e-9)
    )
    assert gated["forecast"]["forecast"] == 0 and gated["forecast"]["gated"] == 3  # every forecast refused
    torch.testing.assert_close(gated["actions"], exact["actions"])


def test_ab2_is_second_order_at_one_call_per_step():
    # dx/dt = -x t has the solution x(0) = x(1) exp(1/2); compare the error at 4 and 8 steps
    calls = []

    def fn(x, t):
        calls.append(1)
        return {"x": -x["x"] * t}

    x1 = {"x": torch.tensor([1.0], dtype=torch.float64)}
    truth = torch.exp(torch.tensor(0.5, dtype=torch.float64))
    err = {}
    for name in ("euler", "ab2"):
        for n in (4, 8):
            calls.clear()
            err[name, n] = float((SOLVERS[name](fn, x1, SCHEDULES["linear"](n).double())["x"] - truth).abs())
            assert len(calls) == n
    assert err["ab2", 8] < err["euler", 8] / 5
    assert err["ab2", 4] / err["ab2", 8] > 3.0  # about 4x per halving: second order


def test_shifted_schedule_warm_start_is_the_tail_of_the_full_schedule():
    full = SCHEDULES["shifted"](8)
    tail = SCHEDULES["shifted"](4, t_start=float(full[4]))
    torch.testing.assert_close(tail, full[4:], atol=1e-6, rtol=1e-6)


def test_warm_start_integrates_only_below_t_start():
    cfg = tiny_config()
    model = randomise(WAM(cfg), seed=9)
    b = random_batch(cfg, B=2)
    seen = []
    real = model.forward_generated

    def spy(kv, fut, t_fut, act, t_act, hook=None):
        seen.append(float(t_act))
        return real(kv, fut, t_fut, act, t_act, hook)

    model.forward_generated = spy
    x = {"actions": 0.5 * b["actions"] + 0.5 * torch.randn_like(b["actions"])}
    sample(model, b, "policy", steps=2, noise=x, t_start=0.5, cache=True)
    assert seen == [0.5, 0.25]


def test_int8_and_bf16_stay_close_to_fp32():
    from wam.inference import autocast

    cfg = tiny_config(width=64, heads=2)
    model = randomise(WAM(cfg), seed=10)
    b = random_batch(cfg, B=2)
    noise = _noise(cfg, "policy", 2)
    ref = sample(model, b, "policy", steps=2, noise=noise, cache=True)["actions"]
    q = prepare(model, InferenceConfig(quantize="int8"))
    assert q is not model and not isinstance(q.blocks[0].streams[0].qkv, torch.nn.Linear)
    assert isinstance(model.blocks[0].streams[0].qkv, torch.nn.Linear)  # the original is untouched
    out = sample(q, b, "policy", steps=2, noise=noise, cache=True)["actions"]
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    with autocast(InferenceConfig(precision="bf16")):
        out = sample(model, b, "policy", steps=2, noise=noise, cache=True)["actions"]
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_inference_config_refuses_unknown_settings():
    with pytest.raises(ValueError, match="unknown solver"):
        InferenceConfig(solver="rk4")
    with pytest.raises(ValueError, match="warm_start"):
        InferenceConfig(warm_start=1.0)
    ic = InferenceConfig(taylor=TaylorSeer(order=2), warm_start=0.5)
    assert InferenceConfig.from_dict(ic.to_dict()) == ic


def test_compiled_network_gives_the_eager_answer():
    cfg = tiny_config(depth=1)
    model = randomise(WAM(cfg), seed=11)
    b = random_batch(cfg, B=1)
    noise = _noise(cfg, "policy", 1)
    ref = sample(model, b, "policy", steps=2, noise=noise, cache=True)["actions"]
    fast = prepare(model, InferenceConfig(compile=True))
    assert fast is not model and fast.observed_kv is not model.observed_kv
    out = sample(fast, b, "policy", steps=2, noise=noise, cache=True)["actions"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_taylorseer_runs_on_full_attention_through_the_whole_forward():
    cfg = tiny_config(depth=3, attention="full")
    model = randomise(WAM(cfg), seed=12)
    b = random_batch(cfg, B=2)
    noise = _noise(cfg, "joint", 2)
    exact = sample(model, b, "joint", steps=6, noise=noise)
    every = sample(model, b, "joint", steps=6, noise=noise, taylor=TaylorSeer(order=1, interval=1))
    torch.testing.assert_close(every["actions"], exact["actions"])
    fast = sample(model, b, "joint", steps=6, noise=noise, taylor=TaylorSeer(order=1, interval=2))
    assert fast["forecast"]["forecast"] == 2 and not torch.equal(fast["actions"], exact["actions"])
