"""The five modes of one WAM, as data, and one `sample()` that runs any of them; the training loss.

A mode says what happens to the future frames and to the actions; history frames and context are
always clean (UniDiffuser's idea: a mode is only a choice of noise levels per modality):

    mode      future frames   actions     returns
    policy    omit            generate    actions          (action-only: future-video tokens left out)
    forward   generate        given       future frames    (world model)
    inverse   given           generate    actions          (inverse dynamics)
    video     generate        omit        future frames    (marginal video prediction)
    joint     generate        generate    both             (joint video-action planning)

`generate` tokens start at t = 1 (noise) and are integrated to t = 0; `given` tokens are clean (t = 0)
and pass through unchanged; `omit` tokens are not in the sequence at all.

Batches here are in latent space:
    latents  (B, n_obs + future_frames, c, h, w)  (only the history is read where the future is generated
                                                   or omitted; the history alone is enough then)
    actions  (B, H, A)  read only in modes that give them
    task     (B,) int64 or (B, text_dim);  state (B, n_obs, S) when the model has a state
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wam import flow
from wam.config import LossConfig, ModelConfig
from wam.errors import ArgumentError
from wam.inference.taylor import Forecaster
from wam.samplers import SCHEDULES, SOLVERS

GENERATE, GIVEN, OMIT = "generate", "given", "omit"


@dataclass(frozen=True)
class Mode:
    name: str
    future: str  # what happens to the future frames: generate | given | omit
    actions: str  # what happens to the action chunk: generate | given | omit
    summary: str


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("policy", OMIT, GENERATE, "action chunk from history frames (action-only inference)"),
        Mode("forward", GENERATE, GIVEN, "future frames from history frames and actions (world model)"),
        Mode("inverse", GIVEN, GENERATE, "action chunk from history and future frames (inverse dynamics)"),
        Mode("video", GENERATE, OMIT, "future frames from history frames (video prediction)"),
        Mode("joint", GENERATE, GENERATE, "future frames and action chunk together (joint planning)"),
    )
}


def get_mode(mode: str | Mode) -> Mode:
    if isinstance(mode, Mode):
        return mode
    if mode not in MODES:
        raise ArgumentError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return MODES[mode]


def _need(batch: dict, key: str, mode: Mode) -> torch.Tensor:
    if batch.get(key) is None:
        raise ArgumentError(f"mode {mode.name!r} needs batch[{key!r}]")
    return batch[key]


def initial_noise(
    cfg,
    mode: str | Mode,
    batch_size: int,
    latent_shape: tuple[int, int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """The noise `sample` starts a mode from, drawn in this order: {"future": (B, F, c, h, w)} when the mode
    generates future frames, then {"actions": (B, H, A)} when it generates actions. Drawing it apart lets
    several closed loops, each with its own generator, share one batched `sample` call."""
    m = get_mode(mode)
    out = {}
    if m.future == GENERATE:
        out["future"] = torch.randn(batch_size, cfg.future_frames, *latent_shape, generator=generator, device=device)
    if m.actions == GENERATE:
        out["actions"] = torch.randn(batch_size, cfg.action_horizon, cfg.action_dim, generator=generator, device=device)
    return out


@torch.no_grad()
def sample(
    model,
    batch: dict,
    mode: str | Mode,
    *,
    steps: int = 10,
    solver: str = "euler",
    schedule: str = "linear",
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
    noise: dict | None = None,
    t_start: float = 1.0,
    cache: bool = False,
    taylor=None,
    action_guidance: float = 1.0,
) -> dict:
    """Run one mode: returns {"latents": (B, n_obs + F, c, h, w)} when the mode has future frames
    (history and given frames exactly as passed in) and {"actions": (B, H, A)} when it has actions.

    noise     the starting point of every generated stream (as `initial_noise` returns it) instead of
              drawing it from `generator`: pure noise at t_start = 1, or a partly noised guess at t_start < 1
              (warm start: integration then runs only from t_start to 0)
    cache     compute the observed tokens' keys and values once instead of at every step (exact; needs a
              model with attention "prefix" or "causal")
    taylor    a `wam.inference.taylor.TaylorSeer` setting: forecast the blocks' output between full steps
    action_guidance  w for modes that generate frames from given actions (forward): the future's output is
              video(no actions) + w * (forward - video), classifier-free guidance on the actions (Ho & Salimans
              2022) that makes the frames follow the actions more than the data's prior; 1 = plain forward mode
    The plain call (no cache, no forecast, t_start 1) is the reference every faster path is measured against.
    """
    m = get_mode(mode)
    cfg = model.cfg
    latents = _need(batch, "latents", m)
    hist = latents[:, : cfg.n_obs_steps]
    given_future = latents[:, cfg.n_obs_steps :] if m.future == GIVEN else None
    if given_future is not None and given_future.shape[1] != cfg.future_frames:
        raise ArgumentError(
            f"mode {m.name!r} needs {cfg.future_frames} future frames in batch['latents'], got {given_future.shape[1]}"
        )
    given_actions = _need(batch, "actions", m) if m.actions == GIVEN else None
    _check_sampling(
        m, solver=solver, schedule=schedule, t_start=t_start, taylor=taylor, action_guidance=action_guidance
    )
    x = _start(cfg, m, hist.shape[0], hist.shape[2:], generator, hist.device, noise)
    velocity = _Velocity(
        model, m, batch, hist, given_future, given_actions, cfg_scale, action_guidance, cache=cache, taylor=taylor
    )
    ts = SCHEDULES[schedule](steps, t_start=t_start).to(hist.device)
    return velocity.result(SOLVERS[solver](velocity, x, ts))


class _Velocity:
    """The network as the solver of one `sample` call sees it: `velocity(x, t)` maps the generated streams at
    noise level t to their velocities. It holds what every step shares: the observed frames, task and state
    (stacked twice under classifier-free guidance, the conditional rows first), the given streams, and either
    the observed tokens' keys and values (computed once) or the blocks' forecaster."""

    def __init__(
        self, model, m: Mode, batch, hist, given_future, given_actions, cfg_scale, action_guidance, *, cache, taylor
    ) -> None:
        self.model, self.m, self.cfg = model, m, model.cfg
        self.B, device = hist.shape[0], hist.device
        self.cfg_scale, self.action_guidance = cfg_scale, action_guidance
        task, state = batch["task"], batch.get("state")
        if cfg_scale != 1.0:  # conditional and unconditional halves in one batch
            self.two = lambda a: None if a is None else torch.cat([a, a])
            drop = torch.cat([torch.zeros(self.B, dtype=torch.bool), torch.ones(self.B, dtype=torch.bool)]).to(device)
        else:  # batch["drop_task"] (B,) bool: those rows get the "no task" token (tasks the model never saw)
            self.two, drop = (lambda a: a), batch.get("drop_task")
        self.hist, self.task, self.state, self.drop = self.two(hist), self.two(task), self.two(state), drop
        self.given_future, self.given_actions = self.two(given_future), self.two(given_actions)
        self.device, self.nB = device, self.hist.shape[0]
        self.zeros_hist = torch.zeros(self.nB, self.cfg.n_obs_steps, device=device)
        self.observed = model.observed_kv(self.hist, self.task, self.state, drop) if cache else None
        self.forecast = Forecaster(taylor, self.cfg.depth) if taylor is not None else None

    def __call__(self, x: dict, t: torch.Tensor) -> dict:
        m, cfg, two, B = self.m, self.cfg, self.two, self.B
        fut = act = t_fut = t_act = None  # noise levels: 0-d, one for the whole batch
        if m.future != OMIT:
            fut = two(x["future"]) if m.future == GENERATE else self.given_future
            t_fut = (t if m.future == GENERATE else torch.zeros(())).to(self.device)
        if m.actions != OMIT:
            act = two(x["actions"]) if m.actions == GENERATE else self.given_actions
            t_act = (t if m.actions == GENERATE else torch.zeros(())).to(self.device)
        v_fut, v_act = self.denoise(t, fut, t_fut, act, t_act)
        if self.action_guidance != 1.0:  # the same future without the actions (video mode): the prior they move
            v_fut = flow.cfg_combine(v_fut, self.denoise(t, fut, t_fut, None, None)[0], self.action_guidance)
        if self.cfg_scale != 1.0:
            v_fut = None if v_fut is None else flow.cfg_combine(v_fut[:B], v_fut[B:], self.cfg_scale)
            v_act = None if v_act is None else flow.cfg_combine(v_act[:B], v_act[B:], self.cfg_scale)
        out = {}
        if m.future == GENERATE:
            out["future"] = flow.velocity_from_output(v_fut, x["future"], t, cfg.video_prediction)
        if m.actions == GENERATE:
            out["actions"] = flow.velocity_from_output(v_act, x["actions"], t, cfg.action_prediction)
        return out

    def denoise(self, t, fut, t_fut, act, t_act) -> tuple:
        """The network's outputs for the generated future frames and actions (None where left out)."""
        model, cfg, nB, F = self.model, self.cfg, self.nB, self.cfg.future_frames
        hook = None if self.forecast is None else self.forecast.hook(t)
        if self.observed is not None or (self.forecast is not None and cfg.attention != "full"):
            kv = self.observed
            if kv is None:
                kv = model.observed_kv(self.hist, self.task, self.state, self.drop)
            return model.forward_generated(kv, fut, t_fut, act, t_act, hook=hook)
        t_fut = None if t_fut is None else t_fut.expand(nB)
        t_act = None if t_act is None else t_act.expand(nB)
        lat = self.hist if fut is None else torch.cat([self.hist, fut], 1)
        t_vid = self.zeros_hist if fut is None else torch.cat([self.zeros_hist, t_fut[:, None].expand(nB, F)], 1)
        v_lat, v_act = model(lat, t_vid, act, t_act, self.task, self.state, drop_task=self.drop, hook=hook)
        return (None if fut is None else v_lat[:, cfg.n_obs_steps :]), v_act

    def result(self, x: dict) -> dict:
        """`sample`'s answer from the solver's end point: the first B rows (the conditional half under guidance)."""
        m, B, out = self.m, self.B, {}
        if m.future != OMIT:
            future = x["future"] if m.future == GENERATE else self.given_future[:B]
            out["latents"] = torch.cat([self.hist[:B], future], 1)
        if m.actions != OMIT:
            out["actions"] = x["actions"] if m.actions == GENERATE else self.given_actions[:B]
        if self.forecast is not None:
            out["forecast"] = self.forecast.stats()
        return out


