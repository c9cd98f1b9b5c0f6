"""Schedules and stateless ODE solvers for flow-matching sampling.

A solver integrates dx/dt = v(x, t) from t = ts[0] (noise, usually 1) to t = ts[-1] (clean, usually 0).
Every solver has the same signature:

    solver(model_fn, x, ts) -> x_clean

where `x` is a dict of tensors (one entry per generated modality, e.g. {"latents": ..., "actions": ...}),
`model_fn(x, t)` returns a dict of velocities with the same keys, and `t` is a 0-d tensor.
"""

from __future__ import annotations

from typing import Callable

import torch

State = dict[str, torch.Tensor]
ModelFn = Callable[[State, torch.Tensor], State]


def linear_schedule(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """steps + 1 equally spaced noise levels from t_start to t_end."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t_start, t_end, steps + 1)


def shifted_schedule(steps: int, shift: float = 3.0, t_start: float = 1.0) -> torch.Tensor:
    """Time-shifted schedule t' = s t / (1 + (s - 1) t), spending more steps at high noise
    (Esser et al. 2024, "Scaling Rectified Flow Transformers", section 5.3.2)."""
    t = linear_schedule(steps, t_start)
    return shift * t / (1 + (shift - 1) * t)


SCHEDULES = {"linear": linear_schedule, "shifted": shifted_schedule}


def _axpy(x: State, v: State, dt: torch.Tensor) -> State:
    return {k: x[k] + dt * v[k] for k in x}


def euler(model_fn: ModelFn, x: State, ts: torch.Tensor) -> State:
    """First-order (Euler) integration; one model call per step."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = _axpy(x, model_fn(x, t), t_next - t)
    return x


def heun(model_fn: ModelFn, x: State, ts: torch.Tensor) -> State:
    """Second-order Heun integration (Karras et al. 2022, algorithm 1); two model calls per step,
    one on the final step to t = 0."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        dt = t_next - t
        v = model_fn(x, t)
        x_pred = _axpy(x, v, dt)
        if float(t_next) == 0.0:
            x = x_pred
            continue
        v_next = model_fn(x_pred, t_next)
        x = {k: x[k] + dt * 0.5 * (v[k] + v_next[k]) for k in x}
    return x


SOLVERS: dict[str, Callable[[ModelFn, State, torch.Tensor], State]] = {"euler": euler, "heun": heun}
