"""Train and check a WAM on the synthetic dot world (wam.envs.dot), where every mode has a known answer.

    from wam.synthetic import SyntheticSetup, train_synthetic, evaluate_synthetic
    run = train_synthetic(SyntheticSetup(steps=2000))
    print(evaluate_synthetic(run))

The world: a dot moved by 2-D velocity actions on a 12x12 image. A frame is encoded losslessly
(`PixelTokenizer`), so every error measured here is the WAM's own. `evaluate_synthetic` reports, on
held-out episodes:
    inverse  action MSE given the true next frame, beside the MSE of predicting the mean action
    forward  next-frame MSE given the true actions, beside copying the last frame
    policy   action MSE from history alone (the expert's exploration noise is unpredictable, so this is
             bounded below by it), beside the mean action
    video    next-frame MSE without actions, beside copying the last frame
    joint    action and next-frame MSE, both generated together
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from wam.config import LossConfig, ModelConfig
from wam.envs import dot
from wam.episodes import EpisodeTensors, episodes_to_tensors
from wam.modes import MODES, sample
from wam.tokenizer import PixelTokenizer
from wam.train import FitState, TrainConfig, fit, make_state


def synthetic_model_config(**changes) -> ModelConfig:
    """The model used on the dot world: 12x12 frames -> 3x3x48 pixel latents -> 9 tokens a frame; one
    history frame, one future frame and the one action between them: 21 tokens an example.

    Inverse dynamics is learned late and suddenly: for a while the inverse mode's actions ignore the given next
    frame (it is no better than the policy mode), then within a few hundred steps its error falls far below.
    These choices, each measured on variations of this config (seed 0; inverse error as a share of the
    mean-action error after 1500 steps), bring that drop into a two-minute run on 2 CPU cores:
    - width 128 and depth 2: at width 64 and depth 4 the drop came near 5000 steps (68% at 1500);
    - one future frame and a one-step chunk, so 35 tokens at 16x16 instead of 52: 14% at 1500 (with two, the
      drop had not begun);
    - a dot at least 2 pixels wide (`wam.envs.dot.MIN_BLOB_SIGMA`): with 0.9 pixels it had not begun;
    - 12x12 frames: 9 tokens a frame instead of 16, 15% less time a step, the drop no later;
    - MLP ratio 2: about 12% less time a step, the drop no later.
    Patch size 1 keeps each video token (48 values) no wider than the model: with 2x2 patches (192 values a
    token) the video stream did not learn to carry the history frame forward at all. Attention is "full":
    with "prefix" (history tokens blind to the generated ones) the forward-mode error was above copying the
    last frame."""
    base = dict(
        width=128,
        depth=2,
        heads=4,
        mlp_ratio=2.0,
        attention="full",
        image_size=12,
        tokenizer="pixel",
        latent_channels=48,
        tokenizer_downsample=4,
        patch_size=1,
        n_obs_steps=1,
        future_frames=1,
        future_stride=1,
        action_horizon=1,
        action_dim=2,
        state_dim=4,
        n_tasks=1,
    )
    base.update(changes)
    return ModelConfig(**base)


@dataclass(frozen=True)
class SyntheticSetup:
    steps: int = 2000  # the test suite's run: under 2 minutes on 2 CPU cores
    batch_size: int = 32
    lr: float = 2e-3
    train_episodes: int = 70
    val_episodes: int = 10
    episode_steps: int = 30
    expert_noise: float = 0.5  # exploration noise of the expert, so that actions vary given a frame
    seed: int = 0
    model: ModelConfig = field(default_factory=synthetic_model_config)
    # more inverse, forward and video examples than the defaults give: at 2000 steps, with the default
    # p_omit_action (0.15) the video mode was 3% below copying the last frame, with 0.22 7%
    loss: LossConfig = field(
        default_factory=lambda: LossConfig(p_clean_future=0.3, p_clean_action=0.3, p_omit_action=0.22)
    )


@dataclass
class SyntheticRun:
    setup: SyntheticSetup
    state: FitState
    tokenizer: PixelTokenizer
    train: EpisodeTensors
    val: EpisodeTensors
    seconds: float


def _rows(ep: dict) -> dict:
    """Episode arrays -> LeRobot rows: observation i with the action taken at i (the last frame has none)."""
    return {"frames": ep["frames"][:-1], "actions": ep["actions"], "states": ep["states"][:-1], "task_index": 0}


def train_synthetic(setup: SyntheticSetup = SyntheticSetup(), progress: bool = False, on_log=None) -> SyntheticRun:
    t0 = time.perf_counter()
    cfg = setup.model
    eps = dot.collect_arrays(
        setup.train_episodes + setup.val_episodes,
        image_size=cfg.image_size,
        max_episode_steps=setup.episode_steps,
        noise=setup.expert_noise,
        seed=setup.seed,
    )
    tok = PixelTokenizer(cfg.image_channels, cfg.tokenizer_downsample)
    train = episodes_to_tensors([_rows(e) for e in eps[: setup.train_episodes]], tok)
    val = episodes_to_tensors([_rows(e) for e in eps[setup.train_episodes :]], tok)
    tc = TrainConfig(
        steps=setup.steps,
        batch_size=setup.batch_size,
        lr=setup.lr,
        warmup_steps=min(100, setup.steps // 10),
        ema_decay=0.99,
        seed=setup.seed,
        log_every=50,
        val_every=0,
        checkpoint_every=0,
    )
    state = make_state(cfg, tc)
    fit(state, train, tc, setup.loss, progress=progress, on_log=on_log)
    return SyntheticRun(setup, state, tok, train, val, time.perf_counter() - t0)


@torch.no_grad()
def evaluate_synthetic(run: SyntheticRun, *, steps: int = 1, use_ema: bool = True, seed: int = 0) -> dict:
    """Per-mode errors on the held-out episodes, each beside its trivial baseline (see module docstring)."""
    model = run.state.ema if use_ema else run.state.model
    model.eval()
    cfg, val, tok = model.cfg, run.val, run.tokenizer
    ep, step = val.window_index()
    full = step + cfg.future_frames * cfg.future_stride < val.lengths[ep]  # windows without padding
    batch = val.gather(ep[full], step[full], cfg)
    mean_action = run.train.actions.mean(0)
    true_actions = batch["actions"]
    frames = tok.decode(batch["latents"])  # (B, T, C, H, W) in [-1, 1]
    nxt, last = frames[:, cfg.n_obs_steps], frames[:, cfg.n_obs_steps - 1]
    mse = lambda a, b: float((a - b).pow(2).mean())  # noqa: E731
    out: dict = {
        "windows": int(full.sum()),
        "baseline_mean_action_mse": mse(true_actions, mean_action),
        "baseline_copy_last_frame_mse": mse(last, nxt),
    }
    for name in MODES:
        res = sample(model, batch, name, steps=steps, generator=torch.Generator().manual_seed(seed))
        row = {}
        if "actions" in res and MODES[name].actions == "generate":
            row["action_mse"] = mse(res["actions"], true_actions)
        if "latents" in res and MODES[name].future == "generate":
            row["next_frame_mse"] = mse(tok.decode(res["latents"][:, cfg.n_obs_steps : cfg.n_obs_steps + 1])[:, 0], nxt)
        out[name] = row
    out["train_seconds"] = round(run.seconds, 1)
    return out
