"""Validating a LeRobot dataset on disk and describing it: `wam dataset check` and `wam dataset info`.

`check_dataset` looks at every file instead of stopping at the first problem, and reports each
problem as one plain sentence naming the file, the episode and what is wrong:

- meta/info.json missing or unreadable, an unknown codebase version, features without dtype/shape
- episode metadata or tasks missing or malformed, episode indices not 0..N-1, totals that disagree
- data files missing or unreadable, columns that contradict meta/info.json (missing, extra, wrong
  dtype or shape), rows that disagree with the episode metadata (count, frame_index, index)
- timestamps that do not increase, NaN or inf values
- video files missing or undecodable, videos shorter than their episode's parquet rows, frame sizes
  that differ from meta/info.json; image cells without bytes or file
- statistics that are missing, not finite or of the wrong shape (warnings where training can
  recompute them)

Problems make `wam dataset check` exit non-zero; warnings do not.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wam.data.lerobot import (
    CAMERA_DTYPES,
    DEFAULT_FEATURES,
    NUMERIC_DTYPES,
    STATS_PATH,
    V2_EPISODES_STATS_PATH,
    DatasetError,
    Meta,
    column_to_numpy,
    decode_image,
    feature_shape,
    read_info,
    read_meta,
    read_stats,
)
from wam.errors import ArgumentError

MAX_PER_KIND = 10  # the same kind of problem is listed this many times, then counted


@dataclass
class Report:
    """The outcome of `check_dataset`: problems (dataset unusable as is), warnings, and a summary."""

    root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, msg: str) -> None:
        self._add(self.problems, kind, msg)

    def warn(self, kind: str, msg: str) -> None:
        self._add(self.warnings, "w:" + kind, msg)

    def _add(self, target: list[str], kind: str, msg: str) -> None:
        self._counts[kind] += 1
        if self._counts[kind] <= MAX_PER_KIND:
            target.append(msg)

    def finish(self) -> Report:
        for kind, n in self._counts.items():
            if n > MAX_PER_KIND:
                target = self.warnings if kind.startswith("w:") else self.problems
                target.append(f"... and {n - MAX_PER_KIND} more of the same kind ({kind.removeprefix('w:')})")
        return self

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "summary": self.summary,
        }


def _episodes_text(indices: list[int]) -> str:
    indices = sorted(indices)
    if len(indices) == 1:
        return f"episode {indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"episodes {indices[0]}-{indices[-1]}"
    head = ", ".join(map(str, indices[:5]))
    return f"episodes {head}{', ...' if len(indices) > 5 else ''}"


def _arrow_matches(arrow_type, ft: dict) -> str | None:
    """None when an arrow column type can hold feature `ft`, else what is wrong (in words)."""
    import pyarrow as pa

    dtype, shape = ft["dtype"], feature_shape(ft)
    if dtype == "image":
        ok = pa.types.is_struct(arrow_type) or pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
        return None if ok else f"an image feature, stored as {arrow_type}"
    if dtype == "string":
        ok = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
        return None if ok else f"a string feature, stored as {arrow_type}"
    t, dims = arrow_type, []
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        dims.append(t.list_size if pa.types.is_fixed_size_list(t) else None)
        t = t.value_type
    try:
        leaf = "bool" if pa.types.is_boolean(t) else np.dtype(t.to_pandas_dtype()).name
    except (NotImplementedError, TypeError):
        leaf = str(t)
    if leaf != dtype:
        return f"dtype {dtype} in meta/info.json, {leaf} in the file"
    if not dims and int(np.prod(shape)) != 1:
        return f"shape {list(shape)} in meta/info.json, one value per row in the file"
    if dims and all(d is not None for d in dims) and int(np.prod(dims)) != int(np.prod(shape)):
        return f"shape {list(shape)} in meta/info.json, {dims} in the file"
    return None


DECODE_MODES = ("none", "first", "all")


def check_dataset(root: str | Path, *, decode: str = "first") -> Report:
    """Every problem found in the dataset at `root` (see the module docstring). Never raises for a bad
    dataset: whatever goes wrong becomes a problem in the report.

    Video files are always checked from their packets (frame count and times, no decoding); `decode`
    also decodes the first frame of each file ("first", catches unsupported codecs), every frame
    ("all", catches corrupted frame data; about 1,500 frames/s at 64x64) or none ("none")."""
    if decode not in DECODE_MODES:
        raise ArgumentError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    report = Report(Path(root))
    try:
        _check(report, Path(root), decode)
    except Exception as e:  # noqa: BLE001 (a dataset broken in a way no check foresaw gets a sentence, not a traceback)
        report.problem("unexpected", f"could not finish checking ({type(e).__name__}: {e})")
    return report.finish()


def _check(report: Report, root: Path, decode: str) -> None:
    try:
        info = read_info(root)
    except DatasetError as e:
        report.problem("info", str(e))
        return
    features: dict[str, dict] = info["features"]
    report.summary.update(version=info["codebase_version"], fps=info["fps"])
    for key, ft in features.items():
        if ft["dtype"] not in NUMERIC_DTYPES + CAMERA_DTYPES + ("string",):
            report.problem("feature", f"feature {key!r} has an unknown dtype {ft['dtype']!r} in meta/info.json")
        try:
            shape = feature_shape(ft)
        except (TypeError, ValueError):
            report.problem("feature", f"feature {key!r} has an invalid shape {ft['shape']!r} in meta/info.json")
            continue
        if ft["dtype"] in CAMERA_DTYPES and len(shape) != 3:
            report.problem(
                "feature", f"camera feature {key!r} needs a 3-D shape (height, width, channels), got {list(shape)}"
            )
    for key in DEFAULT_FEATURES:
        if key not in features:
            report.problem("feature", f"meta/info.json lacks the standard feature {key!r}")
    if any(p.startswith("feature") for p in report._counts):
        return

    try:
        meta = read_meta(root, with_stats=False)
    except DatasetError as e:
        report.problem("meta", str(e))
        return
    try:
        meta.stats = read_stats(root, info)
        stats_readable = True
    except DatasetError as e:
        report.problem("stats", str(e))
        stats_readable = False
    episodes = meta.episodes
    n_frames = sum(ep.length for ep in episodes)
    report.summary.update(episodes=len(episodes), frames=n_frames, tasks=len(meta.tasks))
    indices = [ep.episode_index for ep in episodes]
    if indices != list(range(len(episodes))):
        report.problem(
            "meta",
            f"episode indices are not 0..{len(episodes) - 1} "
            f"(first ones: {indices[:8]}); LeRobot numbers episodes consecutively",
        )
    totals = (("total_episodes", len(episodes)), ("total_frames", n_frames), ("total_tasks", len(meta.tasks)))
    for name, actual in totals:
        if name in info and info[name] != actual:
            report.problem("totals", f"meta/info.json says {name}={info[name]} but the metadata has {actual}")
    known_tasks = set(meta.tasks)
    for ep in episodes:
        for t in ep.tasks:
            if t not in known_tasks:
                report.problem("tasks", f"episode {ep.episode_index} names task {t!r}, which is not in the task list")
    if info["codebase_version"] == "v3.0":
        offset = 0
        for ep in episodes:
            span = (ep.dataset_from_index, ep.dataset_to_index)
            if ep.dataset_from_index >= 0 and span != (offset, offset + ep.length):
                report.problem(
                    "ranges",
                    f"episode {ep.episode_index} has dataset_from_index/to_index "
                    f"{ep.dataset_from_index}..{ep.dataset_to_index}, expected "
                    f"{offset}..{offset + ep.length} from the episode lengths",
                )
            offset += ep.length

    timestamps = _check_data(report, meta)
    _check_videos(report, meta, timestamps, decode)
    if stats_readable:
        _check_stats(report, meta)


def _check_columns(report: Report, rel: str, table, stored: dict, features: dict) -> dict[str, np.ndarray]:
    """The data file's columns against meta/info.json; returns the numeric columns that match, as arrays."""
    names = table.column_names
    matching = set()
    for k, ft in stored.items():
        if k not in names:
            report.problem("schema", f"data file {rel} lacks column {k!r} that meta/info.json lists as a feature")
            continue
        wrong = _arrow_matches(table.schema.field(k).type, ft)
        if wrong:
            report.problem("schema", f"column {k!r} of {rel} does not match meta/info.json: {wrong}")
        else:
            matching.add(k)
    for k in names:
        if k not in features and not k.startswith("__index_level"):
            report.problem("schema", f"data file {rel} has column {k!r} that meta/info.json does not list")
    cols: dict[str, np.ndarray] = {}
    for k, ft in stored.items():
        if k in matching and ft["dtype"] in NUMERIC_DTYPES:
            try:
                cols[k] = column_to_numpy(table.column(k), k, ft, Path(rel))
            except DatasetError as e:
                report.problem("schema", str(e))
    return cols