def _check_sampling(m: Mode, *, solver: str, schedule: str, t_start: float, taylor, action_guidance: float) -> None:
    if action_guidance != 1.0 and not (m.future == GENERATE and m.actions == GIVEN):
        raise ArgumentError(
            f"action_guidance applies to modes that generate frames from given actions (forward), not {m.name!r}"
        )
    if action_guidance != 1.0 and taylor is not None:
        raise ArgumentError("action_guidance cannot be combined with a Taylor forecast (taylor=)")
    if solver not in SOLVERS:
        raise ArgumentError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    if schedule not in SCHEDULES:
        raise ArgumentError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if not 0.0 < t_start <= 1.0:
        raise ArgumentError(f"t_start must be in (0, 1], got {t_start}")


def _start(cfg: ModelConfig, m: Mode, B: int, chw: tuple, generator, device, noise: dict | None) -> dict:
    """Where integration starts for every generated stream: the given noise, or noise drawn from `generator`."""
    if noise is None:
        return initial_noise(cfg, m, B, chw, generator, device)
    needed = [k for k, how in (("future", m.future), ("actions", m.actions)) if how == GENERATE]
    if any(k not in noise for k in needed):
        raise ArgumentError(f"mode {m.name!r} needs noise for {needed}, got {sorted(noise)}")
    return {k: noise[k] for k in needed}


