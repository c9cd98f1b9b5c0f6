"""Run an exported policy (`wam export`) with numpy and onnxruntime only: no torch, no training stack.

    pip install --no-deps wam && pip install numpy onnxruntime       # a robot's computer: no torch at all
    from wam.runtime import ONNXPolicy
    policy = ONNXPolicy("exports/wam-tiny-mt10", seed=0)
    policy.reset()                                # at the start of every episode
    action = policy.select_action(obs)            # LeRobot keys: observation.images.<camera>, observation.state, task

`ONNXPolicy` has WAMPolicy's API and semantics (wam.policy: the timing table there holds here too): every call
pushes the observation into an n_obs_steps-deep history (the first fills it), a chunk of action_horizon actions
is predicted when the action queue is empty and its first n_action_steps are queued, `predict_action_chunk`
always predicts a fresh chunk, `reset()` empties history and queue and re-seeds the noise generator. Frames are
encoded when a chunk needs them, then kept. It acts in policy mode, at the sampling settings the export holds
(manifest.json "inference"); the initial noise of each chunk is drawn with numpy (`np.random.default_rng(seed)`,
standard normal, float32), so the same seed gives the same actions. Given the same noise, its actions equal the
PyTorch policy's up to float rounding (`wam.export.equivalence`; docs/deploy-onnx.md has the measured numbers).

One closed loop's memory is a `RuntimeState` (history, queue, generator); `predict_chunks` runs many in one
batched call, each with the noise of its own generator, as `wam serve --runtime onnx` batches its clients.

Session options (each measured by `wam bench --runtime onnx`): `optimization` is onnxruntime's graph
optimisation level (disabled, basic, extended, all), `threads` its intra-op threads (None: onnxruntime's choice,
one per physical core), `int8` runs policy.int8.onnx (dynamic int8 matrix products) instead of policy.onnx,
`providers` the execution providers (default CPU; ["CUDAExecutionProvider", "CPUExecutionProvider"] with the
onnxruntime-gpu package).

This module and everything it imports never import torch: tests/test_export.py imports it with torch blocked,
and it was run in a virtual environment holding only numpy and onnxruntime (docs/deploy-onnx.md).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from wam.errors import ArgumentError, MissingDependency, NotFoundError, ObservationError

FORMAT = "wam-onnx"  # (wam.export writes it; repeated here so that this module never imports wam.export)
OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")


@dataclass
class RuntimeObservation:
    """One observation as the graphs take it: see `ONNXPolicy.read_observation`."""

    frames: np.ndarray  # (B, h, W, 3) uint8 at the model's image size, cameras side by side
    state: np.ndarray | None  # (B, S) normalised float32 (zero-padded to the model's state size), or None
    task: np.ndarray  # (B,) int64 indices into the export's task list
    single: bool  # the observation was unbatched

    @property
    def batch_size(self) -> int:
        return self.frames.shape[0]


class RuntimeState:
    """One closed loop's memory: history entries [frames (B, h, W, 3), latents (B, c, h', w') or None, unseen],
    normalised states, queued actions, the noise generator, and the latest chunk (normalised, clamped)."""

    def __init__(self, n_obs_steps: int, seed: int = 0):
        self.history: deque[list] = deque(maxlen=n_obs_steps)
        self.states: deque[np.ndarray | None] = deque(maxlen=n_obs_steps)
        self.actions: deque[np.ndarray] = deque()
        self.rng = np.random.default_rng(seed)
        self.last_chunk: np.ndarray | None = None

    @property
    def batch_size(self) -> int | None:
        return self.history[-1][0].shape[0] if self.history else None


def read_manifest(path: str | Path) -> dict:
    """An export's manifest.json; NotFoundError when `path` is not an export directory."""
    path = Path(path)
    file = path / "manifest.json"
    if not file.is_file():
        hint = (
            " (that is a checkpoint: export it first with `wam export " + str(path) + " --out DIR`)"
            if (path / "model.safetensors").is_file()
            else ""
        )
        raise NotFoundError(f"{path} is not a wam ONNX export (no manifest.json){hint}")
    manifest = json.loads(file.read_text())
    if manifest.get("format") != FORMAT:
        raise ArgumentError(f"{file} is not a wam ONNX export manifest (format {manifest.get('format')!r})")
    return manifest


