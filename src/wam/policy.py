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

How a chunk is sampled (steps, solver, caches, warm start, precision, ...) is an `InferenceConfig`
(`wam.inference`); its defaults are the fast setting measured in the README. With `warm_start` set, a
chunk in policy mode starts from the previous chunk shifted by the control steps since it was predicted,
re-noised to t = warm_start, and integrates only from there.

One closed loop's memory (history, queued actions, sampling generator) is a `PolicyState`; a WAMPolicy
holds one. `predict_chunks` runs many states in one batched forward pass, each with the noise of its own
generator: the policy server (`wam.serve`) batches its clients this way, and WAMPolicy uses it with one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wam.errors import ArgumentError, ObservationError
from wam.inference import InferenceConfig, autocast, prepare
from wam.modes import initial_noise, sample

ACTING_MODES = ("policy", "joint", "inverse")
PLAN_SCORES = ("imagined", "forward")  # which future plan N > 1 scores (WAMPolicy's docstring)


class PolicyState:
    """One closed loop's memory, kept between calls (by a WAMPolicy, or by the server per connection).

    history    n_obs_steps entries [frames (B, h, W, 3) uint8, latents (B, c, h', w') or None, unseen]: frames
               are encoded only when a chunk needs them, then kept; unseen: the images were left unrendered
    states     n_obs_steps normalised robot states (B, S) (None entries when the model has no state)
    actions    queued actions of the last chunk (select_action)
    generator  the sampling noise's source, seeded at creation
    last_plan  the latest chunk's predicted frames {"latents": (B, n_obs + F, c, h, w)}, in modes that plan
    last_chunk the latest chunk, normalised (B, H, A), and the observations pushed since it (warm start)
    last_scores the critic's scores (B, N) of the latest chunk's N imagined futures (plan N > 1), and
               last_candidates their normalised action chunks (B, N, H, A)
    """

    def __init__(self, n_obs_steps: int, seed: int = 0, device: str | torch.device = "cpu"):
        self.history: deque[list] = deque(maxlen=n_obs_steps)
        self.states: deque[torch.Tensor | None] = deque(maxlen=n_obs_steps)
        self.actions: deque[np.ndarray] = deque()
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.last_plan: dict[str, torch.Tensor] | None = None
        self.last_chunk: torch.Tensor | None = None
        self.last_scores: torch.Tensor | None = None
        self.last_candidates: torch.Tensor | None = None
        self.since_chunk = 0
        self.embodiment = 0  # which dataset's action space the loop acts in (a mixture's models have several)

    @property
    def batch_size(self) -> int | None:
        return self.history[-1][0].shape[0] if self.history else None


@dataclass
class Observation:
    """One observation turned into model inputs (no state touched): see `WAMPolicy.read_observation`."""

    frames: np.ndarray  # (B, h, W, 3) uint8 at the model's image size, cameras side by side
    state: torch.Tensor | None  # (B, S) normalised, or None when the model has no state
    task: torch.Tensor  # (B,) indices into the model's task table, or (B, text_dim) embeddings of new text
    single: bool  # the observation was unbatched
    embodiment: int = 0  # index into WAMPolicy.embodiments: whose action and state units

    @property
    def batch_size(self) -> int:
        return self.frames.shape[0]


def _check_plan(mode: str, plan: int, plan_score: str, plan_guidance: float) -> None:
    if plan_guidance != 1.0 and plan_score != "forward":
        raise ArgumentError(
            "plan_guidance guides the forward futures of plan_score 'forward'; pass `plan_score='forward'` with it"
        )
    if plan < 1:
        raise ArgumentError(f"plan must be >= 1 (the futures imagined per chunk), got {plan}")
    if plan_score not in PLAN_SCORES:
        raise ArgumentError(f"unknown plan_score {plan_score!r}; choose one of: {', '.join(PLAN_SCORES)}")
    if plan > 1 and mode == "policy" and plan_score == "imagined":
        raise ArgumentError(
            "plan N > 1 with plan_score 'imagined' chooses between imagined futures, which "
            "policy mode does not predict; use mode 'joint' (or 'inverse'), or plan_score "
            "'forward'"
        )