def next_frame(
    model,
    history: torch.Tensor,
    task: torch.Tensor,
    actions: torch.Tensor,
    *,
    state: torch.Tensor | None = None,
    steps: int = 2,
    generator: torch.Generator | None = None,
    cache: bool = False,
    action_guidance: float = 1.0,
) -> torch.Tensor:
    """The world model one frame ahead (forward mode): clean history latents (B, n_obs, c, h, w), the task (B,),
    the actions taken since the last frame (B, k, A) normalised, k <= action_horizon and padded to it with the
    last one, and the robot state (B, n_obs, S) -> the latents (B, c, h, w) of the frame future_stride steps on.
    What `wam imagine` repeats to imagine an episode."""
    cfg = model.cfg
    actions = actions[:, :, : cfg.action_dim]
    if actions.shape[1] < cfg.action_horizon:
        actions = torch.cat([actions, actions[:, -1:].expand(-1, cfg.action_horizon - actions.shape[1], -1)], 1)
    future = history.new_zeros(history.shape[0], cfg.future_frames, *history.shape[2:])
    batch = {"latents": torch.cat([history, future], 1), "task": task, "actions": actions}
    if cfg.state_dim > 0:
        batch["state"] = state
    out = sample(
        model, batch, "forward", steps=steps, generator=generator, cache=cache, action_guidance=action_guidance
    )
    return out["latents"][:, cfg.n_obs_steps].float()


