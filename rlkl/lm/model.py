"""A tiny decoder-only transformer (nanoGPT style), small enough to RL-train on a laptop CPU.

One file, read top to bottom: config -> attention -> MLP -> block -> GPT (forward, log-probs, sampling).
Sequences are short (tens of tokens) and the vocabulary is tiny (tens of symbols), so

- sampling keeps a small key/value cache per block (``use_cache=False`` recomputes the prefix instead),
- the G responses to one prompt share its prefix: the prompt positions are computed once per group, when
  sampling and when scoring (:func:`shared_prefix_logits`, forward and backward),
- every quantity that needs the full softmax (exact entropy, exact KL to the reference) is affordable.

Padding convention: prompts of one task have a fixed length and responses are right-padded after their
EOS token, so a causal mask is all the masking the model needs (padding never influences real tokens).

Device-agnostic: :func:`default_device` picks ``cuda`` when present, else ``cpu``; :func:`autocast`
turns on bf16 autocast on CUDA only (CPU runs stay float32, which the exact-resume guarantee needs).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of the tiny GPT."""

    vocab_size: int = 16
    """Number of token ids (the task's tokenizer decides it)."""
    block_size: int = 32
    """Longest sequence (prompt + response) the model accepts; sets the size of the position table."""
    n_layer: int = 2
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide ``d_model``."""
    d_model: int = 64
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout probability (0 keeps training deterministic; RL runs use 0)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head != 0:
            raise ValueError(f"GPTConfig.n_head ({self.n_head}) must divide d_model ({self.d_model})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: dict | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, L, D]`` -> ``[B, L, D]``: causal attention, or over a cache (see :class:`GPT`), or under
        ``attn_mask [L, L]`` (bool, True = may attend; a packed layout, :class:`PackedLayout`) instead of causal."""
        B, L, D = x.shape  # batch, sequence length, width
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)  # [B, L, 3D] (= self.qkv(x), without the module call)
        qkv = qkv.view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # [3, B, H, L, D/H]
        q, k, v = qkv.unbind(0)  # 3 x [B, H, L, D/H] (the strides of split + view + transpose)
        causal, mask = attn_mask is None, attn_mask
        if cache is not None and "k_buf" in cache:  # decoding: write into the preallocated buffers (no grad)
            past = cache["len"]
            cache["k_buf"][past : past + L] = k.permute(2, 0, 1, 3)  # [L, B, H, D/H] (buffers are position-major)
            cache["v_buf"][past : past + L] = v.permute(2, 0, 1, 3)
            cache["len"] = past + L
            if L == 1 and x.device.type == "cpu" and not (self.training and self.dropout > 0):
                y = _decode_attention(q[:, :, 0], cache["k_buf"][: past + 1], cache["v_buf"][: past + 1])  # [B, H, D/H]
                return F.linear(y.reshape(B, 1, D), self.proj.weight, self.proj.bias)  # [B, 1, D]
            k, v = (cache[f"{name}_buf"][: past + L].permute(1, 2, 0, 3) for name in "kv")  # [B, H, past + L, D/H]
            causal = False  # new query j sees every cached position and new positions <= j
            if L > 1:
                mask = _continuation_mask(L, past, x.device)  # [L, past + L]
        elif cache is not None:  # append to the keys/values of the earlier (cached) positions
            if "k" in cache:
                past = cache["k"].shape[2]
                k = torch.cat([cache["k"], k], dim=2)  # [B, H, past + L, D/H]
                v = torch.cat([cache["v"], v], dim=2)  # [B, H, past + L, D/H]
                causal = False  # new query j sees every cached position and new positions <= j
                if L > 1:
                    mask = _continuation_mask(L, past, x.device)  # [L, past + L]
            cache["k"], cache["v"] = k, v
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal)  # [B, H, L, D/H]
        y = y.transpose(1, 2).contiguous().view(B, L, D)  # [B, L, D]
        return F.linear(y, self.proj.weight, self.proj.bias)  # [B, L, D] (= self.proj(y))


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query per row over position-major keys/values: ``q [B, H, d]``, ``k``/``v`` ``[T, B, H, d]`` ->
    ``[B, H, d]`` = softmax_T(q·k / √d) · v, as ``scaled_dot_product_attention`` (up to float round-off).

    On CPU the reductions over the short position axis T run along the leading axis, ~2.5x faster than the
    attention kernel's B·H tiny problems at decoding sizes (B·H = 512, T <= 10: ~55 vs ~140 µs).
    """
    scores = (k * q).sum(-1) * (q.shape[-1] ** -0.5)  # [T, B, H]
    return (torch.softmax(scores, dim=0).unsqueeze(-1) * v).sum(0)  # [B, H, d]


@functools.lru_cache(maxsize=64)
def _continuation_mask(L: int, past: int, device: torch.device) -> torch.Tensor:
    """``[L, past + L]`` bool: new query j sees the ``past`` cached positions and new positions <= j (read-only).

    Always a plain tensor (never an inference tensor, even when first built under ``torch.inference_mode``), so
    a forward with autograd may save it for its backward.
    """
    with torch.inference_mode(False):
        return torch.ones(L, past + L, dtype=torch.bool, device=device).tril(diagonal=past)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(F.linear(x, self.fc.weight, self.fc.bias))  # [B, L, 4D] (= gelu(self.fc(x)))
        return F.linear(h, self.proj.weight, self.proj.bias)  # [B, L, D] (= self.proj(h))


def _layer_norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``ln(x)`` without the module call: ``[..., D]`` -> ``[..., D]`` (exactly ``nn.LayerNorm.forward``)."""
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.drop.p == 0.0:  # the RL runs' case: the submodules' forwards called directly (no nn.Module
            # dispatch: at this size its per-call overhead is a visible share of a step), same ops and numbers
            x = x + self.attn.forward(_layer_norm(self.ln1, x), cache, attn_mask)  # [B, L, D]
            return x + self.mlp.forward(_layer_norm(self.ln2, x))  # [B, L, D]
        x = x + self.drop(self.attn(self.ln1(x), cache, attn_mask))  # [B, L, D]
        x = x + self.drop(self.mlp(self.ln2(x)))  # [B, L, D]
        return x


