"""The policy server's wire format: msgpack messages over websockets, numpy arrays encoded explicitly.

Shared by the server (`wam.serve`) and the client (`wam.client`). Every message is one binary websocket
frame holding a msgpack map with a "type". An array is the map

    {"__nd__": True, "dtype": "uint8", "shape": [64, 64, 3], "data": <bytes, C order, little-endian>}

with dtype one of bool, (u)int8/16/32/64, float16/32/64; anything else is refused.

Protocol version 1 (client -> server; the server answers every message, in order):

    {"type": "hello", "protocol": 1, "token": str | None, "seed": int}
        -> {"type": "hello", ...metadata}   (see `wam.serve.PolicyServer.metadata`)
        -> {"type": "error", ...} and the connection is closed (code 1008) when the token is wrong
    {"type": "infer", "id": ID, "obs": OBS, "mode": str (optional)}
        -> {"type": "action_chunk", "id": ID, "actions": array (H, A) or (B, H, A), "mode": str, "server_ms": float}
    {"type": "observe", "id": ID, "obs": OBS}
        -> {"type": "observed", "id": ID}              (pushes OBS into the history, predicts nothing)
    {"type": "reset", "id": ID}
        -> {"type": "reset", "id": ID}                 (empty history, generator re-seeded with the hello seed)
    {"type": "health", "id": ID}
        -> {"type": "health", "id": ID, "ok": True, "protocol": 1, ...}   (also before hello: liveness only)
    anything malformed
        -> {"type": "error", "id": ID or None, "error": "<what is wrong and how to fix it>"}

OBS is a LeRobot observation: "observation.images.<camera>" uint8 arrays (H, W, 3) (or (B, H, W, 3) for B
environments; other sizes are resized to the model's), "observation.state" float arrays (S,) or (B, S)
when the model has a state, and "task": the task string (or index; default 0). ID is an int or a string
chosen by the client and echoed back.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
TOKEN_ENV = "WAM_SERVE_TOKEN"  # where the server and the client read the shared token when none is passed
DTYPES = frozenset(
    {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"}
)
MAX_DIMS = 8


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text says what is wrong and how to fix it, and
    `id` is the message's id when it could be read."""

    def __init__(self, text: str, id: Any = None):
        super().__init__(text)
        self.id = id


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in DTYPES:
            raise TypeError(f"cannot send an array of dtype {obj.dtype}; use one of: {', '.join(sorted(DTYPES))}")
        data = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        return {"__nd__": True, "dtype": obj.dtype.name, "shape": list(obj.shape), "data": data.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _decode(obj: Any, where: str) -> Any:
    """Arrays inside a decoded message, found by walking it (so that an error can name where it is)."""
    if isinstance(obj, list):
        return [_decode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, dict):
        return obj
    if obj.get("__nd__") is not True:
        return {k: _decode(v, f"{where}[{k!r}]") for k, v in obj.items()}
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if dtype not in DTYPES:
        raise ProtocolError(f"{where}: array dtype {dtype!r} is not allowed; use one of: {', '.join(sorted(DTYPES))}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ProtocolError(f"{where}: array shape {shape!r} must be a list of at most {MAX_DIMS} non-negative ints")
    if not isinstance(data, bytes):
        raise ProtocolError(f"{where}: array data must be msgpack bin (bytes)")
    dt = np.dtype(dtype).newbyteorder("<")
    size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(data) != size:
        raise ProtocolError(f"{where}: array data holds {len(data)} bytes but shape {shape} of {dtype} needs {size}")
    return np.frombuffer(data, dtype=dt).reshape(shape).astype(dtype)  # native byte order, writable copy


def pack(message: dict) -> bytes:
    """A message (dict with numpy arrays anywhere inside) -> msgpack bytes."""
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(data: bytes | str) -> dict:
    """msgpack bytes -> a message dict with its arrays; ProtocolError when it is not one."""
    if isinstance(data, str):
        raise ProtocolError("got a text frame; send each message as one binary frame of msgpack")
    try:
        message = msgpack.unpackb(data, raw=False)
    except Exception as e:  # noqa: BLE001 (msgpack raises several types: ExtraData, FormatError, StackError, ...)
        raise ProtocolError(
            f"message is not valid msgpack ({type(e).__name__}: {e}); encode it with wam.protocol.pack"
        ) from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message must be a msgpack map with a 'type', got a {type(message).__name__}")
    msg_id = message.get("id")
    try:
        return _decode(message, "message")
    except ProtocolError as e:
        raise ProtocolError(str(e), id=msg_id) from None
    except RecursionError:
        raise ProtocolError("message is nested too deeply", id=msg_id) from None


# ---- the checks every server of this protocol makes (wam.serve, and the peers' server in benchmarks/peers) ----

REQUEST_TYPES = ("hello", "infer", "observe", "reset", "health")
MAX_IMAGE_SIDE = 4096


def plain_id(value: Any) -> int | str | None:
    """A request id that can be echoed back: an int or a string, else None."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def hello_seed(msg: dict) -> int:
    """The seed of a hello message (default 0); ProtocolError when it is not an int in [0, 2**63)."""
    seed = msg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ProtocolError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def check_observation(
    msg: dict,
    *,
    cameras: list[str],
    state_dim: int,
    max_batch: int,
    tasks: list[str] | None = None,
    image_size: int | None = None,
) -> tuple[dict, int | None]:
    """The protocol's checks of an observe/infer message's 'obs', each failure saying how to fix it.

    cameras: the observation.images.<camera> keys the policy reads; state_dim: the size of observation.state
    (0: none); tasks: the known task strings (None: any task is passed on unchecked); image_size: the side the
    policy resizes to (only named in errors). Returns (obs, batch): batch is None for one environment, else B.
    """
    if "obs" not in msg:
        raise ProtocolError(f"{msg.get('type')} needs 'obs': a map of {list(cameras) + ['observation.state', 'task']}")
    obs = msg["obs"]
    if not isinstance(obs, dict):
        raise ProtocolError(f"'obs' must be a map of LeRobot keys, got a {type(obs).__name__}")
    batch = _check_images(obs, cameras, image_size)
    rows = batch or 1
    if rows > max_batch:
        raise ProtocolError(
            f"obs holds {rows} environments; this server takes at most {max_batch} per request (--max-batch)"
        )
    if state_dim > 0:
        _check_state(obs, state_dim, batch)
    _check_tasks(obs, tasks, batch)
    return obs, batch


def _check_images(obs: dict, cameras: list[str], image_size: int | None) -> int | None:
    """Every camera the policy reads: a uint8 (H, W, 3) array, or (B, H, W, 3) with one B for all; returns B."""
    batch = None  # None: unbatched; else the number of environments
    for i, key in enumerate(cameras):
        if key not in obs:
            raise ProtocolError(
                f"obs lacks {key!r}; the policy takes cameras {list(cameras)}, each a uint8 RGB array (H, W, 3)"
            )
        img = obs[key]
        if not isinstance(img, np.ndarray):
            raise ProtocolError(
                f"obs[{key!r}] must be an array (the {{'__nd__': True, ...}} map of "
                f"wam.protocol), got a {type(img).__name__}"
            )
        if img.dtype != np.uint8:
            raise ProtocolError(f"obs[{key!r}] has dtype {img.dtype}; send uint8 RGB values 0..255")
        if img.ndim not in (3, 4) or img.shape[-1] != 3 or 0 in img.shape or max(img.shape[-3:-1]) > MAX_IMAGE_SIDE:
            takes = f" (the policy takes {image_size}x{image_size}; other sizes are resized)" if image_size else ""
            raise ProtocolError(
                f"obs[{key!r}] has shape {list(img.shape)}; send (H, W, 3) RGB, or (B, H, W, 3) "
                f"for B environments, sides up to {MAX_IMAGE_SIDE}{takes}"
            )
        b = None if img.ndim == 3 else img.shape[0]
        if i > 0 and b != batch:
            raise ProtocolError(
                f"obs[{key!r}] has shape {list(img.shape)} but obs[{cameras[0]!r}] has "
                f"{list(obs[cameras[0]].shape)}: every camera needs the same batch"
            )
        batch = b
    return batch


def _check_state(obs: dict, state_dim: int, batch: int | None) -> None:
    """observation.state: finite numbers, (state_dim,) or (B, state_dim)."""
    key = "observation.state"
    if key not in obs:
        raise ProtocolError(f"obs lacks {key!r}: the policy takes a robot state of {state_dim} numbers")
    st = obs[key]
    if not isinstance(st, np.ndarray) or st.dtype.kind not in "fiu":
        raise ProtocolError(
            f"obs[{key!r}] must be a numeric array, got {st.dtype if isinstance(st, np.ndarray) else type(st).__name__}"
        )
    want = [state_dim] if batch is None else [batch, state_dim]
    if list(st.shape) != want:
        raise ProtocolError(f"obs[{key!r}] has shape {list(st.shape)}; the policy takes {want}")
    if not np.isfinite(st).all():
        bad = np.argwhere(~np.isfinite(st))[0].tolist()
        raise ProtocolError(f"obs[{key!r}] holds NaN or inf (first at index {bad}); send finite values")


def _check_tasks(obs: dict, tasks: list[str] | None, batch: int | None) -> None:
    """obs['task']: a task string or index (one per environment when batched), known to the policy."""
    task = obs.get("task", 0)
    items = [task] if batch is None or isinstance(task, (str, int)) else task
    if not isinstance(items, list) or (batch is not None and not isinstance(task, (str, int)) and len(items) != batch):
        raise ProtocolError(f"obs['task'] must be a task string (or index), or a list of {batch} of them")
    for t in items:
        if isinstance(t, bool) or not isinstance(t, (str, int)):
            raise ProtocolError(f"obs['task'] entries must be strings or ints, got {type(t).__name__}")
        if tasks is None:
            continue
        if isinstance(t, int) and not 0 <= t < max(1, len(tasks)):
            raise ProtocolError(f"task index {t} is out of range; known tasks: {tasks}")
        if isinstance(t, str) and t not in tasks:
            raise ProtocolError(f"task {t!r} was not in the training data; known tasks: {tasks}")
