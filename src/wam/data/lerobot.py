"""Reading LeRobot datasets (codebase versions v3.0 and v2.1) from a local directory, without `lerobot`.

v3.0 layout (what `LeRobotWriter` writes too):

    meta/info.json                      codebase_version, fps, features, path templates, totals
    meta/stats.json                     per-feature min/max/mean/std/count/quantiles
    meta/tasks.parquet                  one row per task: the task string and its task_index
    meta/episodes/chunk-000/file-000.parquet
                                        one row per episode: length, tasks, data/chunk_index,
                                        data/file_index, dataset_from_index, dataset_to_index,
                                        videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp},
                                        stats/<feature>/<stat>
    data/chunk-000/file-000.parquet     frames of many episodes: timestamp, frame_index, episode_index,
                                        index, task_index and every non-video feature
    videos/<key>/chunk-000/file-000.mp4 frames of many episodes, one after another

v2.1 keeps one parquet and one mp4 per episode (`data/chunk-000/episode_000000.parquet`,
`videos/chunk-000/<key>/episode_000000.mp4`, each video starting at time 0) and line-delimited JSON
metadata (`meta/episodes.jsonl`, `meta/tasks.jsonl`, `meta/episodes_stats.jsonl`). v2.0 is read the
same way (its statistics sit in `meta/stats.json`).

Camera features are either `video` (decoded by timestamp with PyAV) or `image` (PNG/JPEG bytes in the
parquet column, or a path to an image file next to it). Numeric columns of every episode are loaded
into memory at once (they are small); frames are decoded on demand (see `WindowDataset` for caching).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wam.data import stats as _stats
from wam.errors import ArgumentError, DatasetError

CODEBASE_VERSION = "v3.0"
READABLE_VERSIONS = ("v3.0", "v2.1", "v2.0")

DEFAULT_CHUNK_SIZE = 1000  # files per chunk directory
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
IMAGE_PATH = "images/{image_key}/episode-{episode_index:06d}/frame-{frame_index:06d}.png"

V2_EPISODES_PATH = "meta/episodes.jsonl"
V2_TASKS_PATH = "meta/tasks.jsonl"
V2_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
CAMERA_DTYPES = ("video", "image")
NUMERIC_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)


@dataclass
class Episode:
    """Where one episode lives. `start`/`stop` index the rows loaded in memory (set by the reader)."""

    episode_index: int
    length: int
    tasks: list[str]
    data_file: str  # relative path of the parquet file holding its rows
    dataset_from_index: int = -1
    dataset_to_index: int = -1
    videos: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # key -> (path, from_s, to_s)
    start: int = -1
    stop: int = -1


@dataclass
class Meta:
    """Everything under meta/: enough to know which files to read."""

    root: Path
    info: dict
    version: str
    tasks: list[str]
    episodes: list[Episode]
    stats: dict | None  # as stored (JSON lists), None when the dataset has none


# ---- small readers ---------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DatasetError(f"{what} is missing: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{what} is not valid JSON: {path} ({e})") from e


def read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{what} is missing: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{what} line {n} is not valid JSON: {path} ({e})") from e
            if not isinstance(row, dict):
                raise DatasetError(f"{what} line {n} is not a JSON object: {path}")
            rows.append(row)
    return rows


def read_parquet(path: Path, what: str, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DatasetError(f"{what} is missing: {path}")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # pyarrow raises several types for truncated or foreign files
        raise DatasetError(f"{what} is not a readable parquet file: {path} ({e})") from e


def read_info(root: Path) -> dict:
    """meta/info.json, checked for the keys every reader needs."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset directory does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"not a directory: {root} (a LeRobot dataset is a directory with meta/info.json)")
    path = root / INFO_PATH
    if not path.is_file():
        hint = " (this looks like an interrupted write)" if ".partial-" in root.name else ""
        raise DatasetError(f"not a LeRobot dataset: {path} is missing{hint}")
    info = read_json(path, "meta/info.json")
    if not isinstance(info, dict):
        raise DatasetError(f"meta/info.json must hold a JSON object: {path}")
    version = info.get("codebase_version")
    if version not in READABLE_VERSIONS:
        raise DatasetError(
            f"unknown codebase version {version!r} in {path}; wam reads LeRobot "
            f"{', '.join(READABLE_VERSIONS)} (convert older datasets with LeRobot's converters)"
        )
    missing = [k for k in ("fps", "features", "data_path") if k not in info]
    if missing:
        raise DatasetError(f"meta/info.json lacks {', '.join(missing)}: {path}")
    if not isinstance(info["features"], dict) or not info["features"]:
        raise DatasetError(f"meta/info.json has no features: {path}")
    for key, ft in info["features"].items():
        if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
            raise DatasetError(f"feature {key!r} in meta/info.json needs a dtype and a shape: {path}")
    if not (isinstance(info["fps"], (int, float)) and info["fps"] > 0):
        raise DatasetError(f"meta/info.json has an invalid fps {info['fps']!r}: {path}")
    if any(ft["dtype"] == "video" for ft in info["features"].values()) and not info.get("video_path"):
        raise DatasetError(f"meta/info.json has video features but no video_path template: {path}")
    return info


