"""Checkpoints: one directory, written to a temporary sibling and renamed into place.

    model.safetensors       the WAM weights
    tokenizer.safetensors   the frame tokenizer's weights (with its latent standardisation)
    config.json             {"model": ModelConfig, ...anything else the run wants to record; "adapter": the
                            settings of adapter modules kept in the weights, rebuilt on loading (wam.adapters)}
    stats.json              dataset normalisation statistics (for un-normalising actions)
    train_state/state.pt    optimizer, scheduler, RNG states and step, for resuming (optional)

A reader never sees a half-written checkpoint: the new directory is complete before it replaces the
old one, and a crash between the two renames leaves the old one under `<name>.old-*` (never deleted
before the new one is in place), which `load_checkpoint` reads when `<name>` is missing and a resumed
run puts back (wam.atomic).

Loading a checkpoint needs only the core modules (config, model, tokenizer, adapters): never the
training code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wam.adapters import add_adapters
from wam.atomic import atomic_dir_replace, set_aside
from wam.config import ModelConfig, from_dict, to_dict
from wam.errors import CheckpointError, NotFoundError
from wam.model import WAM
from wam.tokenizer import FrameTokenizer, make_tokenizer

__all__ = ["Checkpoint", "atomic_dir_replace", "file_hash", "load_checkpoint", "save_checkpoint"]


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike,
    model: WAM,
    tokenizer: FrameTokenizer | None = None,
    *,
    stats: dict | None = None,
    config: dict | None = None,
    train_state: dict | None = None,
) -> Path:
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_file(_state_dict(model), tmp / "model.safetensors")
        if tokenizer is not None:
            save_file(_state_dict(tokenizer), tmp / "tokenizer.safetensors")
        cfg = {"model": to_dict(model.cfg), **(config or {})}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (tmp / "stats.json").write_text(json.dumps(stats or {}, indent=2, sort_keys=True))
        if train_state is not None:
            (tmp / "train_state").mkdir()
            torch.save(train_state, tmp / "train_state" / "state.pt")
        atomic_dir_replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass
class Checkpoint:
    path: Path
    model: WAM
    tokenizer: FrameTokenizer | None
    config: dict
    stats: dict
    train_state: dict | None = field(default=None, repr=False)

    @property
    def model_hash(self) -> str:
        return file_hash(self.path / "model.safetensors")


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", with_train_state: bool = False
) -> Checkpoint:
    root = Path(path)
    root = set_aside(root) or root  # a writer killed between its two renames: the complete previous checkpoint
    if not (root / "model.safetensors").is_file() or not (root / "config.json").is_file():
        raise NotFoundError(
            f"{root} is not a wam checkpoint (model.safetensors and config.json expected); "
            f"point --checkpoint at a directory written by `wam train`"
        )
    config = json.loads((root / "config.json").read_text())
    mcfg = from_dict(ModelConfig, config["model"])
    model = WAM(mcfg)
    if config.get("adapter"):  # unmerged adapter modules (bottleneck adapters cannot fold into the weights)
        add_adapters(model, **config["adapter"])
    tokenizer = make_tokenizer(mcfg) if (root / "tokenizer.safetensors").is_file() else None
    for module, file in ((model, "model.safetensors"), (tokenizer, "tokenizer.safetensors")):
        if module is None:
            continue
        try:
            module.load_state_dict(load_file(root / file))
        except RuntimeError as e:  # shapes or names differ: another version of wam, or an edited config.json
            first = (str(e).strip().splitlines()[1:2] or [str(e)])[0].strip()
            first = first if len(first) < 160 else first[:157] + "..."
            raise CheckpointError(
                f"{root / file} does not match the network its config.json describes "
                f"({first}); it was written by another version of wam"
            ) from None
        module.to(device).eval()
    stats = json.loads((root / "stats.json").read_text()) if (root / "stats.json").is_file() else {}
    train_state = None
    if with_train_state and (root / "train_state" / "state.pt").is_file():
        train_state = torch.load(root / "train_state" / "state.pt", map_location="cpu", weights_only=False)
    return Checkpoint(root, model, tokenizer, config, stats, train_state)
