"""Adapters: a fresh one changes nothing, training moves only the adapters, LoRA merges exactly, saved adapters
round-trip and refuse another base, and `wam finetune` gives checkpoints every verb can act with."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_config
from safetensors.torch import load_file
from test_model import randomise

import wam.train as train_mod
from wam import modes
from wam.adapters import (
    BottleneckAdapter,
    LoRALinear,
    adapter_spec,
    add_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
    trainable_parameters,
)
from wam.checkpoint import load_checkpoint, save_checkpoint
from wam.cli import main
from wam.model import WAM
from wam.train import TrainConfig, make_optimizer


def outputs(model, cfg, seed=0):
    b = random_batch(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        return model(
            b["latents"],
            torch.rand(2, cfg.frames, generator=g),
            b["actions"],
            torch.rand(2, generator=g),
            b["task"],
            b["state"],
        )


def base_model(seed=0):
    return randomise(WAM(tiny_config()), seed=seed).eval()  # random weights: an adaLN-zero init outputs zeros


def train_steps(model, cfg, steps=3):
    opt = make_optimizer(model, TrainConfig(lr=1e-2, warmup_steps=1))
    model.train()
    for s in range(steps):
        b = random_batch(cfg, B=4, seed=10 + s)
        loss, _ = modes.training_loss(model, b, generator=torch.Generator().manual_seed(s))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), opt


@pytest.mark.parametrize("kind", ["lora", "adapter"])
def test_fresh_adapters_leave_outputs_and_base_keys_unchanged(kind):
    model = base_model()
    cfg = model.cfg
    before, keys = outputs(model, cfg), dict(model.state_dict())
    torch.manual_seed(0)
    add_adapters(model, kind, rank=4)
    after = outputs(model, cfg)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in keys.items())  # the base's keys, still its own tensors
    wrapper = LoRALinear if kind == "lora" else BottleneckAdapter
    assert sum(isinstance(m, wrapper) for m in model.modules()) == 2 * 3 * (4 if kind == "lora" else 1)


@pytest.mark.parametrize("kind", ["lora", "adapter"])
def test_training_moves_the_adapters_and_never_the_base(kind):
    model = base_model()
    cfg = model.cfg
    before = outputs(model, cfg)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    names = add_adapters(model, kind, rank=4)
    _, opt = train_steps(model, cfg)
    sd = model.state_dict()
    for k, v in base.items():
        if k != "task_table.weight":  # trained too: a new task needs its own row
            assert torch.equal(sd[k], v), k
    assert not torch.equal(sd["task_table.weight"], base["task_table.weight"])
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for n, p in model.named_parameters() if n in names}  # no state for the frozen base
    assert (outputs(model, cfg)[1] - before[1]).abs().max() > 1e-4


def test_merged_lora_gives_the_unmerged_outputs_and_the_base_keys():
    model = base_model()
    cfg = model.cfg
    torch.manual_seed(0)
    add_adapters(model, "lora", rank=4, alpha=8)
    train_steps(model, cfg)
    unmerged = outputs(model, cfg)
    merged = merge_adapters(copy.deepcopy(model))
    assert adapter_spec(merged) is None and not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert list(merged.state_dict()) == list(WAM(cfg).state_dict())
    for a, b in zip(unmerged, outputs(merged, cfg)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    plain = WAM(cfg).eval()
    plain.load_state_dict(merged.state_dict())  # a normal checkpoint's network takes the merged weights
    for a, b in zip(unmerged, outputs(plain, cfg)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bottleneck_adapters_refuse_to_merge_and_live_on_in_a_checkpoint(tmp_path):
    model = base_model()
    cfg = model.cfg
    torch.manual_seed(0)
    add_adapters(model, "adapter", rank=4)
    train_steps(model, cfg)
    with pytest.raises(ValueError, match="nonlinear"):
        merge_adapters(model)
    save_checkpoint(tmp_path / "ck", model, config={"adapter": adapter_spec(model)})
    loaded = load_checkpoint(tmp_path / "ck")
    assert adapter_spec(loaded.model) == adapter_spec(model)
    for a, b in zip(outputs(model, cfg), outputs(loaded.model, cfg)):
        assert torch.equal(a, b)


def test_saved_adapter_round_trips_exactly_and_is_small(tmp_path):
    model = base_model()
    cfg = model.cfg
    save_checkpoint(tmp_path / "base", model)
    torch.manual_seed(0)
    add_adapters(model, "lora", rank=2)
    train_steps(model, cfg)
    save_adapter(tmp_path / "ad", model, {"base_checkpoint": str(tmp_path / "base")})
    info = json.loads((tmp_path / "ad" / "adapter.json").read_text())
    assert info["kind"] == "lora" and info["rank"] == 2 and info["trainable_parameters"] == trainable_parameters(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad", "base"]  # no temporaries left
    size = (tmp_path / "ad" / "adapter.safetensors").stat().st_size
    assert size < (tmp_path / "base" / "model.safetensors").stat().st_size / 10

    fresh = base_model()
    assert load_adapter(fresh, tmp_path / "ad")["base_checkpoint"] == str(tmp_path / "base")
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for x, y in zip(outputs(model, cfg), outputs(fresh, cfg)):
        assert torch.equal(x, y)


def test_an_adapter_refuses_another_base(tmp_path):
    model = base_model()
    torch.manual_seed(0)
    add_adapters(model, "lora", rank=2)
    save_adapter(tmp_path / "ad", model, {"base_checkpoint": "runs/a/checkpoint"})
    other = base_model(seed=1)
    keys = list(other.state_dict())
    with pytest.raises(ValueError, match="other base weights.*runs/a/checkpoint"):
        load_adapter(other, tmp_path / "ad")
    assert adapter_spec(other) is None and list(other.state_dict()) == keys  # left as it was
    with pytest.raises(FileNotFoundError, match="not a wam adapter"):
        load_adapter(other, tmp_path)


def test_trainable_parameters_counted_by_hand():
    D, hidden, depth, n_tasks = 32, 128, 2, 4  # tiny_config, mlp_ratio 4
    r = 4
    lora_per_layer = r * ((D + 3 * D) + (D + D) + (D + hidden) + (hidden + D))  # A (r, in) + B (out, r)
    model = base_model()
    add_adapters(model, "lora", rank=r)
    assert trainable_parameters(model) == depth * 3 * lora_per_layer + n_tasks * D
    model = base_model()
    add_adapters(model, "adapter", rank=r, streams=("action",), train_task_embedding=False)
    assert trainable_parameters(model) == depth * ((D * r + r) + (r * D + D))  # down, up (with biases)
    with pytest.raises(ValueError, match="already carries"):
        add_adapters(model, "lora")
    with pytest.raises(ValueError, match="unknown adapter kind"):
        add_adapters(base_model(), "prefix")


# ---- wam finetune end to end -----------------------------------------------------------------------

NEW_TASK = "move the red dot to the green goal, slowly"
TINY = [
    "--model",
    "width=32",
    "--model",
    "depth=2",
    "--model",
    "image_size=32",
    "--model",
    "tokenizer_width=8",
    "--model",
    "future_stride=1",
    "--model",
    "action_horizon=4",
    "--batch-size",
    "4",
    "--tokenizer-steps",
    "2",
    "--val-fraction",
    "0",
    "--quiet",
]
FT = [
    "--steps",
    "6",
    "--batch-size",
    "4",
    "--warmup-steps",
    "1",
    "--log-every",
    "2",
    "--checkpoint-every",
    "2",
    "--val-every",
    "3",
    "--val-fraction",
    "0.25",
    "--rank",
    "2",
    "--quiet",
]


def write_dot_dataset(path, tasks, action_pad=0):
    """Dot-world expert episodes, episode i labelled tasks[i] (the scripted expert does not read it)."""
    from wam.collect import run_episode
    from wam.data.writer import LeRobotWriter

    with LeRobotWriter(path, fps=10) as w:
        for i, task in enumerate(tasks):
            data = dict(run_episode("dot", "reach-goal", seed=i, image_size=32, max_steps=12)["data"])
            if action_pad:
                data["action"] = np.pad(data["action"], ((0, 0), (0, action_pad)))
            w.add_episode(data, task=task)
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from wam.envs.dot import TASKS

    root = tmp_path_factory.mktemp("ft")
    data = write_dot_dataset(root / "base-data", [TASKS["reach-goal"]] * 3)
    assert main(["train", "--dataset", str(data), "--out", str(root / "base"), "--steps", "2", *TINY]) == 0
    new = write_dot_dataset(root / "new-data", [TASKS["reach-goal"], NEW_TASK] * 2)
    return root, root / "base" / "checkpoint", new


@pytest.fixture(scope="module")
def lora_run(base_run):
    root, base, new = base_run
    out = root / "lora"
    assert (
        main(
            ["finetune", "--checkpoint", str(base), "--dataset", str(new), "--out", str(out), "--adapter", "lora", *FT]
        )
        == 0
    )
    return out


def act(checkpoint_dir, task):
    from wam.envs.dot import make_env
    from wam.policy import WAMPolicy

    policy = WAMPolicy.from_checkpoint(checkpoint_dir, steps=2)
    env = make_env(image_size=32)
    obs, _ = env.reset(seed=0)
    return policy.select_action({**obs, "task": task})


def test_finetune_lora_writes_adapter_and_a_merged_checkpoint_that_acts(base_run, lora_run, capsys):
    root, base, new = base_run
    from wam.envs.dot import TASKS

    out = lora_run
    for name in (
        "adapter/adapter.safetensors",
        "adapter/adapter.json",
        "checkpoint/model.safetensors",
        "checkpoint/tokenizer.safetensors",
        "log.jsonl",
        "finetune.json",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["tasks"] == [TASKS["reach-goal"], NEW_TASK] and summary["new_tasks"] == [NEW_TASK]
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"] / 5 and summary["steps"] == 6
    assert summary["wall_time_s"] > 0
    ck = load_checkpoint(out / "checkpoint")
    assert "adapter" not in ck.config and ck.config["run"]["tasks"] == summary["tasks"]
    assert list(ck.model.state_dict()) == list(WAM(ck.model.cfg).state_dict())  # plain base architecture
    base_ck = load_checkpoint(base)
    tok_a, tok_b = base_ck.tokenizer.state_dict(), ck.tokenizer.state_dict()
    assert all(torch.equal(tok_a[k], tok_b[k]) for k in tok_a)  # the tokenizer stays the base's
    # the base plus the saved adapter, merged, is the saved checkpoint
    load_adapter(base_ck.model, out / "adapter")
    merged = merge_adapters(base_ck.model).state_dict()
    for k, v in ck.model.state_dict().items():
        torch.testing.assert_close(merged[k], v, rtol=0, atol=1e-6)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "val"}
    for task in (NEW_TASK, TASKS["reach-goal"]):
        a = act(out / "checkpoint", task)
        assert a.shape == (2,) and np.isfinite(a).all()


@pytest.mark.parametrize("kind", ["adapter", "full"])
def test_finetune_bottleneck_and_full_give_checkpoints_that_act(base_run, tmp_path, kind, capsys):
    root, base, new = base_run
    out = tmp_path / kind
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(base),
                "--dataset",
                str(new),
                "--out",
                str(out),
                "--adapter",
                kind,
                *FT,
                "--steps",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "trainable parameters" in printed and "checkpoint:" in printed
    ck = load_checkpoint(out / "checkpoint")
    summary = json.loads((out / "finetune.json").read_text())
    if kind == "adapter":
        assert ck.config["adapter"]["kind"] == "adapter" and (out / "adapter" / "adapter.json").is_file()
        assert any(isinstance(m, BottleneckAdapter) for m in ck.model.modules())
    else:
        assert not (out / "adapter").exists() and summary["trainable_parameters"] == summary["total_parameters"]
    a = act(out / "checkpoint", NEW_TASK)
    assert a.shape == (2,) and np.isfinite(a).all()


def test_interrupted_finetune_resumes_to_the_uninterrupted_weights(base_run, lora_run, tmp_path, monkeypatch):
    root, base, new = base_run
    out = tmp_path / "killed"
    real_update = train_mod.ema_update
    calls = {"n": 0}

    def dies_at_step_4(ema, model, decay):  # after the step-2 checkpoint
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        real_update(ema, model, decay)

    monkeypatch.setattr(train_mod, "ema_update", dies_at_step_4)
    args = ["finetune", "--checkpoint", str(base), "--dataset", str(new), "--out", str(out), "--adapter", "lora", *FT]
    assert main(args) == 130
    assert main(args) == 2  # an existing fine-tune is not silently replaced
    monkeypatch.setattr(train_mod, "ema_update", real_update)
    assert main(["finetune", "--out", str(out), "--resume", "--quiet"]) == 0
    for name in ("adapter/adapter.safetensors", "checkpoint/model.safetensors"):
        a, b = load_file(lora_run / name), load_file(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_finetune_refuses_bad_input_in_one_line(base_run, tmp_path, capsys):
    root, base, new = base_run
    cases = [
        (["--checkpoint", str(tmp_path / "nope"), "--dataset", str(new)], "not a wam checkpoint"),
        (["--checkpoint", str(base), "--dataset", str(new), "--adapter", "prefix"], "unknown --adapter"),
        (
            ["--checkpoint", str(base), "--dataset", str(write_dot_dataset(tmp_path / "wide", ["x"], action_pad=1))],
            "action/state sizes (3/4) do not match",
        ),
        (["--checkpoint", str(base), "--dataset", str(tmp_path / "missing")], "cannot read the dataset"),
    ]
    for args, message in cases:
        assert main(["finetune", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
