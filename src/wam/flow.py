"""Flow matching (rectified flow): noising, velocity targets and timestep sampling, as pure functions.

Convention (docs/design.md): x_t = (1 - t) x_0 + t eps, t in [0, 1], t = 0 clean, t = 1 pure noise;
the network predicts the velocity v = eps - x_0, so dx_t/dt = v and x_0 = x_t - t v.
"""

from __future__ import annotations

import torch

from wam.errors import ArgumentError


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Right-pad t with singleton dims so it broadcasts against x from the left."""
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim())).to(x.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x_0 + t noise; t of shape (B,), (B, T) or x's own shape (broadcast from the left)."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity d x_t / d t = noise - x_0."""
    return noise - x0


def x0_from_velocity(xt: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean estimate implied by a velocity prediction: x_0 = x_t - t v."""
    return xt - _expand(t, xt) * v


T_MIN = 0.05  # smallest t used to turn an x0 prediction into a velocity (as JiT clips it)


def velocity_from_output(out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    """The velocity implied by a network output: itself ("velocity"), or (x_t - x0_hat) / t for an x0
    prediction ("x0"). Predicting x0 keeps a network whose width is below the token size from having to
    carry the noise through its residual stream (Li & He 2025, "Back to Basics: Let Denoising
    Generative Models Denoise")."""
    if prediction == "velocity":
        return out
    return (xt - out) / _expand(t, xt).clamp_min(T_MIN)


def sample_t(
    shape,
    kind: str = "logit_normal",
    generator: torch.Generator | None = None,
    device=None,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Training noise levels in (0, 1).

    uniform:      t ~ U(0, 1)
    logit_normal: t = sigmoid(n), n ~ N(mean, std) (Esser et al. 2024, "Scaling Rectified Flow Transformers")
    """
    if kind == "uniform":
        return torch.rand(shape, generator=generator, device=device)
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(shape, generator=generator, device=device))
    raise ArgumentError(f"unknown timestep sampling {kind!r}; choose 'uniform' or 'logit_normal'")


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + scale (cond - uncond); scale 1 = cond."""
    return uncond + scale * (cond - uncond)
