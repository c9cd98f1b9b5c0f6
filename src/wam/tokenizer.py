"""Frame tokenizer: frames (B, T, C, H, W) in [-1, 1] <-> latent grids (B, T, c, h, w).

`FrameTokenizer` is the interface the rest of wam uses; `ConvAutoencoder` fills it with a small
convolutional autoencoder trained on the dataset's own frames. A pretrained VAE can fill the same
interface: implement `encode`, `decode` and the attributes `latent_channels` and `downsample`.

Latents are standardised (per-channel shift and scale measured on the training frames by
`fit_latent_stats`) so that the diffusion model sees roughly unit-variance inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wam.config import ModelConfig
from wam.errors import ArgumentError


class FrameTokenizer(nn.Module):
    """Interface: encode/decode frames, with their latent layout and standardisation.

    Subclasses implement `_encode_raw` and `_decode_raw` on (N, C, H, W) tensors and call
    `_init_standardisation()`; `encode`/`decode` work on (B, T, ...) and apply the per-channel
    standardisation measured by `fit_latent_stats`.
    """

    latent_channels: int
    downsample: int

    def _init_standardisation(self) -> None:
        self.register_buffer("latent_shift", torch.zeros(self.latent_channels))
        self.register_buffer("latent_scale", torch.ones(self.latent_channels))

    def _encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, frames: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) -> (B, T, c, H/d, W/d)
        shift, scale = self.latent_shift[:, None, None], self.latent_scale[:, None, None]
        return _flat(lambda x: (self._encode_raw(x) - shift) / scale, frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # (B, T, c, h, w) -> (B, T, C, h*d, w*d)
        shift, scale = self.latent_shift[:, None, None], self.latent_scale[:, None, None]
        return _flat(lambda z: self._decode_raw(z * scale + shift), latents)

    @torch.no_grad()
    def fit_latent_stats(self, frames: torch.Tensor, batch: int = 256) -> None:
        """Set the per-channel standardisation from frames: (N, C, H, W) floats in [-1, 1], or (N, H, W, 3)
        uint8 (converted one batch at a time, so a large dataset never exists as floats)."""
        convert = _is_uint8_frames(frames)
        zs = torch.cat(
            [
                self._encode_raw(to_model_frames(frames[i : i + batch]) if convert else frames[i : i + batch])
                for i in range(0, len(frames), batch)
            ]
        )
        self.latent_shift.copy_(zs.mean(dim=(0, 2, 3)))
        self.latent_scale.copy_(zs.std(dim=(0, 2, 3)).clamp_min(1e-2))


def _flat(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a (N, C, H, W) function to (B, T, C, H, W) by folding time into the batch."""
    B, T = x.shape[:2]
    y = fn(x.reshape(B * T, *x.shape[2:]))
    return y.reshape(B, T, *y.shape[1:])


class PixelTokenizer(FrameTokenizer):
    """Lossless space-to-depth: each d x d pixel block becomes one latent cell of C * d * d channels.

    No training and no reconstruction error: the right choice for small synthetic frames, where any
    autoencoder error would hide what the WAM itself gets right or wrong (pixel-space DiTs do the same).
    """

    def __init__(self, image_channels: int = 3, downsample: int = 4):
        super().__init__()
        self.downsample = downsample
        self.latent_channels = image_channels * downsample * downsample
        self._init_standardisation()

    def _encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.downsample)

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.downsample)

    def fit_latent_stats(self, frames: torch.Tensor, batch: int = 256) -> None:
        """Kept at identity: pixels are already in [-1, 1], as pixel-space diffusion models use them.
        Per-channel standardisation of mostly-constant pixels would blow rare bright pixels up to
        tens of standard deviations."""


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(min(8, ch), ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(min(8, ch), ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvAutoencoder(FrameTokenizer):
    """Convolutional autoencoder: a space-to-depth stem (no convolution at full resolution, which costs
    most of the time on a CPU for little quality), then log2(downsample) - 1 strided-conv stages with
    channels doubling (capped at 4x) and one residual block per resolution; the decoder mirrors it with
    nearest-neighbour upsampling and ends in depth-to-space."""

    def __init__(self, image_channels: int = 3, latent_channels: int = 8, downsample: int = 8, width: int = 32):
        super().__init__()
        if downsample < 2:
            raise ArgumentError(f"the convolutional tokenizer needs downsample >= 2, got {downsample}")
        self.latent_channels, self.downsample = latent_channels, downsample
        stages = int(math.log2(downsample)) - 1  # after the 2x space-to-depth stem
        chs = [width * min(2**i, 4) for i in range(stages + 1)]
        enc: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(image_channels * 4, chs[0], 3, padding=1)]
        for i in range(stages):
            enc += [ResBlock(chs[i]), nn.Conv2d(chs[i], chs[i + 1], 4, stride=2, padding=1)]
        enc += [
            ResBlock(chs[-1]),
            nn.GroupNorm(min(8, chs[-1]), chs[-1]),
            nn.SiLU(),
            nn.Conv2d(chs[-1], latent_channels, 1),
        ]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, chs[-1], 3, padding=1), ResBlock(chs[-1])]
        for i in reversed(range(stages)):
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(chs[i + 1], chs[i], 3, padding=1),
                ResBlock(chs[i]),
            ]
        dec += [
            nn.GroupNorm(min(8, chs[0]), chs[0]),
            nn.SiLU(),
            nn.Conv2d(chs[0], image_channels * 4, 3, padding=1),
            nn.PixelShuffle(2),
        ]
        self.decoder = nn.Sequential(*dec)
        self._init_standardisation()

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ConvAutoencoder:
        return cls(cfg.image_channels, cfg.latent_channels, cfg.tokenizer_downsample, cfg.tokenizer_width)

    def _encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(
        self, frames: torch.Tensor, latent_penalty: float = 1e-4, detail_weight: float = 0.0
    ) -> tuple[torch.Tensor, dict]:
        """Reconstruction loss on frames (N, C, H, W): MSE + L1, plus a small L2 penalty on the raw
        latents that keeps their scale bounded (a deterministic stand-in for a VAE's KL term).

        detail_weight > 0 weighs each pixel's error by 1 + detail_weight * its local contrast (`detail_map`):
        a plain pixel loss lets a small goal marker or object vanish for a fraction of a dB, since it covers
        a few pixels of a large, smooth scene; this makes the few pixels that differ from their surroundings
        count as much as the rest of the frame."""
        z = self.encoder(frames)
        rec = self.decoder(z)
        err = rec - frames
        mse = err.pow(2).mean()
        if detail_weight > 0:
            w = 1 + detail_weight * detail_map(frames)
            loss = (w * (err.pow(2) + err.abs())).mean() / w.mean()
        else:
            loss = mse + err.abs().mean()
        loss = loss + latent_penalty * z.pow(2).mean()
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))  # peak-to-peak 2 in [-1, 1]
        return loss, {"mse": mse.detach(), "psnr": psnr}