def _check_episode_rows(
    report: Report, rel: str, ep, rows: np.ndarray, cols: dict[str, np.ndarray], n_tasks: int, fps: float
) -> np.ndarray | None:
    """One episode's rows of a data file: count, order, indices, task indices, NaN, timestamps. Returns its
    timestamps when they are finite."""
    if len(rows) != ep.length:
        report.problem(
            "rows",
            f"episode {ep.episode_index} has {len(rows)} rows in {rel} but length {ep.length} in the episode metadata",
        )
    if rows[-1] - rows[0] + 1 != len(rows):
        report.problem("rows", f"rows of episode {ep.episode_index} are not contiguous in {rel}")
    frame_index = cols["frame_index"].reshape(-1)[rows] if "frame_index" in cols else None
    if frame_index is not None and not np.array_equal(frame_index, np.arange(len(rows))):
        report.problem("rows", f"frame_index of episode {ep.episode_index} in {rel} is not 0..{len(rows) - 1}")
    if "index" in cols and ep.dataset_from_index >= 0:
        expect = np.arange(ep.dataset_from_index, ep.dataset_from_index + len(rows))
        if not np.array_equal(cols["index"].reshape(-1)[rows], expect):
            report.problem(
                "rows",
                f"index of episode {ep.episode_index} in {rel} does not run "
                f"{ep.dataset_from_index}..{ep.dataset_from_index + len(rows) - 1}",
            )
    if "task_index" in cols:
        ti = cols["task_index"].reshape(-1)[rows]
        if ti.min() < 0 or ti.max() >= n_tasks:
            report.problem(
                "rows",
                f"episode {ep.episode_index} in {rel} uses task_index {int(ti.max())} but there are {n_tasks} tasks",
            )
    for k, v in cols.items():
        if v.dtype.kind == "f":
            bad = ~np.isfinite(v[rows])
            if bad.any():
                report.problem(
                    "nan",
                    f"column {k!r} of episode {ep.episode_index} in {rel} has {int(bad.sum())} NaN or inf value(s)",
                )
    if "timestamp" in cols:
        ts = cols["timestamp"].reshape(-1)[rows].astype(np.float64)
        if not np.isfinite(ts).all():
            return None
        steps = np.diff(ts)
        if (steps <= 0).any():
            at = int(np.flatnonzero(steps <= 0)[0])
            report.problem(
                "timestamps",
                f"timestamps of episode {ep.episode_index} in {rel} do not "
                f"increase: {ts[at]:.4f}s then {ts[at + 1]:.4f}s at frame {at + 1}",
            )
        elif len(steps) and np.abs(steps - 1.0 / fps).max() > 0.25 / fps:
            report.warn(
                "timestamps",
                f"timestamps of episode {ep.episode_index} in {rel} are not "
                f"spaced 1/fps = {1 / fps:.4f}s apart (steps from {steps.min():.4f}s "
                f"to {steps.max():.4f}s)",
            )
        return ts
    return None


