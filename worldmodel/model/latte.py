"""Discrete Latte: the MaskFlow backbone, with per-frame actions, causal temporal attention and a KV cache.

Axis letters (einops): b batch, f frames, h w token grid, p positions (patches) per frame,
d width, v vocabulary including the mask class, e head width, n cached frames.

tokens (b f h w) ─embed+patchify 2×2─▶ (b f p d) + 2-D sin-cos positions
    ─[spatial block (attention over p), temporal block (attention over f, rotary)] × depth─▶
    head ─▶ logits (b f h w v); pooled clean-frame features ─▶ reward / termination logits (b f).
Each block is adaLN-Zero, modulated by its frame's conditioning c_f = emb(t_f) + emb(action_f).
Temporal attention is ``bidirectional`` (the paper) or ``causal`` (frame f sees frames ≤ f); the
rotary temporal positions are relative, so a causal model rolls out past its window with a sliding
KV cache (:mod:`worldmodel.model.cache`).

Heading rotary (``heading_pairs`` = n > 0): the last n rotary pairs of every temporal head turn with the
camera's heading instead of the frame index. The heading is integrated from the actions (``action_yaw``
degrees per action; turns in the maze are exact), so a frame's query meets the keys of earlier frames that
faced the same way with no rotation between them: the odd harmonics 1, 3, …, 2n − 1 of the heading
difference sum to a kernel that peaks at 0° (and 360°) and is near zero one 12° turn away (n = 8). It makes
"the view I face now was seen 30 frames ago" a lookup by angle rather than by counting turns, the pose-
indexed retrieval of WorldMem (Xiao et al. 2025), with nothing the agent does not know: only its actions.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from envs.common.errors import ConfigError, MaskFlowError
from worldmodel.model.cache import LatteCache
from worldmodel.model.layers import FinalLayer, FrameHeads, SpatialBlock, TemporalBlock, TimestepEmbedder, rotate

EMBED_STD = 0.02  # N(0, EMBED_STD) for the token, action and time embeddings (initialize_weights, reset_token_io)


@dataclass
class ModelConfig:
    """Architecture of the discrete Latte backbone."""

    vocab_size: int = 1024                          # V tokenizer codes; the mask id is V
    token_grid: tuple[int, int] = (16, 16)          # (h, w) tokens per frame
    patch: int = 2                                  # patchify p×p tokens into one position
    dim: int = 256                                  # width d
    depth: int = 4                                  # number of (spatial, temporal) block pairs
    heads: int = 4
    mlp_ratio: float = 4.0
    max_frames: int = 16                            # training window k (temporal attention span)
    num_actions: int = 9                            # 0 = action-free model
    temporal: str = "causal"                        # "causal" | "bidirectional"
    time_freqs: int = 256                           # sinusoidal features of raw t ∈ [0, 1]
    rope_base: float = 10000.0
    heading_pairs: int = 0                          # rotary pairs per temporal head given to the heading (0 = off)
    action_yaw: tuple[float, ...] = ()              # degrees each action turns the camera (left +); () = none

    def __post_init__(self) -> None:
        self.token_grid = tuple(int(x) for x in self.token_grid)
        self.action_yaw = tuple(float(x) for x in self.action_yaw)
        if self.temporal not in ("causal", "bidirectional"):
            raise ConfigError(f"temporal={self.temporal!r} is not valid; use 'causal' or 'bidirectional'")
        h, w = self.token_grid
        if h % self.patch or w % self.patch:
            raise ConfigError(f"token grid {self.token_grid} is not divisible by patch {self.patch}")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ConfigError(f"dim {self.dim} must split into {self.heads} heads of even width")
        if self.vocab_size < 2 or self.max_frames < 1 or self.depth < 1 or self.num_actions < 0:
            raise ConfigError(f"invalid model sizes: {self}")
        pairs = self.dim // self.heads // 2
        if not 0 <= self.heading_pairs < pairs:
            raise ConfigError(f"heading_pairs={self.heading_pairs} must lie in [0, {pairs - 1}] (a temporal head of "
                              f"width {self.dim // self.heads} has {pairs} rotary pairs; one at least keeps time)")
        if self.heading_pairs and len(self.action_yaw) != self.num_actions:
            raise ConfigError(f"heading_pairs={self.heading_pairs} needs action_yaw: the degrees each of the "
                              f"{self.num_actions} actions turns the camera, got {len(self.action_yaw)} values")

    @property
    def mask_id(self) -> int:
        """Token id of [M] (one past the last code)."""
        return self.vocab_size

    @property
    def positions(self) -> int:
        """Patches per frame."""
        return (self.token_grid[0] // self.patch) * (self.token_grid[1] // self.patch)

    def to_dict(self) -> dict:
        """JSON-ready dict (``ModelConfig(**d)`` rebuilds it). The heading keys appear only when heading rotary is
        on, so models without it keep the config (and the config digest in their weights) they were saved with."""
        d = asdict(self)
        d["token_grid"], d["action_yaw"] = list(self.token_grid), list(self.action_yaw)
        if not self.heading_pairs:
            del d["heading_pairs"], d["action_yaw"]
        return d


# name -> (dim, depth pairs, heads). tiny: tests (< 1M parameters); small: the CPU default (~5M), chosen
# by held-out next-frame accuracy per CPU-second (d=256 x 4 pairs learns no faster per step early on and
# costs 2x per step; d=128 x 3 is cheaper but learns slower per step); base: Latte-B/2 for a GPU (~135M).
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=64, depth=1, heads=2),
    "small": dict(dim=192, depth=3, heads=3),
    "base": dict(dim=768, depth=6, heads=12),
}


def model_config(size: str, **overrides) -> ModelConfig:
    """The preset ``size`` (tiny | small | base) with ``overrides`` (vocab_size, token_grid, …)."""
    if size not in PRESETS:
        raise ConfigError(f"unknown model size {size!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[size], **overrides})


@dataclass
class LatteOutput:
    """Model outputs: logits (b f h w v) with v = V + 1 (the [M] logit is −inf), and per-frame
    reward / termination logits (b f) (P(reward > 0) and P(terminated) through a sigmoid); ``logits`` is
    None for a commit pass run with ``logits=False``."""

    logits: torch.Tensor | None
    reward_logits: torch.Tensor
    done_logits: torch.Tensor


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed MAE-style 2-D sin-cos position embedding, (h·w, dim)."""
    def one_d(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.double().flatten()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)
    gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([one_d(dim // 2, gy), one_d(dim // 2, gx)], dim=1).float()


class Rotary:
    """Rotary tables for temporal attention: (cos, sin) of shape (..., e) for positions (...,), and with
    ``heading_pairs`` = n > 0 headings (..., degrees) that turn the last n pairs by the odd harmonics
    1, 3, …, 2n − 1 of the heading (the lowest time frequencies they replace barely turn within a window)."""

    def __init__(self, head_dim: int, base: float, heading_pairs: int = 0):
        self.inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.time_pairs = len(self.inv_freq) - heading_pairs
        self.harmonics = 2 * torch.arange(heading_pairs, dtype=torch.float64) + 1

    def tables(self, positions: torch.Tensor, dtype: torch.dtype,
               headings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for integer ``positions`` (...,) (and ``headings`` (...,) in degrees, broadcast against
        them) → each (..., e)."""
        ang = positions.double()[..., None] * self.inv_freq[: self.time_pairs].to(positions.device)   # (..., T)
        if len(self.harmonics):
            head = torch.zeros_like(positions, dtype=torch.float64) if headings is None else headings.double()
            turn = torch.deg2rad(head)[..., None] * self.harmonics.to(head.device)                     # (..., n)
            shape = torch.broadcast_shapes(ang.shape[:-1], turn.shape[:-1])
            ang = torch.cat([ang.expand(*shape, -1), turn.expand(*shape, -1)], dim=-1)
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos().to(dtype), ang.sin().to(dtype)


class Latte(nn.Module):
    """Discrete Latte world model (see module docstring). Build with ``Latte(model_config("small"))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, h, w, p = cfg.dim, *cfg.token_grid, cfg.patch
        self.tok_embed = nn.Embedding(cfg.vocab_size + 1, d // 2)
        self.patchify = nn.Linear(p * p * (d // 2), d)      # = the paper's 2×2 stride-2 conv
        self.register_buffer("pos_embed", sincos_2d(d, h // p, w // p), persistent=False)
        self.t_embed = TimestepEmbedder(d, cfg.time_freqs)
        self.act_embed = nn.Embedding(cfg.num_actions + 1, d)     # last row = "no action" (dropped / reset)
        self.spatial = nn.ModuleList(SpatialBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.temporal = nn.ModuleList(TemporalBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(d, p * p, cfg.vocab_size + 1)
        self.frame_heads = FrameHeads(d)
        self.rotary = Rotary(d // cfg.heads, cfg.rope_base, cfg.heading_pairs)
        # degrees per action, last entry = "none" (no turn); float64 and not a buffer, so no cast rounds it
        self.yaw_table = torch.tensor([*cfg.action_yaw, 0.0] if cfg.heading_pairs else [0.0], dtype=torch.float64)
        # −inf bias on the [M] logit of every sub-position: [M] is never a valid prediction.
        cls_bias = torch.zeros(p * p, cfg.vocab_size + 1)
        cls_bias[:, cfg.mask_id] = float("-inf")
        self.register_buffer("class_bias", cls_bias.flatten(), persistent=False)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) embeddings and time MLP, zero adaLN modulation and zero heads."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.tok_embed.weight, std=EMBED_STD)
        nn.init.normal_(self.act_embed.weight, std=EMBED_STD)
        for lin in self.t_embed.mlp:
            if isinstance(lin, nn.Linear):
                nn.init.normal_(lin.weight, std=EMBED_STD)
        for blk in [*self.spatial, *self.temporal]:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        self.final.zero_init()
        self.frame_heads.zero_init()

    def reset_token_io(self) -> None:
        """Forget what the token ids meant, keep the dynamics: re-draw the ids' embedding rows (the [M] row, whose
        meaning no tokenizer changes, stays) and zero the output linear, as at initialisation. For carrying a
        model over to another encoder's tokens of the same vocabulary."""
        with torch.no_grad():
            m = self.cfg.mask_id
            keep = self.tok_embed.weight[m].clone()
            nn.init.normal_(self.tok_embed.weight, std=EMBED_STD)
            self.tok_embed.weight[m] = keep
            nn.init.zeros_(self.final.linear.weight)       # the output linear only: its modulation is dynamics
            nn.init.zeros_(self.final.linear.bias)

    def num_parameters(self) -> int:
        """Total trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def cast(self, dtype: torch.dtype) -> Latte:
        """This model computing in ``dtype``, for sampling: itself when it already does, else a copy (the
        original keeps its weights). The time embedding's frequencies stay fp32 (bf16 would blur t)."""
        if self.patchify.weight.dtype == dtype:
            return self
        out = copy.deepcopy(self).to(dtype)
        out.t_embed.omega = self.t_embed.omega.clone()
        return out.eval()

    # ------------------------------------------------------------------ input checks
    def validate(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> None:
        """Raise :class:`MaskFlowError` naming the problem for wrong shapes, dtypes or ranges."""
        cfg = self.cfg
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != cfg.token_grid:
            raise MaskFlowError(f"tokens must have shape (batch, frames, {cfg.token_grid[0]}, {cfg.token_grid[1]}),"
                                f" got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise MaskFlowError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
        b, f = tokens.shape[:2]
        if tuple(t.shape) != (b, f) or tuple(actions.shape) != (b, f):
            raise MaskFlowError(f"t and actions must have shape (batch, frames) = {(b, f)}, "
                                f"got t {tuple(t.shape)} and actions {tuple(actions.shape)}")
        if f > cfg.max_frames and cfg.temporal == "bidirectional":
            raise MaskFlowError(f"{f} frames exceed the bidirectional model's window of {cfg.max_frames}; "
                                "roll out chunk by chunk")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi > cfg.mask_id:
            raise MaskFlowError(f"token ids must lie in [0, {cfg.mask_id}] ({cfg.vocab_size} codes + mask id "
                                f"{cfg.mask_id}), got range [{lo}, {hi}]: does the tokenizer match the model?")
        if actions.numel() and (int(actions.min()) < -1 or int(actions.max()) >= cfg.num_actions):
            raise MaskFlowError(f"actions must lie in [-1, {cfg.num_actions - 1}] (-1 = none), got "
                                f"[{int(actions.min())}, {int(actions.max())}]")

    # ------------------------------------------------------------------ pieces
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b f h w) → positions (b f p d)."""
        e = self.tok_embed(tokens.long())
        x = rearrange(e, "b f (hp p1) (wp p2) e -> b f (hp wp) (p1 p2 e)", p1=self.cfg.patch, p2=self.cfg.patch)
        return self.patchify(x) + self.pos_embed.to(x.dtype)

    def condition(self, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-frame conditioning c (b f d) = emb(t) + emb(action); action −1 → the "none" row."""
        return self.t_embed(t.float()) + self.act_embed(self.action_rows(actions))

    def action_rows(self, actions: torch.Tensor) -> torch.Tensor:
        """Row of each action (...,) in the per-action tables: −1 (none) → the last row, ``num_actions``."""
        return torch.where(actions < 0, torch.full_like(actions, self.cfg.num_actions), actions).long()

    def turns(self, actions: torch.Tensor) -> torch.Tensor | None:
        """Degrees each action (...,) turns the camera (action −1 = none: 0), float64; None without heading rotary."""
        if not self.cfg.heading_pairs:
            return None
        return self.yaw_table.to(actions.device)[self.action_rows(actions)]

    def outputs(self, x: torch.Tensor, c: torch.Tensor) -> LatteOutput:
        """Features x (b f p d), conditioning c (b f d) → :class:`LatteOutput`."""
        cfg = self.cfg
        logits = self.final(x, c, self.class_bias)                        # (b f p (p1 p2 v))
        hp = cfg.token_grid[0] // cfg.patch
        logits = rearrange(logits, "b f (hp wp) (p1 p2 v) -> b f (hp p1) (wp p2) v",
                           hp=hp, p1=cfg.patch, p2=cfg.patch)
        reward, done = self.frame_heads(x)
        return LatteOutput(logits, reward, done)

    def masked_logits(self, x: torch.Tensor, c: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits of the selected tokens only, over the V real codes (no [M] column): the training path.

        x (b f p d), c (b f d), masked (b f h w) bool → logits (n V) and ``index`` (n,) of flat positions
        in (b f h w) (gather targets with ``target.flatten()[index]``). Skips the head for unselected
        tokens and never materialises the (b f h w v) tensor, which makes the head ~2x cheaper at an
        average mask ratio of one half.
        """
        cfg = self.cfg
        h = self.final.features(x, c)                                           # (b f p d)
        sel = rearrange(masked, "b f (hp p1) (wp p2) -> b f (hp wp) (p1 p2)", p1=cfg.patch, p2=cfg.patch)
        flat = rearrange(torch.arange(masked.numel(), device=masked.device).view(masked.shape),
                         "b f (hp p1) (wp p2) -> b f (hp wp) (p1 p2)", p1=cfg.patch, p2=cfg.patch)
        w = self.final.linear.weight.view(cfg.patch ** 2, cfg.vocab_size + 1, -1)[:, : cfg.vocab_size]
        bias = self.final.linear.bias.view(cfg.patch ** 2, cfg.vocab_size + 1)[:, : cfg.vocab_size]
        rows, index = [], []
        for j in range(cfg.patch ** 2):                       # one matmul per sub-position of the patch
            pick = sel[..., j]
            rows.append(F.linear(h[pick], w[j], bias[j]))
            index.append(flat[..., j][pick])
        return torch.cat(rows), torch.cat(index)

    def temporal_mask(self, f: int, device: torch.device) -> torch.Tensor | None:
        """Boolean (f, f) attention mask for causal sequences longer than the window (sliding band)."""
        if self.cfg.temporal != "causal" or f <= self.cfg.max_frames:
            return None
        i = torch.arange(f, device=device)
        diff = i[:, None] - i[None, :]
        return (diff >= 0) & (diff < self.cfg.max_frames)

    # ------------------------------------------------------------------ full forward
    def features(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor,
                 heading_actions: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Backbone without checks or heads: → features x (b f p d), conditioning c (b f d).

        ``heading_actions`` (b f): the actions the heading integrates (default ``actions``); training passes
        the real ones, so action dropout hides an action from the conditioning but not from the heading."""
        f = tokens.shape[1]
        x = self.embed(tokens)
        c = self.condition(t, actions).to(x.dtype)
        turns = self.turns(actions if heading_actions is None else heading_actions)
        cos, sin = self.rotary.tables(torch.arange(f, device=x.device), x.dtype,
                                      None if turns is None else turns.cumsum(1))     # (f e) or (b f e)
        if cos.dim() == 3:                                      # per-clip headings: (b 1 1 f e) against (b p H f e)
            cos, sin = cos[:, None, None], sin[:, None, None]
        mask = self.temporal_mask(f, x.device)
        causal = self.cfg.temporal == "causal" and mask is None
        for sblk, tblk in zip(self.spatial, self.temporal):
            x = sblk(x, c)
            x, _ = tblk(x, c, cos, sin, causal=causal, attn_mask=mask)
        return x, c

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> LatteOutput:
        """tokens (b f h w) long in [0, V] (V = mask id), t (b f) float in [0, 1] (1 = clean),
        actions (b f) long, −1 = none → LatteOutput(logits (b f h w v), reward_logits (b f), done_logits (b f)).

        Causal models accept f > max_frames: each frame then attends to its last max_frames frames,
        exactly what the sliding KV cache computes.
        """
        self.validate(tokens, t, actions)
        return self.outputs(*self.features(tokens, t, actions))

    # ------------------------------------------------------------------ cached frame-by-frame rollout
    def new_cache(self, batch_size: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None, slots: int | None = None,
                  stays: Sequence[bool] | None = None) -> LatteCache:
        """An empty KV cache holding the last (max_frames − 1) finished frames of ``batch_size`` rollouts, in
        ``dtype`` (default: the model's); ``slots=0`` gives a history-free cache (a new frame then attends to
        itself only). ``stays`` (one bool per action: does it keep the camera in place?) adds heading recall
        (:class:`~worldmodel.model.cache.HeadingBank`), for models with heading rotary, in buckets of the
        smallest turn."""
        if self.cfg.temporal != "causal":
            raise MaskFlowError("a KV cache needs a causal model (temporal='causal'); this model is bidirectional")
        cfg = self.cfg
        n = cfg.max_frames - 1 if slots is None else int(slots)
        if not 0 <= n <= cfg.max_frames - 1:
            raise MaskFlowError(f"slots must lie in [0, {cfg.max_frames - 1}], got {slots}")
        table, width = None, 0.0
        if stays is not None:
            turns = [abs(y) for y in cfg.action_yaw if y]
            if not cfg.heading_pairs or not turns:
                raise MaskFlowError("heading recall needs a model with heading rotary (train with heading_pairs > 0) "
                                    "and actions that turn")
            if len(stays) != cfg.num_actions:
                raise MaskFlowError(f"stays has {len(stays)} entries for the model's {cfg.num_actions} actions")
            table, width = torch.tensor([*map(bool, stays), False]), min(turns)    # action −1 (unknown) moves
        return LatteCache.empty(cfg.depth, batch_size, cfg.positions, cfg.heads, cfg.dim // cfg.heads,
                                n, torch.device(device), dtype or self.patchify.weight.dtype, table, width)

    def _recalled(self, cache: LatteCache, heading: torch.Tensor, actions: torch.Tensor, dtype: torch.dtype):
        """Per temporal layer, the (keys, values) and slot mask a new frame at ``heading`` (b,) reached by
        ``actions`` (b,) attends to: the cache's, with the oldest slot swapped for the bank's frame at that
        heading where :meth:`HeadingBank.lookup` finds one, its keys re-rotated from their index to the slot's.

        Computed once per frame: the sampler's passes and the commit pass the same ``actions`` storage, and
        the bank's memo is cleared when the cache changes. No branch on ``hit``: no device sync."""
        bank = cache.bank
        # same storage and same in-place write count (torch's Tensor._version) = the same actions; a caller that
        # refills its action buffer in place bumps _version, so the memo never serves a stale lookup
        key = (actions.data_ptr(), tuple(actions.shape), actions.stride(), actions._version, dtype)
        if bank.memo is not None and bank.memo[0] == key:
            return bank.memo[2]
        hit, where = bank.lookup(heading, actions, cache.valid)
        rows = torch.arange(len(where), device=where.device)
        # rotary is a rotation per pair: turning by (slot index − stored index) moves the keys to the slot's index;
        # the heading pairs stay (same heading)
        shift = torch.where(hit, cache.positions - cache.slots - bank.positions[rows, where], 0)
        cos, sin = (r[:, None, None] for r in self.rotary.tables(shift, dtype))             # (b 1 1 e)
        sel = hit[:, None, None, None]
        out = []
        for i in range(len(cache.keys)):
            k, v = cache.layer(i)
            k0 = torch.where(sel, rotate(bank.keys[i][rows, :, :, where].to(k.dtype), cos, sin), k[:, :, :, 0])
            v0 = torch.where(sel, bank.values[i][rows, :, :, where].to(v.dtype), v[:, :, :, 0])
            out.append((torch.cat([k0[:, :, :, None], k[:, :, :, 1:]], 3),
                        torch.cat([v0[:, :, :, None], v[:, :, :, 1:]], 3)))
        valid = torch.cat([(cache.valid[:, 0] | hit)[:, None], cache.valid[:, 1:]], 1)
        # the memo holds ``actions`` itself, so its storage (the key's address) cannot be reused meanwhile
        bank.memo = (key, actions, (out, valid))
        return out, valid

    def _frame_pass(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor, cache: LatteCache,
                    logits: bool = True) -> tuple[LatteOutput, list[tuple[torch.Tensor, torch.Tensor]],
                                                  torch.Tensor | None]:
        if cache.batch_size != tokens.shape[0]:
            raise MaskFlowError(f"cache holds {cache.batch_size} rollouts but {tokens.shape[0]} frames were given")
        tokens, t, actions = tokens[:, None], t.reshape(-1, 1), actions.reshape(-1, 1)
        self.validate(tokens, t, actions)
        x = self.embed(tokens)
        c = self.condition(t, actions).to(x.dtype)
        # the new frame's rotary tables at its own index (and heading) in each rollout, (b 1 1 1 e) against (b p H 1 e)
        turns = self.turns(actions[:, 0])
        heading = None if turns is None else cache.headings + turns
        cos, sin = (r[:, None, None, None] for r in self.rotary.tables(cache.positions, x.dtype, heading))
        new_kv = []
        if cache.bank is not None and cache.slots:
            past, mask = self._recalled(cache, heading, actions[:, 0], x.dtype)
        else:
            past, mask = [cache.layer(i) for i in range(len(self.temporal))], cache.valid
        for layer, (sblk, tblk) in enumerate(zip(self.spatial, self.temporal)):
            x = sblk(x, c)
            x, kv = tblk(x, c, cos, sin, past=past[layer], past_mask=mask)
            new_kv.append(kv)
        if not logits:           # a commit needs the keys/values and the frame heads, not the V-way logits
            reward, done = self.frame_heads(x)
            return LatteOutput(None, reward, done), new_kv, heading
        return self.outputs(x, c), new_kv, heading

    def forward_new_frame(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor,
                          cache: LatteCache) -> LatteOutput:
        """One new frame against the cache, which is not modified.

        tokens (b h w), t (b,), actions (b,) → LatteOutput with f = 1: logits (b 1 h w v), heads (b 1).
        """
        return self._frame_pass(tokens, t, actions, cache)[0]

    def commit_frame(self, tokens: torch.Tensor, actions: torch.Tensor, cache: LatteCache,
                     logits: bool = True) -> LatteOutput:
        """Run a finished frame (t = 1) once and append its temporal keys/values to ``cache``
        (evicting the oldest beyond max_frames − 1). tokens (b h w), actions (b,) → LatteOutput (f = 1),
        whose reward/done logits are the clean-frame predictions for this frame; ``logits=False`` skips
        the token logits (then ``None``), which a rollout's commit never reads."""
        ones = torch.ones(tokens.shape[0], device=tokens.device)
        out, kv, heading = self._frame_pass(tokens, ones, actions, cache, logits=logits)
        cache.append(kv, heading, actions)
        return out


def describe(model: Latte) -> str:
    """One line: size, parameter count and layout, printed at the start of training."""
    c = model.cfg
    return (f"Latte d={c.dim} depth={c.depth}x(spatial+temporal) heads={c.heads} window={c.max_frames} "
            f"V={c.vocab_size} grid={c.token_grid} temporal={c.temporal} actions={c.num_actions}: "
            f"{model.num_parameters() / 1e6:.2f}M parameters")