def _plan_critic(critic, checkpoint, device):
    """The critic that scores planned futures (a Critic, its directory, or <checkpoint>/critic), with a warning
    when it reads the latents of another tokenizer than the checkpoint's."""
    from wam.checkpoint import file_hash
    from wam.critic import Critic, load_critic

    critic = (
        critic
        if isinstance(critic, Critic)
        else load_critic(critic if critic is not None else checkpoint.path / "critic")
    ).to(device)
    c = critic.cfg
    tokenizer_file = Path(checkpoint.path) / "tokenizer.safetensors"
    fits = (
        c.tokenizer_hash == file_hash(tokenizer_file)
        if c.tokenizer_hash and tokenizer_file.is_file()
        else not c.model_hash or c.model_hash == checkpoint.model_hash
    )
    if not fits:
        import warnings

        warnings.warn(
            "the critic was trained on the latents of another frame tokenizer than this "
            "checkpoint's; its scores may not fit (train one: wam critic)",
            stacklevel=3,
        )
    return critic


def _refuse_unseen(histories) -> None:
    """A chunk is about to be predicted from these histories: none may hold an observation left unrendered."""
    if any(e[2] for h in histories for e in h):
        raise RuntimeError(
            "a chunk was predicted from an observation whose images were left unrendered (needs_images said "
            "they would not be looked at); this is a bug in wam, please report it"
        )


def _inference_config(given: InferenceConfig | None, changes: dict, mode: str, *, cache: bool) -> InferenceConfig:
    """`WAMPolicy`'s sampling settings: `given` (default: InferenceConfig() with the cache where the model's
    attention allows it) with the single settings in `changes`, checked against the acting mode."""
    import dataclasses

    unknown = set(changes) - {f.name for f in dataclasses.fields(InferenceConfig)}
    if unknown:
        raise TypeError(f"unknown WAMPolicy settings {sorted(unknown)}")
    ic = dataclasses.replace(given or InferenceConfig(cache=cache), **changes)
    if ic.warm_start and mode != "policy":
        raise ArgumentError(
            f"warm_start re-noises the previous action chunk, which only policy mode samples "
            f"alone; mode {mode!r} needs warm_start 0"
        )
    return ic


