"""wam: world action models. One diffusion transformer that is a policy, a world model, an inverse
dynamics model, a video predictor and a joint video-action planner, chosen at inference by the noise
level given to each modality.

The public names are imported on first use, so that `wam --help` and worker processes start fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "WAM": "wam.model",
    "MODES": "wam.modes",
    "Mode": "wam.modes",
    "sample": "wam.modes",
    "training_loss": "wam.modes",
    "ModelConfig": "wam.config",
    "LossConfig": "wam.config",
    "PRESETS": "wam.config",
    "FrameTokenizer": "wam.tokenizer",
    "ConvAutoencoder": "wam.tokenizer",
    "PixelTokenizer": "wam.tokenizer",
    "Checkpoint": "wam.checkpoint",
    "load_checkpoint": "wam.checkpoint",
    "save_checkpoint": "wam.checkpoint",
    "LeRobotDataset": "wam.data",
    "WindowDataset": "wam.data",
    "WamError": "wam.errors",  # the base of every error about the user's input
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
