"""`wam export`: a checkpoint's policy as ONNX graphs that `wam.runtime` runs with numpy and onnxruntime only.

    wam export checkpoints/wam-tiny-mt10 --out exports/wam-tiny-mt10          # encoder, policy, int8 policy
    python -c "from wam.runtime import ONNXPolicy; p = ONNXPolicy('exports/wam-tiny-mt10')"   # no torch needed
    wam bench --checkpoint checkpoints/wam-tiny-mt10 --runtime onnx             # both runtimes, same noise
    wam serve --runtime onnx --checkpoint exports/wam-tiny-mt10                 # the same protocol as wam serve

An export is a directory:

    encoder.onnx        frames (N, h, W, 3) uint8 -> latents (N, c, h', w'): the frame tokenizer's encoder with
                        its standardisation (cameras side by side, as WAMPolicy feeds them)
    policy.onnx         latents (B, n_obs, c, h', w'), task (B,) int64, state (B, n_obs, S) normalised (when the
                        model has a state), noise (B, H, A) -> actions (B, H, A) normalised, unclamped: the
                        observed-token pass and every denoising step of `wam.modes.sample` in policy mode, at
                        the checkpoint's default inference settings (or the ones given), unrolled
    policy.int8.onnx    the same with onnxruntime's dynamic int8 quantisation of its matrix products (optional)
    manifest.json       observation keys and shapes, tasks, action horizon, normalisation constants, the sampling
                        settings, the model hash, each graph's inputs, outputs and SHA-256
    stats.json          the checkpoint's normalisation statistics, as it stores them

The initial noise is an input of policy.onnx: the runtime draws it with numpy from a seeded generator, so the
same noise given to a WAMPolicy gives the same actions up to float rounding (`check_export` measures it).

What is exported: policy mode, one embodiment (a checkpoint trained on a mixture of action spaces is refused),
the tasks the model was trained on (new instructions need the text encoder). Warm start, Taylor forecasting, bf16
and torch's int8 are inference options of the PyTorch path only; the export refuses them by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from wam.errors import CheckpointError
from wam.inference import InferenceConfig

FORMAT = "wam-onnx"
FORMAT_VERSION = 1
OPSET = 18  # onnxruntime >= 1.14 runs every operator this opset needs
EXPORT_BATCH = 2  # example batch the graphs are traced with (the batch axis stays dynamic)


class ExportError(CheckpointError):
    """A checkpoint or a setting that cannot be exported; the message says which and why."""


# ---- the graphs -----------------------------------------------------------------------------------


class EncoderGraph(torch.nn.Module):
    """uint8 frames (N, h, W, 3) -> standardised latents (N, c, h', w'), as WAMPolicy encodes its history."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (N, 3, h, W) in [-1, 1] (to_model_frames)
        return self.tokenizer.encode(x[:, None])[:, 0].float()  # (N, c, h', w')


class PolicyGraph(torch.nn.Module):
    """One action chunk in policy mode: `wam.modes.sample` with the given settings and noise, traced whole."""

    def __init__(self, model, ic: InferenceConfig):
        super().__init__()
        self.model, self.kwargs = model, ic.sample_kwargs()
        self.has_state = model.cfg.state_dim > 0

    def forward(self, latents, task, state, noise):
        from wam.modes import sample

        batch = {"latents": latents, "task": task, **({"state": state} if self.has_state else {})}
        return sample(self.model, batch, "policy", noise={"actions": noise}, **self.kwargs)["actions"]


# ---- checks -----------------------------------------------------------------------------------------


def export_settings(checkpoint, inference: InferenceConfig | None = None) -> InferenceConfig:
    """The sampling settings an export bakes in: the checkpoint's defaults (WAMPolicy's: InferenceConfig(), the
    cache off for attention "full"), changed by `inference`; ExportError for what the graphs cannot hold."""
    ic = inference or InferenceConfig(cache=checkpoint.model.cfg.attention != "full")
    refused = {
        "taylor": ic.taylor is not None,
        "warm_start": bool(ic.warm_start),
        "precision": ic.precision != "fp32",
        "quantize": ic.quantize != "none",
        "attention": ic.attention != "sdpa",
    }
    bad = [k for k, v in refused.items() if v]
    if bad:
        raise ExportError(
            f"the export holds fp32 sampling with the sdpa attention and no Taylor forecast or warm "
            f"start; these settings are the PyTorch path's only: {', '.join(bad)} (int8 is offered "
            f"by the export itself: wam export --int8)"
        )
    if ic.cache and checkpoint.model.cfg.attention == "full":
        raise ExportError(
            'this checkpoint was trained with attention "full": its observed tokens cannot be '
            "cached; export it with the cache off (--no-cache)"
        )
    return dataclasses.replace(ic, compile=False)