def _check_data(report: Report, meta: Meta) -> dict[int, np.ndarray]:
    """Checks every data file; returns the timestamps of each episode that could be read."""
    import pyarrow.parquet as pq

    root, features, fps = meta.root, meta.info["features"], float(meta.info["fps"])
    stored = {k: ft for k, ft in features.items() if ft["dtype"] != "video"}
    by_file: dict[str, list] = defaultdict(list)
    for ep in meta.episodes:
        by_file[ep.data_file].append(ep)
    timestamps: dict[int, np.ndarray] = {}
    for rel, eps in by_file.items():
        path = root / rel
        which = _episodes_text([e.episode_index for e in eps])
        if not path.is_file():
            report.problem("missing-data", f"data file {rel} is missing ({which})")
            continue
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 (pyarrow raises many types for a broken file; each is a problem found)
            report.problem("bad-data", f"data file {rel} is not a readable parquet file ({which}): {e}")
            continue
        names = table.column_names
        cols = _check_columns(report, rel, table, stored, features)
        if "episode_index" not in cols:
            continue
        ep_col = cols["episode_index"].reshape(-1)
        for ep in eps:
            rows = np.flatnonzero(ep_col == ep.episode_index)
            if len(rows) == 0:
                report.problem("rows", f"episode {ep.episode_index} has no rows in {rel}")
                continue
            ts = _check_episode_rows(report, rel, ep, rows, cols, len(meta.tasks), fps)
            if ts is not None:
                timestamps[ep.episode_index] = ts
        for k, ft in stored.items():
            if ft["dtype"] == "image" and k in names:
                _check_images(report, root, rel, k, ft, table.column(k).to_pylist(), ep_col, eps)
    return timestamps


