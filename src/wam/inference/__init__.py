"""What makes sampling fast, as options of one `InferenceConfig` (docs/design.md: `wam.inference`).

    option        what it does                                                      exact?
    cache         keys/values of the observed tokens (context, history) computed   yes (float rounding)
                  once per call instead of once per step (attention "prefix")
    steps/solver  few-step sampling: 1-8 steps, Euler / Heun / Adams-Bashforth 2    no: measured
    taylor        TaylorSeer forecasting of the blocks' output between full steps,  no: measured
                  optionally confidence-gated
    warm_start    the previous chunk, shifted by the executed actions and re-noised no: measured
                  to t = warm_start, so a new chunk integrates only from there
    precision     bf16 autocast                                                     no: measured
    quantize      int8 dynamic quantisation of the blocks' linear layers (CPU)      no: measured
    compile       torch.compile of the network                                      yes (float rounding)
    attention     the attention kernel: sdpa | block_sparse | sage                  yes / yes / no

`wam bench` measures every option against the reference path (joint mode, 50 Euler steps, no caches,
fp32) on the same inputs and noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wam.errors import ArgumentError

if TYPE_CHECKING:  # (torch is imported where a network is touched: the settings alone need none of it)
    import torch

    from wam.inference.taylor import TaylorSeer

PRECISIONS = ("fp32", "bf16")
QUANTIZE = ("none", "int8")


@dataclass(frozen=True)
class InferenceConfig:
    """How a checkpoint samples. The defaults are the fastest setting whose closed-loop success matches the
    reference path's on MT10 (README, "Inference speed")."""

    steps: int = 2  # denoising steps per chunk (a warm-started chunk runs the part of them below warm_start)
    solver: str = "euler"  # euler | heun | ab2
    schedule: str = "linear"  # linear | shifted
    cfg_scale: float = 1.0  # classifier-free guidance scale (1 = off)
    cache: bool = True  # compute the observed tokens' keys and values once per call (exact)
    taylor: TaylorSeer | None = None  # feature forecasting between full steps
    warm_start: float = 0.0  # > 0: start each chunk from the previous one re-noised to this t
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    quantize: str = "none"  # none | int8 (dynamic, the blocks' linear layers)
    compile: bool = False  # torch.compile the network
    attention: str = "sdpa"  # sdpa | block_sparse | sage

    def __post_init__(self):
        from wam.inference.attention import BACKENDS
        from wam.samplers import SCHEDULES, SOLVERS

        for name, value, allowed in (
            ("solver", self.solver, SOLVERS),
            ("schedule", self.schedule, SCHEDULES),
            ("precision", self.precision, PRECISIONS),
            ("quantize", self.quantize, QUANTIZE),
            ("attention", self.attention, BACKENDS),
        ):
            if value not in allowed:
                raise ArgumentError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
        if self.steps < 1:
            raise ArgumentError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.warm_start < 1.0:
            raise ArgumentError(f"warm_start must be in [0, 1) (0 = off), got {self.warm_start}")

    def sample_kwargs(self) -> dict:
        """The keyword arguments of `wam.modes.sample` this setting implies."""
        return dict(
            steps=self.steps,
            solver=self.solver,
            schedule=self.schedule,
            cfg_scale=self.cfg_scale,
            cache=self.cache,
            taylor=self.taylor,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["taylor"] = None if self.taylor is None else dataclasses.asdict(self.taylor)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InferenceConfig:
        from wam.inference.taylor import TaylorSeer

        d = dict(d)
        if isinstance(d.get("taylor"), dict):
            d["taylor"] = TaylorSeer(**d["taylor"])
        return cls(**d)


def prepare(model: torch.nn.Module, ic: InferenceConfig) -> torch.nn.Module:
    """The network to sample with under `ic`: int8-quantised and/or compiled as asked (a new module; the
    given one is untouched), or the same module. Inference only (the weights are frozen)."""
    from wam.inference.attention import set_attention_backend

    set_attention_backend(ic.attention)
    model = model.eval()
    if ic.cache and model.cfg.attention == "full":
        raise ArgumentError(
            'this checkpoint was trained with attention "full": its history sees the generated '
            "tokens, so their keys and values cannot be cached; turn the cache off (--no-cache)"
        )
    if ic.quantize == "int8":
        model = quantize_int8(model)
    if ic.compile:
        model = compile_model(model)
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation (weights int8, activations quantised per call) of the linear layers inside
    the blocks, where nearly all of the compute is; embedders and final layers stay fp32."""
    import copy

    import torch
    from torch.ao.quantization import quantize_dynamic

    if next(model.parameters()).device.type != "cpu":
        raise ArgumentError("int8 dynamic quantisation runs on CPU only; use precision bf16 on a GPU")
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")}
    with warnings_off():
        return quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile on the methods sampling calls (the first call of each shape compiles: seconds)."""
    import copy

    import torch

    model = copy.copy(model)
    for name in ("forward", "observed_kv", "forward_generated"):  # a new batch size recompiles once, as dynamic
        setattr(model, name, torch.compile(getattr(model, name), dynamic=None))
    return model


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def autocast(ic: InferenceConfig, device: torch.device | str = "cpu"):
    """The precision context sampling runs under."""
    if ic.precision == "bf16":
        import torch

        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def __getattr__(name: str):
    # made when asked for: TaylorSeer and checking a setting's names need torch, the settings' fields do not
    if name == "TaylorSeer":
        from wam.inference.taylor import TaylorSeer

        return TaylorSeer
    if name == "REFERENCE":  # the reference path (run in joint mode)
        return InferenceConfig(steps=50, solver="euler", schedule="linear", cache=False)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["InferenceConfig", "REFERENCE", "TaylorSeer", "prepare", "autocast"]