def _embodiment_check(checkpoint) -> None:
    sets = [d for d in checkpoint.config.get("run", {}).get("datasets", []) if d.get("action_dim")]
    if len(sets) > 1:
        raise ExportError(
            f"this checkpoint acts in {len(sets)} action spaces (trained on a mixture); the export "
            f"holds one embodiment's normalisation: export a checkpoint trained on one of them"
        )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _normalisation(checkpoint, model_cfg) -> dict:
    """The constants the runtime normalises with, exactly as wam.data.Normalizer computes them (float32 in use)."""
    from wam.data import Normalizer

    norm = Normalizer.from_dict(checkpoint.stats)
    if norm.action_dim == 0:
        raise ExportError("the checkpoint's statistics have no action min/max: it cannot act")
    out = {
        "action_min": norm.action_min.tolist(),
        "action_range": norm.action_range.tolist(),
        "action_dim": norm.action_dim,
        "state_dim": 0,
        "state_mean": None,
        "state_std": None,
    }
    if model_cfg.state_dim > 0 and norm.state_mean is not None:
        out.update(state_dim=norm.state_dim, state_mean=norm.state_mean.tolist(), state_std=norm.state_std.tolist())
    return out


# ---- export -----------------------------------------------------------------------------------------


def _onnx_export(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    names: list[str],
    outputs: list[str],
    batch_inputs: list[str],
    opset: int,
) -> None:
    import warnings

    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {n: ({0: batch} if n in batch_inputs else None) for n in names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=names,
                output_names=outputs,
                dynamic_shapes=shapes,
                opset_version=opset,
                verbose=False,
                optimize=True,
                external_data=False,
            )
        except ImportError as e:  # the dynamo exporter writes through onnxscript
            raise ExportError(f"exporting needs onnx and onnxscript ({e}); pip install 'wam[export]'") from None
    program.save(str(path))


