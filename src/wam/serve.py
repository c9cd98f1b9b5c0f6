"""A WAM checkpoint served to robots over websockets; concurrent clients share batched forward passes.

Runbook:
    wam serve --checkpoint runs/mt10/checkpoint                      # ws://127.0.0.1:8765, this machine only
    WAM_SERVE_TOKEN=secret wam serve --checkpoint C --host 0.0.0.0  # reachable from the network: set a token
    wam eval --server ws://127.0.0.1:8765 --env metaworld --tasks mt10 --episodes 20   # evaluate through it
    curl http://127.0.0.1:8765/healthz                                # liveness, for a process supervisor
    python benchmarks/bench_serve.py --checkpoint C                   # load test on loopback

In Python: `PolicyClient` (wam.client) has WAMPolicy's reset()/select_action()/predict_action_chunk().
The messages are in `wam.protocol`'s docstring.

Each connection is one session: after its hello it owns a `PolicyState` (observation history and a sampling
generator seeded with the hello's seed), so a session's actions are reproducible and equal a local
WAMPolicy's with the same seed. The client keeps the action queue (see wam.client).

Batching: `infer` requests are queued; the batcher takes the first, then gathers more until --max-batch
environments are in the batch, every session has a request in it, or --max-wait-ms have passed since
the first arrived, and runs them as one forward pass in a worker thread (the event loop keeps answering
health checks and decoding requests meanwhile). Each session's initial noise is drawn from its own
generator, so a batched answer equals the unbatched one up to float rounding (about 1e-7: kernels
differ with the batch size). Requests with different modes run as separate passes.

Safety: binds 127.0.0.1 unless told otherwise; with a token (--token or $WAM_SERVE_TOKEN), a hello with
another token is answered with an error and the connection closed (compared in constant time).
A connection must say hello within --hello-timeout seconds of opening (10 by default; other messages, health
checks included, do not extend it), else it gets an error and is closed (code 1008). At most
--max-connections connections (64 by default) are open at once: one more gets an error reply saying so and
is closed (code 1013, try again later) before anything else is read. Messages larger than
--max-message-bytes close that connection (code 1009, the websockets limit); any other malformed request
gets an error reply naming the problem, and the connection stays open. A client that disconnects while its
request waits or runs costs nothing: its result is dropped.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wam.errors import ArgumentError
from wam.protocol import (
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    TOKEN_ENV,
    ProtocolError,
    check_observation,
    hello_seed,
    pack,
    plain_id,
    unpack,
)

if TYPE_CHECKING:  # (serving an ONNX export, wam.runtime, never imports torch)
    import torch

    from wam.policy import WAMPolicy

log = logging.getLogger("wam.serve")

HELLO_TIMEOUT_S = 10.0  # a connection must say hello this soon after opening
DEFAULT_MAX_CONNECTIONS = 64  # open connections at once (greeted or not); a robot uses one per environment process
DEFAULT_MAX_MESSAGE_BYTES = 8 * 2**20


class _Refused(Exception):
    """The session is refused (wrong token or protocol version): reply with the error, then close."""


class Session:
    """One connection's closed loop: its PolicyState, re-created with the same seed at every reset."""

    def __init__(self, sid: int, seed: int, policy: WAMPolicy):
        self.id, self.seed = sid, seed
        self.state = policy.new_state(seed)


@dataclass
class _Pending:
    session: Session
    task: torch.Tensor  # (B,)
    rows: int  # B: environments in this request
    mode: str
    arrived: float  # time.perf_counter()
    future: asyncio.Future


