"""Typed, frozen configuration and the model presets.

Every setting that changes a result lives in one of these dataclasses; a checkpoint stores them all
resolved in `config.json`, so a run is described by its files alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from wam.errors import ArgumentError

ATTENTION = ("full", "prefix", "causal")
TEXT_ENCODERS = {"minilm": 384}  # offline text encoders (wam.text) and the size of their embeddings


@dataclass(frozen=True)
class ModelConfig:
    """The WAM network and the frame tokenizer in front of it."""

    # transformer
    width: int = 256  # hidden size of every stream
    depth: int = 6  # number of Mixture-of-Transformers blocks
    heads: int = 4  # attention heads (width must divide by it)
    mlp_ratio: float = 4.0  # MLP hidden size / width
    attention: str = "prefix"  # who sees whom: "full" (every token every token); "prefix" (the observed tokens,
    # context and history frames, see only each other, so their keys and values stay the same at every
    # denoising step and are computed once per call); "causal" (frame-causal, for streaming video; implies prefix)
    video_prediction: str = "x0"  # what the video output is: "x0" (clean latents; velocity derived, JiT) or "velocity"
    action_prediction: str = "velocity"  # the same for the action output
    # frames and their tokenizer
    image_size: int = 64  # frames are square, image_size x image_size (per camera)
    n_cameras: int = 1  # cameras are placed side by side: the tokenizer sees an image n_cameras wide
    image_channels: int = 3
    tokenizer: str = "conv"  # "conv": a trained convolutional autoencoder; "pixel": lossless space-to-depth
    latent_channels: int = 8  # channels of the tokenizer's latent grid (pixel: image_channels * downsample^2)
    tokenizer_downsample: int = 8  # image_size / latent grid size (a power of two)
    tokenizer_width: int = 32  # channels of the tokenizer's first conv layer
    patch_size: int = 2  # latent patch side: one video token per patch_size^2 latent cells
    # time layout of one example
    n_obs_steps: int = 1  # history frames (the last one is the current observation)
    future_frames: int = 2  # predicted frames after the current one
    future_stride: int = 4  # control steps between consecutive future frames
    action_horizon: int = 8  # actions per chunk (one action token each)
    # other modalities
    action_dim: int = 4  # actions are padded to this size (per-dataset masks mark the real ones)
    state_dim: int = 0  # proprioception size; 0 for none
    n_tasks: int = 64  # rows of the learned task-embedding table (plus one "no task" row for guidance)
    text_dim: int = 0  # size of precomputed text embeddings, replaces the table when > 0
    text_encoder: str = ""  # "": a learned embedding per task; "minilm": the task text through all-MiniLM-L6-v2
    # (wam[lang]), so new instructions have an embedding too (text_dim 384)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ArgumentError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.image_size % self.tokenizer_downsample:
            raise ArgumentError(
                f"image_size {self.image_size} must be divisible by tokenizer_downsample {self.tokenizer_downsample}"
            )
        if self.latent_size % self.patch_size:
            raise ArgumentError(f"latent grid {self.latent_size} must be divisible by patch_size {self.patch_size}")
        for name in ("video_prediction", "action_prediction"):
            if getattr(self, name) not in ("x0", "velocity"):
                raise ArgumentError(f"unknown {name} {getattr(self, name)!r}; choose 'x0' or 'velocity'")
        if self.attention not in ATTENTION:
            raise ArgumentError(f"unknown attention {self.attention!r}; choose one of: {', '.join(ATTENTION)}")
        if self.tokenizer not in ("conv", "pixel"):
            raise ArgumentError(f"unknown tokenizer {self.tokenizer!r}; choose 'conv' or 'pixel'")
        if self.tokenizer == "pixel" and self.latent_channels != self.image_channels * self.tokenizer_downsample**2:
            raise ArgumentError(
                f"the pixel tokenizer makes {self.image_channels * self.tokenizer_downsample**2} "
                f"latent channels; set latent_channels to that"
            )
        if self.text_encoder and self.text_encoder not in TEXT_ENCODERS:
            raise ArgumentError(
                f"unknown text_encoder {self.text_encoder!r}; choose one of: {', '.join(TEXT_ENCODERS)}"
            )
        if self.text_encoder and self.text_dim != TEXT_ENCODERS[self.text_encoder]:
            raise ArgumentError(
                f"text_encoder {self.text_encoder!r} makes embeddings of size "
                f"{TEXT_ENCODERS[self.text_encoder]}; set text_dim to that"
            )
        if self.tokenizer_downsample & (self.tokenizer_downsample - 1):
            raise ArgumentError(f"tokenizer_downsample must be a power of two, got {self.tokenizer_downsample}")

    @property
    def latent_size(self) -> int:
        """Side of the latent grid of one camera."""
        return self.image_size // self.tokenizer_downsample

    @property
    def frames(self) -> int:
        """History plus future frames in one example."""
        return self.n_obs_steps + self.future_frames

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch_size) ** 2 * self.n_cameras

    @property
    def context_tokens(self) -> int:
        """One task token, plus one state token per history step when there is a state."""
        return 1 + (self.n_obs_steps if self.state_dim > 0 else 0)

    @property
    def tokens(self) -> int:
        """Tokens in one full (joint-mode) example."""
        return self.context_tokens + self.frames * self.tokens_per_frame + self.action_horizon


# The flat preset dict: names are also the CLI's `--preset` choices.
PRESETS: dict[str, ModelConfig] = {
    # CPU-sized: 64x64 frames -> 8x8x8 latents -> 16 tokens per frame; 1 + 2 frames, 8 actions: 58 tokens.
    # Width 128 and depth 4 train 2.4x faster than 192 x 6 on 2 CPU cores (211 vs 88 samples/s), and on
    # a fixed CPU budget more steps buy more than more width; its tokenizer is 16 channels wide for the same reason.
    "wam-tiny": ModelConfig(
        width=128,
        depth=4,
        heads=4,
        tokenizer_width=16,
        n_obs_steps=1,
        future_frames=2,
        future_stride=4,
        action_horizon=8,
        state_dim=4,
    ),
    # 2 history + 4 future frames at 96x96 (36 tokens each), 16 actions: about 235 tokens.
    "wam-small": ModelConfig(
        width=384,
        depth=8,
        heads=6,
        image_size=96,
        tokenizer_width=48,
        n_obs_steps=2,
        future_frames=4,
        future_stride=4,
        action_horizon=16,
        state_dim=4,
    ),
    # GPU-sized, about 100 M parameters.
    "wam-base": ModelConfig(
        width=512,
        depth=12,
        heads=8,
        image_size=128,
        tokenizer_width=64,
        n_obs_steps=2,
        future_frames=4,
        future_stride=4,
        action_horizon=16,
        state_dim=4,
        latent_channels=16,
    ),
}


@dataclass(frozen=True)
class LossConfig:
    """How the training loss samples noise levels and leaves modalities out (docs/design.md, "One model, five uses")."""

    timestep_sampling: str = "uniform"  # "uniform" or "logit_normal" (SD3); uniform keeps high-noise examples,
    # where the future must come from the history, as frequent as any other
    p_omit_future: float = 0.2  # leave the future-video tokens out (action-only policy inference in distribution)
    p_omit_action: float = 0.15  # leave the actions out (marginal video model; action-free data)
    p_clean_future: float = 0.15  # give the future frames clean (inverse dynamics in distribution)
    p_clean_action: float = 0.15  # give the actions clean (forward dynamics in distribution)
    p_drop_task: float = 0.1  # replace the task with the "no task" row (classifier-free guidance)
    video_weight: float = 1.0
    action_weight: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of the WAM stage (and the tokenizer stage before it)."""

    steps: int = 20000  # optimizer steps of the WAM stage
    batch_size: int = 32  # global batch size
    lr: float = 3e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    warmup_steps: int = 500  # linear warm-up, then cosine decay to lr_min_ratio * lr
    lr_min_ratio: float = 0.05
    grad_clip: float = 1.0  # max global gradient norm
    latent_shift: int = 0  # augmentation: shift each example's frames by up to this many latent cells (edges
    # repeated; wam.episodes.shift_latents), as DrQ shifts images; 0: off
    ema_decay: float = 0.999  # exponential moving average of the weights (used for inference)
    precision: str = "auto"  # "auto" (bf16 autocast where measured faster), "bf16" or "fp32"
    seed: int = 0
    tokenizer_steps: int | None = None  # autoencoder steps of the tokenizer stage; None: steps // 5, at most 2000
    # (a short run stays short); 0 keeps a given tokenizer (--tokenizer-from)
    tokenizer_batch_size: int = 64
    tokenizer_lr: float = 2e-3
    tokenizer_detail_weight: float = 4.0  # extra weight of each pixel's error by its local contrast, so that small
    # objects and goal markers survive the autoencoder (wam.tokenizer.ConvAutoencoder.loss, bench_tokenizer); 0: plain
    tokenizer_checkpoint_every: int = 250  # tokenizer steps between saves of its stage's state (0: never), so an
    # interrupted tokenizer stage continues where it stopped (MT50 at 128 px: 3,000 steps, about half an hour)
    log_every: int = 50  # steps between log lines (JSON lines, TensorBoard)
    val_every: int = 1000  # steps between validation passes (0: only at the end)
    checkpoint_every: int = 2000  # steps between checkpoints (0: only at the end)
    keep_every: int = 0  # steps between copies of the weights kept in RUN/steps/step-N (without the resume state;
    # a multiple of checkpoint_every), for curves over training; 0: none
    fsdp: bool = False  # several processes: shard weights, gradients and optimizer state over them (FSDP2),
    # for models too large for one device; otherwise every process holds a full copy (DDP)


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, d: dict) -> Any:
    """Build a config dataclass from a dict, refusing unknown keys with a clear message."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    if cls is ModelConfig and "causal" in d:  # configs written before `attention` replaced `causal: bool`
        d = {k: v for k, v in d.items() if k != "causal"} | {"attention": "causal" if d["causal"] else "full"}
    unknown = set(d) - set(names)
    if unknown:
        raise ArgumentError(f"unknown {cls.__name__} settings: {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for k, v in d.items():
        if isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


__all__ = [
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "PRESETS",
    "TEXT_ENCODERS",
    "to_dict",
    "from_dict",
    "replace",
    "finetune_config",
]


def finetune_config(adapter: str = "lora", **changes) -> TrainConfig:
    """Fine-tuning's TrainConfig defaults: a short run and warm-up; adapters take a larger learning rate than
    full fine-tuning, which moves every weight of a model that already works."""
    base = dict(
        steps=2000,
        warmup_steps=100,
        lr=1e-4 if adapter == "full" else 1e-3,
        tokenizer_steps=0,
        val_every=500,
        checkpoint_every=500,
    )
    return TrainConfig(**{**base, **changes})
