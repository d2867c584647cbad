"""Synthetic verifiable tasks, generated in-process (no downloads), with a seeded train/eval split.

Each task owns its tokenizer (a fixed character vocabulary, one token per character), its prompt
generator, its reference answers (used for SFT demonstrations) and its verifier (binary reward, and
optional partial credit). Every prompt of a task has the same length, so batches need no left padding;
responses end with the EOS symbol ``$`` and are right-padded with it.

Tasks
-----
``addition`` (difficulty d = number of digits of each operand)
    Operands a, b uniform in [0, 10^d). Digits are written least-significant first ("reversed"), which
    makes the carry local and the task learnable by a tiny transformer.
    Prompt: ``rev_d(a) + rev_d(b) =`` with zero padding to d digits, length 2d + 2.
    Answer: ``rev(a + b) $`` without leading zeros (so 1..d+1 digits; length varies), at most d + 2 tokens.
    Example (d = 2): a = 47, b = 85 -> prompt ``74+58=``, answer ``231$`` (132 reversed).
    Vocabulary: ``0123456789+=$`` (ids 0..12; digit k has id k).

``sort`` (difficulty n = list length)
    n digits uniform in 0..9. Prompt: the digits followed by ``:``, length n + 1.
    Answer: the digits in non-decreasing order followed by ``$``, n + 1 tokens.
    Example (n = 4): prompt ``3914:``, answer ``1349$``.
    Vocabulary: ``0123456789:$`` (ids 0..11; digit k has id k).

``divisor`` (difficulty d = number of digits of N) — a task with **many correct answers**
    N uniform in [1, 10^d). Prompt: N zero-padded to d digits followed by ``:``, length d + 1.
    Answer: any divisor of N, without leading zeros, followed by ``$`` (at most d + 1 tokens). Every divisor
    earns reward 1, so the answers of one prompt tie in reward and differ only in π_ref's odds; the responses
    are short enough that the LM's whole sequence distribution can be enumerated (``rlkl.lm.exact``).
    Demonstrations (SFT) draw the k-th smallest divisor with probability ∝ 1/k (so π_ref prefers small ones).
    Example (d = 2): N = 12 -> prompt ``12:``, answers ``1$ 2$ 3$ 4$ 6$ 12$``.
    Vocabulary: ``0123456789:$`` (ids 0..11; digit k has id k). No partial credit.

Verifier: reward 1 when the decoded response (tokens before the first EOS) equals the answer *and*
the EOS was emitted within the budget, else 0. Partial credit (optional): fraction of answer positions
whose digit is right (a response of the wrong length is compared position by position up to the longer
length, so missing or extra digits count as wrong).

Split: a problem is an eval problem iff ``hash(key, split_seed) mod 1000 < 1000 * eval_fraction``, where
``key`` is the problem as an integer (``a * 10^d + b`` for addition, the digit string for sort). Training
prompts are rejection-sampled from the complement, so no eval problem is ever trained on (SFT or RL).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field

import torch

EOS = "$"
_HASH_M = 2_147_483_647  # 2^31 - 1 (prime)
_HASH_A = 48_271
_HASH_B = 1_103_515_245 % _HASH_M


class CharTokenizer:
    """One token per character of a fixed alphabet; ``decode`` stops at the first EOS."""

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        if EOS not in alphabet:
            raise ValueError(f"alphabet must contain the EOS symbol {EOS!r}")
        self.alphabet = alphabet
        self.stoi = {c: i for i, c in enumerate(alphabet)}
        self.eos_id = self.stoi[EOS]

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        bad = [c for c in text if c not in self.stoi]
        if bad:
            raise ValueError(f"characters {bad!r} are not in the alphabet {self.alphabet!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if stop_at_eos and i == self.eos_id:
                break
            out.append(self.alphabet[int(i)])
        return "".join(out)


@functools.lru_cache(maxsize=None)
def _tokenizer(alphabet: str) -> CharTokenizer:
    """One shared tokenizer per alphabet (the verifier asks for it on every rollout)."""
    return CharTokenizer(alphabet)


def split_hash(keys: torch.Tensor, split_seed: int) -> torch.Tensor:
    """Deterministic hash of int64 problem keys in [0, 1000) (two Lehmer rounds mod 2^31 - 1)."""
    h = keys.remainder(_HASH_M)  # [n] < 2^31, so products below stay < 2^62 (no int64 overflow)
    h = (h * _HASH_A + (split_seed % _HASH_M) + 1).remainder(_HASH_M)
    h = (h * _HASH_B + 12345).remainder(_HASH_M)
    h = (h * _HASH_A + 6789).remainder(_HASH_M)
    return h.remainder(1000)


@dataclass(frozen=True)
class Task:
    """Base class: a family of prompts with a verifier. Subclasses fill the abstract methods."""

    difficulty: int
    """Task size: digits per operand (addition), list length (sort) or digits of N (divisor)."""
    split_seed: int = 0
    """Seed of the train/eval split hash (changing it gives a different but still disjoint split)."""
    eval_fraction: float = 0.1
    """Fraction of the problem space reserved for evaluation (never used for SFT or RL training)."""
    name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if int(self.difficulty) < 1:
            raise ValueError(f"difficulty must be >= 1, got {self.difficulty}")
        if int(self.difficulty) > self.max_difficulty:  # problems are int64 tensors: 10^d (10^2d for addition)
            raise ValueError(f"difficulty must be <= {self.max_difficulty} for this task (its problems are int64 "
                             f"numbers), got {self.difficulty}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")

    # ---- to be provided by subclasses -------------------------------------------------------------
    alphabet: str = field(default="", init=False)
    max_difficulty = 18  # class attribute, not a field: 10^d fits in int64

    def _random_problems(self, n: int, generator: torch.Generator) -> torch.Tensor:  # [n, k] long
        raise NotImplementedError

    def _keys(self, problems: torch.Tensor) -> torch.Tensor:  # [n] long
        raise NotImplementedError

    def _all_problems(self) -> torch.Tensor:  # [n_problems, k] long (small spaces only)
        raise NotImplementedError

    def prompt_text(self, problem: list[int]) -> str:
        raise NotImplementedError

    def answer_text(self, problem: list[int]) -> str:
        """The correct answer, without EOS."""
        raise NotImplementedError

    def parse_prompt(self, prompt_ids) -> list[int]:
        """Recover the problem from its prompt tokens (the verifier needs nothing else)."""
        raise NotImplementedError

    @property
    def prompt_len(self) -> int:
        raise NotImplementedError

    @property
    def max_response_len(self) -> int:
        """Response budget R: the longest answer plus its EOS."""
        raise NotImplementedError

    # ---- shared machinery -------------------------------------------------------------------------
    @property
    def tokenizer(self) -> CharTokenizer:
        return _tokenizer(self.alphabet)

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    @property
    def eos_id(self) -> int:
        return self.alphabet.index(EOS)

    @property
    def answer_symbols(self) -> str:
        """Symbols an answer is made of (SFT noise draws from these)."""
        return "0123456789"

    #: True for tasks with several correct answers per prompt (``answer_text`` is then one of them)
    multi_answer: bool = field(default=False, init=False)

    def demonstration_responses(self, prompts: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Correct responses for SFT demonstrations: the answer (a multi-answer task draws one per prompt)."""
        return self.target_responses(prompts)

    def split_problems(self, split: str) -> torch.Tensor:
        """Every problem of ``split`` ("train" or "eval"), for problem spaces small enough to enumerate."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if n_problems(self) > 200_000:
            raise ValueError(f"{self.name} (difficulty {self.difficulty}) has {n_problems(self)} problems; too many "
                             f"to enumerate")
        pool = self._all_problems()
        return pool[self.is_eval(pool) == (split == "eval")]

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: v for k, v in asdict(self).items() if k in
                                      ("difficulty", "split_seed", "eval_fraction")}}

    def is_eval(self, problems: torch.Tensor) -> torch.Tensor:
        """``[n, k]`` problems -> ``[n]`` bool, True for problems in the eval split."""
        threshold = int(round(1000 * self.eval_fraction))
        return split_hash(self._keys(problems), self.split_seed) < threshold

    def sample_problems(self, n: int, generator: torch.Generator, split: str = "train") -> torch.Tensor:
        """``n`` problems of ``split`` ("train" or "eval"), rejection-sampled; ``[n, k]`` long (CPU)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        want_eval = split == "eval"
        out, have = [], 0
        for _ in range(10_000):
            cand = self._random_problems(max(2 * n, 16), generator)  # [m, k]
            keep = cand[self.is_eval(cand) == want_eval]
            out.append(keep)
            have += keep.shape[0]
            if have >= n:
                return torch.cat(out)[:n]
        raise RuntimeError(f"could not draw {n} {split} problems; eval_fraction={self.eval_fraction} too extreme")

    def eval_problems(self, n: int) -> torch.Tensor:
        """A fixed set of ``n`` distinct eval problems (the same for every run with this split)."""
        gen = torch.Generator().manual_seed(1_000_003 + self.split_seed)
        if n_problems(self) <= 200_000:  # small space: enumerate the eval split, take a seeded subset
            pool = self._all_problems()
            pool = pool[self.is_eval(pool)]  # [n_eval_split, k]
            if pool.shape[0] < n:
                raise ValueError(f"the eval split of {self.name} (difficulty {self.difficulty}) has only "
                                 f"{pool.shape[0]} problems; ask for at most that many eval prompts")
            return pool[torch.randperm(pool.shape[0], generator=gen)[:n]]
        seen: dict[int, torch.Tensor] = {}
        for _ in range(1000):
            cand = self.sample_problems(n, gen, split="eval")
            for row, key in zip(cand, self._keys(cand).tolist()):
                seen.setdefault(key, row)
                if len(seen) == n:
                    return torch.stack(list(seen.values()))
        raise ValueError(f"the eval split of {self.name} (difficulty {self.difficulty}) has fewer than "
                         f"{n} distinct problems; ask for fewer eval prompts")

    def encode_prompts(self, problems: torch.Tensor) -> torch.Tensor:
        """``[n, k]`` problems -> ``[n, P]`` prompt token ids."""
        tok = self.tokenizer
        return torch.tensor([tok.encode(self.prompt_text(p)) for p in problems.tolist()], dtype=torch.long)

    def sample_prompts(self, n: int, generator: torch.Generator, split: str = "train") -> torch.Tensor:
        return self.encode_prompts(self.sample_problems(n, generator, split))

    def eval_prompts(self, n: int) -> torch.Tensor:
        return self.encode_prompts(self.eval_problems(n))

    def target_responses(self, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Correct responses for ``prompts [n, P]``: ``(responses [n, R], mask [n, R])``, EOS-terminated."""
        tok, R = self.tokenizer, self.max_response_len
        answers = [tok.encode(self.answer_text(self.parse_prompt(p)) + EOS) for p in prompts.tolist()]
        resp = torch.tensor([ids + [self.eos_id] * (R - len(ids)) for ids in answers], dtype=torch.long)  # [n, R]
        mask = torch.tensor([[True] * len(ids) + [False] * (R - len(ids)) for ids in answers], dtype=torch.bool)
        return resp.view(len(answers), R), mask.view(len(answers), R)  # (view: n = 0 gives [0, R])

    def score(self, prompts: torch.Tensor, responses: torch.Tensor, partial_credit: bool = False) -> torch.Tensor:
        """Verifier. ``prompts [n, P]``, ``responses [n, R]`` -> rewards ``[n]`` float32 in [0, 1].

        Binary: 1 iff the response is exactly the answer followed by EOS. With ``partial_credit``:
        the fraction of answer positions with the right digit (0 for an empty response).
        """
        if prompts.ndim != 2 or responses.ndim != 2 or prompts.shape[0] != responses.shape[0]:
            raise ValueError(f"prompts [n, P] and responses [n, R] expected, got {tuple(prompts.shape)} "
                             f"and {tuple(responses.shape)}")
        tok, eos = self.tokenizer, self.eos_id
        out = []
        for p, r in zip(prompts.tolist(), responses.tolist()):
            answer = self.answer_text(self.parse_prompt(p))
            has_eos = eos in r
            got = tok.decode(r)
            if not partial_credit:
                out.append(1.0 if (has_eos and got == answer) else 0.0)
            else:
                width = max(len(answer), len(got))
                hits = sum(1 for a, g in zip(answer, got) if a == g)
                out.append(hits / width if width > 0 else 0.0)
        return torch.tensor(out, dtype=torch.float32)


    def score_groups(self, prompts: torch.Tensor, responses: torch.Tensor, group_size: int = 1,
                     partial_credit: bool = False) -> torch.Tensor:
        """The verifier for G responses per prompt: ``prompts [n, P]``, ``responses [n·G, R]`` -> ``[n·G]`` float32.

        Equal to ``score(prompts.repeat_interleave(G, 0), responses)`` (binary reward; partial credit
        delegates to :meth:`score`), but computed by tensor comparison on the responses' device: each prompt's
        answer is worked out once (:meth:`target_responses`) and a response is right iff it matches the answer
        and its EOS token, position by position; tokens after that EOS are ignored, as :meth:`score` does.
        """
        if prompts.ndim != 2 or responses.ndim != 2 or responses.shape[0] != prompts.shape[0] * group_size:
            raise ValueError(f"prompts [n, P] and responses [n·G, R] with G = {group_size} expected, got "
                             f"{tuple(prompts.shape)} and {tuple(responses.shape)}")
        if partial_credit:
            return self.score(prompts.repeat_interleave(group_size, dim=0).cpu(), responses.cpu(),
                              partial_credit=True).to(responses.device)
        target, tmask = self.target_responses(prompts.cpu())  # [n, R_max] answer + EOS, mask up to the EOS
        R = responses.shape[1]
        if R < target.shape[1]:  # a budget shorter than the answer + EOS: pad (never matches the EOS)
            responses = torch.nn.functional.pad(responses, (0, target.shape[1] - R), value=-1)
        target = target.to(responses.device).repeat_interleave(group_size, dim=0)  # [B, R_max]
        tmask = tmask.to(responses.device).repeat_interleave(group_size, dim=0)  # [B, R_max]
        hit = (responses[:, : target.shape[1]] == target) | ~tmask  # [B, R_max]
        return hit.all(dim=1).float()  # [B]


@dataclass(frozen=True)
class AdditionTask(Task):
    """Reversed-digit addition of two d-digit numbers (see the module docstring for the encoding)."""

    max_difficulty = 9  # a·10^d + b must fit in int64
    name: str = field(default="addition", init=False)
    alphabet: str = field(default="0123456789+=" + EOS, init=False)

    def _random_problems(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 10**self.difficulty, (n, 2), generator=generator)  # [n, 2] (a, b)

    def _keys(self, problems: torch.Tensor) -> torch.Tensor:
        return problems[:, 0] * 10**self.difficulty + problems[:, 1]  # [n]

    def _all_problems(self) -> torch.Tensor:
        r = torch.arange(10**self.difficulty)
        return torch.cartesian_prod(r, r)  # [10^(2d), 2]

    @property
    def prompt_len(self) -> int:
        return 2 * self.difficulty + 2

    @property
    def max_response_len(self) -> int:
        return self.difficulty + 2

    def prompt_text(self, problem: list[int]) -> str:
        a, b = problem
        d = self.difficulty
        return f"{a:0{d}d}"[::-1] + "+" + f"{b:0{d}d}"[::-1] + "="

    def answer_text(self, problem: list[int]) -> str:
        a, b = problem
        return str(a + b)[::-1]

    def parse_prompt(self, prompt_ids) -> list[int]:
        text = self.tokenizer.decode(prompt_ids, stop_at_eos=False)
        left, right = text.rstrip("=").split("+")
        return [int(left[::-1]), int(right[::-1])]


@dataclass(frozen=True)
class SortTask(Task):
    """Sort a list of n digits (see the module docstring for the encoding)."""

    name: str = field(default="sort", init=False)
    alphabet: str = field(default="0123456789:" + EOS, init=False)

    def _random_problems(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 10, (n, self.difficulty), generator=generator)  # [n, d]

    def _keys(self, problems: torch.Tensor) -> torch.Tensor:
        powers = 10 ** torch.arange(self.difficulty - 1, -1, -1)  # [d]
        return (problems * powers).sum(dim=1)  # [n]

    def _all_problems(self) -> torch.Tensor:
        keys = torch.arange(10**self.difficulty)  # [10^d]
        powers = 10 ** torch.arange(self.difficulty - 1, -1, -1)  # [d]
        return (keys[:, None] // powers) % 10  # [10^d, d] digits, most significant first

    @property
    def prompt_len(self) -> int:
        return self.difficulty + 1

    @property
    def max_response_len(self) -> int:
        return self.difficulty + 1

    def prompt_text(self, problem: list[int]) -> str:
        return "".join(str(x) for x in problem) + ":"

    def answer_text(self, problem: list[int]) -> str:
        return "".join(str(x) for x in sorted(problem))

    def parse_prompt(self, prompt_ids) -> list[int]:
        text = self.tokenizer.decode(prompt_ids, stop_at_eos=False)
        return [int(c) for c in text.rstrip(":")]


@functools.lru_cache(maxsize=None)
def divisors(n: int) -> tuple[int, ...]:
    """The divisors of ``n >= 1``, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))


