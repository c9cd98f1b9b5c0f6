"""Camera streams as mp4 files: encoding RGB frames and decoding them back by timestamp, with PyAV.

A LeRobot v3.0 video file holds many episodes one after another. Frame `i` of a file is shown at
`i / fps` seconds; an episode is the span `[from_timestamp, to_timestamp)` of its file, and row `r` of the
episode is the frame at `from_timestamp + timestamp[r]`. Frames are therefore found by time, never by
counting, which also reads files made by other tools (v2.1: one file per episode, starting at 0).

Why these defaults: 4:2:0 chroma subsampling alone (before any compression) limits a 64x64 MetaWorld
frame to about 31.6 dB PSNR, because thin coloured edges are a pixel or two wide. The default is
therefore H.264 in 4:4:4 at CRF 10, about 39 dB at 64 px and 900 bytes per frame (13x smaller than
raw). AV1 (`codec="av1"`, SVT-AV1, LeRobot's own default) is 4:2:0 only: smaller files, lower fidelity
at small sizes. Every file uses a keyframe every 2 frames (`gop=2`) and no B-frames, so a seek to any
episode decodes at most one extra frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from wam.errors import ArgumentError, DatasetError

# name -> (PyAV encoder, default pixel format, default CRF)
CODECS: dict[str, tuple[str, str, int]] = {
    "h264": ("libx264", "yuv444p", 10),
    "av1": ("libsvtav1", "yuv420p", 30),
}
DEFAULT_CODEC = "h264"
DEFAULT_GOP = 2


def _av():
    """Import PyAV lazily and keep SVT-AV1 quiet (it prints its whole configuration otherwise)."""
    os.environ.setdefault("SVT_LOG", "1")
    import av

    return av


class VideoEncoder:
    """Streams RGB frames into one mp4 file; the n-th frame written is shown at n / fps seconds.

    `bytes_written` counts the compressed bytes muxed so far: it drives the file-size cap of the
    dataset writer (an encoder may hold a few frames back, so it lags slightly).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        fps: int,
        codec: str = DEFAULT_CODEC,
        crf: int | None = None,
        pix_fmt: str | None = None,
        gop: int = DEFAULT_GOP,
    ):
        if codec not in CODECS:
            raise ArgumentError(f"unknown video codec {codec!r}; choose one of: {', '.join(CODECS)}")
        if codec == "av1" and (width < 16 or height < 16):
            raise ArgumentError(f"AV1 needs frames of at least 16x16 pixels, got {width}x{height}; use codec='h264'")
        av = _av()
        encoder, default_pix, default_crf = CODECS[codec]
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.width, self.height, self.codec = int(fps), int(width), int(height), codec
        self.pix_fmt = pix_fmt or default_pix
        self.crf = default_crf if crf is None else int(crf)
        self._time_base = Fraction(1, self.fps)
        self._container = av.open(str(self.path), "w", format="mp4")
        self._stream = self._container.add_stream(encoder, rate=self.fps)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = self.pix_fmt
        options = {"crf": str(self.crf), "g": str(gop)}
        if codec == "h264":
            options["bf"] = "0"  # presentation order == decode order: a seek never waits for later frames
            if width * height <= 256 * 256:
                options["threads"] = "1"  # frame threads only add latency and memory on tiny frames
        self._stream.options = options
        self.frames_written = 0
        self.bytes_written = 0
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        """Append frames (N, H, W, 3) uint8."""
        av = _av()
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ArgumentError(
                f"expected uint8 frames of shape (N, {self.height}, {self.width}, 3), got {frames.dtype} {frames.shape}"
            )
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = self._time_base
            self._mux(self._stream.encode(frame))
            self.frames_written += 1

    def _mux(self, packets) -> None:
        for packet in packets:
            self.bytes_written += packet.size
            self._container.mux(packet)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._mux(self._stream.encode())  # flush frames the encoder held back
        finally:
            self._container.close()