def session(
    file: str | Path,
    *,
    optimization: str = "all",
    threads: int | None = None,
    providers: list[str] | None = None,
    spin: bool | None = None,
):
    """An onnxruntime InferenceSession with these options (see the module docstring)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependency(
            f"running an export needs onnxruntime ({e}); pip install 'wam[onnx]' (or onnxruntime alone)"
        ) from None
    if optimization not in OPTIMIZATION_LEVELS:
        raise ArgumentError(
            f"unknown graph optimisation {optimization!r}; choose one of: {', '.join(OPTIMIZATION_LEVELS)}"
        )
    level = ort.GraphOptimizationLevel
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disabled": level.ORT_DISABLE_ALL,
        "basic": level.ORT_ENABLE_BASIC,
        "extended": level.ORT_ENABLE_EXTENDED,
        "all": level.ORT_ENABLE_ALL,
    }[optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if spin is not None:  # worker threads busy-wait between operators (lower latency, a core kept busy)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(file), opts, providers=providers or ["CPUExecutionProvider"])


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, h, w, 3) uint8: bilinear with antialiasing (a triangle filter widened by the
    scale when shrinking), rounded, as wam.data.windows.resize_frames resizes (to within 1 of 255 per value)."""
    frames = np.asarray(frames)
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    rows, cols = _resize_weights(frames.shape[1], size[0]), _resize_weights(frames.shape[2], size[1])
    x = frames.astype(np.float32)
    x = np.einsum("hH,nHWc->nhWc", rows, x)
    x = np.einsum("wW,nhWc->nhwc", cols, x)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) interpolation weights of antialiased bilinear resizing along one axis."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle's half-width in input pixels
    out = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) / support))
        out[i, lo:hi] = w / w.sum() if w.sum() > 0 else 0
    return out