def export_policy(
    checkpoint,
    out: str | Path,
    *,
    inference: InferenceConfig | None = None,
    int8: bool = True,
    opset: int = OPSET,
    overwrite: bool = False,
    check: bool = True,
    progress: bool = False,
) -> dict:
    """Write `checkpoint`'s policy to the directory `out` (see the module docstring); returns the manifest.
    `checkpoint` is a wam.checkpoint.Checkpoint or its directory. Written to a temporary sibling and renamed
    into place; an existing `out` is replaced only with overwrite=True."""
    from wam.checkpoint import Checkpoint, load_checkpoint
    from wam.inference import prepare

    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass `overwrite=True` to replace it")
    if checkpoint.tokenizer is None:
        raise ExportError(f"{checkpoint.path} has no tokenizer.safetensors: its frames cannot be encoded")
    _embodiment_check(checkpoint)
    ic = export_settings(checkpoint, inference)
    model = prepare(checkpoint.model.float().eval(), ic)  # (sets the sdpa attention the graph is traced with)
    tokenizer = checkpoint.tokenizer.float().eval()
    cfg = model.cfg
    run = checkpoint.config.get("run", {})
    cameras = [f"observation.images.{c}" for c in run.get("cameras", [])]
    if len(cameras) != cfg.n_cameras:
        raise ExportError(
            f"the checkpoint records cameras {cameras} but the model takes {cfg.n_cameras}; "
            f"its config.json lacks run.cameras"
        )
    norm = _normalisation(checkpoint, cfg)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)

    g = torch.Generator().manual_seed(0)
    B, size = EXPORT_BATCH, cfg.image_size
    frames = torch.randint(0, 256, (B, size, size * cfg.n_cameras, 3), generator=g, dtype=torch.uint8)
    latents = torch.randn(
        B, cfg.n_obs_steps, cfg.latent_channels, cfg.latent_size, cfg.latent_size * cfg.n_cameras, generator=g
    )
    task = torch.arange(B, dtype=torch.long) % cfg.n_tasks
    state = torch.randn(B, cfg.n_obs_steps, max(cfg.state_dim, 1), generator=g)
    noise = torch.randn(B, cfg.action_horizon, cfg.action_dim, generator=g)
    policy_names = ["latents", "task", *(["state"] if cfg.state_dim > 0 else []), "noise"]
    policy_args = (latents, task, state if cfg.state_dim > 0 else None, noise)

    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        graphs = _write_graphs(
            tmp, model, tokenizer, ic, (frames, *policy_args), policy_names, int8=int8, opset=opset, say=say
        )
        export_seconds = time.perf_counter() - t0
        manifest = _manifest(
            checkpoint, ic, cameras, norm, graphs, tmp, policy_names, opset=opset, export_seconds=export_seconds
        )
        if check:
            manifest["check"] = check_graphs(tmp, model, tokenizer, ic, (frames, *policy_args))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (tmp / "stats.json").write_text(json.dumps(checkpoint.stats, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"[export] {out}: {', '.join(graphs.values())}, manifest.json ({export_seconds:.0f} s)")
    return manifest


def _write_graphs(
    tmp: Path,
    model,
    tokenizer,
    ic: InferenceConfig,
    inputs: tuple,
    policy_names: list[str],
    *,
    int8: bool,
    opset: int,
    say,
) -> dict[str, str]:
    """The encoder, the policy (and its int8 twin) as ONNX files in `tmp`; returns {graph name: file name}."""
    cfg = model.cfg
    frames, latents, task, state, noise = inputs
    size = cfg.image_size
    say(f"[export] encoder: frames (N, {size}, {size * cfg.n_cameras}, 3) uint8 -> latents")
    _onnx_export(EncoderGraph(tokenizer), (frames,), tmp / "encoder.onnx", ["frames"], ["latents"], ["frames"], opset)
    say(f"[export] policy: {ic.steps} {ic.solver} steps, cache {ic.cache}")
    graph = PolicyGraph(model, ic)
    if cfg.state_dim > 0:
        _onnx_export(
            graph, (latents, task, state, noise), tmp / "policy.onnx", policy_names, ["actions"], policy_names, opset
        )
    else:  # (no state input: a wrapper without it, so that the graph has none)

        class NoState(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, latents, task, noise):
                return self.inner(latents, task, None, noise)

        _onnx_export(
            NoState(graph), (latents, task, noise), tmp / "policy.onnx", policy_names, ["actions"], policy_names, opset
        )
    graphs = {"encoder": "encoder.onnx", "policy": "policy.onnx"}
    if int8:
        say("[export] policy.int8: onnxruntime dynamic int8 quantisation of the matrix products")
        quantize_int8(tmp / "policy.onnx", tmp / "policy.int8.onnx")
        graphs["policy_int8"] = "policy.int8.onnx"
    return graphs


def _manifest(
    checkpoint,
    ic: InferenceConfig,
    cameras: list[str],
    norm: dict,
    graphs: dict[str, str],
    tmp: Path,
    policy_names: list[str],
    *,
    opset: int,
    export_seconds: float,
) -> dict:
    """manifest.json: what the export holds and how to feed it, with each graph's sha256."""
    cfg, run = checkpoint.model.cfg, checkpoint.config.get("run", {})
    size = cfg.image_size
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_hash": checkpoint.model_hash,
        "checkpoint": str(checkpoint.path),
        "wam_version": _wam_version(),
        "torch": torch.__version__,
        "opset": opset,
        "mode": "policy",
        "observation": {
            "cameras": {k: [size, size, 3] for k in cameras},  # uint8 RGB each; others are resized
            "camera_layout": "side by side, in this order",
            "state": {"key": "observation.state", "size": norm["state_dim"]} if cfg.state_dim > 0 else None,
            "task": "a training task's text (or its index)",
        },
        "tasks": list(run.get("tasks", [])),
        "fps": run.get("fps"),
        "protocol": run.get("protocol"),  # the benchmark protocol the training data was collected under
        "action_names": run.get("action_names"),
        "model": {
            "image_size": size,
            "n_cameras": cfg.n_cameras,
            "n_obs_steps": cfg.n_obs_steps,
            "action_horizon": cfg.action_horizon,
            "action_dim": cfg.action_dim,
            "state_dim": cfg.state_dim,
            "n_tasks": cfg.n_tasks,
            "latent_shape": [cfg.latent_channels, cfg.latent_size, cfg.latent_size * cfg.n_cameras],
        },
        "action_horizon": cfg.action_horizon,
        "normalisation": norm,
        "inference": ic.to_dict(),
        "graphs": {name: {"file": f, "sha256": _file_sha256(tmp / f)} for name, f in graphs.items()},
        "inputs": {"encoder": ["frames"], "policy": policy_names},
        "export_seconds": round(export_seconds, 1),
    }


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic int8 quantisation (weights int8 per tensor, activations quantised per call) of the
    graph's MatMul and Gemm nodes: the blocks' linear layers, where nearly all of the compute is."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # (the quantiser logs a pre-processing hint at WARNING on the root logger)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


