"""Data-parallel training: the sharded loss, and two gloo processes under torchrun computing the weights
of one process with the same global batch (resume included)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import random_batch, tiny_config
from safetensors.torch import load_file
from test_model import randomise

from wam import WAM
from wam.cli import main
from wam.collect import collect
from wam.config import LossConfig
from wam.distributed import Dist
from wam.modes import training_loss

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
    "8",
    "--tokenizer-steps",
    "4",
    "--log-every",
    "1",
    "--val-every",
    "0",
    "--checkpoint-every",
    "0",
    "--val-fraction",
    "0.25",
    "--precision",
    "fp32",
    "--lr",
    "3e-3",
    "--warmup-steps",
    "1",
    "--quiet",
]


def test_sharded_losses_give_the_gradient_of_the_whole_batch():
    cfg = tiny_config()
    model = randomise(WAM(cfg), seed=3)
    batch = random_batch(cfg, B=6, seed=1)
    batch["action_is_pad"] = torch.zeros(6, cfg.action_horizon, dtype=torch.bool)
    batch["action_is_pad"][0, -2:] = True  # uneven valid counts across the shards
    lc = LossConfig(p_omit_future=0.3, p_omit_action=0.3)

    def grads(shard=None):
        model.zero_grad()
        loss, _ = training_loss(model, batch, lc, generator=torch.Generator().manual_seed(5), shard=shard)
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole = grads()
    shards = [grads((Dist(rank=r, world=3).rows(6), 3)) for r in range(3)]
    mean = [sum(parts) / 3 for parts in zip(*shards)]  # what DistributedDataParallel's all-reduce computes
    for a, b in zip(whole, mean):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        Dist(rank=0, world=4).rows(6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "dot"
    collect("dot", episodes=8, out=out, workers=1, progress=False)
    return out


def _torchrun(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "wam.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def _weights(run) -> dict:
    ema = load_file(run / "checkpoint" / "model.safetensors")
    raw = torch.load(run / "checkpoint" / "train_state" / "state.pt", weights_only=False)["model"]
    return {**{f"ema.{k}": v for k, v in ema.items()}, **{f"raw.{k}": v for k, v in raw.items()}}


def _assert_same_training(a: dict, b: dict, lr: float = 3e-3) -> None:
    """Equal to float rounding, as Adam sees it: the mean difference is at the level of float noise, and the
    few elements whose gradient is about 0 (where Adam's normalised step turns rounding noise into a step
    of its own) differ by a small part of one learning-rate step. A wrong sharding moves nearly every
    element by about lr per step."""
    assert a.keys() == b.keys()
    diffs = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    assert float(diffs.mean()) < 1e-6, float(diffs.mean())
    assert float(diffs.max()) < 0.1 * lr, float(diffs.max())
    assert float((diffs > 1e-5).float().mean()) < 0.01


def test_two_processes_train_the_weights_of_one_and_resume(dataset, tmp_path):
    """DDP and FSDP over 2 gloo processes against 1 process: after 3 steps, and after each resumes to 5."""
    base = ["train", "--dataset", str(dataset), *TINY]
    one, ddp, fsdp = tmp_path / "one", tmp_path / "ddp", tmp_path / "fsdp"
    assert main([*base, "--steps", "3", "--out", str(one)]) == 0
    _torchrun([*base, "--steps", "3", "--out", str(ddp)])
    _torchrun([*base, "--steps", "3", "--fsdp", "--out", str(fsdp)])
    for run in (ddp, fsdp):
        _assert_same_training(_weights(one), _weights(run))
    # rank 0 alone wrote the log: one record per step, the global batch's loss
    logs = [[json.loads(x) for x in (r / "log.jsonl").read_text().splitlines() if '"train"' in x] for r in (one, ddp)]
    assert [r["step"] for r in logs[1]] == [1, 2, 3]
    for x, y in zip(logs[0], logs[1]):
        assert abs(x["loss"] - y["loss"]) < 1e-4 * max(1.0, abs(x["loss"]))
    # resuming in distributed mode continues exactly like the single process (the FSDP run's optimizer state
    # was gathered from the shards into one file, and is sharded again on resume)
    resume = ["train", "--dataset", str(dataset), "--resume", "--steps", "5", "--quiet"]
    assert main([*resume, "--out", str(one)]) == 0
    # (this one through `wam train --nproc 2`, which launches torchrun itself)
    assert main([*resume, "--out", str(ddp), "--nproc", "2"]) == 0
    _torchrun([*resume, "--out", str(fsdp)])
    assert json.loads((fsdp / "run.json").read_text())["train"]["fsdp"] is True
    for run in (ddp, fsdp):
        _assert_same_training(_weights(one), _weights(run))