def _task_strings(table, path: Path) -> list[str]:
    """tasks.parquet as a list indexed by task_index (LeRobot writes the task as the pandas index)."""
    names = table.column_names
    if "task_index" not in names:
        raise DatasetError(f"meta/tasks.parquet has no task_index column: {path}")
    text_col = None
    for cand in ("task", "__index_level_0__"):
        if cand in names:
            text_col = cand
            break
    if text_col is None:
        meta = (table.schema.metadata or {}).get(b"pandas")
        if meta:
            idx = [c for c in json.loads(meta).get("index_columns", []) if isinstance(c, str)]
            text_col = next((c for c in idx if c in names), None)
    if text_col is None:
        others = [n for n in names if n != "task_index"]
        if len(others) != 1:
            raise DatasetError(f"meta/tasks.parquet has no task column (found {names}): {path}")
        text_col = others[0]
    idx = table.column("task_index").to_pylist()
    text = table.column(text_col).to_pylist()
    return _index_tasks(list(zip(idx, text)), path)


def _index_tasks(pairs: list[tuple[Any, Any]], path: Path) -> list[str]:
    tasks: dict[int, str] = {}
    for i, t in pairs:
        if not isinstance(i, int) or i < 0 or not isinstance(t, str):
            raise DatasetError(f"bad task row (task_index={i!r}, task={t!r}) in {path}")
        tasks[i] = t
    if sorted(tasks) != list(range(len(tasks))):
        raise DatasetError(f"task indices in {path} are not 0..{len(tasks) - 1}: {sorted(tasks)[:10]}")
    return [tasks[i] for i in range(len(tasks))]


def _int_or(value: Any, default: int) -> int:
    return default if value is None else int(value)