@dataclass
class VideoInfo:
    """What a video file says about itself (read from the container, nothing decoded)."""

    codec: str
    pix_fmt: str | None
    width: int
    height: int
    fps: float | None
    frame_times: np.ndarray  # (N,) presentation time of every frame in seconds, sorted

    def as_feature_info(self) -> dict:
        """The `info` block LeRobot stores for a video feature in meta/info.json."""
        return {
            "video.height": self.height,
            "video.width": self.width,
            "video.codec": self.codec,
            "video.pix_fmt": self.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": self.fps,
            "video.channels": 3,
            "has_audio": False,
        }


def probe(path: str | Path) -> VideoInfo:
    """Stream properties and the time of every frame, from the packets alone (fast: no decoding)."""
    av = _av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DatasetError(f"{path} has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        times = []
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue  # the flush packet at the end
            times.append(float(packet.pts * stream.time_base))
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            codec=getattr(ctx.codec, "canonical_name", None) or ctx.name,  # "av1", not the decoder "libdav1d"
            pix_fmt=ctx.format.name if ctx.format is not None else None,
            width=ctx.width,
            height=ctx.height,
            fps=float(rate) if rate else None,
            frame_times=np.sort(np.asarray(times, dtype=np.float64)),
        )


def decode_range(path: str | Path, start_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """All frames shown in [start_s, end_s] (seconds): times (N,) and frames (N, H, W, 3) uint8.

    Seeks to the keyframe at or before `start_s` and decodes forward, so the cost is the span plus at
    most one keyframe interval.
    """
    av = _av()
    from av.video.reformatter import VideoReformatter

    to_rgb = VideoReformatter()  # one converter for the whole span: 2-3x faster than frame.to_ndarray(format=...)
    times, frames = [], []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DatasetError(f"{path} has no video stream")
        stream = container.streams.video[0]
        if start_s > 0:
            container.seek(max(int(start_s / stream.time_base), 0), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            if t < start_s:
                continue
            if t > end_s:
                break
            times.append(t)
            frames.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())
    if not frames:
        return np.zeros(0), np.zeros((0, 0, 0, 3), np.uint8)
    return np.asarray(times), np.stack(frames)


def count_decodable(path: str | Path) -> int:
    """Decode every frame of a file (without keeping any) and count them; corrupt data raises."""
    av = _av()
    from av.video.reformatter import VideoReformatter

    to_rgb = VideoReformatter()
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            to_rgb.reformat(frame, format="rgb24").to_ndarray()
            n += 1
    return n


def nearest(times: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `ts`, the index of the nearest of the sorted `times` and the distance to it."""
    ts = np.asarray(ts, np.float64)
    if len(times) == 0:
        return np.zeros(len(ts), int), np.full(len(ts), np.inf)
    pos = np.searchsorted(times, ts)
    lo, hi = np.clip(pos - 1, 0, len(times) - 1), np.clip(pos, 0, len(times) - 1)
    use_lo = np.abs(ts - times[lo]) <= np.abs(times[hi] - ts)
    idx = np.where(use_lo, lo, hi)
    return idx, np.abs(times[idx] - ts)


def decode_frames(path: str | Path, timestamps: np.ndarray, *, tolerance_s: float) -> np.ndarray:
    """The frames shown at `timestamps` (seconds), (N, H, W, 3) uint8, in the order asked.

    Each timestamp takes the nearest decoded frame; a frame further than `tolerance_s` away means the
    video does not cover that time, and raises a ValueError naming the file and the missing time.
    """
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.size == 0:
        raise ArgumentError("no timestamps to decode")
    times, frames = decode_range(path, float(ts.min()) - tolerance_s, float(ts.max()) + tolerance_s)
    if len(times) == 0:
        raise DatasetError(
            f"{path} has no frame between {ts.min():.4f}s and {ts.max():.4f}s (is the video shorter than its episode?)"
        )
    pos, err = nearest(times, ts)
    if (err > tolerance_s).any():
        bad = ts[err > tolerance_s]
        raise DatasetError(
            f"{path} has no frame within {tolerance_s * 1000:.1f} ms of {len(bad)} requested "
            f"time(s), first {bad[0]:.4f}s (video covers {times[0]:.4f}s to {times[-1]:.4f}s; "
            f"is the video shorter than its episode?)"
        )
    return frames[pos]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 arrays (inf when identical)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
