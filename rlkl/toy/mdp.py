"""Tabular autoregressive MDPs whose responses can all be enumerated.

A `TreeMDP` is a distribution over prompts x (index 0..P−1), a vocabulary of V tokens, a horizon T and,
optionally, an EOS token. A response is a token sequence y = (a_1..a_L), 1 ≤ L ≤ T, that *terminates*:
either a_L = EOS (and EOS occurs nowhere else) or L = T (the horizon truncates; the last token may then be
any token, EOS included). Without EOS every response has length T and there are V^T of them.

States (the tree's internal nodes) are the non-terminated prefixes s = (x, a_<t) with 0 ≤ t < T; every
response visits exactly one node per token. Rewards are given per (prompt, response), binary (a verifier)
or real.

**Enumeration order and array layout** (binding; reward tables are laid out this way):

* Without EOS: response n ↔ the base-V digits of n, first token most significant, i.e. row-major order of
  an array of shape ``[V] * T``. So a reward table may be given as ``[P, N]`` with N = V^T or as
  ``[P, V, ..., V]`` (T axes: ``rewards[x, a_1, ..., a_T]``).
* With EOS: responses are ordered by length L = 1..T, then lexicographically by token id. Lengths L < T
  contribute (V−1)^(L−1) responses (non-EOS tokens then EOS), length T contributes (V−1)^(T−1)·V. The
  reward table is ``[P, N]`` in this order (see `TreeMDP.responses()` to list them).
* Enumerated tensors use the `[B, T]` layout of `rlkl/`: ``tokens[n, t]`` (0 where padded), ``mask[n, t]``
  (True for the L real tokens), prompt-major rows ``b = x·N + n`` when all prompts are stacked.
* Node ids: the node at depth t whose prefix has non-EOS token ranks (c_1..c_t) (rank = index among the
  non-EOS tokens, base b = V or V−1) has id ``sum_{s<t} b^s + sum_i c_i b^(t−i)`` — depth-major, then
  lexicographic. ``node_index[n, t]`` is the node at which token t of response n is emitted.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

Tensor = torch.Tensor

#: default cap on prompts × responses × horizon token slots of an enumeration (~40 bytes each in total)
DEFAULT_MAX_TOKEN_SLOTS = 60_000_000


def count_responses(vocab_size: int, horizon: int, eos: bool) -> int:
    """Number N of terminated responses of a tree.

    N = V^T without EOS; with EOS N = sum_{L=1}^{T−1} (V−1)^(L−1) + (V−1)^(T−1)·V.

    Args:
      vocab_size: V (EOS included when ``eos``).
      horizon: T ≥ 1.
      eos: whether one of the V tokens is EOS.
    Returns:
      N as a Python int (exact, no allocation).
    """
    if not eos:
        return vocab_size**horizon
    b = vocab_size - 1
    return sum(b ** (L - 1) for L in range(1, horizon)) + b ** (horizon - 1) * vocab_size


def count_nodes(vocab_size: int, horizon: int, eos: bool) -> int:
    """Number of internal nodes (non-terminated prefixes) per prompt: sum_{t<T} b^t, b = V or V−1."""
    b = vocab_size - 1 if eos else vocab_size
    return sum(b**t for t in range(horizon))


@dataclass(frozen=True)
class Enumeration:
    """All terminated responses of a tree (shared by every prompt).

    Attributes:
      tokens: ``[N, T]`` long, token ids, 0 where padded.
      mask: ``[N, T]`` bool, True on the response's tokens.
      lengths: ``[N]`` long, L(y).
      node_index: ``[N, T]`` long, node at which each token is emitted (0 where padded).
      node_depth: ``[S]`` long, depth t of each node (S = number of nodes).
      node_parent: ``[S]`` long, parent node (−1 for the root).
      node_parent_token: ``[S]`` long, token leading from the parent to the node (−1 for the root).
      num_nodes: S.
    """

    tokens: Tensor
    mask: Tensor
    lengths: Tensor
    node_index: Tensor
    node_depth: Tensor
    node_parent: Tensor
    node_parent_token: Tensor
    num_nodes: int

    @property
    def num_responses(self) -> int:
        return int(self.tokens.shape[0])


def _digits(n: Tensor, base: int, width: int) -> Tensor:
    """Base-``base`` digits of ``n`` (most significant first), shape ``[len(n), width]``."""
    if width == 0:
        return torch.zeros(n.shape[0], 0, dtype=torch.long)
    powers = base ** torch.arange(width - 1, -1, -1, dtype=torch.long)
    return (n.unsqueeze(1) // powers) % base


def _enumerate(vocab_size: int, horizon: int, eos_token: Optional[int]) -> Enumeration:
    V, T = vocab_size, horizon
    if eos_token is None:
        b = V
        non_eos = torch.arange(V, dtype=torch.long)
    else:
        b = V - 1
        non_eos = torch.tensor([a for a in range(V) if a != eos_token], dtype=torch.long)
    rank_of = torch.full((V,), -1, dtype=torch.long)
    rank_of[non_eos] = torch.arange(b, dtype=torch.long)
    # ---- responses
    if eos_token is None:
        tokens = _digits(torch.arange(V**T, dtype=torch.long), V, T)
        lengths = torch.full((V**T,), T, dtype=torch.long)
    else:
        blocks, lens = [], []
        for L in range(1, T + 1):
            if L < T:
                ranks = _digits(torch.arange(b ** (L - 1), dtype=torch.long), b, L - 1)
                body = non_eos[ranks] if ranks.numel() else ranks
                last = torch.full((body.shape[0], 1), eos_token, dtype=torch.long)
            else:
                # the prefix (T−1 non-EOS tokens) × any last token, lexicographic by token id
                ranks = _digits(torch.arange(b ** (T - 1), dtype=torch.long), b, T - 1)
                prefix = non_eos[ranks] if ranks.numel() else ranks
                body = prefix.repeat_interleave(V, dim=0)
                last = torch.arange(V, dtype=torch.long).repeat(prefix.shape[0]).unsqueeze(1)
            seq = torch.cat([body, last], dim=1)
            pad = torch.zeros(seq.shape[0], T - L, dtype=torch.long)
            blocks.append(torch.cat([seq, pad], dim=1))
            lens.append(torch.full((seq.shape[0],), L, dtype=torch.long))
        tokens = torch.cat(blocks, 0)
        lengths = torch.cat(lens, 0)
    N = tokens.shape[0]
    pos = torch.arange(T, dtype=torch.long)
    mask = pos.unsqueeze(0) < lengths.unsqueeze(1)
    # ---- node index of each emitted token: node of prefix a_<t
    offsets = torch.tensor([sum(b**s for s in range(t)) for t in range(T + 1)], dtype=torch.long)
    node_index = torch.zeros(N, T, dtype=torch.long)
    code = torch.zeros(N, dtype=torch.long)  # mixed-radix code of the prefix so far
    for t in range(T):
        node_index[:, t] = torch.where(mask[:, t], offsets[t] + code, torch.zeros_like(code))
        r = rank_of[tokens[:, t]].clamp_min(0)
        code = code * b + r
    # ---- node table
    S = int(offsets[T])
    node_depth = torch.zeros(S, dtype=torch.long)
    node_parent = torch.full((S,), -1, dtype=torch.long)
    node_parent_token = torch.full((S,), -1, dtype=torch.long)
    for t in range(1, T):
        ids = torch.arange(offsets[t], offsets[t + 1], dtype=torch.long)
        local = ids - offsets[t]
        node_depth[ids] = t
        node_parent[ids] = offsets[t - 1] + local // b
        node_parent_token[ids] = non_eos[local % b]
    return Enumeration(tokens, mask, lengths, node_index, node_depth, node_parent, node_parent_token, S)


@dataclass(frozen=True, eq=False)
class TreeMDP:
    """Prompts × token trees with a reward per (prompt, response). Layout: see the module docstring.

    Attributes:
      prompt_probs: ``[P]`` float64, the prompt distribution ρ(x) (sums to 1).
      vocab_size: V (EOS included when ``eos_token`` is set).
      horizon: T, the maximal response length.
      rewards: ``[P, N]`` float64 reward table in enumeration order.
      eos_token: id of the EOS token, or None for fixed-length responses.
      name: a short label used in audit records.
    """

    prompt_probs: Tensor
    vocab_size: int
    horizon: int
    rewards: Tensor
    eos_token: Optional[int] = None
    name: str = "mdp"
    max_token_slots: int = DEFAULT_MAX_TOKEN_SLOTS
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def check_size(vocab_size: int, horizon: int, num_prompts: int, eos: bool,
                   max_token_slots: int = DEFAULT_MAX_TOKEN_SLOTS) -> int:
        """Raise ValueError (with the size) when enumerating would not fit in memory; return N.

        The enumeration holds P·N·T token slots (tokens, mask, node ids, log-probs of several policies,
        gradients: ~40 bytes per slot).
        """
        if vocab_size < 2 or (eos and vocab_size < 2):
            raise ValueError(f"vocab_size must be ≥ 2, got {vocab_size}")
        if horizon < 1:
            raise ValueError(f"horizon must be ≥ 1, got {horizon}")
        if num_prompts < 1:
            raise ValueError(f"need at least one prompt, got {num_prompts}")
        n = count_responses(vocab_size, horizon, eos)
        slots = num_prompts * n * horizon
        if slots > max_token_slots:
            raise ValueError(
                f"enumeration too large: vocab_size={vocab_size}, horizon={horizon}, eos={eos} gives "
                f"N={n:,} responses per prompt; × {num_prompts} prompt(s) × horizon {horizon} = {slots:,} token "
                f"slots (~{slots * 40 / 1e9:.2f} GB) > limit {max_token_slots:,}. Reduce vocab_size/horizon/prompts "
                f"or pass a larger max_token_slots."
            )
        return n

    def __post_init__(self) -> None:
        V, T = int(self.vocab_size), int(self.horizon)
        if not isinstance(self.prompt_probs, Tensor) or self.prompt_probs.ndim != 1:
            raise ValueError(f"prompt_probs must be a 1-D tensor [P], got {type(self.prompt_probs).__name__} "
                             f"{getattr(self.prompt_probs, 'shape', None)}")
        P = self.prompt_probs.shape[0]
        eos = self.eos_token is not None
        if eos and not (0 <= int(self.eos_token) < V):
            raise ValueError(f"eos_token must be in [0, {V}), got {self.eos_token}")
        n = TreeMDP.check_size(V, T, P, eos, self.max_token_slots)
        pp = self.prompt_probs
        if not torch.is_floating_point(pp) or not torch.isfinite(pp).all() or (pp < 0).any():
            raise ValueError("prompt_probs must be finite, non-negative floats")
        if abs(float(pp.sum()) - 1.0) > 1e-9:
            raise ValueError(f"prompt_probs must sum to 1, got {float(pp.sum())!r}")
        r = self.rewards
        if not isinstance(r, Tensor):
            raise ValueError(f"rewards must be a tensor, got {type(r).__name__}")
        if r.shape != (P, n):
            raise ValueError(
                f"rewards must have shape [P, N] = [{P}, {n}] (N = number of terminated responses for "
                f"vocab_size={V}, horizon={T}, eos={eos}), got {tuple(r.shape)}"
            )
        if not torch.is_floating_point(r) or not torch.isfinite(r).all():
            raise ValueError("rewards must be finite floats")
        object.__setattr__(self, "prompt_probs", pp.to(torch.float64))
        object.__setattr__(self, "rewards", r.to(torch.float64))

    @classmethod
    def from_arrays(cls, rewards, vocab_size: int, horizon: int, prompt_probs=None, eos_token: Optional[int] = None,
                    name: str = "arrays", max_token_slots: int = DEFAULT_MAX_TOKEN_SLOTS) -> "TreeMDP":
        """Build from an explicit reward table.

        Args:
          rewards: ``[P, N]`` in enumeration order, or (no EOS) ``[P, V, ..., V]`` with T token axes
            (``rewards[x, a_1, .., a_T]``); a 1-D ``[N]`` table means one prompt. Array-likes accepted.
          vocab_size, horizon, eos_token: the tree.
          prompt_probs: ``[P]`` (default uniform).
        Returns:
          A `TreeMDP`. Raises ValueError on a shape that is not ``[P, N]`` / ``[P] + [V]*T``.
        """
        r = torch.as_tensor(rewards, dtype=torch.float64)
        V, T = int(vocab_size), int(horizon)
        eos = eos_token is not None
        if eos and not (0 <= int(eos_token) < V):
            raise ValueError(f"eos_token must be in [0, {V}), got {eos_token}")
        n = count_responses(V, T, eos)
        if r.ndim == 1:
            r = r.unsqueeze(0)
        if r.ndim == T + 1 and not eos and T > 1 and tuple(r.shape[1:]) == (V,) * T:
            r = r.reshape(r.shape[0], n)
        elif r.ndim != 2 or r.shape[1] != n:
            want = f"[P, {n}]" + ("" if eos else f" or [P{', ' + str(V)}" + f", {V}" * (T - 1) + "]")
            raise ValueError(f"reward table has shape {tuple(r.shape)}; expected {want} for vocab_size={V}, "
                             f"horizon={T}, eos={eos}")
        P = r.shape[0]
        pp = (torch.full((P,), 1.0 / P, dtype=torch.float64) if prompt_probs is None
              else torch.as_tensor(prompt_probs, dtype=torch.float64))
        if pp.shape != (P,):
            raise ValueError(f"prompt_probs must have shape [{P}] (one per reward row), got {tuple(pp.shape)}")
        return cls(pp, V, T, r, eos_token, name, max_token_slots)

    @classmethod
    def from_function(cls, reward_fn: Callable, vocab_size: int, horizon: int, num_prompts: int = 1,
                      prompt_probs=None, eos_token: Optional[int] = None, vectorized: bool = False,
                      name: str = "function", max_token_slots: int = DEFAULT_MAX_TOKEN_SLOTS) -> "TreeMDP":
        """Build from a reward function.

        Args:
          reward_fn: ``reward_fn(prompt: int, response: tuple[int, ...]) -> float`` (called once per
            (prompt, response)), or with ``vectorized=True``
            ``reward_fn(prompt: int, tokens [N, T] long, mask [N, T] bool) -> [N]``.
        Returns:
          A `TreeMDP` whose reward table is the function evaluated on the enumeration.
        """
        V, T = int(vocab_size), int(horizon)
        TreeMDP.check_size(V, T, num_prompts, eos_token is not None, max_token_slots)
        enum = _enumerate(V, T, eos_token)
        rows = []
        for x in range(num_prompts):
            if vectorized:
                vals = torch.as_tensor(reward_fn(x, enum.tokens, enum.mask), dtype=torch.float64)
            else:
                vals = torch.tensor([float(reward_fn(x, tuple(int(a) for a in enum.tokens[n, : int(enum.lengths[n])])))
                                     for n in range(enum.num_responses)], dtype=torch.float64)
            rows.append(vals.reshape(-1))
        mdp = cls.from_arrays(torch.stack(rows), V, T, prompt_probs, eos_token, name, max_token_slots)
        mdp._cache["enum"] = enum
        return mdp

    @classmethod
    def random(cls, vocab_size: int = 3, horizon: int = 3, num_prompts: int = 1, eos: bool = False,
               reward: str = "binary", success_rate: float = 0.4, seed: int = 0, uniform_prompts: bool = False,
               ensure_mixed: bool = True, max_token_slots: int = DEFAULT_MAX_TOKEN_SLOTS) -> "TreeMDP":
        """Seeded random tree.

        Args:
          vocab_size, horizon, num_prompts: sizes (EOS is token ``vocab_size − 1`` when ``eos``).
          reward: ``"binary"`` (each response correct with prob ``success_rate``) or ``"real"``
            (i.i.d. N(0, 1) rewards).
          seed: seed of the torch.Generator used for rewards and prompt probabilities.
          uniform_prompts: uniform ρ(x) instead of a random (Dirichlet(1)) one.
          ensure_mixed: binary rewards: every prompt gets at least one correct and one incorrect response
            (so success probabilities are in (0, 1) and the arcsin utility is differentiable).
        Returns:
          A `TreeMDP` named like ``V3T3P1-eos-binary-s0``.
        """
        if reward not in ("binary", "real"):
            raise ValueError(f"reward must be 'binary' or 'real', got {reward!r}")
        eos_token = vocab_size - 1 if eos else None
        n = TreeMDP.check_size(vocab_size, horizon, num_prompts, eos, max_token_slots)
        g = torch.Generator().manual_seed(int(seed))
        if reward == "binary":
            r = (torch.rand(num_prompts, n, generator=g, dtype=torch.float64) < success_rate).to(torch.float64)
            if ensure_mixed and n >= 2:
                for x in range(num_prompts):
                    if r[x].min() == r[x].max():
                        i, j = torch.randperm(n, generator=g)[:2].tolist()
                        r[x, i], r[x, j] = 1.0, 0.0
        else:
            r = torch.randn(num_prompts, n, generator=g, dtype=torch.float64)
        if uniform_prompts:
            pp = torch.full((num_prompts,), 1.0 / num_prompts, dtype=torch.float64)
        else:
            e = -torch.log(torch.rand(num_prompts, generator=g, dtype=torch.float64).clamp_min(1e-12))
            pp = e / e.sum()
        name = f"V{vocab_size}T{horizon}P{num_prompts}{'-eos' if eos else ''}-{reward}-s{seed}"
        return cls(pp, vocab_size, horizon, r, eos_token, name, max_token_slots)

    # ------------------------------------------------------------------ queries
    @property
    def num_prompts(self) -> int:
        return int(self.prompt_probs.shape[0])

    @property
    def num_responses(self) -> int:
        return int(self.rewards.shape[1])

    @property
    def has_eos(self) -> bool:
        return self.eos_token is not None

    @property
    def num_nodes(self) -> int:
        return count_nodes(self.vocab_size, self.horizon, self.has_eos)

    @property
    def is_binary(self) -> bool:
        """Whether every reward is 0 or 1 (a verifier)."""
        r = self.rewards
        return bool(((r == 0) | (r == 1)).all())

    @property
    def fixed_length(self) -> bool:
        """Whether every response has length T (no EOS, or EOS with T = 1)."""
        return (not self.has_eos) or self.horizon == 1

    def enumerate(self) -> Enumeration:
        """The (cached) enumeration of all terminated responses; see the module docstring for the layout."""
        if "enum" not in self._cache:
            self._cache["enum"] = _enumerate(self.vocab_size, self.horizon, self.eos_token)
        return self._cache["enum"]

    def responses(self) -> list[tuple[int, ...]]:
        """All responses as tuples of token ids, in enumeration order."""
        e = self.enumerate()
        return [tuple(int(a) for a in e.tokens[n, : int(e.lengths[n])]) for n in range(e.num_responses)]

    def stacked(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All prompts stacked prompt-major: ``(prompt_index [P·N], tokens [P·N, T], mask [P·N, T], rewards [P·N])``."""
        e = self.enumerate()
        P, N = self.num_prompts, self.num_responses
        prompt_index = torch.arange(P).repeat_interleave(N)
        return prompt_index, e.tokens.repeat(P, 1), e.mask.repeat(P, 1), self.rewards.reshape(-1)

    def with_rewards(self, rewards, name: Optional[str] = None) -> "TreeMDP":
        """Same tree and prompts with another reward table (``[P, N]``)."""
        r = torch.as_tensor(rewards, dtype=torch.float64)
        m = TreeMDP(self.prompt_probs, self.vocab_size, self.horizon, r, self.eos_token, name or self.name,
                    self.max_token_slots)
        if "enum" in self._cache:
            m._cache["enum"] = self._cache["enum"]
        return m

    def describe(self) -> dict:
        """A JSON-able summary (used as the ``mdp`` field of audit records)."""
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "horizon": self.horizon,
            "num_prompts": self.num_prompts,
            "eos": self.has_eos,
            "num_responses": self.num_responses,
            "binary": self.is_binary,
        }


