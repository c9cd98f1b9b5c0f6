"""Video files: encoding, timestamps of concatenated episodes, decoding by time, codec fidelity."""

import numpy as np
import pytest

from wam.data.video import VideoEncoder, decode_frames, decode_range, probe, psnr
from wam.envs.dot import render


def smooth_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Moving dots over a smooth colour gradient: texture a codec has to work for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.4 + 0.3 * yy, 0.3 + 0.2 * np.cos(5 * (xx + yy))], -1)
    out = []
    pos = rng.uniform(-0.5, 0.5, 2)
    for _ in range(n):
        pos = np.clip(pos + rng.normal(0, 0.08, 2), -0.9, 0.9)
        dot = render(pos.astype(np.float32), -pos.astype(np.float32), size).astype(np.float64) / 255
        out.append(np.clip(base * 0.7 + dot, 0, 1))
    return (np.stack(out) * 255 + 0.5).astype(np.uint8)


def test_episodes_follow_each_other_and_decode_by_timestamp(tmp_path):
    fps = 10
    a, b = smooth_frames(12, 32, seed=1), smooth_frames(7, 32, seed=2)
    enc = VideoEncoder(tmp_path / "v.mp4", width=32, height=32, fps=fps)
    enc.write(a)
    start_b = enc.frames_written / fps
    enc.write(b)
    enc.close()
    assert start_b == pytest.approx(1.2)
    info = probe(tmp_path / "v.mp4")
    assert (info.width, info.height, info.codec, info.pix_fmt) == (32, 32, "h264", "yuv444p")
    assert np.allclose(info.frame_times, np.arange(19) / fps)
    # episode b, rows 0..6, asked out of order and with repeats
    rows = np.array([3, 0, 6, 3])
    got = decode_frames(tmp_path / "v.mp4", start_b + rows / fps, tolerance_s=0.45 / fps)
    assert got.shape == (4, 32, 32, 3)
    assert psnr(got, b[rows]) >= 35
    assert np.array_equal(got[0], got[3])
    times, frames = decode_range(tmp_path / "v.mp4", 0.0, start_b - 0.01)
    assert len(frames) == 12 and psnr(frames, a) >= 35


def test_default_codec_meets_the_fidelity_target_and_av1_round_trips(tmp_path):
    frames = smooth_frames(20, 64, seed=3)
    for codec, floor in (("h264", 35.0), ("av1", 28.0)):
        path = tmp_path / f"{codec}.mp4"
        enc = VideoEncoder(path, width=64, height=64, fps=20, codec=codec)
        enc.write(frames)
        enc.close()
        assert probe(path).codec == ("h264" if codec == "h264" else "av1")
        got = decode_frames(path, np.arange(20) / 20, tolerance_s=0.02)
        assert psnr(got, frames) >= floor, codec


def test_missing_times_are_reported_not_invented(tmp_path):
    enc = VideoEncoder(tmp_path / "v.mp4", width=32, height=32, fps=10)
    enc.write(smooth_frames(5, 32))
    enc.close()
    with pytest.raises(ValueError, match="shorter than its episode"):
        decode_frames(tmp_path / "v.mp4", np.arange(8) / 10, tolerance_s=0.045)


def test_encoder_refuses_wrong_frames(tmp_path):
    enc = VideoEncoder(tmp_path / "v.mp4", width=32, height=32, fps=10)
    with pytest.raises(ValueError, match="uint8 frames"):
        enc.write(np.zeros((2, 16, 32, 3), np.uint8))
    enc.close()
    with pytest.raises(ValueError, match="unknown video codec"):
        VideoEncoder(tmp_path / "w.mp4", width=32, height=32, fps=10, codec="vp9")