def _check_images(
    report: Report, root: Path, rel: str, key: str, ft: dict, cells: list, ep_col: np.ndarray, eps: list
) -> None:
    for ep in eps:
        rows = np.flatnonzero(ep_col == ep.episode_index)
        for r in rows:
            cell = cells[r]
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            path = cell.get("path") if isinstance(cell, dict) else None
            if data is None and not path:
                report.problem(
                    "images",
                    f"image {key!r} of episode {ep.episode_index} row {r} in {rel} has neither bytes nor a file path",
                )
            elif data is None:
                p = Path(path) if Path(path).is_absolute() else root / path
                if not p.is_file():
                    report.problem("images", f"image file of {key!r} for episode {ep.episode_index} is missing: {p}")
        if len(rows):
            try:
                img = decode_image(cells[rows[0]], root, key)
                h, w, _ = feature_shape(ft)
                if img.shape[:2] != (h, w):
                    report.problem(
                        "images",
                        f"images of {key!r} are {img.shape[1]}x{img.shape[0]} pixels, meta/info.json says {w}x{h}",
                    )
            except DatasetError as e:
                report.problem("images", f"episode {ep.episode_index}: {e}")


def _check_videos(report: Report, meta: Meta, timestamps: dict[int, np.ndarray], decode: str) -> None:
    from wam.data.video import count_decodable, decode_range, nearest, probe

    root, features, fps = meta.root, meta.info["features"], float(meta.info["fps"])
    tol = 0.45 / fps
    by_file: dict[tuple[str, str], list] = defaultdict(list)
    for ep in meta.episodes:
        for key, (rel, start, end) in ep.videos.items():
            by_file[(key, rel)].append((ep, start, end))
    report.summary["video_files"] = len(by_file)
    for (key, rel), items in by_file.items():
        path = root / rel
        which = _episodes_text([ep.episode_index for ep, _, _ in items])
        if not path.is_file():
            report.problem("missing-video", f"video file {rel} is missing ({key}, {which})")
            continue
        try:
            vinfo = probe(path)
            if decode == "first" and len(vinfo.frame_times):
                decode_range(path, vinfo.frame_times[0], vinfo.frame_times[0])
            if decode == "all":
                n = count_decodable(path)
                if n < len(vinfo.frame_times):
                    report.problem(
                        "bad-video",
                        f"video file {rel}: only {n} of its {len(vinfo.frame_times)} frames decode ({key}, {which})",
                    )
        except Exception as e:  # noqa: BLE001 (PyAV raises many types for a broken file; each is a problem found)
            report.problem("bad-video", f"video file {rel} cannot be decoded ({key}, {which}): {e}")
            continue
        h, w, _ = feature_shape(features[key])
        if (vinfo.height, vinfo.width) != (h, w):
            report.problem(
                "video-size",
                f"video file {rel} is {vinfo.width}x{vinfo.height} pixels, meta/info.json says {w}x{h} for {key}",
            )
        times = vinfo.frame_times
        for ep, start, end in items:
            ts = timestamps.get(ep.episode_index)
            if ts is None:
                ts = np.arange(ep.length) / fps
            want = start + ts
            found = int((nearest(times, want)[1] <= tol).sum())
            if found < len(want):
                covered = f"{times[0]:.3f}s to {times[-1]:.3f}s" if len(times) else "nothing"
                report.problem(
                    "short-video",
                    f"video {rel} is shorter than its parquet rows: episode "
                    f"{ep.episode_index} needs {len(want)} frames from {want[0]:.3f}s to "
                    f"{want[-1]:.3f}s, the file has {found} of them (it covers {covered})",
                )
            if np.isfinite(end) and abs((end - start) - ep.length / fps) > tol:
                report.warn(
                    "video-span",
                    f"episode {ep.episode_index} spans {end - start:.3f}s of {rel} but has "
                    f"{ep.length} frames at {fps:g} fps ({ep.length / fps:.3f}s)",
                )