#: below this many token slots one intra-op thread is faster (thread-pool wake-ups dominate tiny tensor ops)
SMALL_PROBLEM_SLOTS = 200_000


#: seconds: the time constant of the kernel's 1-minute load average (an exponential average, sampled every 5 s)
LOAD_TAU = 60.0


def _process_start() -> float:
    """When this process started, in `time.monotonic` seconds (Linux: /proc/self/stat; elsewhere: this module's
    import)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime (after the comm field)
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()


class _OwnLoad:
    """This process's share of the 1-minute load average, tracked as the kernel tracks the load: an exponential
    average (τ = `LOAD_TAU`) of its busy threads — its CPU seconds (all threads) per wall second between two reads
    — started at 0 when the process started. Each call updates it and returns it."""

    def __init__(self):
        self.t, self.cpu, self.value = _process_start(), 0.0, 0.0

    def __call__(self) -> float:
        now, cpu = time.monotonic(), time.process_time()
        dt = now - self.t
        if dt > 0:
            rate = max(0.0, (cpu - self.cpu) / dt)  # busy threads over the interval
            decay = math.exp(-dt / LOAD_TAU)
            self.value = self.value * decay + rate * (1.0 - decay)
            self.t, self.cpu = now, cpu
        return self.value


_OWN_LOAD: list = []  # the one `_OwnLoad`, built on first use (it counts from the process's start either way)


def _own_load() -> float:
    """This process's share of the 1-minute load average (`_OwnLoad`; read only where /proc is not)."""
    if not _OWN_LOAD:
        _OWN_LOAD.append(_OwnLoad())
    return _OWN_LOAD[0]()


