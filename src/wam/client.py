"""A remote WAM policy with the local policy's API: `PolicyClient` talks to `wam serve` (see wam.serve).

    from wam.client import PolicyClient
    with PolicyClient("ws://127.0.0.1:8765", seed=0, n_action_steps=4) as policy:
        policy.reset()                        # at the start of every episode
        action = policy.select_action(obs)    # obs: LeRobot keys, one observation or a batch

Who keeps what, so that a PolicyClient acts exactly as a local WAMPolicy with the same checkpoint, settings
(mode, n_action_steps, sampling steps, solver, schedule, cfg_scale) and seed:

    server   the observation history (n_obs_steps deep) and the sampling generator of this connection's
             session, seeded with `seed` at hello and again at every reset()
    client   the action queue: the first n_action_steps actions of each chunk (select_action), and the
             observations of the steps that only popped the queue. Those reach the server ("observe"
             messages, sent in the same round trip as the next "infer") only when the next chunk is
             requested, and only the last n_obs_steps - 1 of them: older ones would have left the history.

So a step that pops the queue costs no network traffic, and a step that needs a chunk costs one round
trip. The server's own settings (sampling steps, solver, ...) are in `metadata` and `settings`.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import ExitStack
from typing import Any

import numpy as np

from wam.errors import ArgumentError, WamError
from wam.protocol import PROTOCOL_VERSION, TOKEN_ENV, pack, unpack


class ServerError(WamError, RuntimeError):
    """The server answered a request with an error (the message says what was wrong and how to fix it)."""


class PolicyClient:
    """A policy served by `wam serve`, with WAMPolicy's reset()/select_action()/predict_action_chunk().

    token: the server's token (default: $WAM_SERVE_TOKEN); seed: this session's sampling seed; mode: an
    acting mode the server offers (default: the server's); n_action_steps: actions executed per chunk
    (default: the server's); timeout: seconds to wait for the connection and for each answer."""

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765",
        *,
        token: str | None = None,
        seed: int = 0,
        mode: str | None = None,
        n_action_steps: int | None = None,
        timeout: float = 30.0,
    ):
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        self.url, self.seed, self.timeout = url, seed, timeout
        token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self._stack = ExitStack()  # connect() is a context manager; this object holds it open until close()
        try:
            # proxy=None: a robot talks to its policy server directly, whatever proxy the environment names
            self._ws = self._stack.enter_context(
                connect(url, open_timeout=timeout, close_timeout=5, compression=None, max_size=2**26, proxy=None)
            )
        except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as e:
            raise ConnectionError(
                f"cannot reach the policy server at {url} ({type(e).__name__}: {e}); is `wam serve` running there?"
            ) from None
        self._next_id = 0
        self._limit: int | None = None
        try:
            self.metadata: dict = self._call(
                [{"type": "hello", "protocol": PROTOCOL_VERSION, "token": token, "seed": seed}]
            )[0]
        except ServerError as e:
            self.close()
            raise ConnectionRefusedError(f"the policy server at {url} refused the session: {e}") from None
        except BaseException:
            self.close()
            raise
        self._limit = self.metadata.get("max_message_bytes")
        H = self.metadata["action_horizon"]
        self.n_action_steps = n_action_steps or self.metadata["n_action_steps"]
        if not 1 <= self.n_action_steps <= H:
            self.close()
            raise ArgumentError(f"n_action_steps must be in 1..{H} (the action horizon), got {self.n_action_steps}")
        self.mode = mode or self.metadata["mode"]
        if self.mode not in self.metadata["modes"]:
            self.close()
            raise ArgumentError(
                f"mode {self.mode!r} is not offered by the server; choose one of: {', '.join(self.metadata['modes'])}"
            )
        self._actions: deque[np.ndarray] = deque()
        self._unsent: deque[dict] = deque(maxlen=self.metadata["n_obs_steps"] - 1)
        self.server_ms: list[float] = []  # the server's time for each chunk it answered (its "server_ms")

    # -- what the server told

    @property
    def cameras(self) -> list[str]:
        return list(self.metadata["cameras"])

    @property
    def tasks(self) -> list[str]:
        return list(self.metadata["tasks"])

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    def state_size(self, task: Any = None) -> int:
        """How many values of `observation.state` the served policy reads (0: none), as WAMPolicy.state_size:
        wam eval asks the simulator for that state."""
        return int(self.metadata.get("state_dim") or 0)

    @property
    def fps(self) -> float | None:
        return self.metadata.get("fps")

    @property
    def protocol(self) -> str | None:
        """The benchmark protocol the served model's training data was collected under (as WAMPolicy.protocol)."""
        return self.metadata.get("benchmark_protocol")

    @property
    def settings(self) -> dict:
        """Everything about the policy that changes its actions (WAMPolicy.settings' keys), and the server."""
        m, s = self.metadata, self.metadata["sampling"]
        return {
            "mode": self.mode,
            "n_action_steps": self.n_action_steps,
            "action_horizon": m["action_horizon"],
            "n_obs_steps": m["n_obs_steps"],
            "sampling_steps": s["steps"],
            "solver": s["solver"],
            "schedule": s["schedule"],
            "cfg_scale": s["cfg_scale"],
            "seed": self.seed,
            "model_hash": m["model_hash"],
            "inference": s,
            "server": self.url,
        }

    # -- the policy API

    def reset(self) -> None:
        """Start a new episode: the server forgets the history and re-seeds; the queue is emptied."""
        self._actions.clear()
        self._unsent.clear()
        self._call([{"type": "reset"}])

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """A fresh chunk (H, A) (or (B, H, A) for a batch) in the environment's units; pushes obs."""
        return self._infer(obs)

    def needs_images(self) -> bool:
        """Whether the camera images of the observation given next to `select_action` reach the model: only
        those of the last n_obs_steps observations before the queue runs out do (`WAMPolicy.needs_images`)."""
        return len(self._actions) < self.metadata["n_obs_steps"]

    def select_action(self, obs: dict) -> np.ndarray:
        """The next action (A,) (or (B, A)), asking the server for a new chunk when the queue is empty."""
        if self._actions:
            self._unsent.append(self._wire(obs))  # in the history of the next chunk if recent enough
            return self._actions.popleft()
        chunk = self._infer(obs)
        single = chunk.ndim == 2
        for i in range(self.n_action_steps):
            self._actions.append(chunk[i] if single else chunk[:, i])
        return self._actions.popleft()

    def health(self) -> dict:
        """The server's counters: sessions, requests, forward passes, mean batch, queued, uptime."""
        return self._call([{"type": "health"}])[0]

    # -- plumbing

    def _wire(self, obs: dict) -> dict:
        """The keys the server reads, as arrays (copied: the environment may reuse its buffers)."""
        keys = [*self.cameras, "observation.state"]
        out: dict[str, Any] = {k: np.array(obs[k]) for k in keys if k in obs}
        if "task" in obs:
            one = lambda t: str(t) if isinstance(t, str) else int(t)  # noqa: E731  (numpy scalars -> plain)
            task = obs["task"]
            out["task"] = one(task) if isinstance(task, (str, int, np.integer)) else [one(t) for t in task]
        return out

    def _infer(self, obs: dict) -> np.ndarray:
        messages = [{"type": "observe", "obs": o} for o in self._unsent]
        self._unsent.clear()
        messages.append({"type": "infer", "obs": self._wire(obs), "mode": self.mode})
        reply = self._call(messages)[-1]
        if isinstance(reply.get("server_ms"), (int, float)):
            self.server_ms.append(float(reply["server_ms"]))
        return reply["actions"]

    def _call(self, messages: list[dict]) -> list[dict]:
        """Send messages in one flight and read their answers (in order); ServerError for an error answer."""
        if self._ws is None:
            raise ConnectionError(f"the connection to {self.url} is closed")
        from websockets.exceptions import ConnectionClosed

        payloads = []
        for m in messages:
            if m["type"] != "hello":
                self._next_id += 1
                m["id"] = self._next_id
            data = pack(m)
            if self._limit is not None and len(data) > self._limit:
                raise ArgumentError(
                    f"this {m['type']} message is {len(data)} bytes, more than the server accepts "
                    f"({self._limit}, its --max-message-bytes); send smaller images (the model takes "
                    f"{self.image_size}x{self.image_size}) or fewer environments per request"
                )
            payloads.append(data)
        try:
            try:
                for data in payloads:
                    self._ws.send(data)
            except ConnectionClosed:  # the server closed first (a refused connection): its reason may be queued
                pass
            replies = [unpack(self._ws.recv(timeout=self.timeout)) for _ in messages]
        except TimeoutError:
            self.close()  # an answer may still come: this connection can no longer pair answers with requests
            raise TimeoutError(
                f"no answer from the policy server at {self.url} within {self.timeout} s; the connection is closed"
            ) from None
        except ConnectionClosed as e:
            self._ws = None
            raise ConnectionError(f"the policy server at {self.url} closed the connection ({e})") from None
        for m, r in zip(messages, replies):
            if r.get("type") == "error":
                raise ServerError(f"{m['type']}: {r.get('error')}")
            if r.get("id") != m.get("id"):
                self.close()
                raise ConnectionError(
                    f"answer {r.get('id')!r} to request {m.get('id')!r}: out of step with the "
                    f"server; the connection is closed"
                )
        return replies

    def close(self) -> None:
        self._ws = None
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
