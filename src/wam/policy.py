"""Closed-loop use of a trained WAM, with LeRobot's policy API.

    from wam.policy import WAMPolicy
    policy = WAMPolicy.from_checkpoint("runs/mt10/checkpoint", mode="policy", n_action_steps=4)
    policy.reset()
    action = policy.select_action(obs)   # obs: LeRobot keys, one (unbatched) or a batch of observations

Timing, for n_obs_steps = 2, action_horizon = 8, n_action_steps = 4 (`o_t` the observation at control
step t, `a_t` the action executed at t; a chunk predicted from o_{t-1}, o_t starts at a_t):

    control step t          0       1    2    3    4       5    6    7    8    ...
    observations used       o0,o0   -    -    -    o3,o4   -    -    -    o7,o8
    chunk predicted         a0..a7  -    -    -    a4..a11 -    -    -    a8..a15
    action executed         a0      a1   a2   a3   a4      a5   a6   a7   a8

Every call to `select_action` pushes the observation into the history queue (n_obs_steps deep; on
the first call it is filled with copies of the first observation). When the action queue is empty a
new chunk of action_horizon actions is predicted and its first n_action_steps are queued; the rest
is discarded (receding horizon). `predict_action_chunk` always predicts a fresh chunk.

Modes that act:
    policy   actions from the history alone (future frames left out: the fastest)
    joint    future frames and actions generated together; the actions are used
    inverse  the model first predicts the future frames (`video` mode), then infers the actions that
             lead there (`inverse` mode given its own frames): plan in pixels, then act
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from wam.modes import sample

ACTING_MODES = ("policy", "joint", "inverse")


class WAMPolicy:
    """A WAM checkpoint as a closed-loop policy (see the module docstring for the timing)."""

    def __init__(self, checkpoint, *, mode: str = "policy", n_action_steps: int | None = None, steps: int = 10,
                 solver: str = "euler", schedule: str = "linear", cfg_scale: float = 1.0, seed: int = 0,
                 device: str = "cpu"):
        from wam.data import Normalizer

        if mode not in ACTING_MODES:
            raise ValueError(f"mode {mode!r} does not act; choose one of: {', '.join(ACTING_MODES)}")
        self.checkpoint = checkpoint
        self.model, self.tokenizer = checkpoint.model.to(device).eval(), checkpoint.tokenizer.to(device).eval()
        self.cfg = self.model.cfg
        self.normalizer = Normalizer.from_dict(checkpoint.stats)
        run = checkpoint.config.get("run", {})
        self.cameras = [f"observation.images.{c}" for c in run.get("cameras", [])]
        self.tasks: list[str] = list(run.get("tasks", []))
        self.fps = run.get("fps")
        self.n_action_steps = n_action_steps or max(1, self.cfg.action_horizon // 2)
        if not 1 <= self.n_action_steps <= self.cfg.action_horizon:
            raise ValueError(f"n_action_steps must be in 1..{self.cfg.action_horizon} (the action horizon), "
                             f"got {self.n_action_steps}")
        self.mode, self.steps, self.solver, self.schedule = mode, steps, solver, schedule
        self.cfg_scale, self.seed, self.device = cfg_scale, seed, torch.device(device)
        # how to rebuild this policy in another process: (checkpoint path, keyword arguments)
        self.spec = (str(checkpoint.path), tuple(sorted(dict(
            mode=mode, n_action_steps=self.n_action_steps, steps=steps, solver=solver, schedule=schedule,
            cfg_scale=cfg_scale, seed=seed, device=device).items())))
        self.reset()

    @classmethod
    def from_checkpoint(cls, path, **kwargs) -> WAMPolicy:
        from wam.checkpoint import load_checkpoint

        return cls(load_checkpoint(path), **kwargs)

    @property
    def settings(self) -> dict:
        """Everything about the policy that changes its actions."""
        return {"mode": self.mode, "n_action_steps": self.n_action_steps, "action_horizon": self.cfg.action_horizon,
                "n_obs_steps": self.cfg.n_obs_steps, "sampling_steps": self.steps, "solver": self.solver,
                "schedule": self.schedule, "cfg_scale": self.cfg_scale, "seed": self.seed,
                "model_hash": self.checkpoint.model_hash}

    def reset(self) -> None:
        """Forget the observation history and queued actions (call at the start of every episode)."""
        self._latents: deque[list] = deque(maxlen=self.cfg.n_obs_steps)  # [frames, latents or None]
        self._states: deque[torch.Tensor] = deque(maxlen=self.cfg.n_obs_steps)
        self._actions: deque[np.ndarray] = deque()
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.last_plan: dict[str, torch.Tensor] | None = None  # the latest chunk's predicted frames, if any

    # -- observations

    def task_index(self, task: Any, batch: int) -> torch.Tensor:
        """Task strings (or indices) -> (B,) indices into the model's task table."""
        items = [task] * batch if isinstance(task, (str, int, np.integer)) else list(task)
        out = []
        for t in items:
            if isinstance(t, (int, np.integer)):
                out.append(int(t))
            elif t in self.tasks:
                out.append(self.tasks.index(t))
            else:
                raise ValueError(f"task {t!r} was not in the training data; known tasks: {self.tasks}")
        return torch.tensor(out, device=self.device)

    def _push(self, obs: dict) -> tuple[torch.Tensor, bool]:
        """Push one observation into the history; returns (task indices (B,), whether obs was unbatched)."""
        from wam.data.windows import resize_frames

        missing = [k for k in self.cameras if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing}; the model was trained on cameras {self.cameras}")
        first = np.asarray(obs[self.cameras[0]])
        single = first.ndim == 3
        size = (self.cfg.image_size, self.cfg.image_size)
        views = []
        for k in self.cameras:
            img = np.asarray(obs[k])
            img = img[None] if single else img
            views.append(resize_frames(img, size).transpose(0, 2, 3, 1))  # (B, h, w, 3)
        frames = np.concatenate(views, axis=2)  # (B, h, W, 3): cameras side by side
        B = frames.shape[0]
        state = None
        if self.cfg.state_dim > 0:
            s = torch.as_tensor(np.asarray(obs["observation.state"], dtype=np.float32), device=self.device)
            s = s[None] if single else s
            state = self.normalizer.normalize_state(s)
        entry = [frames, None]  # frames are encoded only when a chunk needs them, then kept
        for _ in range(self.cfg.n_obs_steps if not self._latents else 1):  # the first one fills the history
            self._latents.append(entry)
            self._states.append(state)
        task = self.task_index(obs.get("task", 0), B)
        return task, single

    @torch.no_grad()
    def _batch(self, task: torch.Tensor) -> dict:
        from wam.train import to_model_frames

        for entry in self._latents:
            if entry[1] is None:
                x = to_model_frames(entry[0]).to(self.device)[:, None]  # (B, 1, 3, h, W)
                entry[1] = self.tokenizer.encode(x)[:, 0].float()  # (B, c, h', w')
        batch = {"latents": torch.stack([e[1] for e in self._latents], 1), "task": task}  # (B, n_obs, c, h, w)
        if self.cfg.state_dim > 0:
            batch["state"] = torch.stack(list(self._states), 1)  # (B, n_obs, S)
        return batch

    # -- actions

    @torch.no_grad()
    def _chunk(self, task: torch.Tensor) -> torch.Tensor:
        """(B, H, A) normalised actions from the current history."""
        batch = self._batch(task)
        kw = dict(steps=self.steps, solver=self.solver, schedule=self.schedule, cfg_scale=self.cfg_scale,
                  generator=self._generator)
        if self.mode == "inverse":
            plan = sample(self.model, batch, "video", **kw)["latents"]  # (B, n_obs + F, c, h, w)
            out = sample(self.model, {**batch, "latents": plan}, "inverse", **kw)
            self.last_plan = {"latents": plan}
        else:
            out = sample(self.model, batch, self.mode, **kw)
            self.last_plan = {"latents": out["latents"]} if "latents" in out else None
        return out["actions"].clamp(-1, 1)

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """A fresh chunk (H, A) (or (B, H, A) for a batch) in the environment's units; pushes obs."""
        task, single = self._push(obs)
        acts = self.normalizer.unnormalize_action(self._chunk(task)[..., :self.normalizer.action_dim])
        acts = acts.float().cpu().numpy()
        return acts[0] if single else acts

    def select_action(self, obs: dict) -> np.ndarray:
        """The next action (A,) (or (B, A)), predicting a new chunk when the queue is empty."""
        if self._actions:
            self._push(obs)
        else:
            task, single = self._push(obs)
            chunk = self.normalizer.unnormalize_action(self._chunk(task)[..., :self.normalizer.action_dim])
            chunk = chunk.float().cpu().numpy()  # (B, H, A)
            for i in range(self.n_action_steps):
                self._actions.append(chunk[0, i] if single else chunk[:, i])
        return self._actions.popleft()