class ONNXPolicy:
    """An exported policy with WAMPolicy's reset() / select_action() / predict_action_chunk() (module docstring)."""

    modes = ("policy",)  # the acting modes an export holds
    mode = "policy"

    def __init__(
        self,
        path: str | Path,
        *,
        n_action_steps: int | None = None,
        seed: int = 0,
        optimization: str = "all",
        threads: int | None = None,
        int8: bool = False,
        providers: list[str] | None = None,
        spin: bool | None = None,
    ):
        self.path = Path(path)
        self.manifest = m = read_manifest(self.path)
        graphs = m["graphs"]
        if int8 and "policy_int8" not in graphs:
            raise ArgumentError(f"{self.path} holds no int8 policy; export it again with one (`int8=True`)")
        opts = dict(optimization=optimization, threads=threads, providers=providers, spin=spin)
        self.encoder = session(self.path / graphs["encoder"]["file"], **opts)
        self.policy = session(self.path / graphs["policy_int8" if int8 else "policy"]["file"], **opts)
        self.options = {
            "optimization": optimization,
            "threads": threads,
            "int8": bool(int8),
            "providers": list(self.policy.get_providers()),
            **({"spin": spin} if spin is not None else {}),
        }
        model = m["model"]
        # what a policy server and wam eval read of a WAMPolicy (cfg, checkpoint, normalizer, inference)
        self.cfg = SimpleNamespace(**model)
        self.image_size, self.n_obs_steps, self.action_horizon = (
            model["image_size"],
            model["n_obs_steps"],
            model["action_horizon"],
        )
        self.cameras: list[str] = list(m["observation"]["cameras"])
        self.tasks: list[str] = list(m["tasks"])
        self.fps = m.get("fps")
        self.protocol: str | None = m.get("protocol")
        self.model_hash = m["model_hash"]
        self.checkpoint = SimpleNamespace(
            path=self.path, model_hash=self.model_hash, config={"run": {"action_names": m.get("action_names")}}
        )
        n = m["normalisation"]
        self._action_min = np.asarray(n["action_min"], np.float32)
        self._action_range = np.asarray(n["action_range"], np.float32)
        self._state_mean = None if n["state_mean"] is None else np.asarray(n["state_mean"], np.float32)
        self._state_std = None if n["state_std"] is None else np.asarray(n["state_std"], np.float32)
        self.normalizer = SimpleNamespace(action_dim=int(n["action_dim"]), state_dim=int(n["state_dim"]))
        self.inference = _Settings(m["inference"])
        self.device = "+".join(p.removesuffix("ExecutionProvider").lower() for p in self.options["providers"])
        self._inputs = m["inputs"]["policy"]
        H = self.action_horizon
        self.n_action_steps = n_action_steps or max(1, H // 2)
        if not 1 <= self.n_action_steps <= H:
            raise ArgumentError(f"n_action_steps must be in 1..{H} (the action horizon), got {self.n_action_steps}")
        self.seed = seed
        self.spec = None  # (wam eval --workers > 1 rebuilds a WAMPolicy from its checkpoint; an export runs in one)
        self.reset()

    # -- what it is

    @property
    def steps(self) -> int:
        return self.inference.steps

    @property
    def settings(self) -> dict:
        """Everything about the policy that changes its actions (WAMPolicy.settings' keys), and the runtime."""
        s = self.manifest["inference"]
        return {
            "mode": self.mode,
            "n_action_steps": self.n_action_steps,
            "action_horizon": self.action_horizon,
            "n_obs_steps": self.n_obs_steps,
            "sampling_steps": s["steps"],
            "solver": s["solver"],
            "schedule": s["schedule"],
            "cfg_scale": s["cfg_scale"],
            "seed": self.seed,
            "model_hash": self.model_hash,
            "inference": s,
            "runtime": {"onnx": str(self.path), **self.options},
        }

    def state_size(self, task: Any = None) -> int:
        """How many values of `observation.state` the policy reads (0: none)."""
        return self.normalizer.state_dim if self.cfg.state_dim > 0 else 0

    # -- closed loops

    def new_state(self, seed: int | None = None) -> RuntimeState:
        """A fresh closed loop: empty history and queue, a generator seeded with `seed` (default: the policy's)."""
        return RuntimeState(self.n_obs_steps, self.seed if seed is None else seed)

    def reset(self) -> None:
        """Forget the observation history and queued actions, re-seed the noise (every episode's start)."""
        self.state = self.new_state()

    # -- observations

    def task_index(self, task: Any, batch: int) -> np.ndarray:
        items = [task] * batch if isinstance(task, (str, int, np.integer)) else list(task)
        out = []
        for t in items:
            if isinstance(t, (int, np.integer)):
                if not 0 <= int(t) < self.cfg.n_tasks:
                    raise ArgumentError(f"task index {int(t)} is out of range; known tasks: {self.tasks}")
                out.append(int(t))
            elif t in self.tasks:
                out.append(self.tasks.index(t))
            else:
                raise ArgumentError(
                    f"task {t!r} was not in the training data; known tasks: {self.tasks} (an export "
                    f"takes the training tasks only)"
                )
        return np.asarray(out, dtype=np.int64)

    def read_observation(self, obs: dict) -> RuntimeObservation:
        """LeRobot keys (one observation or a batch) -> graph inputs; changes no state. A key the export needs
        that is missing raises ObservationError naming it."""
        missing = [k for k in self.cameras if k not in obs]
        if missing:
            raise ObservationError(
                f"observation lacks {missing}; the export takes cameras {self.cameras} "
                f"(uint8 RGB, {self.image_size}x{self.image_size}; other sizes are resized)"
            )
        single = np.asarray(obs[self.cameras[0]]).ndim == 3
        views = []
        for k in self.cameras:
            img = np.asarray(obs[k])
            img = img[None] if single else img
            if img.dtype != np.uint8 or img.ndim != 4 or img.shape[-1] != 3:
                raise ArgumentError(
                    f"{k} must be uint8 RGB (H, W, 3) or (B, H, W, 3), got {img.dtype} {list(img.shape)}"
                )
            views.append(resize_frames(img, (self.image_size, self.image_size)))
        frames = np.ascontiguousarray(np.concatenate(views, axis=2))  # (B, h, W, 3): cameras side by side
        B = frames.shape[0]
        state = None
        if self.cfg.state_dim > 0:
            want = self.normalizer.state_dim
            if want == 0:  # an embodiment without a state: zeros, as in training
                state = np.zeros((B, self.cfg.state_dim), np.float32)
            else:
                if "observation.state" not in obs:
                    raise ObservationError(
                        f"observation lacks 'observation.state'; the export takes a state of "
                        f"{want} values (and cameras {self.cameras})"
                    )
                s = np.array(obs["observation.state"], dtype=np.float32)
                s = s[None] if single else s
                if s.shape[-1] != want:
                    raise ArgumentError(f"observation.state has {s.shape[-1]} values; the model was trained on {want}")
                state = (s - self._state_mean) / self._state_std
                if state.shape[-1] < self.cfg.state_dim:
                    state = np.pad(state, ((0, 0), (0, self.cfg.state_dim - state.shape[-1])))
        return RuntimeObservation(frames, state, self.task_index(obs.get("task", 0), B), single)

    def needs_images(self, queued: int | None = None) -> bool:
        """Whether the camera images of the observation given next to `select_action` will be looked at, in a loop
        with `queued` actions left (default: this policy's own), as `WAMPolicy.needs_images`."""
        return (len(self.state.actions) if queued is None else queued) < self.n_obs_steps

    def push(self, state: RuntimeState, ob: RuntimeObservation, *, unseen: bool = False) -> None:
        """Append an observation to a state's history (the first one fills it); `unseen` as `WAMPolicy.push`."""
        if state.history and state.batch_size != ob.batch_size:
            raise ArgumentError(
                f"the observation holds {ob.batch_size} environments but the history holds "
                f"{state.batch_size}; reset() before changing the number of environments"
            )
        if unseen and not state.history:
            raise ArgumentError("the first observation of a loop starts its first chunk; its images are needed")
        entry = [ob.frames, None, unseen]  # encoded when a chunk needs it, then kept
        for _ in range(self.n_obs_steps if not state.history else 1):
            state.history.append(entry)
            state.states.append(ob.state)

    # -- actions

    def draw_noise(self, state: RuntimeState, batch_size: int) -> np.ndarray:
        """A chunk's initial noise (B, H, A) from the state's generator."""
        return state.rng.standard_normal((batch_size, self.action_horizon, self.cfg.action_dim), dtype=np.float32)

    def _encode(self, states: list[RuntimeState]) -> None:
        todo = list({id(e): e for s in states for e in s.history if e[1] is None}.values())
        if not todo:
            return
        z = self.encoder.run(None, {"frames": np.concatenate([e[0] for e in todo])})[0]  # (N, c, h', w')
        start = 0
        for e in todo:
            e[1] = z[start : start + len(e[0])]
            start += len(e[0])

    def predict_chunks(
        self,
        states: list[RuntimeState],
        tasks: list[np.ndarray],
        mode: str | None = None,
        noise: list[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """One batched call for several closed loops: state i's history and task indices (B_i,) -> its chunk
        (B_i, H, A) in the environment's units. Each state's noise comes from its own generator, unless `noise`
        gives it ((B_i, H, A) per state)."""
        if mode not in (None, "policy"):
            raise ArgumentError(f"an ONNX export acts in policy mode only, not {mode!r}")
        if any(e[2] for s in states for e in s.history):
            raise RuntimeError(
                "a chunk was predicted from an observation whose images were left unrendered (needs_images said "
                "they would not be looked at); this is a bug in wam, please report it"
            )
        self._encode(states)
        sizes = [len(t) for t in tasks]
        feed = {
            "latents": np.concatenate([np.stack([e[1] for e in s.history], 1) for s in states]),
            "task": np.concatenate([np.asarray(t, dtype=np.int64) for t in tasks]),
        }
        if "state" in self._inputs:
            feed["state"] = np.concatenate([np.stack(list(s.states), 1) for s in states]).astype(np.float32)
        if noise is None:
            noise = [self.draw_noise(s, n) for s, n in zip(states, sizes)]
        feed["noise"] = np.concatenate(noise).astype(np.float32, copy=False)
        acts = np.clip(self.policy.run(None, feed)[0], -1.0, 1.0)  # (B, H, A) normalised
        A = self.normalizer.action_dim
        env = (acts[:, :, :A] + 1) / 2 * self._action_range + self._action_min  # the environment's units
        chunks, start = [], 0
        for s, n in zip(states, sizes):
            s.last_chunk = acts[start : start + n]
            chunks.append(env[start : start + n])
            start += n
        return chunks

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """A fresh chunk (H, A) (or (B, H, A) for a batch) in the environment's units; pushes obs."""
        ob = self.read_observation(obs)
        self.push(self.state, ob)
        chunk = self.predict_chunks([self.state], [ob.task])[0]
        return chunk[0] if ob.single else chunk

    def select_action(self, obs: dict) -> np.ndarray:
        """The next action (A,) (or (B, A)), predicting a new chunk when the queue is empty."""
        ob = self.read_observation(obs)
        self.push(self.state, ob)
        queue = self.state.actions
        if not queue:
            chunk = self.predict_chunks([self.state], [ob.task])[0]  # (B, H, A)
            for i in range(self.n_action_steps):
                queue.append(chunk[0, i] if ob.single else chunk[:, i])
        return queue.popleft()


class _Settings(SimpleNamespace):
    """The export's sampling settings (manifest "inference") with InferenceConfig's to_dict()."""

    def __init__(self, d: dict):
        super().__init__(**d)
        self._d = dict(d)

    def to_dict(self) -> dict:
        return dict(self._d)


__all__ = ["ONNXPolicy", "RuntimeObservation", "RuntimeState", "read_manifest", "resize_frames", "session"]
