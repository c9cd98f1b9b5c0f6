"""Checkpoints round-trip bit-exactly and are written atomically."""

import json

import pytest
import torch

from wam import WAM, load_checkpoint, save_checkpoint
from wam.tokenizer import ConvAutoencoder

from conftest import random_batch, tiny_config
from test_model import randomise


def test_save_load_is_bit_exact(tmp_path):
    cfg = tiny_config()
    model = randomise(WAM(cfg))
    tok = randomise(ConvAutoencoder.from_config(cfg), seed=1)
    stats = {"action": {"min": [-1.0, -1.0], "max": [1.0, 1.0]}}
    save_checkpoint(tmp_path / "ck", model, tok, stats=stats, config={"note": "x"})
    ck = load_checkpoint(tmp_path / "ck")
    for (k, a), (k2, b) in zip(model.state_dict().items(), ck.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    for a, b in zip(tok.state_dict().values(), ck.tokenizer.state_dict().values()):
        assert torch.equal(a, b)
    assert ck.stats == stats and ck.config["note"] == "x" and ck.model.cfg == cfg
    b = random_batch(cfg)
    t = torch.rand(2, cfg.frames)
    t_act = torch.rand(2)
    out1 = model(b["latents"], t, b["actions"], t_act, b["task"], b["state"])
    out2 = ck.model(b["latents"], t, b["actions"], t_act, b["task"], b["state"])
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    cfg = tiny_config()
    save_checkpoint(tmp_path / "ck", WAM(cfg), stats={"v": 1})
    save_checkpoint(tmp_path / "ck", WAM(cfg), stats={"v": 2})
    assert json.loads((tmp_path / "ck" / "stats.json").read_text()) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config()
    save_checkpoint(tmp_path / "ck", WAM(cfg), stats={"v": 1})
    import wam.checkpoint as ckm

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckm, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", WAM(cfg), stats={"v": 2})
    assert json.loads((tmp_path / "ck" / "stats.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_loading_a_non_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a wam checkpoint"):
        load_checkpoint(tmp_path)