class WAMPolicy:
    """A WAM checkpoint as a closed-loop policy (see the module docstring for the timing)."""

    def __init__(
        self,
        checkpoint,
        *,
        mode: str = "policy",
        n_action_steps: int | None = None,
        inference: InferenceConfig | None = None,
        seed: int = 0,
        device: str = "cpu",
        blind: bool = False,
        plan: int = 1,
        critic=None,
        plan_score: str = "imagined",
        plan_guidance: float = 1.0,
        **sampling,
    ):
        """`inference` sets how chunks are sampled (default: `InferenceConfig()`, without the cache for a
        checkpoint trained with attention "full"); keyword arguments named like its fields (steps=, solver=,
        schedule=, cfg_scale=, warm_start=, ...) change single settings of it. `blind` replaces every camera
        image by a black one before the model sees it (the ablation that shows how much the policy looks).
        `plan` N > 1 samples N joint futures (frames and actions) per chunk and acts on the one whose last
        predicted frame the `critic` scores highest (`wam.critic`; a Critic, its directory, or by default
        <checkpoint>/critic). `plan_score` says which future is scored: "imagined" (default), the frames sampled
        together with the actions (needs mode joint or inverse); "forward", the frames the world model predicts
        from each candidate's actions alone (forward mode, one more sampling pass per chunk), which asks what
        the actions would do rather than what the model imagined beside them, and works in every mode.
        `plan_guidance` W > 1 predicts those forward futures with guidance on the actions (`wam.modes.sample`'s
        action_guidance), so that they follow the candidates' actions more than the data's prior."""

        from wam.data import Normalizer

        if mode not in ACTING_MODES:
            raise ArgumentError(f"mode {mode!r} does not act; choose one of: {', '.join(ACTING_MODES)}")
        self.checkpoint = checkpoint
        model, self.tokenizer = checkpoint.model.to(device).eval(), checkpoint.tokenizer.to(device).eval()
        self.cfg = model.cfg
        self.inference = ic = _inference_config(inference, sampling, mode, cache=self.cfg.attention != "full")
        self.model = prepare(model, ic)
        if ic.compile:  # the frame encoder runs once per chunk too (a shallow copy: the checkpoint's is untouched)
            import copy

            self.tokenizer = copy.copy(self.tokenizer)
            self.tokenizer.encode = torch.compile(self.tokenizer.encode, dynamic=None)
        self.normalizer = Normalizer.from_dict(checkpoint.stats)
        run = checkpoint.config.get("run", {})
        self.cameras = [f"observation.images.{c}" for c in run.get("cameras", [])]
        self.tasks: list[str] = list(run.get("tasks", []))
        self._set_embodiments(run)
        self._task_text = getattr(model, "task_text", None)  # (n_tasks, text_dim) for a text-conditioned model
        self.fps = run.get("fps")
        self.protocol: str | None = run.get("protocol")  # the benchmark protocol its training data was made under
        self.n_action_steps = n_action_steps or max(1, self.cfg.action_horizon // 2)
        if not 1 <= self.n_action_steps <= self.cfg.action_horizon:
            raise ArgumentError(
                f"n_action_steps must be in 1..{self.cfg.action_horizon} (the action horizon), "
                f"got {self.n_action_steps}"
            )
        self.mode, self.seed, self.device, self.blind = mode, seed, torch.device(device), bool(blind)
        self.plan, self.critic, self.plan_score = int(plan), None, plan_score
        self.plan_guidance = float(plan_guidance)
        _check_plan(mode, self.plan, plan_score, self.plan_guidance)
        if self.plan > 1:
            self.critic = _plan_critic(critic, checkpoint, device)
        # how to rebuild this policy in another process: (checkpoint path, keyword arguments)
        rebuild = dict(
            mode=mode,
            n_action_steps=self.n_action_steps,
            inference=ic,
            seed=seed,
            device=device,
            blind=self.blind,
            plan=self.plan,
            plan_score=plan_score,
            plan_guidance=self.plan_guidance,
            # (a Critic object is found again at the directory it was loaded from)
            critic=str(critic) if isinstance(critic, (str, Path)) else getattr(self.critic, "path", None),
        )
        self.spec = (str(checkpoint.path), tuple(sorted(rebuild.items())))
        self.reset()

    def _set_embodiments(self, run: dict) -> None:
        """A model trained on a mixture acts in each action dataset's units (its own statistics and action size); a
        task acts in the units of the first dataset that holds it, a new task in the first's."""
        from wam.data import Normalizer

        self.embodiments = [self.normalizer]
        self.embodiment_cameras: list[list[str] | None] = [self.cameras]
        self.task_embodiment: dict[str, int] = {}
        sets = [d for d in run.get("datasets", []) if d.get("action_dim")]
        if sets:
            self.embodiments = [Normalizer.from_dict(d["stats"]) for d in sets]
            # (None: not recorded; then the observation's own camera keys, when there are as many as the model's)
            self.embodiment_cameras = [
                [f"observation.images.{c}" for c in d["cameras"]] if d.get("cameras") else None for d in sets
            ]
            for i, d in enumerate(sets):
                for t in d.get("tasks", []):
                    self.task_embodiment.setdefault(t, i)

    # the sampling settings most callers ask about
    steps = property(lambda self: self.inference.steps)
    solver = property(lambda self: self.inference.solver)
    schedule = property(lambda self: self.inference.schedule)
    cfg_scale = property(lambda self: self.inference.cfg_scale)

    @classmethod
    def from_checkpoint(cls, path, **kwargs) -> WAMPolicy:
        from wam.checkpoint import load_checkpoint

        return cls(load_checkpoint(path), **kwargs)

    @property
    def settings(self) -> dict:
        """Everything about the policy that changes its actions."""
        return {
            "mode": self.mode,
            "n_action_steps": self.n_action_steps,
            "action_horizon": self.cfg.action_horizon,
            "n_obs_steps": self.cfg.n_obs_steps,
            "sampling_steps": self.steps,
            "solver": self.solver,
            "schedule": self.schedule,
            "cfg_scale": self.cfg_scale,
            "seed": self.seed,
            "model_hash": self.checkpoint.model_hash,
            "inference": self.inference.to_dict(),
            **({"blind": True} if self.blind else {}),
            **({"plan": self.plan, "plan_score": self.plan_score} if self.plan > 1 else {}),
            **({"plan_guidance": self.plan_guidance} if self.plan > 1 and self.plan_guidance != 1 else {}),
        }

    def state_size(self, task: Any = None) -> int:
        """How many values of `observation.state` the policy reads for `task` (0: it reads none). The
        policy reads only the keys it was trained on: its cameras and this state, nothing else."""
        if self.cfg.state_dim <= 0:
            return 0
        return self.embodiments[self.embodiment_of(task, 1) if task is not None else 0].state_dim

    def new_state(self, seed: int | None = None) -> PolicyState:
        """A fresh closed loop: empty history and queue, a generator seeded with `seed` (default: the policy's)."""
        return PolicyState(self.cfg.n_obs_steps, self.seed if seed is None else seed, self.device)

    def reset(self) -> None:
        """Forget the observation history and queued actions (call at the start of every episode)."""
        self.state = self.new_state()

    @property
    def last_plan(self) -> dict[str, torch.Tensor] | None:
        """The latest chunk's predicted frames {"latents": ...}, in modes that plan through frames."""
        return self.state.last_plan

    # -- observations

    def task_index(self, task: Any, batch: int) -> torch.Tensor:
        """Task strings (or indices) -> (B,) indices into the model's task table; for a text-conditioned
        model, instructions it was not trained on -> (B, text_dim) embeddings of every row instead."""
        items = self._task_items(task, batch)
        out, new = [], []
        for t in items:
            if isinstance(t, (int, np.integer)):
                out.append(int(t))
            elif t in self.tasks:
                out.append(self.tasks.index(t))
            elif self._task_text is not None:
                out.append(-1)
                new.append(t)
            else:
                raise ArgumentError(
                    f"task {t!r} was not in the training data; known tasks: {self.tasks} (a model "
                    f"trained with text_encoder='minilm' accepts any instruction)"
                )
        idx = torch.tensor(out, device=self.device)
        if not new:
            return idx
        from wam.text import encode_texts

        emb = self._task_text[idx.clamp(min=0)].clone()  # (B, text_dim)
        rows = (idx < 0).nonzero()[:, 0]
        emb[rows] = torch.as_tensor(encode_texts(new, self.cfg.text_encoder or "minilm")).to(emb)
        return emb

    @staticmethod
    def _task_items(task: Any, batch: int) -> list:
        return [task] * batch if isinstance(task, (str, int, np.integer)) else list(task)

    def embodiment_of(self, task: Any, batch: int) -> int:
        """The embodiment (index into `embodiments`) the rows of `task` act in; one per observation."""
        items = self._task_items(task, batch)
        found = {
            self.task_embodiment.get(
                self.tasks[t] if isinstance(t, (int, np.integer)) and 0 <= t < len(self.tasks) else t, 0
            )
            for t in items
        }
        if len(found) > 1:
            raise ArgumentError(
                "one observation batch mixes tasks of different embodiments; send each embodiment's "
                "environments as their own batch (their actions have different sizes)"
            )
        return found.pop() if found else 0

    def read_observation(self, obs: dict) -> Observation:
        """LeRobot keys (one observation or a batch) -> model inputs; changes no state."""
        from wam.data.windows import resize_frames

        task = obs.get("task", 0)
        given = [k for k in obs if k.startswith("observation.images.")]
        if not given:
            raise ObservationError(
                f"observation has no camera image (observation.images.*); the model was trained on "
                f"cameras {self.cameras}"
            )
        single = np.asarray(obs[given[0]]).ndim == 3
        emb = self.embodiment_of(task, 1 if single else len(np.asarray(obs[given[0]])))
        cameras = self.embodiment_cameras[emb]
        if cameras is None and len(given) == self.cfg.n_cameras:
            cameras = sorted(given)
        missing = [k for k in cameras or self.cameras if k not in obs]
        if missing:
            raise ObservationError(
                f"observation lacks {missing}; the model was trained on cameras {cameras or self.cameras}"
            )
        size = (self.cfg.image_size, self.cfg.image_size)
        views = []
        for k in cameras:
            img = np.asarray(obs[k])
            img = img[None] if single else img
            views.append(resize_frames(img, size).transpose(0, 2, 3, 1))  # (B, h, w, 3)
        frames = np.concatenate(views, axis=2)  # (B, h, W, 3): cameras side by side
        if self.blind:
            frames = np.zeros_like(frames)
        B = frames.shape[0]
        state = None
        want = self.embodiments[emb].state_dim if self.cfg.state_dim > 0 else 0
        if self.cfg.state_dim > 0 and want == 0:  # an embodiment without a state: zeros, as in training
            state = torch.zeros(B, self.cfg.state_dim, device=self.device)
        elif self.cfg.state_dim > 0:
            if "observation.state" not in obs:
                raise ObservationError(
                    f"observation lacks 'observation.state'; the model was trained on a state of "
                    f"{want} values (and cameras {cameras or self.cameras})"
                )
            s = torch.as_tensor(np.array(obs["observation.state"], dtype=np.float32), device=self.device)
            s = s[None] if single else s
            if s.shape[-1] != want:
                raise ArgumentError(
                    f"observation.state has {s.shape[-1]} values; the model was trained on {want}. "
                    f"Give the environment the state the training data had (wam eval does: "
                    f"e.g. MetaWorld's state='proprio' is 4-D, state='full' 39-D)"
                )
            state = self.embodiments[emb].normalize_state(s)
            if state.shape[-1] < self.cfg.state_dim:  # another embodiment's shorter state, zero-padded as in training
                state = torch.nn.functional.pad(state, (0, self.cfg.state_dim - state.shape[-1]))
        return Observation(frames, state, self.task_index(task, B), single, emb)

    def needs_images(self, queued: int | None = None) -> bool:
        """Whether the model will look at the camera images of the observation given next to `select_action`,
        in a loop with `queued` actions left in its queue (default: this policy's own loop). Only the
        observations that will be in the history of the next chunk are looked at (the last n_obs_steps before
        the queue runs out); the caller may leave the others' images unrendered (`wam.rollout` does, and says so
        to `push` with `unseen=True`)."""
        if self.blind:
            return False
        return (len(self.state.actions) if queued is None else queued) < self.cfg.n_obs_steps

    def push(self, state: PolicyState, ob: Observation, *, unseen: bool = False) -> None:
        """Append an observation to a state's history (the first one fills it). `unseen`: its images were left
        unrendered because `needs_images` said the model would not look at them; a chunk predicted from such an
        entry is refused (that would be a wrong answer of needs_images, never a silent black frame)."""
        if state.history and state.batch_size != ob.batch_size:
            raise ArgumentError(
                f"the observation holds {ob.batch_size} environments but the history holds "
                f"{state.batch_size}; reset() before changing the number of environments"
            )
        if unseen and not state.history:
            raise ArgumentError("the first observation of a loop starts its first chunk; its images are needed")
        entry = [ob.frames, None, unseen]  # frames are encoded only when a chunk needs them, then kept
        state.since_chunk += 1
        state.embodiment = ob.embodiment
        for _ in range(self.cfg.n_obs_steps if not state.history else 1):
            state.history.append(entry)
            state.states.append(ob.state)

    def _push(self, obs: dict) -> tuple[torch.Tensor, bool]:
        """Push one observation into this policy's history; returns (task indices (B,), whether obs was unbatched)."""
        ob = self.read_observation(obs)
        self.push(self.state, ob)
        return ob.task, ob.single

    # -- actions

    @torch.no_grad()
    def _encode_history(self, states: list[PolicyState]) -> None:
        """Encode every history frame of `states` not encoded yet, in one tokenizer call."""
        from wam.tokenizer import to_model_frames

        todo = list({id(e): e for s in states for e in s.history if e[1] is None}.values())
        if not todo:
            return
        x = to_model_frames(np.concatenate([e[0] for e in todo])).to(self.device)[:, None]  # (N, 1, 3, h, W)
        z = self.tokenizer.encode(x)[:, 0].float()  # (N, c, h', w')
        for e, part in zip(todo, z.split([len(e[0]) for e in todo])):
            e[1] = part

    def _noise(self, state: PolicyState, batch_size: int, mode: str, latent_shape: tuple) -> dict[str, dict]:
        """One state's initial noise per sampling stage, drawn from its own generator in sampling order.
        Every acting mode draws the same sequence (the future frames' noise, then the actions'), so the
        modes, and any inference setting, start a chunk from the same action noise for the same seed."""

        def draw(m):
            return initial_noise(
                self.cfg,
                m,
                batch_size,
                latent_shape,
                state.generator,
                self.device,
            )

        if mode == "inverse":
            out = {"video": draw("video"), "inverse": draw("inverse")}
            if self.plan > 1 and self.plan_score == "forward":
                out["forward"] = draw("forward")
            return out
        full = draw("joint")
        out = {"joint": full} if mode == "joint" else {"policy": {"actions": full["actions"]}}
        if self.plan > 1 and self.plan_score == "forward":  # the candidates' futures start from the same noise
            out["forward"] = {"future": full["future"]}
        return out

    @torch.no_grad()
    def predict_chunks(
        self, states: list[PolicyState], tasks: list[torch.Tensor], mode: str | None = None
    ) -> list[np.ndarray]:
        """One batched forward pass for several closed loops: state i's history and task indices (B_i,) ->
        its chunk (B_i, H, A) in the environment's units. Each state's noise comes from its own generator,
        so a state's chunk does not depend on the others in the batch (up to float rounding)."""
        mode = mode or self.mode
        if mode not in ACTING_MODES:
            raise ArgumentError(f"mode {mode!r} does not act; choose one of: {', '.join(ACTING_MODES)}")
        if not self.blind:  # (a blind policy's frames are black whether rendered or not)
            _refuse_unseen(s.history for s in states)
        self._encode_history(states)
        latents = [torch.stack([e[1] for e in s.history], 1) for s in states]  # (B_i, n_obs, c, h, w)
        if len({t.dtype for t in tasks}) > 1:  # indices beside new instructions' embeddings: all embeddings
            tasks = [t if t.is_floating_point() else self._task_text[t] for t in tasks]
        batch = {"latents": torch.cat(latents), "task": torch.cat(tasks)}
        if self.cfg.state_dim > 0:
            batch["state"] = torch.cat([torch.stack(list(s.states), 1) for s in states])  # (B, n_obs, S)
        sizes = [len(t) for t in tasks]
        N = self.plan  # futures imagined per row: rows b * N .. b * N + N - 1 are row b's candidates
        if N > 1:
            if mode == "policy" and self.plan_score == "imagined":
                raise ArgumentError(
                    "plan N > 1 with plan_score 'imagined' needs a mode that predicts frames: joint or "
                    "inverse (or plan_score 'forward')"
                )
            if batch["task"].is_floating_point():
                raise ArgumentError("plan N > 1 scores futures per task index; a new instruction has none")
            batch = {k: v.repeat_interleave(N, 0) for k, v in batch.items()}
        latent_shape = tuple(batch["latents"].shape[2:])
        noises = [self._noise(s, n * N, mode, latent_shape) for s, n in zip(states, sizes)]
        noise = {m: {k: torch.cat([nz[m][k] for nz in noises]) for k in noises[0][m]} for m in noises[0]}
        ic = self.inference
        kw = ic.sample_kwargs()
        with autocast(ic, self.device):
            if mode == "inverse":
                plan = sample(self.model, batch, "video", noise=noise["video"], **kw)["latents"]  # (B, n_obs + F, ...)
                out = sample(self.model, {**batch, "latents": plan}, "inverse", noise=noise["inverse"], **kw)
            elif mode == "policy" and ic.warm_start:
                out, plan = {"actions": self._warm_sample(states, sizes, batch, noise["policy"]["actions"])}, None
            else:
                out = sample(self.model, batch, mode, noise=noise[mode], **kw)
                plan = out.get("latents")
            if N > 1 and self.plan_score == "forward":  # what the world model says each candidate's actions do
                given = {**batch, "actions": out["actions"].clamp(-1, 1)}
                plan = sample(
                    self.model, given, "forward", noise=noise["forward"], action_guidance=self.plan_guidance, **kw
                )["latents"]
        if N > 1:  # keep each row's best-scored future
            scores = self.critic.score(plan[:, -1], batch["task"]).view(-1, N)  # (B, N)
            best = scores.argmax(1) + torch.arange(len(scores), device=scores.device) * N  # (B,)
            candidates = out["actions"].view(len(scores), N, *out["actions"].shape[1:])  # (B, N, H, A)
            start = 0
            for s, n in zip(states, sizes):
                s.last_scores = scores[start : start + n].float().cpu()
                s.last_candidates = candidates[start : start + n].float().cpu()
                start += n
            out, plan = {"actions": out["actions"][best]}, plan[best]
        start = 0
        for s, n in zip(states, sizes):
            s.last_chunk, s.since_chunk = out["actions"][start : start + n].float(), 0
            start += n
        acts = out["actions"].clamp(-1, 1).float()
        chunks, start = [], 0
        for s, n in zip(states, sizes):
            norm = self.embodiments[s.embodiment]  # this loop's action units and size
            chunk = norm.unnormalize_action(acts[start : start + n, :, : norm.action_dim])  # (n, H, A)
            chunks.append(chunk.cpu().numpy())
            s.last_plan = None if plan is None else {"latents": plan[start : start + n]}
            start += n
        return chunks

    def _warm_sample(
        self, states: list[PolicyState], sizes: list[int], batch: dict, noise: torch.Tensor
    ) -> torch.Tensor:
        """Policy-mode actions (B, H, A), each state's rows warm-started from its previous chunk when it has one
        that still reaches past now (shifted by the steps since, the tail padded with its last action, then
        re-noised with this chunk's own noise to t = warm_start), cold from the noise otherwise."""
        ic, H = self.inference, self.cfg.action_horizon
        t0 = ic.warm_start
        rows_warm, rows_cold, guesses, start = [], [], [], 0
        for s, n in zip(states, sizes):
            rows = list(range(start, start + n))
            if s.last_chunk is not None and 0 < s.since_chunk < H and s.last_chunk.shape[0] == n:
                prev = s.last_chunk[:, s.since_chunk :]  # (n, H - k, A)
                guesses.append(torch.cat([prev, prev[:, -1:].expand(n, H - prev.shape[1], prev.shape[2])], 1))
                rows_warm += rows
            else:
                rows_cold += rows
            start += n
        out = torch.empty_like(noise)
        kw = ic.sample_kwargs()

        def pick(rows):
            return {k: (v[rows] if v is not None else None) for k, v in batch.items()}

        if rows_cold:
            out[rows_cold] = sample(self.model, pick(rows_cold), "policy", noise={"actions": noise[rows_cold]}, **kw)[
                "actions"
            ]
        if rows_warm:
            guess = torch.cat(guesses).to(noise.device)
            x = (1 - t0) * guess + t0 * noise[rows_warm]
            kw["steps"] = max(1, round(ic.steps * t0))
            out[rows_warm] = sample(self.model, pick(rows_warm), "policy", noise={"actions": x}, t_start=t0, **kw)[
                "actions"
            ]
        return out

    def _chunk(self, task: torch.Tensor) -> np.ndarray:
        """(B, H, A) actions in the environment's units from this policy's history."""
        return self.predict_chunks([self.state], [task])[0]

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """A fresh chunk (H, A) (or (B, H, A) for a batch) in the environment's units; pushes obs."""
        task, single = self._push(obs)
        acts = self._chunk(task)
        return acts[0] if single else acts

    def select_action(self, obs: dict) -> np.ndarray:
        """The next action (A,) (or (B, A)), predicting a new chunk when the queue is empty."""
        queue = self.state.actions
        if queue:
            self._push(obs)
        else:
            task, single = self._push(obs)
            chunk = self._chunk(task)  # (B, H, A)
            for i in range(self.n_action_steps):
                queue.append(chunk[0, i] if single else chunk[:, i])
        return queue.popleft()
