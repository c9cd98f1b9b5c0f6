"""Flow matching and solvers: end points, targets, timestep sampling, exact recovery with a perfect denoiser."""

import pytest
import torch

from wam import flow
from wam.samplers import SOLVERS, euler, heun, linear_schedule, shifted_schedule


def test_noising_end_points():
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(flow.add_noise(x0, eps, torch.zeros(4)), x0)
    assert torch.equal(flow.add_noise(x0, eps, torch.ones(4)), eps)
    mid = flow.add_noise(x0, eps, torch.full((4,), 0.25))
    torch.testing.assert_close(mid, 0.75 * x0 + 0.25 * eps)


def test_per_token_noise_broadcast():
    x0, eps = torch.randn(2, 5, 3, 4, 4), torch.randn(2, 5, 3, 4, 4)
    t = torch.rand(2, 5)
    xt = flow.add_noise(x0, eps, t)
    torch.testing.assert_close(xt[1, 3], (1 - t[1, 3]) * x0[1, 3] + t[1, 3] * eps[1, 3])


def test_velocity_target_and_inverse():
    x0, eps, t = torch.randn(3, 2), torch.randn(3, 2), torch.rand(3)
    v = flow.velocity_target(x0, eps)
    torch.testing.assert_close(flow.x0_from_velocity(flow.add_noise(x0, eps, t), v, t), x0)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_timestep_sampling(kind):
    t = flow.sample_t((20000,), kind, torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1
    assert abs(float(t.mean()) - 0.5) < 0.02
    if kind == "logit_normal":  # concentrated in the middle
        assert float(((t > 0.25) & (t < 0.75)).float().mean()) > 0.6


def test_unknown_timestep_sampling():
    with pytest.raises(ValueError, match="uniform"):
        flow.sample_t((3,), "cosine")


def test_cfg_combine():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert flow.cfg_combine(c, u, 1.0) == c
    assert flow.cfg_combine(c, u, 3.0) == torch.tensor([4.0])


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("schedule", [linear_schedule(4), shifted_schedule(4), linear_schedule(1)])
def test_perfect_denoiser_recovers_data(solver, schedule):
    """With the exact velocity of a single data point, any solver lands on that point."""
    x0 = {"a": torch.randn(2, 3), "b": torch.randn(2, 4, 5)}
    noise = {k: torch.randn_like(v) for k, v in x0.items()}

    def model_fn(x, t):  # exact velocity toward x0 along straight paths: v = (x_t - x0) / t
        return {k: (x[k] - x0[k]) / t for k in x}

    out = SOLVERS[solver](model_fn, noise, schedule)
    for k in x0:
        torch.testing.assert_close(out[k], x0[k], atol=1e-5, rtol=1e-5)


def test_heun_is_more_accurate_than_euler_on_a_curved_field():
    # dx/dt = x (exponential): exact x(0) = x(1) * exp(-1)
    x1 = {"x": torch.ones(1)}
    fn = lambda x, t: {"x": x["x"]}  # noqa: E731
    exact = torch.exp(torch.tensor(-1.0))
    e = abs(float(euler(fn, x1, linear_schedule(8))["x"]) - float(exact))
    h = abs(float(heun(fn, x1, linear_schedule(8))["x"]) - float(exact))
    assert h < e / 10


def test_schedules():
    s = shifted_schedule(10, shift=3.0)
    assert float(s[0]) == 1.0 and float(s[-1]) == 0.0
    assert torch.all(s[1:] < s[:-1])
    assert float(s[5]) > float(linear_schedule(10)[5])  # more steps at high noise
    with pytest.raises(ValueError):
        linear_schedule(0)
