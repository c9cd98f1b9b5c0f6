"""A LeRobot policy checkpoint (Diffusion Policy, ACT, ...) served over wam's websocket protocol, version 1.

Run it with LeRobot's interpreter (its own venv, made by benchmarks/peers/setup.sh); it never imports the
`wam` package (wam needs a newer torch), only wam's wire format, src/wam/protocol.py, loaded by file path.

Runbook:
    .venv-lerobot/bin/python benchmarks/peers/lerobot_server.py \\
        --checkpoint runs/peers/diffusion/checkpoints/last/pretrained_model --port 8766
    wam eval --server ws://127.0.0.1:8766 --env metaworld --tasks reach-v3 --episodes 20 --no-expert
    # the protocol without LeRobot (what tests/test_peers.py runs; wam's own venv works too):
    python benchmarks/peers/lerobot_server.py --stand-in --port 8766

The server keeps, per connection (session), the observation history the policy reads (n_obs_steps deep,
the first observation repeated until the history is full, as LeRobot's own queues do) and a random
stream seeded by the hello's seed and re-seeded at every reset, so a session's actions are reproducible.
The client keeps the action queue (wam.client.PolicyClient): it asks for a chunk every n_action_steps
steps and sends the observations of the steps in between ("observe") just before.

What a chunk is, per policy (LeRobot's own select_action would execute the same actions):
    diffusion   n_obs_steps observations in; the n_action_steps actions starting at the current step out
                (LeRobot's predict_action_chunk already cuts the horizon to them)
    act         one observation in; chunk_size actions out, of which n_action_steps are executed
    stand-in    a fixed function of the last observation; horizon and size set on the command line

Each infer is answered with server_ms: the time from the request's arrival to its answer (decoding,
preprocessing, the policy's forward pass, postprocessing). benchmarks/peers/run.py reports its median
and p90 as the peer's latency per action chunk. Requests are answered one at a time (no batching across
sessions); an observation may hold B environments ((B, H, W, 3) images, (B, S) states).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("peers.serve")


def load_protocol(path: Path = ROOT / "src" / "wam" / "protocol.py"):
    """wam's wire format (msgpack + numpy only), loaded from its file without importing the wam package."""
    spec = importlib.util.spec_from_file_location("wam_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = load_protocol()
ProtocolError, pack, unpack = protocol.ProtocolError, protocol.pack, protocol.unpack
PROTOCOL_VERSION, REQUEST_TYPES = protocol.PROTOCOL_VERSION, protocol.REQUEST_TYPES
MAX_MESSAGE_BYTES = 8 * 2**20
HELLO_TIMEOUT_S = 10.0


# ---- policies: what the server needs of one ---------------------------------------------------------
#
#   info: dict                      hello metadata (action_dim, cameras, image_size, state_dim, tasks, fps,
#                                   action_horizon, n_obs_steps, n_action_steps, model_hash, sampling, ...)
#   cameras: list[str]              observation.images.<camera> keys it reads
#   state_dim: int                  size of observation.state (0: none)
#   new_state(seed) -> state        an empty history and a random stream seeded with `seed`
#   observe(state, obs)             push one checked observation (arrays with a leading batch axis B)
#   predict(state) -> (B, H, A)     a chunk of actions in the environment's units, float32


class History:
    """A session's last n observations; the first one fills every slot (LeRobot's queues do the same)."""

    def __init__(self, n: int, seed: int):
        self.items: deque = deque(maxlen=n)
        self.rng = np.random.default_rng(seed)

    def push(self, item: Any) -> None:
        if not self.items:
            self.items.extend([item] * self.items.maxlen)
        else:
            self.items.append(item)


class StandInPolicy:
    """A deterministic policy with no learning library behind it, to test the protocol handling: action
    step h of environment b is tanh(W @ [state, mean colour of each camera, h / H]) with a fixed W."""

    def __init__(
        self,
        *,
        action_dim: int = 4,
        state_dim: int = 4,
        cameras: tuple[str, ...] = ("corner4",),
        image_size: int = 96,
        action_horizon: int = 8,
        n_action_steps: int | None = None,
        n_obs_steps: int = 2,
        tasks: list[str] | None = None,
        fps: float | None = None,
    ):
        self.cameras = [f"observation.images.{c}" for c in cameras]
        self.state_dim, self.action_dim, self.horizon = state_dim, action_dim, action_horizon
        self.n_obs_steps = n_obs_steps
        inputs = state_dim + 3 * len(self.cameras) + 1
        self.weight = np.random.default_rng(0).normal(0, 0.5, (inputs, action_dim)).astype(np.float32)
        self.info = {
            "policy": "stand-in",
            "model_hash": hashlib.sha256(self.weight.tobytes()).hexdigest()[:12],
            "action_dim": action_dim,
            "action_names": None,
            "cameras": {k: [image_size, image_size, 3] for k in self.cameras},
            "image_size": image_size,
            "state_dim": state_dim,
            "tasks": list(tasks or []),
            "fps": fps,
            "action_horizon": action_horizon,
            "n_obs_steps": n_obs_steps,
            "n_action_steps": n_action_steps or action_horizon,
            "sampling": {"steps": 1, "solver": None, "schedule": None, "cfg_scale": None},
            "device": "cpu",
        }

    def new_state(self, seed: int) -> History:
        return History(self.n_obs_steps, seed)

    def observe(self, state: History, obs: dict) -> None:
        parts = [obs[k].reshape(obs[k].shape[0], -1, 3).mean(1) / 255.0 for k in self.cameras]
        if self.state_dim:
            parts.insert(0, obs["observation.state"].astype(np.float32))
        state.push(np.concatenate(parts, axis=1).astype(np.float32))  # (B, inputs - 1)

    def predict(self, state: History) -> np.ndarray:
        x = state.items[-1]  # (B, inputs - 1)
        B = x.shape[0]
        phase = np.broadcast_to(
            (np.arange(self.horizon, dtype=np.float32) / self.horizon)[None, :, None], (B, self.horizon, 1)
        )
        feats = np.concatenate([np.broadcast_to(x[:, None], (B, self.horizon, x.shape[1])), phase], axis=2)
        return np.tanh(feats @ self.weight).astype(np.float32)  # (B, H, A)


class LeRobotPolicy:
    """A checkpoint written by lerobot-train (its pretrained_model directory), loaded and run by LeRobot's
    own code: the policy class's from_pretrained, and the pre/post-processor pipelines saved beside it
    (normalisation of observations, unnormalisation of actions). The only LeRobot-specific part of the server."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str = "cpu",
        tasks: list[str] | None = None,
        n_action_steps: int | None = None,
        num_inference_steps: int | None = None,
    ):
        import torch
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        self.torch = torch
        path = Path(checkpoint)
        cfg = PreTrainedConfig.from_pretrained(path)
        cfg.device = device
        if n_action_steps is not None:
            cfg.n_action_steps = n_action_steps
        if num_inference_steps is not None:  # diffusion only: fewer denoising steps than trained (not its default)
            if cfg.type != "diffusion":
                raise ValueError(f"--num-inference-steps applies to diffusion, not {cfg.type}")
            cfg.num_inference_steps = num_inference_steps
        self.cfg = cfg
        self.policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg)
        self.policy.to(device).eval()
        self.pre, self.post = make_pre_post_processors(
            cfg, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}}
        )
        self.device = device
        self.cameras = list(cfg.image_features)
        self.state_dim = int(cfg.robot_state_feature.shape[0]) if cfg.robot_state_feature else 0
        self.env_state = cfg.env_state_feature  # a policy that reads the simulator's state cannot be served here
        if self.env_state is not None:
            raise ValueError(
                f"{path} reads observation.environment_state, which wam's clients do not send; "
                f"train it on the camera and observation.state only (benchmarks/peers/train.py)"
            )
        self.image_shape = {k: tuple(f.shape) for k, f in cfg.image_features.items()}  # (3, H, W)
        self.n_obs_steps = int(cfg.n_obs_steps)
        # the chunk this policy answers (see the module docstring)
        horizon = (
            int(cfg.n_action_steps)
            if cfg.type == "diffusion"
            else int(getattr(cfg, "chunk_size", 0) or cfg.n_action_steps)
        )
        weights = path / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else "unknown"
        sizes = {s[1] for s in self.image_shape.values()}
        sampling = {"steps": 1, "solver": None, "schedule": None, "cfg_scale": None}
        if cfg.type == "diffusion":
            sampling = {
                "steps": int(cfg.num_inference_steps or cfg.num_train_timesteps),
                "solver": cfg.noise_scheduler_type,
                "schedule": cfg.beta_schedule,
                "cfg_scale": None,
            }
        self.info = {
            "policy": f"lerobot-{cfg.type}",
            "checkpoint": str(path),
            "model_hash": digest,
            "action_dim": int(cfg.action_feature.shape[0]),
            "action_names": None,
            "cameras": {k: [s[1], s[2], 3] for k, s in self.image_shape.items()},
            "image_size": max(sizes) if sizes else 0,
            "state_dim": self.state_dim,
            "tasks": list(tasks or []),
            "fps": _dataset_fps(path),
            "action_horizon": horizon,
            "n_obs_steps": self.n_obs_steps,
            "n_action_steps": min(int(cfg.n_action_steps), horizon),
            "sampling": sampling,
            "device": device,
            "parameters": sum(p.numel() for p in self.policy.parameters()),
        }

    def new_state(self, seed: int) -> History:
        return History(self.n_obs_steps, seed)

    def _to_batch(self, obs: dict) -> dict:
        """A checked wire observation -> LeRobot's batch: images float (B, 3, H, W) in [0, 1] at the trained
        size, the state float32 (B, S), then the checkpoint's preprocessor (normalisation, device)."""
        torch = self.torch
        batch: dict[str, Any] = {}
        for key in self.cameras:
            img = torch.from_numpy(np.ascontiguousarray(obs[key])).permute(0, 3, 1, 2).float().div_(255.0)
            _, h, w = self.image_shape[key]
            if img.shape[-2:] != (h, w):
                img = torch.nn.functional.interpolate(
                    img, size=(h, w), mode="bilinear", antialias=True, align_corners=False
                ).clamp_(0, 1)
            batch[key] = img
        if self.state_dim:
            batch["observation.state"] = torch.from_numpy(obs["observation.state"].astype(np.float32))
        B = next(iter(batch.values())).shape[0]
        task = obs.get("task", "")
        batch["task"] = (
            [task if isinstance(task, str) else ""] * B
            if not isinstance(task, list)
            else [t if isinstance(t, str) else "" for t in task]
        )
        return self.pre(batch)

    def observe(self, state: History, obs: dict) -> None:
        state.push(self._to_batch(obs))

    def predict(self, state: History) -> np.ndarray:
        torch = self.torch
        seed = int(state.rng.integers(2**31))  # this chunk's noise, from the session's stream
        keys = [*self.cameras, *(["observation.state"] if self.state_dim else [])]
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            last = state.items[-1]
            if self.cfg.type == "diffusion":
                # LeRobot's DiffusionPolicy reads its observation queues (n_obs_steps deep, images stacked
                # over cameras): set them to this session's history, as its select_action would have
                self.policy.reset()
                for item in state.items:
                    step = {k: item[k] for k in keys}
                    step["observation.images"] = torch.stack([item[k] for k in self.cameras], dim=-4)
                    for k, q in self.policy._queues.items():
                        if k in step:
                            q.append(step[k])
                chunk = self.policy.predict_action_chunk(step)  # (B, n_action_steps, A)
            else:
                chunk = self.policy.predict_action_chunk({k: last[k] for k in keys})  # (B, chunk_size, A)
            chunk = self.post(chunk)  # unnormalised, on the cpu
        return chunk.detach().to("cpu", torch.float32).numpy()


def _dataset_fps(pretrained: Path) -> float | None:
    """The training dataset's fps, from the train_config.json lerobot-train saves beside the weights."""
    try:
        train = json.loads((pretrained / "train_config.json").read_text())
        root = train["dataset"]["root"]
        return float(json.loads((Path(root) / "meta" / "info.json").read_text())["fps"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def dataset_tasks(pretrained: Path) -> list[str]:
    """The training dataset's task strings (meta/tasks.parquet), for the hello's `tasks`; [] when unknown."""
    try:
        import pandas as pd

        root = json.loads((pretrained / "train_config.json").read_text())["dataset"]["root"]
        table = pd.read_parquet(Path(root) / "meta" / "tasks.parquet")
        return [str(t) for t in (table["task"] if "task" in table.columns else table.index)]
    except Exception:  # noqa: BLE001 (no dataset at hand: the hello says no tasks)
        return []


# ---- the protocol ----------------------------------------------------------------------------------


class Session:
    def __init__(self, sid: int, seed: int, policy):
        self.id, self.seed = sid, seed
        self.state = policy.new_state(seed)


class PeerServer:
    """wam's protocol version 1 in front of any policy with the interface above (see the module docstring)."""

    def __init__(
        self,
        policy,
        *,
        max_batch: int = 32,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
    ):
        self.policy, self.max_batch = policy, max_batch
        self.max_message_bytes, self.hello_timeout_s = max_message_bytes, hello_timeout_s
        self.sessions: dict[int, Session] = {}
        self.counters = {"connections": 0, "requests": 0, "errors": 0}
        self.server_ms: list[float] = []  # every answered infer, in order
        self.started = time.time()
        self._next = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="peer-model")

    def metadata(self, session: Session) -> dict:
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "session": session.id,
            "seed": session.seed,
            **self.policy.info,
            "modes": ["policy"],
            "mode": "policy",
            "max_batch": self.max_batch,
            "max_message_bytes": self.max_message_bytes,
            "max_connections": 64,
        }

    def health(self, session: Session | None) -> dict:
        out = {"type": "health", "ok": True, "protocol": PROTOCOL_VERSION}
        if session is not None:
            ms = sorted(self.server_ms)
            out.update(
                self.counters,
                sessions=len(self.sessions),
                uptime_s=time.time() - self.started,
                server_ms_median=float(np.median(ms)) if ms else None,
                server_ms_p90=float(np.percentile(ms, 90)) if ms else None,
            )
        return out

    def check_observation(self, msg: dict) -> dict:
        """wam's own checks (wam.protocol.check_observation); returns the observation with a leading batch axis
        on every array."""
        p = self.policy
        obs, batch = protocol.check_observation(
            msg, cameras=p.cameras, state_dim=p.state_dim, max_batch=self.max_batch, tasks=p.info.get("tasks") or None
        )
        out = {k: (obs[k] if batch is not None else obs[k][None]) for k in p.cameras}
        if p.state_dim:
            out["observation.state"] = obs["observation.state"].reshape(batch or 1, p.state_dim)
        known = p.info.get("tasks") or []
        name = lambda t: known[t] if isinstance(t, int) and known else t  # noqa: E731 (an index names a known task)
        task = obs.get("task", 0)
        out["task"] = [name(t) for t in task] if isinstance(task, list) else name(task)
        return out

    async def dispatch(self, session: Session | None, msg: dict, arrived: float) -> tuple[dict, Session | None]:
        kind = msg.get("type")
        if kind not in REQUEST_TYPES:
            raise ProtocolError(f"unknown message type {kind!r}; use one of: {', '.join(REQUEST_TYPES)}")
        if kind == "health":
            return {**self.health(session), "id": msg.get("id")}, session
        if kind == "hello":
            if session is not None:
                raise ProtocolError("this connection already said hello; open a new connection for a new session")
            if msg.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"this server speaks protocol {PROTOCOL_VERSION}, the client {msg.get('protocol')!r}"
                )
            seed = protocol.hello_seed(msg)
            self._next += 1
            session = Session(self._next, seed, self.policy)
            self.sessions[session.id] = session
            return self.metadata(session), session
        if session is None:
            raise ProtocolError(f"say hello first: {{'type': 'hello', 'protocol': {PROTOCOL_VERSION}, 'seed': 0}}")
        loop = asyncio.get_running_loop()
        if kind == "reset":
            session.state = self.policy.new_state(session.seed)
            return {"type": "reset", "id": msg.get("id")}, session
        mode = msg.get("mode")
        if kind == "infer" and mode not in (None, "policy"):
            raise ProtocolError(f"mode {mode!r} is not offered; this server acts in mode 'policy' only")
        obs = self.check_observation(msg)
        batched = msg["obs"][self.policy.cameras[0]].ndim == 4  # else answer (H, A), not (1, H, A)
        await loop.run_in_executor(self._executor, self.policy.observe, session.state, obs)
        if kind == "observe":
            return {"type": "observed", "id": msg.get("id")}, session
        chunk = await loop.run_in_executor(self._executor, self.policy.predict, session.state)  # (B, H, A)
        ms = 1000 * (time.perf_counter() - arrived)
        self.server_ms.append(ms)
        self.counters["requests"] += 1
        return {
            "type": "action_chunk",
            "id": msg.get("id"),
            "actions": chunk if batched else chunk[0],
            "mode": "policy",
            "server_ms": ms,
        }, session

    async def handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        self.counters["connections"] += 1
        session = None
        hello_by = time.monotonic() + self.hello_timeout_s
        try:
            while True:
                try:
                    wait = None if session is not None else max(0.0, hello_by - time.monotonic())
                    raw = await asyncio.wait_for(ws.recv(), wait)
                except asyncio.TimeoutError:
                    await ws.send(pack({"type": "error", "id": None, "error": "no hello in time; closing"}))
                    await ws.close(1008, "no hello")
                    return
                arrived = time.perf_counter()
                msg_id = None
                try:
                    msg = unpack(raw)
                    msg_id = protocol.plain_id(msg.get("id"))
                    if msg_id is None and msg.get("id") is not None:
                        raise ProtocolError("'id' must be an int or a string")
                    reply, session = await self.dispatch(session, msg, arrived)
                except ProtocolError as e:
                    self.counters["errors"] += 1
                    reply = {
                        "type": "error",
                        "id": msg_id if msg_id is not None else protocol.plain_id(e.id),
                        "error": str(e),
                    }
                except Exception as e:  # the policy failed on this request: say so, stay up
                    log.exception("request failed")
                    self.counters["errors"] += 1
                    reply = {
                        "type": "error",
                        "id": msg_id,
                        "error": f"the server failed on this request ({type(e).__name__}: {e}); see its log",
                    }
                await ws.send(pack(reply))
        except ConnectionClosed:
            pass
        finally:
            if session is not None:
                self.sessions.pop(session.id, None)

    async def serve(
        self, host: str, port: int, ready_file: str | None = None, stop: asyncio.Event | None = None
    ) -> None:
        from websockets.asyncio.server import serve

        async with serve(self.handle, host, port, max_size=self.max_message_bytes, compression=None) as server:
            bound = server.sockets[0].getsockname()
            url = f"ws://{host}:{bound[1]}"
            log.info("serving %s on %s", self.policy.info.get("policy"), url)
            print(f"serving {self.policy.info.get('policy')} on {url}", flush=True)
            if ready_file:
                Path(ready_file).write_text(json.dumps({"url": url, "pid": os.getpid()}))
            await (stop.wait() if stop is not None else asyncio.Future())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", help="a lerobot-train pretrained_model directory")
    p.add_argument("--stand-in", action="store_true", help="serve the deterministic stand-in policy (no LeRobot)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766, help="0: any free port (see --ready-file)")
    p.add_argument("--ready-file", default=None, help="write {url, pid} here once listening")
    p.add_argument("--stats-file", default=None, help="write every infer's server_ms here (JSON) at exit")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-action-steps", type=int, default=None, help="override the checkpoint's n_action_steps")
    p.add_argument(
        "--num-inference-steps",
        type=int,
        default=None,
        help="diffusion: denoising steps at inference (default: the checkpoint's, 100 for LeRobot's DP)",
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="'|'-separated task strings for the hello (default: the training dataset's, when it is at hand)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    # the stand-in's shape
    p.add_argument("--action-dim", type=int, default=4)
    p.add_argument("--state-dim", type=int, default=4)
    p.add_argument("--camera", default="corner4", help="comma-separated camera names")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--horizon", type=int, default=8)
    p.add_argument("--n-obs-steps", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tasks = args.tasks.split("|") if args.tasks else None
    if args.stand_in:
        policy = StandInPolicy(
            action_dim=args.action_dim,
            state_dim=args.state_dim,
            cameras=tuple(args.camera.split(",")),
            image_size=args.image_size,
            action_horizon=args.horizon,
            n_action_steps=args.n_action_steps,
            n_obs_steps=args.n_obs_steps,
            tasks=tasks,
        )
    elif args.checkpoint:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        ckpt = Path(args.checkpoint)
        policy = LeRobotPolicy(
            ckpt,
            device=args.device,
            tasks=tasks or dataset_tasks(ckpt),
            n_action_steps=args.n_action_steps,
            num_inference_steps=args.num_inference_steps,
        )
    else:
        p.error("pass --checkpoint DIR or --stand-in")
    server = PeerServer(policy)

    async def run() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.serve(args.host, args.port, args.ready_file, stop)

    try:
        asyncio.run(run())
    finally:
        if args.stats_file:
            Path(args.stats_file).write_text(json.dumps({"server_ms": server.server_ms, **server.counters}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
