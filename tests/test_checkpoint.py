"""Checkpoints round-trip bit-exactly and are written atomically."""

import json

import pytest
import torch
from conftest import random_batch, tiny_config
from test_model import randomise

from wam import WAM, load_checkpoint, save_checkpoint
from wam.tokenizer import ConvAutoencoder


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


def test_a_writer_killed_between_its_renames_loses_nothing(tmp_path):
    """atomic_dir_replace moves the old directory aside, then the new one in: killed in between, the old one
    is read in place by load_checkpoint and put back by the run that resumes (recover_dir)."""
    from wam.atomic import recover_dir

    cfg = tiny_config()
    save_checkpoint(tmp_path / "ck", WAM(cfg), stats={"v": 1})
    (tmp_path / "ck").rename(tmp_path / "ck.old-1234abcd")  # the state right after the first rename
    (tmp_path / ".ck.tmp-00000000").mkdir()  # a half-built new checkpoint
    assert load_checkpoint(tmp_path / "ck").stats == {"v": 1}
    assert recover_dir(tmp_path / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert load_checkpoint(tmp_path / "ck").stats == {"v": 1}


def test_loading_a_checkpoint_does_not_import_the_training_code(tmp_path):
    """Core (checkpoint, model, tokenizer, adapters) knows nothing of training: loading a checkpoint, bottleneck
    adapters included, and acting with it import neither wam.train nor wam.finetune."""
    import subprocess
    import sys

    from wam.adapters import adapter_spec, add_adapters

    cfg = tiny_config()
    model = WAM(cfg)
    add_adapters(model, "adapter", rank=2)
    save_checkpoint(tmp_path / "ck", model, ConvAutoencoder.from_config(cfg), config={"adapter": adapter_spec(model)})
    code = (
        f"import sys; from wam.checkpoint import load_checkpoint; ck = load_checkpoint({str(tmp_path / 'ck')!r}); "
        f"from wam.policy import WAMPolicy; import wam.modes, wam.inference; "
        f"bad = sorted(m for m in sys.modules if m in ('wam.train', 'wam.finetune', 'wam.distributed')); "
        f"assert not bad, bad; assert ck.config['adapter']['kind'] == 'adapter'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_package_has_no_import_cycle():
    """No module of wam imports (at the top or inside a function) a module that imports it back, directly or
    through others: dependencies point downward (docs/design.md, Layers). Before wam.finetune was split from
    wam.adapters: checkpoint -> adapters -> train -> checkpoint."""
    import ast
    from pathlib import Path

    import wam

    root = Path(wam.__file__).parent
    mods = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            # (a package's own __init__ is no dependency of its modules: it re-exports them)
            deps |= {n for n in names if n in mods and n != name and not name.startswith(n + ".")}
        graph[name] = deps

    def reaches(start, goal, seen):
        for d in graph[start]:
            if d == goal:
                return [d]
            if d not in seen:
                seen.add(d)
                if (path := reaches(d, goal, seen)) is not None:
                    return [d, *path]
        return None

    cycles = [[m, *p] for m in sorted(graph) if (p := reaches(m, m, set())) is not None]
    assert not cycles, f"import cycles: {cycles[:3]}"
