"""A named recipe runs its stages from nothing, and an interrupted run continues to the same weights."""

import json
from pathlib import Path

import pytest

from wam.checkpoint import load_checkpoint
from wam.errors import ArgumentError
from wam.recipe import RECIPES, get_recipe, progress_of, run_recipe, status

pytestmark = pytest.mark.slow


def _weights(out: Path) -> dict[str, bytes]:
    ckpt = out / "train" / "checkpoint"
    return {n: (ckpt / n).read_bytes() for n in ("model.safetensors", "tokenizer.safetensors")}


def test_interrupted_four_times_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    assert run_recipe("dot-tiny", whole, workers=1, progress=False) == {"stage": "done", "step": 24}

    import wam.train as train_mod
    from wam.data.writer import LeRobotWriter

    parts = tmp_path / "parts"
    # 1: stopped (Ctrl-C) during the collection, right after its first checkpoint (3 kept episodes)
    real_checkpoint = LeRobotWriter.checkpoint

    def stop_after_checkpoint(self, extra=None):
        real_checkpoint(self, extra)
        raise KeyboardInterrupt

    monkeypatch.setattr(LeRobotWriter, "checkpoint", stop_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_recipe("dot-tiny", parts, workers=1, progress=False)
    monkeypatch.undo()
    assert progress_of(parts) == {"stage": "collect", "step": 0}
    # 2: stopped in the tokenizer stage, at its step 5 (its state was saved at step 4)
    from wam.tokenizer import ConvAutoencoder

    real_loss, tok_calls = ConvAutoencoder.loss, {"n": 0}

    def dies_at_tokenizer_step_5(self, *a, **k):
        tok_calls["n"] += 1
        if tok_calls["n"] == 5:
            raise KeyboardInterrupt
        return real_loss(self, *a, **k)

    monkeypatch.setattr(ConvAutoencoder, "loss", dies_at_tokenizer_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_recipe("dot-tiny", parts, workers=1, progress=False)
    monkeypatch.undo()
    assert progress_of(parts) == {"stage": "train", "step": 0, "tokenizer_step": 4}
    import torch

    assert torch.load(parts / "train" / "tokenizer_stage.pt", weights_only=False)["step"] == 4
    # 3: a sitting that ends after WAM step 10 (between two checkpoints, every 4 steps)
    assert run_recipe("dot-tiny", parts, until_step=10, workers=1, progress=False) == {"stage": "train", "step": 10}
    assert not (parts / "train" / "tokenizer_stage.pt").exists()  # the step-0 checkpoint holds the tokenizer
    # 4: stopped in the middle of step 15; the last checkpoint is step 12
    real_update, calls = train_mod.ema_update, {"n": 0}

    def dies_at_step_15(ema, model, decay):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_update(ema, model, decay)

    monkeypatch.setattr(train_mod, "ema_update", dies_at_step_15)
    with pytest.raises(KeyboardInterrupt):
        run_recipe("dot-tiny", parts, workers=1, progress=False)
    monkeypatch.undo()
    assert progress_of(parts) == {"stage": "train", "step": 12}
    # and the last sitting runs to the end
    assert run_recipe("dot-tiny", parts, workers=1, progress=False) == {"stage": "done", "step": 24}
    assert _weights(parts) == _weights(whole)

    sittings = [json.loads(line) for line in (parts / "sittings.jsonl").read_text().splitlines()]
    assert [(s["event"], s["stage"], s["step"], s.get("interrupted")) for s in sittings] == [
        ("start", "collect", 0, None),
        ("end", "collect", 0, "KeyboardInterrupt"),
        ("start", "collect", 0, None),
        ("end", "train", 0, "KeyboardInterrupt"),
        ("start", "train", 0, None),
        ("end", "train", 10, None),
        ("start", "train", 10, None),
        ("end", "train", 12, "KeyboardInterrupt"),
        ("start", "train", 12, None),
        ("end", "done", 24, None),
    ]
    # the sitting stopped in the tokenizer stage says how far it got; the next one starts from there
    assert sittings[3].get("tokenizer_step") == 4 and sittings[4].get("tokenizer_step") == 4
    # `wam recipe status` pairs each start with its end
    from wam.cli import main

    st = status(parts)
    assert (st["recipe"], st["steps"], st["progress"]) == ("dot-tiny", 24, {"stage": "done", "step": 24})
    assert [(s["start"]["step"], s["end"]["step"]) for s in st["sittings"]] == [
        (0, 0),
        (0, 0),
        (0, 10),
        (10, 12),
        (12, 24),
    ]
    assert st["pace"] is None  # done: nothing left to estimate
    assert main(["recipe", "status", str(parts)]) == 0
    printed = capsys.readouterr().out
    assert "done; last checkpoint at WAM step 24 of 24" in printed and "sitting 5:" in printed
    assert "collect 0 -> train 0 (tokenizer 4), stopped by KeyboardInterrupt" in printed
    # run again when done: nothing to do
    assert run_recipe("dot-tiny", parts, workers=1, progress=False) == {"stage": "done", "step": 24}
    assert _weights(parts) == _weights(whole)


def test_a_run_continues_only_under_its_own_recipe(tmp_path):
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)  # the collection has started
    changed = {**get_recipe("dot-tiny").to_dict(), "collect": {"env": "dot", "episodes": 99}}
    (out / "recipe.json").write_text(json.dumps(changed))
    with pytest.raises(ArgumentError, match="another version of recipe 'dot-tiny'.*collect"):
        run_recipe("dot-tiny", out, progress=False)
    with pytest.raises(ArgumentError, match="unknown recipe 'mt50'; choose one of: mt50-v2"):
        get_recipe("mt50")
    with pytest.raises(ArgumentError, match="until_step"):
        run_recipe("dot-tiny", tmp_path / "other", until_step=0, progress=False)


def test_the_reference_recipe_is_complete():
    from wam.config import PRESETS, LossConfig, replace
    from wam.train import TrainConfig

    r = RECIPES["mt50-v2"]
    assert r.collect["protocol"] == "lerobot" and r.collect["tasks"] == "mt50"
    cfg = replace(PRESETS[r.preset], **r.model)  # valid settings, 16 tokens per frame at 128 px
    assert cfg.image_size == 128 and cfg.tokens_per_frame == 16
    TrainConfig(**r.train), LossConfig(**r.loss)


def test_the_command_lists_shows_and_runs_a_recipe(tmp_path, capsys):
    from wam.cli import main

    assert main(["recipe", "list"]) == 0 and "mt50-v2" in capsys.readouterr().out
    assert main(["recipe", "show", "dot-tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["steps"] == 24
    out = tmp_path / "run"
    assert main(["recipe", "run", "dot-tiny", "--out", str(out), "--until-step", "4", "--workers", "1", "--quiet"]) == 0
    assert "stopped in stage train at WAM step 4" in capsys.readouterr().out
    assert main(["recipe", "run", "nope", "--out", str(out)]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err

    # shipping: only a finished run, without the optimizer state, the weights byte for byte, the recipe recorded
    shipped = tmp_path / "shipped"
    assert main(["recipe", "ship", str(out), "--to", str(shipped)]) == 2
    assert "is at WAM step 4 of 24: finish it first with `wam recipe run dot-tiny" in capsys.readouterr().err
    assert main(["recipe", "run", "dot-tiny", "--out", str(out), "--quiet"]) == 0
    assert main(["recipe", "ship", str(out), "--to", str(shipped)]) == 0
    files = ["config.json", "log.jsonl", "model.safetensors", "stats.json", "tokenizer.safetensors"]
    assert sorted(p.name for p in shipped.iterdir()) == files
    ckpt, run = load_checkpoint(shipped), load_checkpoint(out / "train" / "checkpoint")
    assert ckpt.model_hash == run.model_hash and ckpt.train_state is None
    recipe = ckpt.config["recipe"]
    assert recipe["name"] == "dot-tiny" and recipe["settings"] == get_recipe("dot-tiny").to_dict()
    assert len(recipe["sittings"]) == 2 and all(s["end"] for s in recipe["sittings"])
    assert main(["recipe", "ship", str(out), "--to", str(shipped)]) == 2  # nothing shared is written over
    assert "already exists" in capsys.readouterr().err


def test_training_settings_may_change_until_training_starts(tmp_path, monkeypatch):
    import dataclasses

    import wam.recipe as recipe_mod

    out = tmp_path / "run"
    base = get_recipe("dot-tiny")
    monkeypatch.setattr(recipe_mod, "_train_stage", lambda *a, **k: None)  # collection only
    run_recipe(base, out, workers=1, progress=False)
    monkeypatch.undo()
    longer = dataclasses.replace(base, train={**base.train, "steps": 8})
    assert run_recipe(longer, out, workers=1, progress=False) == {"stage": "done", "step": 8}
    assert json.loads((out / "recipe.json").read_text())["train"]["steps"] == 8
    with pytest.raises(ArgumentError, match="differs in: train"):
        run_recipe(base, out, progress=False)  # training has started: the recipe is fixed now


def test_a_twin_recipe_trains_on_another_runs_data_and_refuses_data_made_otherwise(tmp_path):
    import dataclasses

    from wam.collect import collect
    from wam.recipe import POLICY_ONLY_LOSS

    base = get_recipe("dot-tiny")
    collect(**base.collect, out=tmp_path / "data", workers=1, progress=False)
    twin = dataclasses.replace(base, name="dot-tiny-policy", loss=POLICY_ONLY_LOSS)
    out = tmp_path / "twin"
    assert run_recipe(twin, out, data=tmp_path / "data", progress=False) == {"stage": "done", "step": 24}
    assert (out / "data").is_symlink() and (out / "data").resolve() == (tmp_path / "data").resolve()
    first = json.loads((out / "sittings.jsonl").read_text().splitlines()[0])
    assert first["stage"] == "train" and first["data"] == str((tmp_path / "data").resolve())  # nothing collected
    import shutil

    shutil.copytree(tmp_path / "data", tmp_path / "copy")  # the same dataset, somewhere else
    with pytest.raises(ArgumentError, match="already has its data"):
        run_recipe(twin, out, data=tmp_path / "copy", progress=False)

    collect(**{**base.collect, "episodes": 4}, out=tmp_path / "fewer", workers=1, progress=False)
    with pytest.raises(ArgumentError, match=r"not collected with recipe 'dot-tiny-policy'.*differs in: episodes"):
        run_recipe(twin, tmp_path / "x", data=tmp_path / "fewer", progress=False)
    with pytest.raises(ArgumentError, match="finished dataset made by `wam collect`"):
        run_recipe(twin, tmp_path / "y", data=tmp_path / "twin" / "train", progress=False)
    assert RECIPES["mt50-v2-policy"].collect == RECIPES["mt50-v2"].collect  # the v2 twin can share v2's data
    assert RECIPES["mt50-v2-policy"].train == RECIPES["mt50-v2"].train


def test_sigterm_ends_a_sitting_as_ctrl_c_does(tmp_path, monkeypatch):
    """`kill` (SIGTERM, what a supervisor or a scheduler sends) ends `wam recipe run` cleanly: exit 130 and an
    end line in sittings.jsonl, as Ctrl-C does."""
    import os
    import signal
    import time

    import wam.recipe as recipe_mod
    from wam.cli import main

    def killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives first
        raise AssertionError("SIGTERM did not stop the sitting")

    monkeypatch.setattr(recipe_mod, "_collect_stage", killed)
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["recipe", "run", "dot-tiny", "--out", str(tmp_path / "run"), "--quiet"]) == 130
    finally:
        signal.signal(signal.SIGTERM, before)
    lines = [json.loads(line) for line in (tmp_path / "run" / "sittings.jsonl").read_text().splitlines()]
    assert [(s["event"], s.get("interrupted")) for s in lines] == [("start", None), ("end", "KeyboardInterrupt")]


def test_the_pace_of_the_last_sitting_that_continued_the_wam_stage_estimates_the_time_left():
    from wam.recipe import pace

    def sitting(t0, t1, s0, s1, **start):
        return {
            "start": {"time": f"2026-01-01T{t0}:00+0000", "stage": "train", "step": s0, **start},
            "end": None if t1 is None else {"time": f"2026-01-01T{t1}:00+0000", "stage": "train", "step": s1},
        }

    first = sitting("10:00", "12:00", 0, 10_000, tokenizer_step=500)  # the tokenizer stage's time is in it
    assert pace([first], 10_000, 100_000) is None
    second = sitting("13:00", "14:30", 10_000, 28_000)  # 12,000 steps an hour
    running = sitting("15:00", None, 28_000, None)
    assert pace([first, second, running], 28_000, 100_000) == {"sitting": 2, "steps_per_hour": 12_000, "hours_left": 6}