class GPT(nn.Module):
    """Decoder-only transformer with learned positions and a weight-tied output head."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying (nanoGPT)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of the residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, caches: list[dict] | None = None, start: int = 0,
                packed: "PackedLayout | None" = None) -> torch.Tensor:
        """Next-token logits for every position: ``idx [B, L]`` (long) -> ``logits [B, L, V]``.

        ``caches`` (one dict per block, filled in place) and ``start`` (position of ``idx[:, 0]``) feed ``idx``
        as a continuation of the cached positions: one token at a time when sampling, or a whole response
        after a shared prompt; ``packed`` reads each row of ``idx`` as a prompt followed by G continuations
        (:class:`PackedLayout`, :func:`shared_prefix_logits`); plain scoring calls ``model(idx)``.
        """
        B, L = idx.shape
        longest = start + L if packed is None else packed.longest
        if longest > self.cfg.block_size:
            raise ValueError(f"sequence length {longest} exceeds block_size {self.cfg.block_size}")
        pos = self.pos_emb.weight[start : start + L] if packed is None else self.pos_emb.weight[packed.positions]
        x = F.embedding(idx, self.tok_emb.weight) + pos  # [B, L, D] (= tok_emb(idx) + positions; the submodules'
        # forwards are called directly, as in Block.forward)
        mask = None if packed is None else packed.mask
        for i, block in enumerate(self.blocks):
            x = block.forward(x, None if caches is None else caches[i], mask)  # [B, L, D]
        x = _layer_norm(self.ln_f, x)  # [B, L, D]
        return F.linear(x, self.head.weight).float()  # [B, L, V] (= self.head(x); float32 even under bf16 autocast)


# ---------------------------------------------------------------------------------------------------
# Helpers used by SFT, the RL trainer and the metrics: response logits, log-probs and sampling.
# ---------------------------------------------------------------------------------------------------


def response_logits(model: nn.Module, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """Logits that predict each response token: ``prompts [B, P]``, ``responses [B, R]`` -> ``[B, R, V]``.

    Position ``P - 1 + t`` of the concatenated sequence predicts response token ``t``.
    """
    if prompts.ndim != 2 or responses.ndim != 2 or prompts.shape[0] != responses.shape[0]:
        raise ValueError(f"prompts [B, P] and responses [B, R] expected, got {tuple(prompts.shape)} and "
                         f"{tuple(responses.shape)}")
    P, R = prompts.shape[1], responses.shape[1]
    seq = torch.cat([prompts, responses], dim=1)  # [B, P + R]
    logits = model(seq[:, :-1])  # [B, P + R - 1, V]
    return logits[:, P - 1 : P - 1 + R]  # [B, R, V]


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``torch.log_softmax(logits, dim=-1)`` of ``logits [..., V]`` (same values), fast for a short vocabulary.

    On CPU with V <= 256 it runs on a transposed ``[V, N]`` copy along its leading axis — torch's CPU kernel
    along a short last axis is 2-5x slower (V = 13: ~100 vs ~22 µs for 512 rows) — and returns a ``[..., V]``
    view of that result (not contiguous). Differentiable. Elsewhere it is ``torch.log_softmax``.
    """
    V = logits.shape[-1]
    if logits.device.type != "cpu" or logits.ndim < 2 or V > 256:
        return torch.log_softmax(logits, dim=-1)
    flat_t = logits.reshape(-1, V).t().contiguous()  # [V, N]
    return torch.log_softmax(flat_t, dim=0).t().reshape(logits.shape)  # [..., V] (a view: strides (…, 1, N))


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token | prefix) of the given tokens: ``logits [B, R, V]``, ``tokens [B, R]`` -> ``[B, R]``."""
    logp_all = log_softmax(logits if temperature == 1.0 else logits / temperature)  # [B, R, V]
    return logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, R]


def expand_caches(caches: list[dict], group_size: int) -> None:
    """Repeat every cached key/value row ``group_size`` times, in place: ``[n, H, L, D/H]`` -> ``[n·G, H, L, D/H]``.

    Row i of the result continues cached row ``i // G`` (groups are contiguous, as ``repeat_interleave``).
    Differentiable: the gradient of the G copies sums into the shared prefix.
    """
    if group_size == 1:
        return
    for c in caches:
        c["k"] = c["k"].repeat_interleave(group_size, dim=0)
        c["v"] = c["v"].repeat_interleave(group_size, dim=0)


def expand_caches_for_decoding(caches: list[dict], group_size: int, extra: int) -> None:
    """Like :func:`expand_caches`, into preallocated buffers with room for ``extra`` more positions (in place).

    ``k``/``v`` ``[n, H, P, D/H]`` become position-major ``k_buf``/``v_buf`` ``[P + extra, n·G, H, D/H]`` (row
    i·G + g holds prompt row i) and ``len`` = P; each decoding step then writes its keys/values in place instead
    of concatenating a new cache. Not differentiable: for sampling under ``torch.no_grad()`` only.
    """
    for c in caches:
        for name in ("k", "v"):
            x = c.pop(name)  # [n, H, P, D/H]
            n, H, P, dh = x.shape
            buf = x.new_empty(P + extra, n, group_size, H, dh)  # [P + extra, n, G, H, D/H]
            buf[:P] = x.permute(2, 0, 1, 3).unsqueeze(2)  # the G rows of group i share prompt i's keys/values
            c[f"{name}_buf"] = buf.view(P + extra, n * group_size, H, dh)  # [P + extra, n·G, H, D/H]
        c["len"] = P


#: Scoring on CPU packs a prompt and its G continuations into one row (:class:`PackedLayout`) when those have at
#: most this many positions in all (G·(R−1)): one model pass over [n, P + G·(R−1)] instead of a prompt pass and
#: a continuation pass, and one attention problem per (prompt, head) — its extra, masked-out scores cost less
#: than G separate small attention problems there. Larger groups (the exact yardstick's enumerations, whose
#: masked scores grow as G²) and GPUs take the prompt pass + repeated cache route.
PACKED_MAX_ROWS = 64


@dataclass(frozen=True)
class PackedLayout:
    """A prompt of P tokens followed by G continuations of L tokens each, as one row of P + G·L positions.

    Packed position ``P + g·L + t`` holds token t of continuation g, at model position ``P + t``; it attends to
    the P prompt positions and to its own continuation's positions ``<= t``; prompt positions are causal.
    """

    positions: torch.Tensor  # [P + G·L] long: 0 .. P-1, then P + t for each (g, t)
    mask: torch.Tensor  # [P + G·L, P + G·L] bool, True = may attend
    longest: int  # P + L: the longest sequence a packed row stands for (the position table must cover it)


@functools.lru_cache(maxsize=64)
def _packed_layout(P: int, G: int, L: int, device: torch.device) -> PackedLayout:
    """The :class:`PackedLayout` of (P, G, L) on ``device`` (plain tensors, also when first built under
    ``torch.inference_mode``; read-only)."""
    with torch.inference_mode(False):
        t = torch.arange(L, device=device).repeat(G)  # [G·L] token index within its continuation
        g = torch.arange(G, device=device).repeat_interleave(L)  # [G·L] continuation index
        own = (g[:, None] == g[None, :]) & (t[None, :] <= t[:, None])  # [G·L, G·L]
        S = P + G * L
        mask = torch.zeros(S, S, dtype=torch.bool, device=device)
        mask[:P, :P] = torch.ones(P, P, dtype=torch.bool, device=device).tril()  # the prompt: causal
        mask[P:, :P] = True  # every continuation sees the whole prompt
        mask[P:, P:] = own
        positions = torch.cat([torch.arange(P, device=device), P + t])  # [S]
    return PackedLayout(positions, mask, P + L)


def shared_prefix_logits(model: nn.Module, prompts: torch.Tensor, responses: torch.Tensor,
                         group_size: int) -> torch.Tensor:
    """Response logits with each prompt's positions computed once for its G responses.

    ``prompts [n, P]`` (one per group), ``responses [n·G, R]`` (rows i·G … i·G+G−1 answer prompt i) ->
    ``[n·G, R, V]``, equal up to float round-off to ``response_logits(model, prompts.repeat_interleave(G, 0),
    responses)`` but with the prompt's share of the compute (and of the backward) divided by G. The prompt
    pass fills a key/value cache (``n`` rows), repeated G times; the responses (all but the last token) are then
    fed as one continuation that attends to the cache and causally to itself. On CPU with at most
    ``PACKED_MAX_ROWS`` response positions per group, each prompt and its G responses are one packed row instead
    (:class:`PackedLayout`): one pass, the same logits up to float round-off.
    Models other than :class:`GPT` (no cache) take the plain route.
    """
    n, P = prompts.shape
    if responses.ndim != 2 or responses.shape[0] != n * group_size:
        raise ValueError(f"responses must be [n·G, R] = [{n}·{group_size}, R], got {tuple(responses.shape)}")
    if group_size == 1:
        return response_logits(model, prompts, responses)
    if not isinstance(unwrap(model), GPT):
        return response_logits(model, prompts.repeat_interleave(group_size, dim=0), responses)
    L = responses.shape[1] - 1  # response positions fed to the model (the last token predicts nothing)
    if prompts.device.type == "cpu" and 0 < group_size * L <= PACKED_MAX_ROWS:
        packed = _packed_layout(P, group_size, L, prompts.device)
        seq = torch.cat([prompts, responses[:, :-1].reshape(n, group_size * L)], dim=1)  # [n, P + G·L]
        logits = model(seq, packed=packed)  # [n, P + G·L, V]
        first = logits[:, P - 1 : P].repeat_interleave(group_size, dim=0)  # [B, 1, V] predicts response token 0
        return torch.cat([first, logits[:, P:].reshape(n * group_size, L, -1)], dim=1)  # [B, R, V]
    caches = [{} for _ in unwrap(model).blocks]
    first = model(prompts, caches)[:, -1:, :]  # [n, 1, V] predicts response token 0
    first = first.repeat_interleave(group_size, dim=0)  # [B, 1, V]
    if responses.shape[1] == 1:
        return first
    expand_caches(caches, group_size)
    rest = model(responses[:, :-1], caches, start=P)  # [B, R - 1, V] predicts tokens 1 .. R-1
    return torch.cat([first, rest], dim=1)  # [B, R, V]


@torch.no_grad()
def sample(
    model: nn.Module,
    prompts: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    greedy: bool = False,
    use_cache: bool = True,
    group_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample ``group_size`` responses per prompt autoregressively until every row has emitted EOS.

    Args:
        prompts: ``[n, P]`` long; all prompts of a task have the same length.
        max_new_tokens: response budget R (a row that never emits EOS is truncated).
        eos_id: end-of-sequence token id; after it a row is padded with ``eos_id`` and masked out.
        generator: torch.Generator on the model's device (seeded by the caller; same seed, same samples).
        temperature: sampling temperature (the RL trainer always uses 1).
        greedy: take the arg-max instead of sampling.
        use_cache: keep each block's keys/values and feed one new token per step (same numbers up to
            float round-off as recomputing the whole prefix, which ``use_cache=False`` does).
        group_size: G responses per prompt (rows i·G … i·G+G−1 answer prompt i). With the cache, the prompt
            pass runs once per prompt and its cache is repeated G times (the samples share the prefix).

    Returns:
        ``responses [n·G, R]`` long, ``mask [n·G, R]`` bool (True up to and including the EOS token),
        ``logp [n·G, R]`` float32: log π(token) at the temperature used, 0 where the mask is False.
    """
    pick = _softmax_pick(generator, temperature, greedy)
    responses, mask, logp, _ = _generate(model, prompts, max_new_tokens, eos_id, use_cache, pick, group_size)
    return responses, mask, logp