@dataclass(frozen=True)
class DivisorTask(Task):
    """Name any divisor of N (many correct answers; see the module docstring for the encoding)."""

    name: str = field(default="divisor", init=False)
    alphabet: str = field(default="0123456789:" + EOS, init=False)
    multi_answer: bool = field(default=True, init=False)

    def _random_problems(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(1, 10**self.difficulty, (n, 1), generator=generator)  # [n, 1] N

    def _keys(self, problems: torch.Tensor) -> torch.Tensor:
        return problems[:, 0]  # [n]

    def _all_problems(self) -> torch.Tensor:
        return torch.arange(1, 10**self.difficulty)[:, None]  # [10^d - 1, 1]

    @property
    def prompt_len(self) -> int:
        return self.difficulty + 1

    @property
    def max_response_len(self) -> int:
        return self.difficulty + 1

    def prompt_text(self, problem: list[int]) -> str:
        return f"{problem[0]:0{self.difficulty}d}:"

    def answer_text(self, problem: list[int]) -> str:
        """One correct answer (the largest divisor, N itself); every divisor is correct."""
        return str(problem[0])

    def answers(self, problem: list[int]) -> list[str]:
        """Every correct answer of a problem."""
        return [str(d) for d in divisors(int(problem[0]))]

    def parse_prompt(self, prompt_ids) -> list[int]:
        return [int(self.tokenizer.decode(prompt_ids, stop_at_eos=False).rstrip(":"))]

    def demonstration_responses(self, prompts: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A divisor per prompt: the k-th smallest with probability ∝ 1/k (then EOS)."""
        tok, R = self.tokenizer, self.max_response_len
        resp = torch.full((prompts.shape[0], R), self.eos_id, dtype=torch.long)
        mask = torch.zeros((prompts.shape[0], R), dtype=torch.bool)
        for i, p in enumerate(prompts.tolist()):
            ds = divisors(self.parse_prompt(p)[0])
            w = 1.0 / torch.arange(1, len(ds) + 1, dtype=torch.float64)  # [n_divisors] ∝ 1/k
            ids = tok.encode(str(ds[int(torch.multinomial(w, 1, generator=generator))]) + EOS)
            resp[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = True
        return resp, mask

    def score(self, prompts: torch.Tensor, responses: torch.Tensor, partial_credit: bool = False) -> torch.Tensor:
        """1 iff the response is a divisor of N (digits without a leading zero, then EOS), else 0."""
        if partial_credit:
            raise ValueError("the divisor task has no partial credit (its reward is binary)")
        if prompts.ndim != 2 or responses.ndim != 2 or prompts.shape[0] != responses.shape[0]:
            raise ValueError(f"prompts [n, P] and responses [n, R] expected, got {tuple(prompts.shape)} "
                             f"and {tuple(responses.shape)}")
        out = []
        for p, r in zip(prompts.tolist(), responses.tolist()):
            got = self.tokenizer.decode(r)
            ok = self.eos_id in r and got.isdigit() and got[0] != "0" and got in self.answers(self.parse_prompt(p))
            out.append(1.0 if ok else 0.0)
        return torch.tensor(out, dtype=torch.float32)

    def score_groups(self, prompts: torch.Tensor, responses: torch.Tensor, group_size: int = 1,
                     partial_credit: bool = False) -> torch.Tensor:
        """:meth:`score` for G responses per prompt, by tensor arithmetic on the responses' device."""
        if partial_credit:
            raise ValueError("the divisor task has no partial credit (its reward is binary)")
        if prompts.ndim != 2 or responses.ndim != 2 or responses.shape[0] != prompts.shape[0] * group_size:
            raise ValueError(f"prompts [n, P] and responses [n·G, R] with G = {group_size} expected, got "
                             f"{tuple(prompts.shape)} and {tuple(responses.shape)}")
        d, (B, R) = self.difficulty, responses.shape
        powers = 10 ** torch.arange(d - 1, -1, -1, device=prompts.device)  # [d]
        N = (prompts[:, :d] * powers).sum(dim=1).repeat_interleave(group_size)  # [B]
        is_eos = responses == self.eos_id  # [B, R]
        length = torch.where(is_eos.any(dim=1), is_eos.float().argmax(dim=1), R)  # [B] tokens before the first EOS
        pos = torch.arange(R, device=responses.device)  # [R]
        before = pos[None, :] < length[:, None]  # [B, R]
        digit_ok = ((responses < 10) | ~before).all(dim=1)  # [B] only digits before the EOS
        exponent = (length[:, None] - 1 - pos[None, :]).clamp_min(0)  # [B, R]
        value = torch.where(before, responses.clamp(0, 9) * 10**exponent, 0).sum(dim=1)  # [B]
        ok = (length >= 1) & is_eos.any(dim=1) & digit_ok & (responses[:, 0] != 0)  # EOS within the budget
        return (ok & (N % value.clamp_min(1) == 0)).float()  # [B]


TASKS: dict[str, type[Task]] = {"addition": AdditionTask, "sort": SortTask, "divisor": DivisorTask}


def make_task(name: str, difficulty: int, split_seed: int = 0, eval_fraction: float = 0.1) -> Task:
    """Build a task by name; unknown names raise ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](difficulty=int(difficulty), split_seed=int(split_seed), eval_fraction=float(eval_fraction))


def task_from_dict(d: dict) -> Task:
    return make_task(d["name"], d["difficulty"], d.get("split_seed", 0), d.get("eval_fraction", 0.1))


def n_problems(task: Task) -> int:
    """Size of the whole problem space (train + eval)."""
    if isinstance(task, AdditionTask):
        return 10 ** (2 * task.difficulty)
    if isinstance(task, SortTask):
        return 10**task.difficulty
    if isinstance(task, DivisorTask):
        return 10**task.difficulty - 1
    return math.inf  # type: ignore[return-value]