def check_graphs(directory: Path, model, tokenizer, ic: InferenceConfig, example: tuple) -> dict:
    """Run the written graphs with onnxruntime on the traced example and compare with PyTorch: max |difference|."""
    import onnxruntime as ort

    from wam.modes import sample

    frames, latents, task, state, noise = example
    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    def run(f, feed):
        return ort.InferenceSession(
            str(directory / f),
            opts,
            providers=["CPUExecutionProvider"],
        ).run(None, feed)[0]

    with torch.no_grad():
        z = tokenizer.encode(frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)[:, None])[:, 0].float()
        batch = {"latents": latents, "task": task, **({"state": state} if state is not None else {})}
        a = sample(model, batch, "policy", noise={"actions": noise}, **ic.sample_kwargs())["actions"]
    feed = {
        "latents": latents.numpy(),
        "task": task.numpy(),
        "noise": noise.numpy(),
        **({"state": state.numpy()} if state is not None else {}),
    }
    out = {
        "encoder_max_abs_diff": float(np.abs(run("encoder.onnx", {"frames": frames.numpy()}) - z.numpy()).max()),
        "policy_max_abs_diff": float(np.abs(run("policy.onnx", feed) - a.numpy()).max()),
    }
    if (directory / "policy.int8.onnx").is_file():
        out["policy_int8_max_abs_diff"] = float(np.abs(run("policy.int8.onnx", feed) - a.numpy()).max())
    return out


def _wam_version() -> str:
    import wam

    return wam.__version__


# ---- the PyTorch policy fed the runtime's noise -------------------------------------------------------


def equivalence(
    checkpoint, export_dir: str | Path, *, episodes: list[dict], seed: int = 0, runtime_options: dict | None = None
) -> dict:
    """Replay recorded episodes (wam.train.load_episodes' dicts: frames, states, task_index) through a WAMPolicy
    at the export's settings and through the export's ONNXPolicy, one chunk every n_action_steps steps as in
    closed loop, each chunk from the same noise (drawn by the runtime); the actions' differences in the
    environment's units and normalised: max and mean |difference| over every action of every chunk."""
    from wam.policy import Observation, WAMPolicy
    from wam.runtime import ONNXPolicy, RuntimeObservation

    onnx = ONNXPolicy(export_dir, seed=seed, **(runtime_options or {}))
    ic = InferenceConfig.from_dict(onnx.manifest["inference"])
    torch_policy = WAMPolicy(checkpoint, mode="policy", inference=ic, seed=seed)
    given: dict = {}
    torch_policy._noise = lambda state, batch_size, mode, latent_shape: {  # the runtime's noise, as drawn
        "policy": {"actions": torch.from_numpy(given["noise"]).to(torch_policy.device)}
    }
    k, diffs, norm_diffs = onnx.n_action_steps, [], []
    cfg = torch_policy.cfg
    for ep in episodes:
        ts, rs = torch_policy.new_state(seed), onnx.new_state(seed)
        task = np.array([ep["task_index"]], dtype=np.int64)
        states = np.asarray(ep["states"], dtype=np.float32) if cfg.state_dim else None
        for step in range(len(ep["frames"])):
            frame = np.asarray(ep["frames"][step])[None]
            st = None if states is None else states[step][None]
            st_t = None if st is None else torch.from_numpy(st)
            torch_policy.push(ts, Observation(frame, st_t, torch.from_numpy(task), False))
            onnx.push(rs, RuntimeObservation(frame, st, task, False))
            if step % k:
                continue
            noise = onnx.draw_noise(rs, 1)
            given["noise"] = noise
            a_onnx = onnx.predict_chunks([rs], [task], noise=[noise])[0]
            a_torch = torch_policy.predict_chunks([ts], [torch.from_numpy(task)])[0]
            diffs.append(np.abs(a_onnx - a_torch))
            norm_diffs.append(np.abs(rs.last_chunk - ts.last_chunk.clamp(-1, 1).numpy()))
    d, n = np.concatenate([x.ravel() for x in diffs]), np.concatenate([x.ravel() for x in norm_diffs])
    return {
        "chunks": len(diffs),
        "actions": int(d.size),
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "max_abs_diff_normalised": float(n.max()),
        "mean_abs_diff_normalised": float(n.mean()),
    }
