"""Frame tokenizers: shapes, the lossless pixel tokenizer, and the autoencoder learning to reconstruct."""

import numpy as np
import torch

from wam.config import ModelConfig
from wam.envs.dot import collect_arrays
from wam.tokenizer import ConvAutoencoder, PixelTokenizer, make_tokenizer, to_model_frames, train_tokenizer


def test_pixel_tokenizer_is_lossless():
    tok = PixelTokenizer(3, 4)
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    z = tok.encode(x)
    assert z.shape == (2, 3, 48, 4, 4)
    assert torch.equal(tok.decode(z), x)


def test_conv_autoencoder_shapes_and_standardisation():
    tok = ConvAutoencoder(3, 4, 4, 8)
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    assert tok.encode(x).shape == (2, 3, 4, 4, 4)
    assert tok.decode(tok.encode(x)).shape == x.shape
    tok.fit_latent_stats(x.reshape(-1, 3, 16, 16))
    with torch.no_grad():
        z = tok.encode(x)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 0.1


def test_conv_autoencoder_learns_dot_frames():
    torch.manual_seed(0)
    frames = to_model_frames(np.concatenate([e["frames"] for e in collect_arrays(6, image_size=16, seed=1)]))
    tok = ConvAutoencoder(3, 4, 4, 8)
    with torch.no_grad():
        before = float((tok.decode(tok.encode(frames[:64, None])) - frames[:64, None]).pow(2).mean())
    losses = train_tokenizer(tok, frames, steps=150, batch_size=32, lr=3e-3)
    with torch.no_grad():
        after = float((tok.decode(tok.encode(frames[:64, None])) - frames[:64, None]).pow(2).mean())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert after < 0.1 * before


def test_make_tokenizer_follows_the_config():
    assert isinstance(
        make_tokenizer(
            ModelConfig(tokenizer="pixel", image_size=16, tokenizer_downsample=4, latent_channels=48, patch_size=2)
        ),
        PixelTokenizer,
    )
    assert isinstance(make_tokenizer(ModelConfig()), ConvAutoencoder)


def _marker_scenes(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients (the large, easy part of a scene) with one 2 x 2 blue marker at a random place."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.6, 0.6, size)
    frames = torch.empty(n, 3, size, size)
    for i in range(n):
        a, b = torch.rand(2, generator=g) * 2 - 1
        frames[i, 0] = 0.5 * a + ramp[None, :] * b
        frames[i, 1] = 0.3 * b + ramp[:, None] * a
        frames[i, 2] = -0.2 + 0.2 * ramp[None, :]
        y, x = torch.randint(2, size - 4, (2,), generator=g)
        frames[i, :, y : y + 2, x : x + 2] = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    return frames


def test_detail_map_marks_small_objects_not_flat_surfaces():
    from wam.tokenizer import detail_map

    frames = _marker_scenes(4)
    d = detail_map(frames)
    assert d.shape == (4, 1, 32, 32)
    marker = (frames[:, 2] > 0.9)[:, None]  # the blue marker's pixels
    assert float(d[marker].mean()) > 10 * float(d[~marker].mean())
    assert float(detail_map(torch.zeros(2, 3, 16, 16)).abs().max()) == 0.0  # a flat frame has no detail


def test_detail_weight_keeps_a_small_marker_that_a_plain_loss_loses():
    """Same autoencoder, same steps: weighting errors by local contrast reconstructs the marker's pixels better."""
    train, test = _marker_scenes(256, 24, seed=1), _marker_scenes(64, 24, seed=2)
    marker = (test[:, 2] > 0.9)[:, None].expand_as(test)
    err = {}
    for weight in (0.0, 8.0):
        torch.manual_seed(0)
        tok = ConvAutoencoder(3, 8, 4, 8)
        train_tokenizer(tok, train, steps=200, batch_size=32, lr=3e-3, detail_weight=weight)
        with torch.no_grad():
            rec = tok.decode(tok.encode(test[:, None]))[:, 0]
        err[weight] = float((rec - test).pow(2)[marker].mean())
    assert err[0.0] > 0.5  # the plain loss all but erases it (the marker is -1/-1/+1 on a smooth scene)
    assert err[8.0] < 0.2 * err[0.0], err