def _check_stats(report: Report, meta: Meta) -> None:
    features = meta.info["features"]
    if meta.stats is None:
        report.warn(
            "stats",
            "no statistics (meta/stats.json or meta/episodes_stats.jsonl); wam computes "
            "them from the data, LeRobot's tools expect them",
        )
        return
    if not isinstance(meta.stats, dict):
        report.problem("stats", "meta/stats.json must hold a JSON object")
        return
    for key in ("action", "observation.state"):
        if key in features and key not in meta.stats:
            report.warn("stats", f"statistics lack {key!r}; wam computes them from the data")
    for key, st in meta.stats.items():
        if not isinstance(st, dict):
            report.problem("stats", f"statistics of {key!r} are not a mapping of stat names to values")
            continue
        ft = features.get(key)
        wrong_shape = []
        for name, value in st.items():
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (ValueError, TypeError):
                report.problem("stats", f"statistic {name!r} of {key!r} is not numeric")
                continue
            if not np.isfinite(arr).all():
                report.problem("stats", f"statistic {name!r} of {key!r} contains NaN or inf")
            if ft is None or name == "count":
                continue
            want = (3, 1, 1) if ft["dtype"] in CAMERA_DTYPES else feature_shape(ft)
            if arr.size != int(np.prod(want)):
                wrong_shape.append(f"{name} {list(arr.shape)}")
        if wrong_shape:
            want = (3, 1, 1) if ft["dtype"] in CAMERA_DTYPES else feature_shape(ft)
            report.problem(
                "stats",
                f"statistics of {key!r} have the wrong shape ({', '.join(wrong_shape)}); "
                f"meta/info.json implies {list(want)}",
            )


# ---- info ------------------------------------------------------------------------------------------


def describe(root: str | Path) -> dict[str, Any]:
    """A summary of a dataset from its metadata (nothing decoded): what `wam dataset info` prints."""
    meta = read_meta(root, with_stats=False)  # statistics are only reported as present or not
    info, features = meta.info, meta.info["features"]
    fps = float(info["fps"])
    n_frames = sum(ep.length for ep in meta.episodes)
    cameras = {}
    for k, ft in features.items():
        if ft["dtype"] in CAMERA_DTYPES:
            vi = ft.get("info") or ft.get("video_info") or {}
            cameras[k] = {
                "storage": ft["dtype"],
                "shape": list(feature_shape(ft)),
                "codec": vi.get("video.codec"),
                "pix_fmt": vi.get("video.pix_fmt"),
            }
    lengths = np.array([ep.length for ep in meta.episodes])
    return {
        "root": str(Path(root)),
        "codebase_version": info["codebase_version"],
        "robot_type": info.get("robot_type"),
        "fps": info["fps"],
        "episodes": len(meta.episodes),
        "frames": n_frames,
        "duration_s": round(n_frames / fps, 2),
        "episode_length": {
            "min": int(lengths.min()),
            "mean": round(float(lengths.mean()), 1),
            "max": int(lengths.max()),
        },
        "tasks": meta.tasks,
        "cameras": cameras,
        "features": {k: {"dtype": ft["dtype"], "shape": list(feature_shape(ft))} for k, ft in features.items()},
        "has_stats": (meta.root / STATS_PATH).is_file() or (meta.root / V2_EPISODES_STATS_PATH).is_file(),
    }
