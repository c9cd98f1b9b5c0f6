"""Writing LeRobot v3.0 datasets from episodes given as numpy arrays.

    with LeRobotWriter("data/demo", fps=10) as w:
        w.add_episode({"observation.images.top": frames,      # (T, H, W, 3) uint8
                       "observation.state": states,           # (T, S)
                       "action": actions,                     # (T, A)
                       "next.reward": rewards,                # (T,)
                       "next.success": successes},            # (T,) bool
                      task="move the red dot to the green goal")
    # leaving the block finalises: meta/, data/ and videos/ appear at data/demo in one rename

The layout is LeRobot's (see `wam.data.lerobot`): many episodes per parquet and per mp4, a new file
once a file would pass its size cap (`data_files_size_in_mb`, `video_files_size_in_mb`), a new chunk
directory every `chunks_size` files, per-episode statistics in the episode metadata and dataset
statistics in meta/stats.json.

Why atomic: a collection can be killed at any point. Everything is written into a hidden sibling
directory (`.NAME.partial-XXXX`), `meta/info.json` last, and the directory is renamed to NAME only
when complete. A dataset at NAME is therefore always whole; an interrupted write leaves only the
hidden directory, which the next writer of NAME deletes once the process that wrote it is gone (its
process id is in `.writer-pid`).

Resumable writes: `checkpoint(extra)` closes the open video files, writes the buffered rows, starts new
data and video files for the episodes that follow (v3.0 allows any number of files per chunk) and
atomically writes `.writer-state.json` into the hidden directory: everything needed to go on, the list
of files complete at that point, and the caller's `extra`. A writer killed after a checkpoint leaves a
directory that `find_resumable(NAME)` finds and `LeRobotWriter.resume(NAME)` reopens, deleting what was
written after the checkpoint; `suspend()` is the orderly way to stop (Ctrl-C) and leave it so. A new
writer of NAME still deletes such directories as abandoned: a caller that may resume looks first.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from wam.data import stats as _stats
from wam.data.lerobot import (
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_FEATURES,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    EPISODES_PATH,
    INFO_PATH,
    NUMERIC_DTYPES,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
)
from wam.data.video import DEFAULT_CODEC, DEFAULT_GOP, VideoEncoder, probe
from wam.errors import ArgumentError, DatasetError, NotFoundError

MB = 1024 * 1024
STATE_FILE = ".writer-state.json"  # a checkpoint of a partial directory (see `LeRobotWriter.checkpoint`)
PID_FILE = ".writer-pid"  # the writing process's id, or RELEASED once it stopped and left the directory to resume
RELEASED = "released"
GENERATED = ("frame_index", "episode_index", "index", "task_index")  # the writer numbers these itself


def _arrow_type(dtype: str):
    import pyarrow as pa

    if dtype == "bool":
        return pa.bool_()
    if dtype == "string":
        return pa.string()
    return pa.from_numpy_dtype(np.dtype(dtype))


def _to_arrow(values: np.ndarray, ft: dict):
    """(T, *shape) values as an arrow column: scalars for shape (1,), nested fixed-size lists otherwise."""
    import pyarrow as pa

    shape = [int(s) for s in ft["shape"]]
    n = len(values)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=_arrow_type(ft["dtype"]))
    if shape == [1]:
        return flat
    arr = flat
    for size in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    assert len(arr) == n
    return arr


def _hf_feature(ft: dict) -> dict | None:
    """The `datasets` feature description (schema metadata), so Hugging Face tools restore the types."""
    if ft["dtype"] == "video":
        return None
    if ft["dtype"] == "image":
        return {"_type": "Image"}
    value: dict = {"dtype": ft["dtype"], "_type": "Value"}
    shape = [int(s) for s in ft["shape"]]
    if shape == [1]:
        return value
    for size in reversed(shape):
        value = {"feature": value, "length": size, "_type": "Sequence"}
    return value


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def infer_features(
    episode: dict[str, np.ndarray], *, use_videos: bool = True, names: dict[str, list[str]] | None = None
) -> dict[str, dict]:
    """Feature descriptions from one episode's arrays: uint8 (T, H, W, 3) arrays are cameras; float64
    is stored as float32 (LeRobot's convention), integers as int64."""
    names = names or {}
    features: dict[str, dict] = {}
    for key, value in episode.items():
        if key == "timestamp":
            continue
        arr = np.asarray(value)
        if arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3:
            features[key] = {
                "dtype": "video" if use_videos else "image",
                "shape": list(arr.shape[1:]),
                "names": ["height", "width", "channels"],
            }
            continue
        if arr.dtype.kind == "f":
            dtype = "float32"
        elif arr.dtype.kind in "iu":
            dtype = "int64"
        elif arr.dtype.kind == "b":
            dtype = "bool"
        elif arr.dtype.kind in "UO":
            dtype = "string"
        else:
            raise ArgumentError(f"cannot store {key!r} of dtype {arr.dtype}")
        shape = [1] if arr.ndim == 1 else [int(s) for s in arr.shape[1:]]
        features[key] = {"dtype": dtype, "shape": shape, "names": names.get(key)}
    return features


class LeRobotWriter:
    """Writes a LeRobot v3.0 dataset episode by episode; see the module docstring.

    `features` describes the user columns as in meta/info.json ({key: {dtype, shape, names}}); when
    None it is inferred from the first episode (`infer_features`). Camera features of dtype `video`
    go to mp4 files (`codec`, `crf`, `pix_fmt`, `gop`; see `wam.data.video`), dtype `image` to PNG
    bytes inside the parquet files. The default columns (timestamp, frame_index, episode_index, index,
    task_index) are added; `timestamp` may be given, else it is frame_index / fps.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: int,
        features: dict[str, dict] | None = None,
        robot_type: str | None = None,
        use_videos: bool = True,
        codec: str = DEFAULT_CODEC,
        crf: int | None = None,
        pix_fmt: str | None = None,
        gop: int = DEFAULT_GOP,
        chunks_size: int = DEFAULT_CHUNK_SIZE,
        data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
        video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        overwrite: bool = False,
        names: dict[str, list[str]] | None = None,
    ):
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise FileExistsError(f"{self.root} already exists; choose another path or overwrite it (`overwrite=True`)")
        if int(fps) != fps or fps <= 0:
            raise ArgumentError(f"fps must be a positive integer, got {fps}")
        if chunks_size < 1 or data_files_size_in_mb <= 0 or video_files_size_in_mb <= 0:
            raise ArgumentError("chunks_size and the file size caps must be positive")
        self.fps, self.robot_type, self.use_videos, self.overwrite = int(fps), robot_type, use_videos, overwrite
        self.video_settings = {"codec": codec, "crf": crf, "pix_fmt": pix_fmt, "gop": gop}
        self.chunks_size = int(chunks_size)
        self.data_cap, self.video_cap = data_files_size_in_mb, video_files_size_in_mb
        self.names = names
        self.features = self._with_defaults(features) if features is not None else None
        self.tmp = self.root.parent / f".{self.root.name}.partial-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        (self.tmp / PID_FILE).write_text(str(os.getpid()))
        _remove_abandoned(self.root)
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []  # metadata rows
        self.episode_stats: list[dict] = []
        self.total_frames = 0
        self._data_file = (0, 0)  # (chunk, file) being filled
        self._data_buffer: list = []
        self._data_bytes = 0
        self._encoders: dict[str, VideoEncoder] = {}
        self._video_file: dict[str, tuple[int, int]] = {}
        self._done = False
        self.checkpointed_episodes: int | None = None  # episodes safe in the last checkpoint, None before one
        self._synced: set[str] = set()  # files already flushed to disk by a checkpoint

    # -- features

    def _with_defaults(self, features: dict[str, dict]) -> dict[str, dict]:
        out = {}
        for k, ft in features.items():
            if k in DEFAULT_FEATURES:
                continue
            if "/" in k:
                raise ArgumentError(f"feature names cannot contain '/': {k!r}")
            if ft.get("dtype") not in NUMERIC_DTYPES + ("string", "image", "video"):
                raise ArgumentError(f"feature {k!r} has unsupported dtype {ft.get('dtype')!r}")
            out[k] = {"dtype": ft["dtype"], "shape": [int(s) for s in ft["shape"]], "names": ft.get("names")}
        return {**out, **json.loads(json.dumps(DEFAULT_FEATURES))}

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in (self.features or {}).items() if ft["dtype"] == "video"]

    def _check_episode(self, data: dict[str, Any]) -> tuple[int, dict[str, np.ndarray]]:
        assert self.features is not None
        given = set(data) - {"timestamp"}
        bad = given & set(GENERATED)
        if bad:
            raise ArgumentError(f"{sorted(bad)} are numbered by the writer; leave them out")
        expected = {k for k in self.features if k not in DEFAULT_FEATURES}
        if given != expected:
            raise ArgumentError(
                f"episode keys do not match the dataset's features: missing "
                f"{sorted(expected - given)}, unexpected {sorted(given - expected)}"
            )
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) != 1:
            raise ArgumentError(f"all arrays of an episode need the same length, got {lengths}")
        n = next(iter(lengths.values()))
        if n == 0:
            raise ArgumentError("an episode needs at least one frame")
        out = {}
        for k, v in data.items():
            ft = self.features[k]
            arr = np.asarray(v)
            shape = tuple(ft["shape"])
            if ft["dtype"] in ("video", "image"):
                if arr.dtype != np.uint8 or arr.shape[1:] != shape:
                    raise ArgumentError(
                        f"{k!r} must be uint8 frames of shape (T, {', '.join(map(str, shape))}), "
                        f"got {arr.dtype} {arr.shape}"
                    )
            elif ft["dtype"] == "string":
                arr = arr.astype(object)
            else:
                if arr.shape[1:] != shape and not (shape == (1,) and arr.ndim == 1):
                    raise ArgumentError(f"{k!r} must have shape (T, {', '.join(map(str, shape))}), got {arr.shape}")
                target = np.dtype(ft["dtype"])
                if arr.dtype.kind != target.kind and not (arr.dtype.kind in "iub" and target.kind in "iuf"):
                    raise ArgumentError(f"{k!r} has dtype {arr.dtype}, the dataset stores {target}")
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise ArgumentError(f"{k!r} contains NaN or inf; refusing to write it")
                arr = arr.astype(target, copy=False).reshape((n,) + shape)
            out[k] = arr
        if "timestamp" in data:
            ts = np.asarray(data["timestamp"], np.float64).reshape(-1)
            if not (np.diff(ts) > 0).all():
                raise ArgumentError("timestamps of an episode must increase strictly")
            out["timestamp"] = ts.astype(np.float32)
        return n, out

    # -- episodes

    def add_episode(self, data: dict[str, Any], task: str) -> int:
        """Append one episode ({feature: (T, ...) array}) performing `task`; returns its episode_index."""
        if self._done:
            raise RuntimeError("the writer is finalised")
        if not isinstance(task, str) or not task:
            raise ArgumentError("task must be a non-empty string")
        if self.features is None:
            self.features = self._with_defaults(infer_features(data, use_videos=self.use_videos, names=self.names))
        n, data = self._check_episode(data)
        ep_index = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        frame_index = np.arange(n, dtype=np.int64)
        columns = {
            "timestamp": data.get("timestamp", (frame_index / self.fps).astype(np.float32)),
            "frame_index": frame_index,
            "episode_index": np.full(n, ep_index, np.int64),
            "index": np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
            "task_index": np.full(n, task_index, np.int64),
        }
        row: dict[str, Any] = {"episode_index": ep_index, "tasks": [task], "length": n}
        row.update(self._write_data(data, columns))
        for key in self.video_keys:
            row.update(self._write_video(key, data[key]))
        row["dataset_from_index"] = self.total_frames
        row["dataset_to_index"] = self.total_frames + n
        ep_stats = {}
        for k, ft in self.features.items():
            values = columns[k] if k in columns else data[k]
            if ft["dtype"] in ("video", "image"):
                ep_stats[k] = _stats.image_stats(values)
            elif ft["dtype"] != "string":
                ep_stats[k] = _stats.numeric_stats(values.reshape(n, -1) if values.ndim > 2 else values)
        for k, st in ep_stats.items():
            for s, v in st.items():
                row[f"stats/{k}/{s}"] = np.asarray(v).tolist()
        self.episodes.append(row)
        self.episode_stats.append(ep_stats)
        self.total_frames += n
        return ep_index

    def _write_data(self, data: dict[str, np.ndarray], columns: dict[str, np.ndarray]) -> dict[str, int]:
        import pyarrow as pa

        assert self.features is not None
        arrays, fields = [], []
        for k, ft in self.features.items():
            if ft["dtype"] == "video":
                continue
            if ft["dtype"] == "image":
                arr = pa.array(
                    [{"bytes": _png(img), "path": None} for img in data[k]],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                )
            elif ft["dtype"] == "string":
                arr = pa.array(list(data[k]), type=pa.string())
            else:
                arr = _to_arrow(columns[k] if k in columns else data[k], ft)
            arrays.append(arr)
            fields.append(pa.field(k, arr.type))
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        if self._data_buffer and self._data_bytes + table.nbytes > self.data_cap * MB:
            self._flush_data()
            self._data_file = self._next_file(*self._data_file)
        self._data_buffer.append(table)
        self._data_bytes += table.nbytes
        return {"data/chunk_index": self._data_file[0], "data/file_index": self._data_file[1]}

    def _next_file(self, chunk: int, file: int) -> tuple[int, int]:
        return (chunk + 1, 0) if file + 1 >= self.chunks_size else (chunk, file + 1)

    def _flush_data(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._data_buffer:
            return
        assert self.features is not None
        table = pa.concat_tables(self._data_buffer)
        hf = {k: f for k, ft in self.features.items() if (f := _hf_feature(ft)) is not None}
        table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": hf}}).encode()})
        path = self.tmp / DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="snappy")
        self._data_buffer, self._data_bytes = [], 0

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        enc = self._encoders.get(key)
        if enc is not None and enc.frames_written:
            per_frame = enc.bytes_written / enc.frames_written
            if enc.bytes_written + per_frame * len(frames) > self.video_cap * MB:
                enc.close()
                self._video_file[key] = self._next_file(*self._video_file[key])
                enc = None
        if enc is None:
            chunk, file = self._video_file.setdefault(key, (0, 0))
            path = self.tmp / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            h, w = frames.shape[1:3]
            enc = self._encoders[key] = VideoEncoder(path, width=w, height=h, fps=self.fps, **self.video_settings)
        start = enc.frames_written / self.fps
        enc.write(frames)
        chunk, file = self._video_file[key]
        return {
            f"videos/{key}/chunk_index": chunk,
            f"videos/{key}/file_index": file,
            f"videos/{key}/from_timestamp": start,
            f"videos/{key}/to_timestamp": start + len(frames) / self.fps,
        }

    # -- finishing

    def _write_episodes_meta(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        probe_table = pa.Table.from_pylist(self.episodes)
        per_row = probe_table.nbytes / max(len(self.episodes), 1)
        rows_per_file = max(1, int(self.data_cap * MB // max(per_row, 1)))
        chunk, file = 0, 0
        for start in range(0, len(self.episodes), rows_per_file):
            rows = self.episodes[start : start + rows_per_file]
            for r in rows:
                r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = chunk, file
            path = self.tmp / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy")
            chunk, file = self._next_file(chunk, file)

    def _write_tasks(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tasks = sorted(self.tasks, key=self.tasks.get)
        table = pa.table(
            {"task_index": pa.array([self.tasks[t] for t in tasks], pa.int64()), "task": pa.array(tasks, pa.string())}
        )
        # pandas metadata: `pandas.read_parquet` (LeRobot's reader) restores the task as the index
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.3",
        }
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        path = self.tmp / TASKS_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def add_meta_file(self, name: str, text: str) -> None:
        """Store an extra text file under meta/ (e.g. how the data was made); LeRobot ignores it."""
        if "/" in name or name in ("info.json", "stats.json", "tasks.parquet", "episodes"):
            raise ArgumentError(f"{name!r} is not a free name under meta/")
        path = self.tmp / "meta" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    # -- checkpoints

    def checkpoint(self, extra: dict[str, Any] | None = None) -> None:
        """Make everything written so far complete on disk and record how to go on from here.

        Closes the open mp4 files and writes the buffered rows (the next episode starts new files), then
        atomically replaces `.writer-state.json` in the hidden directory. `extra` (JSON-serialisable) is
        stored with it for the caller, e.g. its own progress; `read_checkpoint` gives it back."""
        if self._done:
            raise RuntimeError("the writer is finalised")
        for key, enc in list(self._encoders.items()):
            enc.close()
            self._video_file[key] = self._next_file(*self._video_file[key])
        self._encoders = {}
        if self._data_buffer:
            self._flush_data()
            self._data_file = self._next_file(*self._data_file)
        files = sorted(
            p.relative_to(self.tmp).as_posix()
            for p in self.tmp.rglob("*")
            if p.is_file() and not p.name.startswith(".writer-")
        )
        for rel in files:  # a checkpoint survives a machine stop, not only a killed process
            if rel not in self._synced:
                _fsync(self.tmp / rel)
                self._synced.add(rel)
        state = {
            "format": 1,
            "fps": self.fps,
            "robot_type": self.robot_type,
            "use_videos": self.use_videos,
            "video_settings": self.video_settings,
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_cap,
            "video_files_size_in_mb": self.video_cap,
            "overwrite": self.overwrite,
            "names": self.names,
            "features": self.features,
            "tasks": sorted(self.tasks, key=self.tasks.get),
            "episodes": self.episodes,
            "total_frames": self.total_frames,
            "data_file": list(self._data_file),
            "video_file": {k: list(v) for k, v in self._video_file.items()},
            "files": files,
            "extra": extra or {},
        }
        tmp = self.tmp / (STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, separators=(",", ":"))  # per-episode statistics are in the episode rows
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.tmp / STATE_FILE)
        self.checkpointed_episodes = len(self.episodes)

    def suspend(self) -> int:
        """Stop without finishing, leaving the hidden directory for `resume`: the episodes of the last
        checkpoint survive, later ones are dropped on resume. Without a checkpoint this is `abort()`.
        Returns the number of episodes that survive."""
        if not (self.tmp / STATE_FILE).is_file():
            self.abort()
            return 0
        if self.checkpointed_episodes is None:  # (stopped inside checkpoint(), just after its state was written)
            self.checkpointed_episodes = len(read_checkpoint(self.tmp)["episodes"])
        self._drop_encoders()
        if self.tmp.is_dir():
            (self.tmp / PID_FILE).write_text(RELEASED)  # no process writes here any more: resumable at once
        self._done = True
        return self.checkpointed_episodes

    @classmethod
    def resume(cls, root: str | Path, *, partial: str | Path | None = None) -> LeRobotWriter:
        """Reopen the interrupted write of `root` at its last checkpoint (`partial`: which hidden directory,
        default `find_resumable(root)`). Files written after the checkpoint are deleted; episode and file
        numbering continue from it. Raises FileNotFoundError when there is nothing to resume."""
        root = Path(root)
        tmp = Path(partial) if partial is not None else find_resumable(root)
        if tmp is None:
            raise NotFoundError(f"no interrupted write of {root} with a checkpoint to resume")
        state = read_checkpoint(tmp)
        (tmp / PID_FILE).write_text(str(os.getpid()))  # ours now
        keep = set(state["files"])
        for p in sorted(tmp.rglob("*"), reverse=True):  # files before their directories
            rel = p.relative_to(tmp).as_posix()
            if p.is_file() and not p.name.startswith(".writer-") and rel not in keep:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        self = cls.__new__(cls)
        self.root, self.tmp = root, tmp
        self.fps, self.robot_type, self.use_videos = state["fps"], state["robot_type"], state["use_videos"]
        self.overwrite, self.names, self.features = state["overwrite"], state["names"], state["features"]
        self.video_settings, self.chunks_size = state["video_settings"], state["chunks_size"]
        self.data_cap, self.video_cap = state["data_files_size_in_mb"], state["video_files_size_in_mb"]
        self.tasks = {t: i for i, t in enumerate(state["tasks"])}
        self.episodes = state["episodes"]
        self.episode_stats = [_episode_stats(row) for row in self.episodes]
        self.total_frames = state["total_frames"]
        self._data_file = tuple(state["data_file"])
        self._data_buffer, self._data_bytes = [], 0
        self._encoders = {}
        self._video_file = {k: tuple(v) for k, v in state["video_file"].items()}
        self._done = False
        self.checkpointed_episodes = len(self.episodes)
        self._synced = keep
        _remove_abandoned(root)
        return self

    def finalize(self) -> Path:
        """Close every file, write meta/ (info.json last) and move the dataset into place."""
        if self._done:
            return self.root
        if not self.episodes:
            self.abort()
            raise ArgumentError("no episodes were added; nothing to write")
        try:
            assert self.features is not None
            for enc in self._encoders.values():
                enc.close()
            self._flush_data()
            self._write_episodes_meta()
            self._write_tasks()
            stats = _stats.aggregate_features(self.episode_stats)
            (self.tmp / STATS_PATH).write_text(json.dumps(_stats.to_json(stats), indent=4))
            features = json.loads(json.dumps(self.features))
            for key in self.video_keys:
                first = self.tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
                features[key]["info"] = probe(first).as_feature_info()
            info = {
                "codebase_version": CODEBASE_VERSION,
                "robot_type": self.robot_type,
                "total_episodes": len(self.episodes),
                "total_frames": self.total_frames,
                "total_tasks": len(self.tasks),
                "chunks_size": self.chunks_size,
                "data_files_size_in_mb": self.data_cap,
                "video_files_size_in_mb": self.video_cap,
                "fps": self.fps,
                "splits": {"train": f"0:{len(self.episodes)}"},
                "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.video_keys else None,
                "features": features,
            }
            info_path = self.tmp / INFO_PATH
            with open(info_path, "w") as f:
                json.dump(info, f, indent=4)
                f.flush()
                os.fsync(f.fileno())
            self._move_into_place()
        except BaseException:
            self.suspend()  # (abort() unless there is a checkpoint to go back to)
            raise
        self._done = True
        return self.root

    def _move_into_place(self) -> None:
        if self.root.exists():
            if not self.overwrite:
                raise FileExistsError(f"{self.root} appeared while writing; the new dataset was not moved there")
            old = self.root.parent / f".{self.root.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.root, old)
            os.rename(self.tmp, self.root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.root)
        (self.root / PID_FILE).unlink(missing_ok=True)
        (self.root / STATE_FILE).unlink(missing_ok=True)

    def _drop_encoders(self) -> None:
        """Close the open video files on the way out, whatever state they are in (their errors do not matter)."""
        for enc in self._encoders.values():
            try:
                enc.close()
            except Exception:  # noqa: BLE001 (discarding a failed write: the first error is the one raised)
                pass
        self._encoders = {}

    def abort(self) -> None:
        """Drop everything written so far (the target path is left untouched)."""
        self._drop_encoders()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def _writer_gone(d: Path) -> bool:
    """Whether the process that wrote the hidden directory `d` is gone (killed, or stopped and released it)."""
    try:
        text = (d / PID_FILE).read_text().strip()
        if text == RELEASED:
            return True
        os.kill(int(text), 0)  # (signal 0: only asks whether the process exists)
        return False  # its writer is alive: not ours to touch
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # no pid file (an older wam, or killed before writing it), or not ours
        return False


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _episode_stats(row: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """The per-episode statistics stored in an episode metadata row (`stats/<feature>/<stat>` columns)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in row.items():
        if key.startswith("stats/"):
            _, feature, stat = key.split("/")
            out.setdefault(feature, {})[stat] = np.asarray(value)
    return out


def read_checkpoint(partial: str | Path) -> dict[str, Any]:
    """The state a checkpoint wrote into a hidden directory: settings, episode rows, files and `extra`."""
    path = Path(partial) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NotFoundError(f"{partial} holds no readable checkpoint ({e})") from None
    if state.get("format") != 1:
        raise DatasetError(f"{path} was written by another version of wam (format {state.get('format')!r})")
    return state


def find_resumable(root: str | Path) -> Path | None:
    """The hidden directory of an interrupted write of `root` that can be resumed: it holds a checkpoint
    and its writer is gone. The newest checkpoint when there are several; None when there is none."""
    root = Path(root)
    found = [d for d in root.parent.glob(f".{root.name}.partial-*") if (d / STATE_FILE).is_file() and _writer_gone(d)]
    return max(found, key=lambda d: (d / STATE_FILE).stat().st_mtime, default=None)


def _remove_abandoned(root: Path) -> None:
    """Delete the hidden partial directories of `root` whose writing process is gone (killed mid-write, or
    checkpointed and stopped: see `find_resumable` to resume those instead), and set-aside old copies left by
    a writer killed between its two renames while `root` exists."""
    for d in root.parent.glob(f".{root.name}.partial-*"):
        if _writer_gone(d):
            shutil.rmtree(d, ignore_errors=True)
    if root.exists():
        for d in root.parent.glob(f".{root.name}.old-*"):
            shutil.rmtree(d, ignore_errors=True)


def write_dataset(root: str | Path, episodes: Iterable[dict[str, Any]], *, fps: int, **kwargs) -> Path:
    """Write episodes (each a dict of arrays plus a 'task' string) as a LeRobot v3.0 dataset at `root`."""
    with LeRobotWriter(root, fps=fps, **kwargs) as w:
        for ep in episodes:
            ep = dict(ep)
            task = ep.pop("task")
            w.add_episode(ep, task=task)
    return Path(root)