def detail_map(frames: torch.Tensor, kernel: int = 7, cap: float = 20.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): each pixel's difference from the mean of its kernel x kernel neighbourhood
    (summed over channels), divided by the frame's mean of it and capped at `cap`: about 1 on average, tens
    on small objects, markers and edges, near 0 on flat surfaces."""
    with torch.no_grad():
        x = frames.float()
        c = (x - F.avg_pool2d(x, kernel, 1, kernel // 2, count_include_pad=False)).abs().sum(1, keepdim=True)
        return (c / c.mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)).clamp_max(cap)


def _is_uint8_frames(frames) -> bool:
    """uint8 frames are (N, H, W, 3) as stored; model frames (N, C, H, W) are floats."""
    return frames.dtype in (torch.uint8, np.uint8)


def to_model_frames(frames_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames_uint8))
    return x.movedim(-1, -3).float().div(127.5).sub(1.0)


@torch.no_grad()
def encode_frames(tokenizer: FrameTokenizer, frames_uint8: np.ndarray | torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N, H, W, 3) uint8 frames -> (N, c, h, w) latents, in batches."""
    out = []
    for i in range(0, len(frames_uint8), batch):
        x = to_model_frames(frames_uint8[i : i + batch])
        out.append(tokenizer.encode(x[:, None])[:, 0].float())
    return torch.cat(out)


def make_tokenizer(cfg: ModelConfig) -> FrameTokenizer:
    """The tokenizer a model config names."""
    if cfg.tokenizer == "pixel":
        return PixelTokenizer(cfg.image_channels, cfg.tokenizer_downsample)
    return ConvAutoencoder.from_config(cfg)


def train_tokenizer(
    tok: ConvAutoencoder,
    frames: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    autocast: bool = False,
    detail_weight: float = 0.0,
    progress=None,
    resume: dict | None = None,
    checkpoint_every: int = 0,
    on_checkpoint=None,
) -> list[float]:
    """Train the autoencoder on frames (N, C, H, W) in [-1, 1], or (N, H, W, 3) uint8 (each batch converted
    when drawn: a float copy of 200,000 frames at 96 px would take 22 GB); returns the loss per step.
    detail_weight: see `ConvAutoencoder.loss`. Fits the latent standardisation at the end.
    Every `checkpoint_every` steps (0: never) `on_checkpoint(state)` receives the stage's whole state (weights,
    optimizer, schedule, sampling generator, losses so far); `resume=state` continues from it to the weights an
    uninterrupted run gives."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(tok.parameters(), lr=lr, weight_decay=0.0, fused=True)
    warmup = max(1, steps // 10)  # linear warm-up, then cosine decay to zero

    def factor(i: int) -> float:
        return (i + 1) / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses, start = [], 0
    if resume is not None:
        tok.load_state_dict(resume["tokenizer"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        g.set_state(resume["generator"])
        losses, start = list(resume["losses"]), int(resume["step"])
    convert = _is_uint8_frames(frames)
    tok.train()
    for i in range(start, steps):
        idx = torch.randint(0, len(frames), (batch_size,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = tok.loss(to_model_frames(frames[idx]) if convert else frames[idx], detail_weight=detail_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(losses[-1])
        if on_checkpoint is not None and checkpoint_every and (i + 1) % checkpoint_every == 0 and i + 1 < steps:
            state = {"step": i + 1, "tokenizer": tok.state_dict(), "optimizer": opt.state_dict()}
            on_checkpoint({**state, "scheduler": sched.state_dict(), "generator": g.get_state(), "losses": losses})
    tok.eval()
    tok.fit_latent_stats(frames)
    return losses
