"""Shared tiny configs and fixtures. Tests run on 2 CPU threads with fixed seeds."""

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).parent))
# WAM_TEST_THREADS=1 runs a test beside a long job at 2 threads without two spin-waiting thread pools fighting
torch.set_num_threads(int(os.environ.get("WAM_TEST_THREADS", min(2, os.cpu_count() or 1))))

from wam.config import ModelConfig  # noqa: E402


def tiny_config(**changes) -> ModelConfig:
    """A model small enough to run in milliseconds: 16x16 frames -> 4x4x4 latents -> 4 tokens a frame."""
    base = dict(
        width=32,
        depth=2,
        heads=2,
        image_size=16,
        latent_channels=4,
        tokenizer_downsample=4,
        tokenizer_width=8,
        patch_size=2,
        n_obs_steps=2,
        future_frames=2,
        future_stride=1,
        action_horizon=3,
        action_dim=2,
        state_dim=3,
        n_tasks=4,
    )
    base.update(changes)
    return ModelConfig(**base)


def random_dot_checkpoint(path, cfg: ModelConfig, run: dict):
    """A random-weight WAM for the dot world (2-D actions, 4-D state, identity normalisation) saved at `path`;
    weights far from adaLN-zero's zero output, so that its samples depend on the history and the noise."""
    from wam.checkpoint import save_checkpoint
    from wam.model import WAM
    from wam.tokenizer import make_tokenizer

    torch.manual_seed(0)
    model, tok = WAM(cfg), make_tokenizer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    stats = {
        "action_key": "action",
        "state_key": "observation.state",
        "stats": {
            "action": {"min": [-1.0] * 2, "max": [1.0] * 2},
            "observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4},
        },
    }
    return save_checkpoint(path, model, tok, stats=stats, config={"run": run})


def random_batch(cfg: ModelConfig, B: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(
            B, cfg.frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size * cfg.n_cameras, generator=g
        ),
        "actions": torch.rand(B, cfg.action_horizon, cfg.action_dim, generator=g) * 2 - 1,
        "task": torch.randint(0, cfg.n_tasks, (B,), generator=g),
        "state": torch.randn(B, cfg.n_obs_steps, cfg.state_dim, generator=g) if cfg.state_dim else None,
    }


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_config()
