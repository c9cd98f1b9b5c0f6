"""Feature caching across denoising steps: TaylorSeer forecasting of the blocks' output.

Liu et al. 2025, "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers": the
features of a diffusion transformer change smoothly with the noise level, so between full computations
they can be forecast by a Taylor expansion whose derivatives are finite differences of the last full
steps. Here the feature is the generated tokens' hidden state after the last block, as a function of t
(divided differences, so uneven schedules are handled), and a forecast step skips every block.

The confidence gate (`gate > 0`): a forecast step still runs the first block, forecasts that block's
output the same way, and when the forecast misses it by more than `gate` (mean absolute error relative
to the mean absolute value), the step is computed in full instead. The first block's error stands for
the error of the whole forecast; with a gate, a step costs 1/depth of a full one when the forecast holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wam.errors import ArgumentError


@dataclass(frozen=True)
class TaylorSeer:
    order: int = 1  # Taylor order of the forecast: 1 linear, 2 quadratic (needs order + 1 full steps first)
    interval: int = 2  # one full computation every `interval` steps; the steps between are forecast
    gate: float = 0.0  # > 0: fall back to a full step when the first block's forecast error exceeds this

    def __post_init__(self):
        if self.order < 0 or self.interval < 1 or self.gate < 0:
            raise ArgumentError(f"TaylorSeer needs order >= 0, interval >= 1 and gate >= 0, got {self}")


def newton_extrapolate(ts: list[float], fs: list[list[torch.Tensor]], t: float) -> list[torch.Tensor]:
    """The polynomial through the points (ts[i], fs[i]) (Newton's divided differences), evaluated at t.
    fs[i] is a list of tensors (one per stream); the result has the same structure."""
    n = len(ts)
    coef = [list(f) for f in fs]  # coef[i] becomes the divided difference f[t_0 .. t_i] after the loops
    for j in range(1, n):
        for i in range(n - 1, j - 1, -1):
            coef[i] = [(a - b) / (ts[i] - ts[i - j]) for a, b in zip(coef[i], coef[i - 1])]
    out = [c.clone() for c in coef[n - 1]]
    for i in range(n - 2, -1, -1):  # Horner's scheme on the Newton form
        out = [c + (t - ts[i]) * o for c, o in zip(coef[i], out)]
    return out


class Forecaster:
    """The per-call state of TaylorSeer: full steps' features, and counts of full, forecast and gated steps.
    `hook(t)` gives the function `WAM.forward_generated` calls after each block."""

    STREAMS = (1, 2)  # video and action token streams (the context stream is empty in forward_generated)

    def __init__(self, setting: TaylorSeer, depth: int):
        self.setting, self.depth = setting, depth
        self.step = -1
        self.ts: list[float] = []
        self.first: list[list[torch.Tensor]] = []  # block 0's output at the full steps
        self.last: list[list[torch.Tensor]] = []  # the last block's output at the full steps
        self.counts = {"full": 0, "forecast": 0, "gated": 0}

    def _streams(self, xs) -> list[torch.Tensor]:
        return [xs[i] for i in self.STREAMS]

    def _rebuild(self, xs, parts) -> list:
        out = list(xs)
        for i, p in zip(self.STREAMS, parts):
            out[i] = p
        return out

    def hook(self, t: torch.Tensor):
        self.step += 1
        t = float(t)
        s = self.setting
        ready = len(self.ts) > s.order
        forecast_step = ready and self.step % s.interval != 0

        def fn(i: int, xs):
            if i == 0:
                if forecast_step:
                    if s.gate > 0:
                        guess = newton_extrapolate(self.ts, self.first, t)
                        actual = self._streams(xs)
                        num = sum(float((g - a).abs().sum()) for g, a in zip(guess, actual))
                        den = sum(float(a.abs().sum()) for a in actual)
                        if num > s.gate * max(den, 1e-12):
                            self.counts["gated"] += 1
                            self._first_now = actual
                            return None  # compute this step in full
                    self.counts["forecast"] += 1
                    return self._rebuild(xs, newton_extrapolate(self.ts, self.last, t))
                self._first_now = self._streams(xs)
            if i == self.depth - 1:
                self.counts["full"] += 1
                keep = s.order + 1
                self.ts, self.first, self.last = (
                    (self.ts + [t])[-keep:],
                    (self.first + [self._first_now])[-keep:],
                    (self.last + [self._streams(xs)])[-keep:],
                )
            return None

        return fn

    def stats(self) -> dict:
        return dict(self.counts)