class PolicyServer:
    """Serves one WAMPolicy (its model, settings and default mode) to many sessions; see the module docstring."""

    def __init__(
        self,
        policy: WAMPolicy,
        *,
        token: str | None = None,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
    ):
        if max_batch < 1:
            raise ArgumentError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ArgumentError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_connections < 1:
            raise ArgumentError(f"max_connections must be >= 1, got {max_connections}")
        if not hello_timeout_s > 0:
            raise ArgumentError(f"hello_timeout_s must be > 0, got {hello_timeout_s}")
        self.policy, self.token = policy, token or None
        self.modes = acting_modes(policy)
        self.max_batch, self.max_wait_s, self.max_message_bytes = max_batch, max_wait_ms / 1000, max_message_bytes
        self.max_connections, self.hello_timeout_s = max_connections, hello_timeout_s
        self.model_hash = policy.checkpoint.model_hash
        self.sessions: dict[int, Session] = {}
        self.open_connections = 0
        self.counters = {
            "connections": 0,
            "requests": 0,
            "rows": 0,
            "forward_passes": 0,
            "errors": 0,
            "dropped": 0,
            "refused_connections": 0,
            "hello_timeouts": 0,
        }
        self.started = time.time()
        self._next_session = 0
        self._queue: asyncio.Queue[_Pending] | None = None

    # -- what a client is told

    def metadata(self, session: Session) -> dict:
        p, cfg = self.policy, self.policy.cfg
        size = cfg.image_size
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "session": session.id,
            "seed": session.seed,
            "model_hash": self.model_hash,
            "action_dim": p.normalizer.action_dim,
            "action_names": p.checkpoint.config.get("run", {}).get("action_names"),
            "cameras": {k: [size, size, 3] for k in p.cameras},
            "image_size": size,
            "state_dim": cfg.state_dim,
            "tasks": p.tasks,
            "fps": p.fps,
            "benchmark_protocol": getattr(p, "protocol", None),  # the scene its training data was made in
            "action_horizon": cfg.action_horizon,
            "n_obs_steps": cfg.n_obs_steps,
            "n_action_steps": p.n_action_steps,
            "modes": list(self.modes),
            "mode": p.mode,
            "sampling": p.inference.to_dict(),
            "max_batch": self.max_batch,
            "max_message_bytes": self.max_message_bytes,
            "max_connections": self.max_connections,
            "device": str(p.device),
        }

    def health(self, session: Session | None) -> dict:
        out = {"type": "health", "ok": True, "protocol": PROTOCOL_VERSION}
        if session is not None:  # counters only for a greeted session
            c = self.counters
            out.update(
                c,
                uptime_s=time.time() - self.started,
                sessions=len(self.sessions),
                open_connections=self.open_connections,
                queued=self._queue.qsize() if self._queue is not None else 0,
                mean_batch=c["rows"] / c["forward_passes"] if c["forward_passes"] else 0.0,
            )
        return out

    # -- requests

    def _check_observation(self, msg: dict) -> dict:
        """The protocol's checks of an observation (wam.protocol.check_observation); returns obs."""
        p = self.policy
        obs, _ = check_observation(
            msg,
            cameras=p.cameras,
            state_dim=p.cfg.state_dim,
            max_batch=self.max_batch,
            tasks=p.tasks,
            image_size=p.cfg.image_size,
        )
        return obs

    def _push(self, session: Session, msg: dict):
        obs = self._check_observation(msg)
        try:
            ob = self.policy.read_observation(obs)
            self.policy.push(session.state, ob)
        except (KeyError, ValueError) as e:
            raise ProtocolError(str(e).strip("'\"")) from None
        return ob

    async def _infer(self, session: Session, msg: dict, arrived: float, closed: asyncio.Future) -> dict | None:
        mode = msg.get("mode") or self.policy.mode
        if mode not in self.modes:
            raise ProtocolError(f"mode {mode!r} does not act here; choose one of: {', '.join(self.modes)}")
        ob = self._push(session, msg)
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(session, ob.task, ob.batch_size, mode, arrived, future))
        await asyncio.wait({future, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not future.done():  # the client left: the batcher skips or drops this request
            future.cancel()
            self.counters["dropped"] += 1
            return None
        chunk = future.result()  # (B, H, A); raises what the forward pass raised
        return {
            "type": "action_chunk",
            "id": msg.get("id"),
            "actions": chunk[0] if ob.single else chunk,
            "mode": mode,
            "server_ms": 1000 * (time.perf_counter() - arrived),
        }

    async def _dispatch(
        self, session: Session | None, msg: dict, arrived: float, closed: asyncio.Future
    ) -> tuple[dict | None, Session | None]:
        """One message -> (its reply, the connection's session)."""
        kind = msg.get("type")
        if kind not in REQUEST_TYPES:
            raise ProtocolError(f"unknown message type {kind!r}; use one of: {', '.join(REQUEST_TYPES)}")
        if kind == "health":
            return {**self.health(session), "id": msg.get("id")}, session
        if kind == "hello":
            if session is not None:
                raise ProtocolError("this connection already said hello; open a new connection for a new session")
            if msg.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
                raise _Refused(
                    f"this server speaks protocol {PROTOCOL_VERSION}, the client "
                    f"{msg.get('protocol')!r}; use the same version of wam on both sides"
                )
            if self.token is not None:
                given = msg.get("token")
                if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
                    raise _Refused(
                        "wrong or missing token; pass the server's token (PolicyClient(token=...), "
                        f"--token, or ${TOKEN_ENV})"
                    )
            seed = hello_seed(msg)
            self._next_session += 1
            session = Session(self._next_session, seed, self.policy)
            self.sessions[session.id] = session
            return self.metadata(session), session
        if session is None:
            raise ProtocolError(
                f"say hello first: {{'type': 'hello', 'protocol': {PROTOCOL_VERSION}, 'token': ..., 'seed': 0}}"
            )
        if kind == "reset":
            session.state = self.policy.new_state(session.seed)
            return {"type": "reset", "id": msg.get("id")}, session
        if kind == "observe":
            self._push(session, msg)
            return {"type": "observed", "id": msg.get("id")}, session
        return await self._infer(session, msg, arrived, closed), session

    async def _handle(self, ws) -> None:
        """One connection: messages are answered in order, one at a time."""
        from websockets.exceptions import ConnectionClosed

        if self.open_connections >= self.max_connections:
            await self._refuse_connection(ws)
            return
        self.open_connections += 1
        self.counters["connections"] += 1
        session = None
        closed = asyncio.ensure_future(ws.wait_closed())
        hello_by = time.monotonic() + self.hello_timeout_s  # (other messages before hello do not extend it)
        try:
            while True:
                try:
                    wait = None if session is not None else max(0.0, hello_by - time.monotonic())
                    raw = await asyncio.wait_for(ws.recv(), wait)
                except asyncio.TimeoutError:
                    await self._close_without_hello(ws)
                    return
                reply, session = await self._answer(ws, session, raw, closed)
                if reply is None:  # the session was refused, or the client left mid-request
                    return
                await ws.send(pack(reply))
        except ConnectionClosed:
            pass
        finally:
            self.open_connections -= 1
            closed.cancel()
            if session is not None:
                self.sessions.pop(session.id, None)

    async def _answer(self, ws, session, raw: bytes, closed) -> tuple[dict | None, Any]:
        """The reply to one message and the connection's session after it. A request that fails is answered with
        an error and the server stays up; a refused session is told why and its connection closed (reply None)."""
        arrived = time.perf_counter()
        msg_id = None
        try:
            msg = unpack(raw)
            msg_id = plain_id(msg.get("id"))
            if msg_id is None and msg.get("id") is not None:
                raise ProtocolError("'id' must be an int or a string")
            return await self._dispatch(session, msg, arrived, closed)
        except _Refused as e:
            log.warning("refused a session from %s: %s", ws.remote_address, e)
            await ws.send(pack({"type": "error", "id": msg_id, "error": str(e)}))
            await ws.close(1008, "refused")
            return None, session
        except ProtocolError as e:
            self.counters["errors"] += 1
            return {"type": "error", "id": msg_id if msg_id is not None else plain_id(e.id), "error": str(e)}, session
        except Exception as e:  # a bug or a failed forward pass: this request fails, the server stays up
            log.exception("request failed")
            self.counters["errors"] += 1
            error = f"the server failed on this request ({type(e).__name__}: {e}); see its log"
            return {"type": "error", "id": msg_id, "error": error}, session

    async def _refuse_connection(self, ws) -> None:
        """A connection over --max-connections: told why, then closed."""
        from websockets.exceptions import ConnectionClosed

        self.counters["refused_connections"] += 1
        log.warning(
            "refused a connection from %s: %d connections are open (--max-connections)",
            ws.remote_address,
            self.open_connections,
        )
        error = (
            f"this server is at its limit of {self.max_connections} open connections (--max-connections); close "
            f"another connection or retry later, or start the server with a higher --max-connections"
        )
        try:
            await ws.send(pack({"type": "error", "id": None, "error": error}))
            await ws.close(1013, f"at the limit of {self.max_connections} connections (--max-connections)")
        except ConnectionClosed:
            pass

    async def _close_without_hello(self, ws) -> None:
        """A connection that sent no hello within hello_timeout_s: told what to send, then closed."""
        self.counters["hello_timeouts"] += 1
        error = (
            f"no hello within {self.hello_timeout_s:g} s of connecting; closing (send "
            f"{{'type': 'hello', 'protocol': {PROTOCOL_VERSION}, ...}} first)"
        )
        await ws.send(pack({"type": "error", "id": None, "error": error}))
        await ws.close(1008, "no hello")

    # -- batching

    def _forward(self, batch: list[_Pending], mode: str) -> list[np.ndarray]:
        return self.policy.predict_chunks([r.session.state for r in batch], [r.task for r in batch], mode)

    async def _batch_loop(self, executor: ThreadPoolExecutor) -> None:
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch, rows = [first], first.rows
            deadline = first.arrived + self.max_wait_s
            # more may come while some session has none queued; each session has at most one in flight
            while rows < self.max_batch and len(batch) < len(self.sessions):
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if rows + item.rows > self.max_batch:
                    carry = item
                    break
                batch.append(item)
                rows += item.rows
            live = [r for r in batch if not r.future.done()]  # done here: cancelled, its client left
            for mode in dict.fromkeys(r.mode for r in live):
                await self._run([r for r in live if r.mode == mode], mode, executor)

    async def _run(self, part: list[_Pending], mode: str, executor: ThreadPoolExecutor) -> None:
        """One forward pass in the worker thread; its answers (or its error) go to the waiting requests."""
        try:
            chunks = await asyncio.get_running_loop().run_in_executor(executor, self._forward, part, mode)
        except Exception as e:  # every request of the pass gets the error; the batcher goes on
            log.exception("forward pass failed")
            for r in part:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        self.counters["forward_passes"] += 1
        self.counters["requests"] += len(part)
        self.counters["rows"] += sum(r.rows for r in part)
        for r, chunk in zip(part, chunks):
            if not r.future.done():
                r.future.set_result(chunk)

    # -- running

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        ready: Callable[[str], Any] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serve until `stop` is set (forever without one); calls ready(url) once listening."""
        from http import HTTPStatus

        from websockets.asyncio.server import serve

        def http(connection, request):  # GET /healthz: liveness without a websocket
            if request.path == "/healthz":
                return connection.respond(HTTPStatus.OK, "ok\n")
            return None

        self._queue = asyncio.Queue()
        executor = ThreadPoolExecutor(1, thread_name_prefix="wam-serve-model")
        batcher = asyncio.create_task(self._batch_loop(executor))
        try:
            async with serve(
                self._handle, host, port, max_size=self.max_message_bytes, compression=None, process_request=http
            ) as server:
                bound = server.sockets[0].getsockname()
                url = f"ws://{_url_host(host)}:{bound[1]}"
                if ready is not None:
                    ready(url)
                try:
                    await (stop.wait() if stop is not None else asyncio.Future())
                finally:
                    batcher.cancel()
                    server.close()  # closes connections: handlers waiting on a result see `closed` and return
                    await server.wait_closed()
        finally:
            batcher.cancel()
            executor.shutdown(wait=False, cancel_futures=True)


def acting_modes(policy) -> tuple[str, ...]:
    """The modes a served policy acts in: an ONNX export (wam.runtime.ONNXPolicy) names its own, a WAMPolicy acts
    in every acting mode."""
    modes = getattr(policy, "modes", None)
    if modes is None:
        from wam.policy import ACTING_MODES

        modes = ACTING_MODES
    return tuple(modes)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerThread:
    """A PolicyServer on its own event loop in a daemon thread (tests, notebooks, benchmarks):

    with ServerThread(PolicyServer(policy), port=0) as running:
        client = PolicyClient(running.url)
    """

    def __init__(self, server: PolicyServer, host: str = "127.0.0.1", port: int = 0):
        self.server, self.host, self.port = server, host, port
        self.url: str | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="wam-serve")

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.server.serve(self.host, self.port, ready=self._on_ready, stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 (kept for the thread that started the server, which raises it)
            self._error = e
        finally:
            self._ready.set()

    def _on_ready(self, url: str) -> None:
        self.url = url
        self._ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        if self.url is None:
            raise RuntimeError(f"the policy server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_server(policy: WAMPolicy, host: str = "127.0.0.1", port: int = 8765, **kwargs) -> None:
    """`wam serve`: serve until SIGINT or SIGTERM."""
    import signal

    server = PolicyServer(policy, **kwargs)
    if not is_loopback(host) and server.token is None:
        log.warning(
            "serving on %s without a token: anyone who can reach this port can use the model; set --token or $%s",
            host,
            TOKEN_ENV,
        )

    def ready(url: str) -> None:
        log.info(
            "serving %s (model %s, mode %s, %s) on %s",
            policy.checkpoint.path,
            server.model_hash,
            policy.mode,
            policy.device,
            url,
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals on this platform
                pass
        await server.serve(host, port, ready=ready, stop=stop)

    asyncio.run(main())
    log.info("stopped")