def _softmax_pick(generator: torch.Generator | None, temperature: float = 1.0, greedy: bool = False):
    """``pick`` of :func:`_generate` for :func:`sample`: a draw from softmax(logits / τ) (or its arg-max)."""
    def pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        logp_all = log_softmax(logits if temperature == 1.0 else logits / temperature)  # [B, V]
        if greedy:
            tok = logp_all.argmax(dim=-1)  # [B]
        else:
            # contiguous: multinomial draws its exponentials in memory order (a strided input, another stream)
            tok = torch.multinomial(logp_all.exp().contiguous(), 1, generator=generator).squeeze(-1)  # [B]
        return tok, logp_all, None

    return pick


def _engine_pick(generator: torch.Generator | None, sampler):
    """``pick`` of :func:`_generate` for :func:`sample_engine`: a draw from q = ``sampler``(softmax(logits))."""
    def pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = sampler.transform(logits)  # [B, V] log q, kept, reported
        tok = torch.multinomial(out.log_q.exp(), 1, generator=generator).squeeze(-1)  # [B] from q
        return tok, out.log_reported, out.kept

    return pick


@torch.no_grad()
def sample_engine(model: nn.Module, prompts: torch.Tensor, max_new_tokens: int, eos_id: int,
                  generator: torch.Generator | None, sampler, use_cache: bool = True, group_size: int = 1,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample like an inference engine: each step draws from q = ``sampler``(softmax(logits)).

    ``sampler`` is an ``rlkl.sampling.Sampler`` (temperature, top-k/top-p/min-p with ties by token index, logits
    rounded to its dtype; applied to the float32 logits of this model's forward). ``prompts``, ``group_size``
    and the shared prefix as in :func:`sample`.

    Returns:
        ``responses [n·G, R]`` long, ``mask [n·G, R]`` bool, ``logp [n·G, R]`` float32: the log-probs the engine
        *reports* (log q, or the raw log softmax of its logits with ``logprobs="raw"``), 0 on padding, and
        ``kept [n·G, R, V]`` bool: the kept set at every position (all True on padding).
    """
    return _generate(model, prompts, max_new_tokens, eos_id, use_cache, _engine_pick(generator, sampler), group_size)


def _generate(model: nn.Module, prompts: torch.Tensor, max_new_tokens: int, eos_id: int, use_cache: bool, pick,
              group_size: int = 1):
    """The decoding loop of :func:`sample` / :func:`sample_engine`; ``pick(logits [B, V])`` returns the tokens
    ``[B]``, the log-probs to record ``[B, V]`` and the kept set ``[B, V]`` (or None)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    B, P = prompts.shape[0] * group_size, prompts.shape[1]
    device = prompts.device
    core = unwrap(model)
    caches = [{} for _ in core.blocks] if use_cache and isinstance(core, GPT) else None
    seq = prompts.repeat_interleave(group_size, dim=0) if caches is None else None  # [B, P] (no-cache route)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # [B] row has emitted EOS
    tokens, masks, logps, kepts = [], [], [], []
    for t in range(max_new_tokens):
        with autocast(device):
            if caches is None:
                logits = model(seq)[:, -1, :].float()  # [B, V] recompute the whole prefix
            elif t == 0:
                logits = core(prompts, caches)[:, -1, :].float()  # [n, V] one prompt pass per group
                logits = logits.repeat_interleave(group_size, dim=0)  # [B, V]
                expand_caches_for_decoding(caches, group_size, max_new_tokens - 1)  # (sampling is no-grad)
            else:
                logits = core(tokens[-1][:, None], caches, start=P + t - 1)[:, -1, :].float()  # [B, V]
        tok, logp_all, kept = pick(logits)
        tok = torch.where(done, torch.full_like(tok, eos_id), tok)  # [B] pad finished rows
        live = ~done  # [B]
        logps.append(torch.where(live, logp_all.gather(-1, tok[:, None]).squeeze(-1), 0.0))  # [B]
        if kept is not None:
            kepts.append(kept | done[:, None])  # [B, V] padding: everything "kept" (no cut to replay)
        tokens.append(tok)
        masks.append(live)
        done = done | (tok == eos_id)
        if seq is not None:
            seq = torch.cat([seq, tok[:, None]], dim=1)  # [B, P + t + 1]
        if bool(done.all()):
            break
    responses = torch.stack(tokens, dim=1)  # [B, R']  R' <= max_new_tokens
    mask = torch.stack(masks, dim=1)  # [B, R']
    logp = torch.stack(logps, dim=1)  # [B, R']
    kept_all = torch.stack(kepts, dim=1) if kepts else None  # [B, R', V]
    pad = max_new_tokens - responses.shape[1]
    if pad > 0:  # keep a fixed width R so batches from different steps have one shape
        responses = F.pad(responses, (0, pad), value=eos_id)
        mask = F.pad(mask, (0, pad), value=False)
        logp = F.pad(logp, (0, pad), value=0.0)
        if kept_all is not None:
            kept_all = F.pad(kept_all, (0, 0, 0, pad), value=True)
    return responses, mask, logp, kept_all


# ---------------------------------------------------------------------------------------------------
# Device, autocast, compile
# ---------------------------------------------------------------------------------------------------


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` -> :func:`default_device`; a CUDA request without a GPU raises ValueError."""
    if device in (None, "", "auto"):
        device = default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported by rlkl's trainer; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU stays float32 so resumed runs match bit for bit)."""
    dev = torch.device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when enabled (the state dict of the returned module is the original's)."""
    if not enabled:
        return model
    return torch.compile(model)  # type: ignore[return-value]


def unwrap(model: nn.Module) -> nn.Module:
    """The original module behind a ``torch.compile`` wrapper (for state dicts and checkpoints)."""
    return getattr(model, "_orig_mod", model)
