"""Frame tokenizers: shapes, the lossless pixel tokenizer, and the autoencoder learning to reconstruct."""

import numpy as np
import torch

from wam.config import ModelConfig
from wam.envs.dot import collect_arrays
from wam.tokenizer import ConvAutoencoder, PixelTokenizer, make_tokenizer, train_tokenizer
from wam.tokenizer import to_model_frames


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
    assert isinstance(make_tokenizer(ModelConfig(tokenizer="pixel", image_size=16, tokenizer_downsample=4,
                                                 latent_channels=48, patch_size=2)), PixelTokenizer)
    assert isinstance(make_tokenizer(ModelConfig()), ConvAutoencoder)