def _read_meta_v3(root: Path, info: dict) -> Meta:
    import pyarrow.parquet as pq

    tasks = _task_strings(read_parquet(root / TASKS_PATH, "meta/tasks.parquet"), root / TASKS_PATH)
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetError(f"no episode metadata: {root / EPISODES_DIR}/chunk-*/file-*.parquet is missing")
    video_keys = [k for k, ft in info["features"].items() if ft["dtype"] == "video"]
    needed = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    wanted = needed + ["tasks", "dataset_from_index", "dataset_to_index"]
    for k in video_keys:
        wanted += [f"videos/{k}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    episodes: list[Episode] = []
    for f in files:
        rel = f.relative_to(root)
        try:
            names = pq.read_schema(f).names
        except Exception as e:
            raise DatasetError(f"episode metadata is not a readable parquet file: {f} ({e})") from e
        missing = [c for c in needed if c not in names]
        for k in video_keys:
            missing += [
                c
                for c in (f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp")
                if c not in names
            ]
        if missing:
            raise DatasetError(f"episode metadata {rel} lacks columns: {', '.join(missing)}")
        rows = read_parquet(f, f"episode metadata {rel}", [c for c in wanted if c in names]).to_pylist()
        for r in rows:
            try:
                data_file = info["data_path"].format(
                    chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"])
                )
                videos = {}
                for k in video_keys:
                    vpath = info["video_path"].format(
                        video_key=k,
                        chunk_index=int(r[f"videos/{k}/chunk_index"]),
                        file_index=int(r[f"videos/{k}/file_index"]),
                    )
                    start = float(r[f"videos/{k}/from_timestamp"])
                    end = r.get(f"videos/{k}/to_timestamp")
                    videos[k] = (vpath, start, float(end) if end is not None else float("nan"))
                ep = Episode(
                    episode_index=int(r["episode_index"]),
                    length=int(r["length"]),
                    tasks=list(r.get("tasks") or []),
                    data_file=data_file,
                    dataset_from_index=_int_or(r.get("dataset_from_index"), -1),
                    dataset_to_index=_int_or(r.get("dataset_to_index"), -1),
                    videos=videos,
                )
            except (TypeError, ValueError, KeyError, IndexError) as e:
                raise DatasetError(
                    f"bad episode row in {rel}: {e} (row: episode_index={r.get('episode_index')!r})"
                ) from e
            episodes.append(ep)
    episodes.sort(key=lambda e: e.episode_index)
    return Meta(root, info, info["codebase_version"], tasks, episodes, None)


def read_stats(root: Path, info: dict) -> dict | None:
    """The stored statistics as JSON (v3.0 and v2.0: meta/stats.json; v2.1: aggregated from
    meta/episodes_stats.jsonl), or None when the dataset has none."""
    if info["codebase_version"] == "v2.1" and (root / V2_EPISODES_STATS_PATH).is_file():
        per_ep = [r.get("stats", {}) for r in read_jsonl(root / V2_EPISODES_STATS_PATH, "meta/episodes_stats.jsonl")]
        try:
            return _stats.to_json(_stats.aggregate_features([_stats.from_json(s) for s in per_ep]))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise DatasetError(f"meta/episodes_stats.jsonl has malformed statistics ({e})") from e
    if (root / STATS_PATH).is_file():
        stats = read_json(root / STATS_PATH, "meta/stats.json")
        if not isinstance(stats, dict):
            raise DatasetError(f"meta/stats.json must hold a JSON object: {root / STATS_PATH}")
        return stats
    return None


def _read_meta_v2(root: Path, info: dict) -> Meta:
    pairs = [(r.get("task_index"), r.get("task")) for r in read_jsonl(root / V2_TASKS_PATH, "meta/tasks.jsonl")]
    tasks = _index_tasks(pairs, root / V2_TASKS_PATH)
    chunks_size = int(info.get("chunks_size", DEFAULT_CHUNK_SIZE))
    video_keys = [k for k, ft in info["features"].items() if ft["dtype"] == "video"]
    episodes = []
    for n, r in enumerate(read_jsonl(root / V2_EPISODES_PATH, "meta/episodes.jsonl"), 1):
        try:
            ep_idx, length = int(r["episode_index"]), int(r["length"])
            chunk = ep_idx // chunks_size
            data_file = info["data_path"].format(episode_chunk=chunk, episode_index=ep_idx)
            videos = {
                k: (
                    info["video_path"].format(episode_chunk=chunk, video_key=k, episode_index=ep_idx),
                    0.0,
                    length / float(info["fps"]),
                )
                for k in video_keys
            }
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise DatasetError(f"meta/episodes.jsonl line {n} is not an episode record ({e}): {r}") from e
        tasks_ep = r.get("tasks") or []
        episodes.append(
            Episode(
                ep_idx, length, list(tasks_ep) if isinstance(tasks_ep, list) else [tasks_ep], data_file, videos=videos
            )
        )
    episodes.sort(key=lambda e: e.episode_index)
    offset = 0
    for ep in episodes:  # v2 has no dataset_from_index: episodes follow each other in index order
        ep.dataset_from_index, ep.dataset_to_index = offset, offset + ep.length
        offset += ep.length
    return Meta(root, info, info["codebase_version"], tasks, episodes, None)


def read_meta(root: str | Path, *, with_stats: bool = True) -> Meta:
    """Parse everything under meta/ (any readable version); raises DatasetError naming the problem."""
    root = Path(root)
    info = read_info(root)
    meta = _read_meta_v3(root, info) if info["codebase_version"] == "v3.0" else _read_meta_v2(root, info)
    if with_stats:
        meta.stats = read_stats(root, info)
    if not meta.episodes:
        raise DatasetError(f"dataset has no episodes: {root}")
    seen = set()
    for ep in meta.episodes:
        if ep.episode_index in seen:
            raise DatasetError(f"episode {ep.episode_index} is listed twice in the episode metadata of {root}")
        seen.add(ep.episode_index)
        if ep.length <= 0:
            raise DatasetError(f"episode {ep.episode_index} has length {ep.length} in the episode metadata of {root}")
    return meta


# ---- columns ---------------------------------------------------------------------------------------


def feature_shape(ft: dict) -> tuple[int, ...]:
    return tuple(int(s) for s in ft["shape"])


def column_to_numpy(col, key: str, ft: dict, path: Path) -> np.ndarray:
    """An arrow column as a numpy array: (N,) for scalars, (N, *shape) for fixed-size vectors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    shape = feature_shape(ft)
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        if arr.null_count:
            raise DatasetError(f"column {key!r} of {path} has {arr.null_count} empty rows")
        values = arr
        while (
            pa.types.is_list(values.type)
            or pa.types.is_large_list(values.type)
            or pa.types.is_fixed_size_list(values.type)
        ):
            values = pc.list_flatten(values)
        flat = values.to_numpy(zero_copy_only=False)
        size = int(np.prod(shape))
        if flat.size != n * size:
            raise DatasetError(
                f"column {key!r} of {path} does not hold {size} values per row as its shape "
                f"{list(shape)} in meta/info.json says ({flat.size} values in {n} rows)"
            )
        return flat.reshape((n,) + shape)
    if arr.null_count:
        raise DatasetError(f"column {key!r} of {path} has {arr.null_count} empty rows")
    out = arr.to_numpy(zero_copy_only=False)
    if int(np.prod(shape)) != 1:
        raise DatasetError(
            f"column {key!r} of {path} holds one value per row, but its shape in meta/info.json is {list(shape)}"
        )
    return out


def decode_image(cell: Any, root: Path, key: str) -> np.ndarray:
    """One image cell ({'bytes': ..., 'path': ...} as LeRobot/HF datasets store it) as (H, W, 3) uint8."""
    from PIL import Image

    data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
    if data is None:
        if not path:
            raise DatasetError(f"image {key!r} has neither bytes nor a path")
        p = Path(path)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise DatasetError(f"image file of {key!r} is missing: {p}")
        data = p.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:
        raise DatasetError(f"image of {key!r} cannot be decoded ({e})") from e


# ---- the dataset -----------------------------------------------------------------------------------


class LeRobotDataset:
    """A local LeRobot dataset (v3.0 or v2.1) with its numeric columns in memory.

    Attributes: `root`, `info`, `version`, `fps`, `features`, `camera_keys` (full keys such as
    `observation.images.corner4`, video and image features alike), `video_keys`, `image_keys`,
    `tasks` (list indexed by task_index), `episodes` (list of `Episode`, sorted by episode_index),
    `episode_ranges` ((start, stop) rows per episode), `num_episodes`, `num_frames`, `stats`
    ({feature: {stat: np.ndarray}}, from meta/ or computed from the data where missing), and `data`
    ({column: np.ndarray} for every numeric feature, rows of all episodes in episode order).

    `dataset[i]` returns row `i` with its camera frames decoded, `episode_frames(e, key)` every frame
    of episode position `e`. A malformed dataset raises `DatasetError` (a ValueError) naming the
    problem; `wam dataset check` lists all of them.
    """

    def __init__(self, root: str | Path, *, tolerance_s: float | None = None):
        self.root = Path(root)
        meta = read_meta(self.root)
        self.info, self.version, self.tasks, self.episodes = meta.info, meta.version, meta.tasks, meta.episodes
        self.features: dict[str, dict] = self.info["features"]
        self.fps = self.info["fps"]
        # nearest frame within less than half a frame period: unambiguous, and a missing frame is caught
        self.tolerance_s = tolerance_s if tolerance_s is not None else 0.45 / float(self.fps)
        self.camera_keys = [k for k, ft in self.features.items() if ft["dtype"] in CAMERA_DTYPES]
        self.video_keys = [k for k in self.camera_keys if self.features[k]["dtype"] == "video"]
        self.image_keys = [k for k in self.camera_keys if self.features[k]["dtype"] == "image"]
        self.data, self._images = self._load_rows()
        self._starts = np.array([ep.start for ep in self.episodes])
        self.stats = self._load_stats(meta.stats)

    # -- loading

    def _load_rows(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Numeric and string columns as numpy arrays; image columns stay arrow arrays (compressed bytes,
        decoded on demand). Rows come out in episode order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        numeric = [k for k, ft in self.features.items() if ft["dtype"] in NUMERIC_DTYPES]
        strings = [k for k, ft in self.features.items() if ft["dtype"] == "string"]
        for k in ("episode_index", "timestamp"):
            if k not in numeric:
                raise DatasetError(f"meta/info.json of {self.root} lacks the required feature {k!r}")
        files: dict[str, list[Episode]] = {}
        for ep in self.episodes:
            files.setdefault(ep.data_file, []).append(ep)
        parts: dict[str, list] = {k: [] for k in numeric + strings}
        images: dict[str, list] = {k: [] for k in self.image_keys}  # arrow chunks per image column
        offset = 0
        columns = numeric + strings + self.image_keys
        for rel, eps in files.items():
            path = self.root / rel
            what = f"data file of episode {eps[0].episode_index}"
            if not path.is_file():
                raise DatasetError(f"{what} is missing: {path}")
            try:
                names = pq.read_schema(path).names
            except Exception as e:
                raise DatasetError(f"{what} is not a readable parquet file: {path} ({e})") from e
            missing = [k for k in columns if k not in names]
            if missing:
                raise DatasetError(
                    f"data file {path} lacks the column(s) {', '.join(missing)} that meta/info.json lists as features"
                )
            table = read_parquet(path, what, columns)
            ep_col = column_to_numpy(
                table.column("episode_index"), "episode_index", self.features["episode_index"], path
            ).reshape(-1)
            wanted = {ep.episode_index for ep in eps}
            keep = np.isin(ep_col, list(wanted))
            rows = np.flatnonzero(keep)
            sub_ep = ep_col[rows]
            for ep in eps:
                pos = np.flatnonzero(sub_ep == ep.episode_index)
                if len(pos) == 0:
                    raise DatasetError(f"episode {ep.episode_index} has no rows in {path}")
                if len(pos) != ep.length:
                    raise DatasetError(
                        f"episode {ep.episode_index} has {len(pos)} rows in {path} but length "
                        f"{ep.length} in the episode metadata"
                    )
                if pos[-1] - pos[0] + 1 != len(pos):
                    raise DatasetError(f"rows of episode {ep.episode_index} are not contiguous in {path}")
                ep.start, ep.stop = offset + int(pos[0]), offset + int(pos[-1]) + 1
            if not keep.all():
                table = table.take(rows)
            for k in numeric:
                parts[k].append(column_to_numpy(table.column(k), k, self.features[k], path))
            for k in strings:
                parts[k].append(np.asarray(table.column(k).to_pylist(), dtype=object))
            for k in self.image_keys:
                images[k] += table.column(k).chunks
            offset += len(rows)
        data = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in parts.items()}
        image_cols = {k: pa.chunked_array(v) for k, v in images.items()}
        # Files are read in order of first use; put rows in episode order so episode e is one slice.
        order = np.concatenate([np.arange(ep.start, ep.stop) for ep in self.episodes])
        if not np.array_equal(order, np.arange(len(order))) or len(order) != offset:
            data = {k: v[order] for k, v in data.items()}
            image_cols = {k: v.take(pa.array(order)) for k, v in image_cols.items()}
            start = 0
            for ep in self.episodes:
                ep.start, ep.stop = start, start + ep.length
                start += ep.length
        return data, image_cols

    def _load_stats(self, stored: dict | None) -> dict[str, dict[str, np.ndarray]]:
        """Stored statistics, completed from the data for numeric features that have none."""
        stats: dict[str, dict[str, np.ndarray]] = {}
        if isinstance(stored, dict):
            for k, st in stored.items():
                if isinstance(st, dict):
                    try:
                        stats[k] = {s: np.asarray(v, np.float64) for s, v in st.items()}
                    except (ValueError, TypeError):
                        continue  # unreadable entries are recomputed below where possible
        for k, v in self.data.items():
            if v.dtype.kind in "fiub" and (k not in stats or not {"min", "max", "mean", "std"} <= set(stats[k])):
                stats[k] = _stats.numeric_stats(v.reshape(len(v), -1) if v.ndim > 1 else v)
        return stats

    # -- sizes and ranges

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)

    @property
    def episode_ranges(self) -> list[tuple[int, int]]:
        return [(ep.start, ep.stop) for ep in self.episodes]

    @property
    def episode_indices(self) -> list[int]:
        return [ep.episode_index for ep in self.episodes]

    def position_of(self, episode_index: int) -> int:
        """Position in `episodes` of an episode_index."""
        for i, ep in enumerate(self.episodes):
            if ep.episode_index == episode_index:
                return i
        raise ArgumentError(
            f"no episode {episode_index} in {self.root}; it has episodes "
            f"{self.episode_indices[0]}..{self.episode_indices[-1]} ({self.num_episodes} of them)"
        )

    def camera_shape(self, key: str) -> tuple[int, int, int]:
        """(H, W, C) of a camera feature, whatever order its names give."""
        ft = self.features[key]
        shape = feature_shape(ft)
        names = ft.get("names") or []
        if len(shape) == 3 and names and names[0] in ("channels", "channel", "c"):
            return shape[1], shape[2], shape[0]
        return shape  # type: ignore[return-value]

    # -- frames

    def episode_frames(self, ep_pos: int, key: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Frames (n, H, W, 3) uint8 of camera `key` at the given rows of episode position `ep_pos`
        (all rows when None). Video frames are found by timestamp."""
        ep = self.episodes[ep_pos]
        rows = np.arange(ep.length) if rows is None else np.asarray(rows).reshape(-1)
        if key in self.video_keys:
            from wam.data.video import decode_frames

            path, start_s, _ = ep.videos[key]
            ts = start_s + self.data["timestamp"][ep.start + rows].astype(np.float64)
            try:
                return decode_frames(self.root / path, ts, tolerance_s=self.tolerance_s)
            except DatasetError:
                raise
            except FileNotFoundError as e:
                raise DatasetError(f"video of episode {ep.episode_index} is missing: {self.root / path}") from e
            except Exception as e:  # PyAV errors: unreadable or truncated file, unsupported codec
                raise DatasetError(
                    f"cannot decode {key!r} of episode {ep.episode_index} from {self.root / path}: {e}"
                ) from e
        if key in self.image_keys:
            cells = self._images[key]
            return np.stack([decode_image(cells[ep.start + int(r)].as_py(), self.root, key) for r in rows])
        raise KeyError(f"{key!r} is not a camera of {self.root}; cameras: {self.camera_keys}")

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Row `i` (over all episodes in order): numeric values and decoded (H, W, 3) camera frames."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        pos = int(np.searchsorted(self._starts, i, side="right") - 1)
        ep = self.episodes[pos]
        item: dict[str, Any] = {k: v[i] for k, v in self.data.items()}
        for k in self.camera_keys:
            item[k] = self.episode_frames(pos, k, np.array([i - ep.start]))[0]
        ti = int(item.get("task_index", 0))
        item["task"] = self.tasks[ti] if 0 <= ti < len(self.tasks) else ""
        return item

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, version={self.version}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, fps={self.fps}, cameras={self.camera_keys})"
        )