def training_loss(
    model,
    batch: dict,
    lc: LossConfig = LossConfig(),
    generator: torch.Generator | None = None,
    shard: tuple[slice, int] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Flow-matching loss with independent noise levels per modality and modality dropout.

    batch (latent space, all clean):
        latents (B, n_obs + F, c, h, w), actions (B, H, A), task, state (optional),
        frame_is_pad (B, n_obs + F) and action_is_pad (B, H) (optional, True = padding, no loss),
        has_actions (B,) bool (optional; False for action-free videos: actions always left out),
        imitate (B,) bool (optional; False for world-only episodes: actions always given clean, futures always
            generated, so they train forward dynamics and never the policy),
        action_dim_mask (B, A) bool (optional; False marks padded action dimensions: no loss).
    Returns (loss, {"loss_video": ..., "loss_action": ...}) with per-stream means over valid elements.

    shard (rows, world): this process's rows of a global batch shared by `world` data-parallel processes.
    Every random draw is made for the whole batch (the same on every process) and then cut, and the loss
    is this shard's share of the global mean times `world`; so the gradients that DistributedDataParallel
    averages equal those of one process holding the whole batch.
    """
    B, device = batch["latents"].shape[0], batch["latents"].device
    u = lambda: torch.rand(B, generator=generator, device=device)  # noqa: E731

    t_fut = flow.sample_t((B,), lc.timestep_sampling, generator, device)
    t_act = flow.sample_t((B,), lc.timestep_sampling, generator, device)
    clean_fut, clean_act = u() < lc.p_clean_future, u() < lc.p_clean_action
    clean_act = clean_act & ~clean_fut  # never both clean: nothing would be learned
    t_fut = torch.where(clean_fut, torch.zeros_like(t_fut), t_fut)
    t_act = torch.where(clean_act, torch.zeros_like(t_act), t_act)

    has_actions = batch.get("has_actions")
    has_actions = torch.ones(B, dtype=torch.bool, device=device) if has_actions is None else has_actions.bool()
    omit_fut = (u() < lc.p_omit_future) & has_actions & ~clean_act  # a policy example: actions must be learned
    omit_act = ((u() < lc.p_omit_action) & ~omit_fut & ~clean_fut) | ~has_actions
    if batch.get("imitate") is not None:  # world-only episodes: forward dynamics, their actions given clean
        world = ~batch["imitate"].bool() & has_actions
        t_fut = torch.where(world & clean_fut, flow.sample_t((B,), lc.timestep_sampling, generator, device), t_fut)
        t_act = torch.where(world, torch.zeros_like(t_act), t_act)
        omit_fut, omit_act = omit_fut & ~world, omit_act & ~world
    drop_task = u() < lc.p_drop_task
    return flow_loss(
        model,
        batch,
        t_fut,
        t_act,
        omit_fut,
        omit_act,
        drop_task,
        generator,
        lc.video_weight,
        lc.action_weight,
        shard=shard,
    )


def mode_loss(model, batch: dict, mode: str | Mode, generator: torch.Generator | None = None) -> torch.Tensor:
    """The flow-matching loss of one mode's recipe: generated modalities at t ~ U(0, 1), given ones
    clean, omitted ones out of the sequence. Validation reports it per mode."""
    m = get_mode(mode)
    B, device = batch["latents"].shape[0], batch["latents"].device
    zeros, ones = torch.zeros(B, device=device), torch.ones(B, dtype=torch.bool, device=device)
    t = torch.rand(B, generator=generator, device=device).clamp_min(1e-3)
    t_fut = t if m.future == GENERATE else zeros
    t_act = t if m.actions == GENERATE else zeros
    loss, _ = flow_loss(
        model, batch, t_fut, t_act, ones & (m.future == OMIT), ones & (m.actions == OMIT), ~ones, generator
    )
    return loss


def flow_loss(
    model,
    batch: dict,
    t_fut: torch.Tensor,
    t_act: torch.Tensor,
    omit_fut: torch.Tensor,
    omit_act: torch.Tensor,
    drop_task: torch.Tensor,
    generator: torch.Generator | None = None,
    video_weight: float = 1.0,
    action_weight: float = 1.0,
    shard: tuple[slice, int] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Masked MSE for given per-example noise levels (B,) and left-out flags (B,) bool: on the velocity
    for a velocity-predicting stream, on the clean sample for an x0-predicting one. `shard`: see
    `training_loss`."""
    cfg = getattr(model, "module", model).cfg  # (a DistributedDataParallel wrapper holds the model as .module)
    n_obs, F = cfg.n_obs_steps, cfg.future_frames
    noise_fut = torch.randn(batch["latents"][:, n_obs:].shape, generator=generator, device=batch["latents"].device)
    noise_act = torch.randn(batch["actions"].shape, generator=generator, device=batch["actions"].device)
    world, counts = 1, None
    if shard is not None:  # global valid-element counts first, then this process's rows of everything
        rows, world = shard
        counts = _loss_weights(batch, t_fut, t_act, omit_fut, omit_act, n_obs, F)
        counts = (counts[0].sum(), counts[1].sum())
        cut = lambda a: a[rows] if torch.is_tensor(a) and a.dim() > 0 else a  # noqa: E731
        batch = {k: cut(v) for k, v in batch.items()}
        t_fut, t_act, omit_fut, omit_act, drop_task, noise_fut, noise_act = map(
            cut, (t_fut, t_act, omit_fut, omit_act, drop_task, noise_fut, noise_act)
        )
    lat, actions = batch["latents"], batch["actions"]
    B, device = lat.shape[0], lat.device
    fut_in = flow.add_noise(lat[:, n_obs:], noise_fut, t_fut)
    lat_in = torch.cat([lat[:, :n_obs], fut_in], 1)
    act_in = flow.add_noise(actions, noise_act, t_act)
    t_video = torch.cat([torch.zeros(B, n_obs, device=device), t_fut[:, None].expand(B, F)], 1)
    frame_keep = torch.cat(
        [torch.ones(B, n_obs, dtype=torch.bool, device=device), (~omit_fut)[:, None].expand(B, F)], 1
    )

    out_lat, out_act = model(
        lat_in,
        t_video,
        act_in,
        t_act,
        batch["task"],
        batch.get("state"),
        frame_keep=frame_keep,
        action_keep=~omit_act,
        drop_task=drop_task,
    )
    v_act = flow.velocity_from_output(out_act, act_in, t_act, cfg.action_prediction)

    w_fut, w_act = _loss_weights(batch, t_fut, t_act, omit_fut, omit_act, n_obs, F)
    n_fut, n_act = (w_fut.sum(), w_act.sum()) if counts is None else counts
    if cfg.video_prediction == "x0":  # x0 loss: the implied-velocity loss weights t -> 0 by 1/t^2, which
        # buries the high-noise examples (where the history must be used) under trivial denoising
        err_v = (out_lat[:, n_obs:] - lat[:, n_obs:]).pow(2).mean(dim=(2, 3, 4))  # (B, F)
    else:
        err_v = (out_lat[:, n_obs:] - flow.velocity_target(lat[:, n_obs:], noise_fut)).pow(2).mean(dim=(2, 3, 4))
    loss_video = world * (err_v * w_fut).sum() / n_fut.clamp_min(1.0)
    err_a = (v_act - flow.velocity_target(actions, noise_act)).pow(2)
    loss_action = world * (err_a * w_act).sum() / n_act.clamp_min(1.0)

    loss = video_weight * loss_video + action_weight * loss_action
    return loss, {"loss_video": loss_video.detach(), "loss_action": loss_action.detach()}


def _loss_weights(batch: dict, t_fut, t_act, omit_fut, omit_act, n_obs: int, F: int):
    """Which elements count in the loss: future frames (B, F) in the sequence, noised, not padding; action
    elements (B, H, A) in the sequence, noised, not padding steps, not padding dimensions."""
    B, actions = batch["latents"].shape[0], batch["actions"]
    w_fut = (~omit_fut & (t_fut > 0))[:, None].expand(B, F).float()  # (B, F)
    fpad = batch.get("frame_is_pad")
    if fpad is not None:
        w_fut = w_fut * (~fpad[:, n_obs:]).float()
    w_act = (~omit_act & (t_act > 0))[:, None, None].float().expand(actions.shape)  # (B, H, A)
    apad = batch.get("action_is_pad")
    if apad is not None:
        w_act = w_act * (~apad)[:, :, None].float()
    dmask = batch.get("action_dim_mask")
    if dmask is not None:
        w_act = w_act * dmask[:, None, :].float()
    return w_fut, w_act
