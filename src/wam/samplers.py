"""Schedules and stateless ODE solvers for flow-matching sampling.

A solver integrates dx/dt = v(x, t) from t = ts[0] (noise, usually 1) to t = ts[-1] (clean, usually 0).
Every solver has the same signature:

    solver(model_fn, x, ts) -> x_clean

where `x` is a dict of tensors (one entry per generated modality, e.g. {"latents": ..., "actions": ...}),
`model_fn(x, t)` returns a dict of velocities with the same keys, and `t` is a 0-d tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from wam.errors import ArgumentError

State = dict[str, torch.Tensor]
ModelFn = Callable[[State, torch.Tensor], State]


def linear_schedule(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """steps + 1 equally spaced noise levels from t_start to t_end."""
    if steps < 1:
        raise ArgumentError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t_start, t_end, steps + 1)


def shifted_schedule(steps: int, shift: float = 3.0, t_start: float = 1.0) -> torch.Tensor:
    """Time-shifted schedule t' = s u / (1 + (s - 1) u) for equally spaced u, spending more steps at high
    noise (Esser et al. 2024, "Scaling Rectified Flow Transformers", section 5.3.2). Starting below 1, it is
    the tail of the same curve from t_start."""
    u_start = t_start / (shift - (shift - 1) * t_start)  # the u that the shift maps to t_start
    u = linear_schedule(steps, u_start)
    return shift * u / (1 + (shift - 1) * u)


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


def ab2(model_fn: ModelFn, x: State, ts: torch.Tensor) -> State:
    """Second-order Adams-Bashforth with variable steps: one model call per step like Euler, but each step
    after the first extrapolates the velocity linearly from the last two (the multistep idea of
    DPM-Solver++(2M), Lu et al. 2022, applied to the velocity). Second order at no extra calls."""
    v_prev = t_prev = None
    for t, t_next in zip(ts[:-1], ts[1:]):
        v, dt = model_fn(x, t), t_next - t
        if v_prev is None:
            x = _axpy(x, v, dt)
        else:
            r = dt / (t - t_prev)  # the new step relative to the last one (both negative: r > 0)
            x = {k: x[k] + dt * ((1 + 0.5 * r) * v[k] - 0.5 * r * v_prev[k]) for k in x}
        v_prev, t_prev = v, t
    return x


SOLVERS: dict[str, Callable[[ModelFn, State, torch.Tensor], State]] = {"euler": euler, "heun": heun, "ab2": ab2}
