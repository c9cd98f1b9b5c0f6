"""The WAM network: a Mixture-of-Transformers diffusion transformer over three token streams.

Read top to bottom: helpers, embedders, the stream weights, the block, the final layers, the model.

Streams (docs/design.md, "One model, five uses"):
    context  task embedding (+ one state token per history step)   always clean
    video    latent patches of history and future frames            noise level per frame
    action   one token per step of the action chunk                 noise level per step
Each stream has its own norms, QKV, output projection, MLP and adaLN-zero modulation, driven by its own
timestep embedding of every token's noise level; all tokens meet in one joint attention. A modality
that a mode leaves out is either absent from the sequence (inference) or masked out as attention keys
(training, where it varies per example): both give the same outputs for the remaining tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wam.config import ModelConfig
from wam.errors import ArgumentError

CONTEXT, VIDEO, ACTION = 0, 1, 2
STREAMS = ("context", "video", "action")


# ---- helpers -------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(B, T, c, h, w) -> (B, T * h/p * w/p, c * p * p), frame-major then row-major."""
    B, T, c, h, w = latents.shape
    x = latents.reshape(B, T, c, h // p, p, w // p, p)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, T, h/p, w/p, c, p, p)
    return x.reshape(B, T * (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, T: int, c: int, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, T * h/p * w/p, c * p * p) -> (B, T, c, h, w)."""
    B = tokens.shape[0]
    x = tokens.reshape(B, T, h // p, w // p, c, p, p)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, T, c, h/p, p, w/p, p)
    return x.reshape(B, T, c, h, w)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """PyTorch's scaled dot-product attention: (B, heads, N, d) queries, (B, heads, M, d) keys and values,
    boolean mask broadcastable to (B, heads, N, M), True = may attend."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


ATTENTION_BACKENDS = {"sdpa": sdpa}  # wam.inference.attention adds the others and switches between them
attention = sdpa  # the kernel every block calls (set by wam.inference.attention.set_attention_backend)


# ---- embedders -----------------------------------------------------------------------------------


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sine-cosine embedding of integer positions (N,) -> (N, dim), dim even (as in MAE / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    args = positions.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_3d(T: int, H: int, W: int, dim: int) -> torch.Tensor:
    """Factorised (time, height, width) embedding (T*H*W, dim): each axis gets its own sine-cosine
    block of the channels, so every token knows its frame and its place in the frame at full scale."""
    d_hw = (dim // 3) // 2 * 2
    d_t = dim - 2 * d_hw
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    return torch.cat([sincos_1d(t.flatten(), d_t), sincos_1d(h.flatten(), d_hw), sincos_1d(w.flatten(), d_hw)], 1)


class TimestepEmbedder(nn.Module):
    """Noise level t in [0, 1] -> a vector: sinusoidal features of 1000 t, then an MLP (as in DiT)."""

    def __init__(self, width: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (...,) -> (..., width)
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[..., None] * freqs  # (..., half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# ---- one stream's weights in one block ------------------------------------------------------------


class StreamLayer(nn.Module):
    """The per-stream half of a block: norms, QKV, output projection, MLP and the block's own learned
    modulation offsets (added to the stream's timestep modulation: adaLN-single, Chen et al. 2023,
    PixArt-alpha, which keeps adaLN per token at a sixth of adaLN's parameters)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(width // heads, eps=1e-6)  # qk-norm keeps attention logits bounded
        self.k_norm = nn.RMSNorm(width // heads, eps=1e-6)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.mod_table = nn.Parameter(torch.zeros(6 * width))  # zero with a zero timestep modulation:
        # every gate starts at 0, so every block starts as the identity (adaLN-zero)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (c + self.mod_table).chunk(6, dim=-1)  # 6 x (B, N, D)

    def qkv_heads(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        B, N, D = x.shape
        h = modulate(self.norm1(x), shift, scale)
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        return self.q_norm(q), self.k_norm(k), v


# ---- the block -----------------------------------------------------------------------------------


class MoTBlock(nn.Module):
    """A Mixture-of-Transformers block: per-stream weights, one joint attention over all tokens."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.streams = nn.ModuleList([StreamLayer(width, heads, mlp_ratio) for _ in STREAMS])

    def forward(
        self,
        xs: list[torch.Tensor],
        cs: list[torch.Tensor],
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        keep_kv: bool = False,
        kv_only: bool = False,
    ):
        # xs[i]: (B, N_i, D) tokens; cs[i]: (B, N_i or 1, 6D) their timestep modulation; empty streams have N_i = 0.
        # past: keys and values (B, heads, Np, d) of cached tokens that every token here also attends to.
        # keep_kv: also return this block's own keys and values (to cache them); kv_only: return only those.
        live = [i for i, x in enumerate(xs) if x.shape[1] > 0]
        mods = {i: self.streams[i].modulation(cs[i]) for i in live}
        qkv = [self.streams[i].qkv_heads(xs[i], mods[i][0], mods[i][1]) for i in live]
        q = torch.cat([a[0] for a in qkv], dim=2)  # (B, heads, N, d)
        k = torch.cat([a[1] for a in qkv], dim=2)
        v = torch.cat([a[2] for a in qkv], dim=2)
        kv = (k, v)
        if kv_only:
            return kv
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, heads, Np + N, d)
        o = attention(q, k, v, mask)  # (B, heads, N, d)
        B, H, N, d = o.shape
        o = o.transpose(1, 2).reshape(B, N, H * d)  # (B, N, D)
        out, start = list(xs), 0
        for i in live:
            n = xs[i].shape[1]
            layer, (_, _, gate_a, shift_m, scale_m, gate_m) = self.streams[i], mods[i]
            x = xs[i] + gate_a * layer.proj(o[:, start : start + n])
            x = x + gate_m * layer.mlp(modulate(layer.norm2(x), shift_m, scale_m))
            out[i], start = x, start + n
        return (out, kv) if keep_kv else out


class FinalLayer(nn.Module):
    """adaLN-zero modulated projection from the hidden size to a stream's output size."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)
        for m in (self.ada[1], self.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---- the model -----------------------------------------------------------------------------------


class WAM(nn.Module):
    """World action model: predicts the flow-matching velocity of every noised token.

    Inputs (B = batch, T = frames present, H = action steps present):
        latents    (B, T, c, h, w)  history frames first, then future frames; None for no video tokens
        t_video    (B, T)           noise level of each frame (0 = clean)
        actions    (B, H, A)        None for no action tokens
        t_action   (B, H) or (B,)   noise level of each action step (or one for the chunk)
        task       (B,) int64 task index, or (B, text_dim) text embeddings
        drop_task  (B,) bool        True: the task is replaced by the learned "no task" token
        state      (B, n_obs, S)    proprioception of the history steps (when state_dim > 0)
        frame_keep (B, T) bool      False: the frame's tokens are left out (masked as keys)
        action_keep (B,) bool       False: the action tokens are left out
        hook       called after each block (feature caching; see `forward_generated`)
    Returns (v_latents (B, T, c, h, w) or None, v_actions (B, H, A) or None).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, p, c = cfg.width, cfg.patch_size, cfg.latent_channels
        self.grid_h = cfg.latent_size // p
        self.grid_w = cfg.latent_size * cfg.n_cameras // p
        # context stream
        if cfg.text_dim > 0:
            self.task_proj = nn.Linear(cfg.text_dim, D)
            # the training tasks' text embeddings (fixed, not learned), so a task index works as well as its text
            self.register_buffer("task_text", torch.zeros(cfg.n_tasks, cfg.text_dim))
        else:
            self.task_table = nn.Embedding(cfg.n_tasks, D)
        self.null_task = nn.Parameter(torch.zeros(D))  # the "no task" token (guidance, task dropout)
        self.state_proj = nn.Linear(cfg.state_dim, D) if cfg.state_dim > 0 else None
        self.context_pos = nn.Parameter(torch.zeros(cfg.context_tokens, D))
        # video stream: patch embedding and fixed factorised (time, height, width) positions
        self.patch_embed = nn.Linear(c * p * p, D)
        self.register_buffer("video_pos", sincos_3d(cfg.frames, self.grid_h, self.grid_w, D), persistent=False)
        # action stream: fixed positions along the chunk
        self.action_embed = nn.Linear(cfg.action_dim, D)
        self.register_buffer("action_pos", sincos_1d(torch.arange(cfg.action_horizon), D), persistent=False)
        # one timestep embedder and modulation per stream (the context one only ever sees t = 0)
        self.t_embed = nn.ModuleList([TimestepEmbedder(D) for _ in STREAMS])
        self.t_mod = nn.ModuleList([nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D)) for _ in STREAMS])
        self.blocks = nn.ModuleList([MoTBlock(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_video = FinalLayer(D, c * p * p)
        self.final_action = FinalLayer(D, cfg.action_dim)
        nn.init.normal_(self.context_pos, std=0.02)
        self._shared_t: dict = {}  # kept timestep modulations of shared noise levels (see shared_timestep)
        self._init_linears()
        for m in self.t_mod:  # adaLN-zero
            nn.init.zeros_(m[1].weight)
            nn.init.zeros_(m[1].bias)

    def _init_linears(self) -> None:
        for name, m in self.named_modules():
            if (
                isinstance(m, nn.Linear)
                and not name.endswith(("ada.1", "final_video.linear", "final_action.linear"))
                and not name.startswith("t_mod")
            ):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.no_grad()
    def set_task_embeddings(self, emb: torch.Tensor, start: int = 0) -> None:
        """Store text embeddings (K, text_dim) of tasks start .. start + K - 1 (text-conditioned models)."""
        if self.cfg.text_dim <= 0:
            raise ArgumentError("this model has a learned task table (text_dim 0); it takes no text embeddings")
        if emb.shape[-1] != self.cfg.text_dim or start + len(emb) > self.cfg.n_tasks:
            raise ArgumentError(
                f"expected at most {self.cfg.n_tasks - start} embeddings of size {self.cfg.text_dim}, "
                f"got {tuple(emb.shape)}"
            )
        self.task_text[start : start + len(emb)] = emb.to(self.task_text)

    # -- token construction --

    def embed_context(self, task: torch.Tensor, state: torch.Tensor | None, drop_task=None) -> torch.Tensor:
        cfg = self.cfg
        if cfg.text_dim > 0:
            if task.dtype == torch.long:  # indices of training tasks -> their stored text embeddings
                task = self.task_text[task]  # (B, text_dim)
            tok = self.task_proj(task.to(self.task_proj.weight.dtype))  # (B, D)
        else:
            if not torch.compiler.is_compiling() and (  # (a data-dependent check: skipped inside a compiled graph)
                task.dtype != torch.long or (task.numel() and int(task.max()) >= cfg.n_tasks)
            ):
                raise ArgumentError(
                    f"task indices must be int64 in [0, {cfg.n_tasks}); got {task.dtype} "
                    f"max {task.max().item() if task.numel() else None}"
                )
            tok = self.task_table(task)  # (B, D)
        if drop_task is not None:
            tok = torch.where(drop_task[:, None], self.null_task.to(tok.dtype), tok)
        toks = [tok[:, None]]
        if self.state_proj is not None:
            if state is None:
                raise ArgumentError(f"this model expects a state of size {cfg.state_dim} per history step")
            toks.append(self.state_proj(state.to(self.state_proj.weight.dtype)))  # (B, n_obs, D)
        x = torch.cat(toks, dim=1)  # (B, Nc, D)
        return x + self.context_pos[: x.shape[1]]

    def video_positions(self, T: int) -> torch.Tensor:
        return self.video_pos[: T * self.grid_h * self.grid_w]  # (T * gh * gw, D), frame-major

    def attention_mask(self, n_ctx: int, T: int, n_act: int, frame_keep, action_keep, B: int, device):
        """Boolean (B or 1, 1, N, N) mask, True = may attend; None when every token sees every token.

        full     every token sees every token (less the left-out ones)
        prefix   the observed tokens (context, history frames) see only each other; future frames and
                 actions see everything. The observed tokens then never depend on what is being
                 generated, so their keys and values are computed once per sampling call (pi0's prefix).
        causal   frame-causal: every token has a time and sees the tokens of earlier or equal time (and
                 the context). Frame f has time f; action j acts between frame n_obs-1 + j // stride and
                 the next one, so it has time n_obs - 1 + j // stride + 0.5 (it sees the frames before it
                 and shapes the frames after it). The context sees only itself. Observed tokens never see
                 generated ones here either.
        """
        tpf = self.grid_h * self.grid_w
        N = n_ctx + T * tpf + n_act
        n_prefix = n_ctx + min(T, self.cfg.n_obs_steps) * tpf
        allowed = None
        if self.cfg.attention == "prefix" and n_prefix < N:
            allowed = torch.ones(N, N, dtype=torch.bool, device=device)
            allowed[:n_prefix, n_prefix:] = False
        elif self.cfg.attention == "causal" and N > n_ctx:
            time = torch.full((N,), -1.0, device=device)
            time[n_ctx : n_ctx + T * tpf] = torch.arange(T, device=device).repeat_interleave(tpf).float()
            if n_act:
                j = torch.arange(n_act, device=device)
                time[n_ctx + T * tpf :] = self.cfg.n_obs_steps - 1 + (j // self.cfg.future_stride).float() + 0.5
            allowed = time[None, :] <= time[:, None]
            allowed[:, :n_ctx] = True  # everyone sees the context
            allowed[:n_ctx, n_ctx:] = False  # the context sees only itself
        if frame_keep is None and action_keep is None:
            return None if allowed is None else allowed[None, None]  # (1, 1, N, N)
        key_ok = torch.ones(B, N, dtype=torch.bool, device=device)
        if frame_keep is not None:
            key_ok[:, n_ctx : n_ctx + T * tpf] = frame_keep.repeat_interleave(tpf, dim=1)
        if action_keep is not None and n_act:
            key_ok[:, n_ctx + T * tpf :] = action_keep[:, None]
        mask = key_ok[:, None, None, :].expand(B, 1, N, N)  # (B, 1, N, N)
        return mask.clone() if allowed is None else mask & allowed

    # -- forward --

    def video_tokens(self, latents: torch.Tensor, first_frame: int = 0) -> torch.Tensor:
        """Frames (B, T, c, h, w), the first being frame `first_frame` of the example -> tokens (B, T*tpf, D)."""
        T, tpf = latents.shape[1], self.grid_h * self.grid_w
        vid = self.patch_embed(patchify(latents, self.cfg.patch_size).to(self.patch_embed.weight.dtype))
        return vid + self.video_pos[first_frame * tpf : (first_frame + T) * tpf].to(vid.dtype)  # (B, T*tpf, D)

    def action_tokens(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions (B, H, A) -> tokens (B, H, D)."""
        act = self.action_embed(actions.to(self.action_embed.weight.dtype))
        return act + self.action_pos[: actions.shape[1]].to(act.dtype)

    def timestep(self, stream: int, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise levels (B, N) of one stream's tokens -> their embedding (B, N, D) and modulation (B, N, 6D).
        N may be 1 for tokens that share one level (it broadcasts)."""
        c = self.t_embed[stream](t)
        return c, self.t_mod[stream](c)

    def shared_timestep(self, stream: int, t, device) -> tuple[torch.Tensor, torch.Tensor]:
        """`timestep` for one noise level shared by every token of the stream: (1, 1, D) and (1, 1, 6D), which
        broadcast. Sampling asks for the same few levels at every call, so without gradients the result is
        kept, keyed by the level and the versions of the weights it came from (an in-place update, such as
        an EMA step or load_state_dict, makes a new key)."""
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(1, 1)
            return self.timestep(stream, t)
        params = (*self.t_embed[stream].parameters(), *self.t_mod[stream].parameters())
        key = (stream, float(t), str(device), tuple(p._version for p in params), params[0].dtype)
        hit = self._shared_t.get(key)
        if hit is None:
            if len(self._shared_t) > 256:
                self._shared_t.clear()
            hit = self._shared_t[key] = self.timestep(stream, torch.full((1, 1), float(t), device=device))
        return hit

    def outputs(self, x_video, c_video, x_action, c_action, T: int):
        """Final layers: hidden video tokens (B, T*tpf, D) -> (B, T, c, h, w), action tokens (B, H, D) -> (B, H, A);
        None for a stream that is absent."""
        cfg = self.cfg
        v_lat = v_act = None
        if x_video is not None and x_video.shape[1]:
            out = self.final_video(x_video, c_video)  # (B, T*tpf, c*p*p)
            v_lat = unpatchify(
                out.float(), T, cfg.latent_channels, cfg.latent_size, cfg.latent_size * cfg.n_cameras, cfg.patch_size
            )
        if x_action is not None and x_action.shape[1]:
            v_act = self.final_action(x_action, c_action).float()  # (B, H, A)
        return v_lat, v_act

    def forward(
        self,
        latents,
        t_video,
        actions,
        t_action,
        task,
        state=None,
        frame_keep=None,
        action_keep=None,
        drop_task=None,
        hook=None,
    ):
        ctx = self.embed_context(task, state, drop_task)  # (B, Nc, D)
        B, D = ctx.shape[0], ctx.shape[2]
        c_ctx, m_ctx = self.timestep(CONTEXT, torch.zeros(B, ctx.shape[1], device=ctx.device))  # (B,Nc,D), (B,Nc,6D)
        # (a constant; computed like the others so that the context stream has the same form)

        T = 0 if latents is None else latents.shape[1]
        empty = ctx.new_zeros(B, 0, D)
        vid, c_vid, m_vid = empty, empty, None
        if T:
            vid = self.video_tokens(latents)  # (B, T*tpf, D)
            c_vid, m_vid = self.timestep(VIDEO, t_video.repeat_interleave(self.grid_h * self.grid_w, dim=1))

        n_act = 0 if actions is None else actions.shape[1]
        act, c_act, m_act = empty, empty, None
        if n_act:
            act = self.action_tokens(actions)  # (B, H, D)
            t_act = t_action if t_action.dim() == 2 else t_action[:, None].expand(B, n_act)  # (B, H)
            c_act, m_act = self.timestep(ACTION, t_act)

        mask = self.attention_mask(ctx.shape[1], T, n_act, frame_keep, action_keep, B, ctx.device)
        xs, mods = [ctx, vid, act], [m_ctx, m_vid, m_act]
        for i, block in enumerate(self.blocks):
            xs = block(xs, mods, mask)
            if hook is not None and (forecast := hook(i, xs)) is not None:  # see forward_generated
                xs = forecast
                break
        return self.outputs(xs[VIDEO], c_vid, xs[ACTION], c_act, T)

    # -- sampling with the observed tokens cached (attention "prefix" or "causal") --

    def observed_kv(self, history, task, state=None, drop_task=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values (B, heads, Np, d) of the observed tokens (context, history frames (B, n_obs, c, h, w))
        in every block. With attention "prefix" or "causal" the observed tokens see only each other, so these
        are the same at every denoising step: `forward_generated` reuses them."""
        if self.cfg.attention == "full":
            raise ArgumentError(
                'a model with attention "full" lets the history see the generated tokens: its '
                "observed keys and values change at every step and cannot be cached"
            )
        ctx = self.embed_context(task, state, drop_task)  # (B, Nc, D)
        B = ctx.shape[0]
        _, m_ctx = self.shared_timestep(CONTEXT, 0.0, ctx.device)  # (1, 1, 6D): every observed token is clean
        _, m_vid = self.shared_timestep(VIDEO, 0.0, ctx.device)
        # the context and history see only each other: with "causal" the history is also frame-causal
        mask = self.attention_mask(ctx.shape[1], history.shape[1], 0, None, None, B, ctx.device)
        xs, mods, cache = [ctx, self.video_tokens(history), ctx[:, :0]], [m_ctx, m_vid, None], []
        for i, block in enumerate(self.blocks):
            if i == len(self.blocks) - 1:  # the last block's outputs for these tokens are never read
                cache.append(block(xs, mods, mask, kv_only=True))
            else:
                xs, kv = block(xs, mods, mask, keep_kv=True)
                cache.append(kv)
        return cache

    def forward_generated(self, observed, future, t_future, actions, t_action, hook=None):
        """The outputs for the generated (and given) tokens beside cached observed ones: equal to `forward`
        restricted to them, at a fraction of its cost. observed: `observed_kv`; future (B, F, c, h, w) or None
        and its noise levels (B,) or (B, F); actions (B, H, A) or None and t_action (B,). A noise level shared
        by the whole batch may be a float or a 0-d tensor (its modulation is then kept between calls). Returns
        (v_future, v_actions).
        hook(i, xs) is called after block i with the token list [context, video, action]; when it returns a
        list, that list stands for the last block's output and the remaining blocks are skipped (feature
        caching, `wam.inference.taylor`)."""
        B = (future if future is not None else actions).shape[0]
        n_obs, tpf = self.cfg.n_obs_steps, self.grid_h * self.grid_w
        xs = [None, None, None]
        cs, mods = [None] * 3, [None] * 3
        empty = observed[0][0].new_zeros(B, 0, self.cfg.width)
        xs[CONTEXT] = empty
        xs[VIDEO] = empty if future is None else self.video_tokens(future, first_frame=n_obs)
        shared = lambda t: not torch.is_tensor(t) or t.dim() == 0  # noqa: E731
        if future is not None:
            if shared(t_future):
                cs[VIDEO], mods[VIDEO] = self.shared_timestep(VIDEO, t_future, empty.device)  # (1, 1, D)
            else:
                t = t_future[:, None] if t_future.dim() == 1 else t_future.repeat_interleave(tpf, dim=1)
                cs[VIDEO], mods[VIDEO] = self.timestep(VIDEO, t)  # (B, 1 or F*tpf, D)
        xs[ACTION] = empty if actions is None else self.action_tokens(actions)
        if actions is not None:
            cs[ACTION], mods[ACTION] = (
                self.shared_timestep(ACTION, t_action, empty.device)
                if shared(t_action)
                else self.timestep(ACTION, t_action[:, None])
            )  # (1 or B, 1, D)
        mask = None
        if self.cfg.attention == "causal":  # the generated tokens' rows of the full mask
            n_ctx, n_act = observed[0][0].shape[2] - n_obs * tpf, 0 if actions is None else actions.shape[1]
            T = n_obs + (0 if future is None else future.shape[1])
            mask = self.attention_mask(n_ctx, T, n_act, None, None, B, empty.device)
            mask = None if mask is None else mask[:, :, n_ctx + n_obs * tpf :]
        for i, (block, kv) in enumerate(zip(self.blocks, observed)):
            xs = block(xs, mods, mask, past=kv)
            if hook is not None and (forecast := hook(i, xs)) is not None:
                xs = forecast
                break
        T = 0 if future is None else future.shape[1]
        return self.outputs(xs[VIDEO], cs[VIDEO], xs[ACTION], cs[ACTION], T)