def _own_running(proc: str) -> set[str]:
    """This process's threads in state R now (their ids; /proc/self/task/*/stat, the reading thread included)."""
    tasks = os.path.join(proc, "self", "task")
    running = set()
    for tid in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, tid, "stat")) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "R":  # the state, after the (comm) field
                    running.add(tid)
        except OSError:  # the thread ended meanwhile
            continue
    return running


def _others_running(proc: str = "/proc") -> Optional[int]:
    """Runnable threads of other processes right now (Linux): the kernel's count of runnable threads
    (/proc/loadavg, field 4) less this process's threads in state R just before or just after that read (a pool
    thread ending its spin between the reads still counts as this process's); None where /proc cannot be read.
    ``proc``: the procfs root (a test's fake)."""
    try:
        before = _own_running(proc)
        with open(os.path.join(proc, "loadavg")) as f:
            running = int(f.read().split()[3].split("/")[0])
        return max(0, running - len(before | _own_running(proc)))
    except (OSError, ValueError, IndexError):
        return None


def other_cores_busy() -> bool:
    """True when other processes hold the other cores: a pool of intra-op threads then waits on preempted workers
    (measured: 2 threads 2.4× slower than 1 on a loaded 2-core machine, ``rlkl bench exact_engine``).

    Linux: other processes' runnable threads (`_others_running`) cover the other cores (>= cores − 1) in three
    reads 2 ms apart — a busy process stays runnable, a blip (a kernel thread) does not; an idle machine costs one
    read. No lag, and this process's own threads never count. Elsewhere: the 1-minute load average less this
    process's share of it (`_OwnLoad`) is >= cores − 1.5. The plain load average counted the engine's own threads:
    after a minute of its own 2-thread work (load → 2) it read as a busy machine and dropped to 1 thread
    (measured: after 62 s of engine calls)."""
    cores = os.cpu_count() or 1
    n = _others_running()
    if n is not None:
        for _ in range(2):
            if n < cores - 1:
                return False
            time.sleep(0.002)
            n = _others_running()
        return n >= cores - 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform: assume idle
        return False
    return load - _own_load() >= cores - 1.5


@contextlib.contextmanager
def threads_for(mdp: "TreeMDP"):
    """Run an enumeration on one intra-op thread (restored afterwards) when it is small or when the machine's other
    cores are busy (`other_cores_busy`); a large one on an idle machine keeps the setting."""
    slots = mdp.num_prompts * mdp.num_responses * mdp.horizon
    prev = torch.get_num_threads()
    if prev == 1 or (slots >= SMALL_PROBLEM_SLOTS and not other_cores_busy()):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
