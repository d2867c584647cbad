"""Adapters: the loss signatures people have, as rlkl's ``loss_fn(logp, batch) -> scalar``.

* rlkl: ``loss_fn(logp [B, T], batch: RolloutBatch)`` (a `Method`'s ``loss``): `from_rlkl` (identity, named).
* verl policy losses: ``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
  rollout_is_weights=None) -> (pg_loss, metrics)`` (verl 0.9.1 ``core_algos``; older 4-tuples work too), plus
  the actor's KL loss ``kl_penalty(logprob, ref_logprob, kl_penalty) -> [B, T]`` aggregated by
  ``agg_loss(loss_mat, loss_mask, loss_agg_mode, **global_batch_info)``: `from_verl`.
* TRL-style per-token losses: ``fn(per_token_logps, old_per_token_logps, advantages, completion_mask,
  ref_per_token_logps=None) -> per_token_loss [B, T]``, aggregated as ``GRPOTrainer`` does for its ``loss_type``:
  `from_trl`.
* polgrad's keyword convention: ``fn(*, logprobs, old_logprobs, advantages, response_mask) -> scalar`` (optionally
  ``ref_logprobs``): `from_polgrad`.

A policy loss takes advantages, not rewards: the adapter computes them from the batch with ``advantage`` — an
rlkl `Advantage` component (``[B]`` sequence advantages from the rewards), a `Method` (its
``advantages(batch)``, KL-shaped rewards included), or a callable ``batch -> [B] | [B, T]``. None leaves it to
`rlkl.testing.assert_conforms` (it supplies the Method's own advantages); `assert_optimizes` refuses None.

Inside `assert_conforms` the batch carries garbage on padding (`GarbageBatch`); the adapters pass it on to the
token tensors they hand over (log-probs *and* advantages), so a loss that lets padding leak shows it.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from rlkl.components import Advantage
from rlkl.losses import aggregate
from rlkl.options import AggMode, coerce

__all__ = ["LossAdapter", "from_rlkl", "from_verl", "from_trl", "from_polgrad", "VerlActorConfig",
           "as_rlkl_loss", "TRL_LOSS_TYPES"]

#: TRL ``GRPOConfig.loss_type`` → rlkl aggregation (``GRPOTrainer._compute_loss``, TRL 1.10–1.16)
TRL_LOSS_TYPES = {"grpo": AggMode.SEQ_MEAN_TOKEN_MEAN, "bnpo": AggMode.TOKEN_MEAN, "dapo": AggMode.TOKEN_MEAN,
                  "dr_grpo": AggMode.SEQ_MEAN_TOKEN_SUM_NORM}


@dataclass
class LossAdapter:
    """A user's loss in rlkl's signature: ``adapter(logp, batch) -> scalar``.

    Attributes:
      call: ``(adapter, logp, batch) -> scalar`` implementing the convention.
      fn: the user's function; convention: ``"rlkl" | "verl" | "trl" | "polgrad"``; name: label in reports.
      advantage: where advantages come from (see the module docstring), or None.
      options: convention-specific settings (aggregation, config, KL coefficient ...).
    """

    call: Callable
    fn: Callable
    convention: str
    name: str
    advantage: Any = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.__name__ = self.name

    def __call__(self, logp: Tensor, batch) -> Tensor:
        return self.call(self, logp, batch)

    @property
    def needs_advantage(self) -> bool:
        return self.convention != "rlkl"

    def with_advantage(self, advantage: Any) -> "LossAdapter":
        """A copy whose advantages come from ``advantage`` (an Advantage, a Method or ``batch -> tensor``)."""
        _check_advantage(advantage)
        return dataclasses.replace(self, advantage=advantage)

    # -- advantages --------------------------------------------------------------------------------------
    def token_advantages(self, batch) -> Tensor:
        """``[B, T]`` advantages for ``batch`` (garbage on padding inside `assert_conforms`)."""
        adv = _advantages(self.advantage, batch, self.name)
        if adv.dim() == 1:
            adv = adv[:, None].expand_as(batch.logp_old)
        return _pad(adv, batch)

    def sequence_advantages(self, batch) -> Tensor:
        """``[B]`` advantages when they are constant along each response (else ValueError)."""
        adv = _advantages(self.advantage, batch, self.name)
        if adv.dim() == 1:
            return adv
        first = adv.gather(1, batch.mask.to(torch.int64).argmax(-1, keepdim=True)).squeeze(1)
        if not bool(torch.where(batch.mask, adv == first[:, None], torch.ones_like(batch.mask)).all()):
            raise ValueError(f"{self.name}: the advantages vary along a response; pass [B, T] advantages "
                             "(sequence_level=False)")
        return first


def _check_advantage(advantage: Any) -> None:
    from rlkl.methods import Method

    if advantage is None or isinstance(advantage, (Advantage, Method)) or callable(advantage):
        return
    raise ValueError(f"advantage must be an rlkl Advantage component (rlkl.components), a Method, or a callable "
                     f"batch -> [B] / [B, T] tensor; got {type(advantage).__name__}")


def _advantages(advantage: Any, batch, name: str) -> Tensor:
    from rlkl.methods import Method

    if advantage is None:
        raise ValueError(f"{name} takes advantages, not rewards: pass advantage= (an rlkl Advantage such as "
                         "rlkl.components.GroupStandardized(), or a Method whose advantages to use)")
    clean = getattr(batch, "clean", batch)  # advantages from the clean batch; garbage goes on padding afterwards
    if isinstance(advantage, Method):
        return advantage.advantages(clean).detach()
    if isinstance(advantage, Advantage):
        return advantage(clean.rewards, clean.group_size).detach()
    out = advantage(clean)
    if not isinstance(out, Tensor) or out.dim() not in (1, 2):
        raise ValueError(f"{name}: advantage callable must return a [B] or [B, T] tensor, got {out!r}")
    return out.detach()


def _pad(x: Tensor, batch) -> Tensor:
    """``x`` with `GarbageBatch` padding values where the mask is False (unchanged for an ordinary batch)."""
    garbage = getattr(batch, "garbage", None)
    if garbage is None:
        return x
    return torch.where(batch.mask, x, garbage.to(x.dtype))


def _scalar(out: Any, name: str) -> Tensor:
    loss = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"{name} must return a scalar loss tensor (or a tuple starting with one), got "
                         f"{type(loss).__name__}{' of shape ' + str(tuple(loss.shape)) if isinstance(loss, Tensor) else ''}")
    return loss


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# ------------------------------------------------------------------------------------------------ rlkl
def _call_rlkl(self: LossAdapter, logp, batch):
    return _scalar(self.fn(logp, batch), self.name)


def from_rlkl(fn: Callable, name: Optional[str] = None) -> LossAdapter:
    """rlkl's own signature ``fn(logp [B, T], batch: RolloutBatch) -> scalar | (scalar, diagnostics)``."""
    if not callable(fn):
        raise ValueError(f"expected a callable loss_fn(logp, batch), got {type(fn).__name__}")
    return LossAdapter(_call_rlkl, fn, "rlkl", name or getattr(fn, "__name__", "loss_fn"))


# ------------------------------------------------------------------------------------------------ verl
class VerlActorConfig(dict):
    """The actor config a verl policy loss reads: attribute *and* ``.get`` access, nested sections too.

    Defaults are verl 0.9.1's ``trainer/config/actor/actor.yaml`` for the keys its policy losses read
    (``clip_ratio`` 0.2, ``clip_ratio_low`` 0.2, ``clip_ratio_high`` 0.2, ``clip_ratio_c`` 3.0, ``loss_agg_mode``
    token-mean, ``policy_loss.loss_mode`` vanilla) and the single-process ``global_batch_info`` (``dp_size`` 1, no
    global token/sequence counts). Pass overrides as keyword arguments or a dict.
    """

    DEFAULTS = {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0,
                "loss_agg_mode": "token-mean", "policy_loss": {"loss_mode": "vanilla"},
                "global_batch_info": {"dp_size": 1, "batch_num_tokens": None, "global_batch_size": None,
                                      "loss_scale_factor": None}}

    def __init__(self, values: Optional[dict] = None, **overrides: Any):
        merged = {**self.DEFAULTS, **(values or {}), **overrides}
        super().__init__({k: (VerlActorConfig._section(v) if isinstance(v, dict) and k != "global_batch_info"
                              else v) for k, v in merged.items()})

    @staticmethod
    def _section(d: dict) -> "VerlActorConfig":
        out = VerlActorConfig.__new__(VerlActorConfig)
        dict.__init__(out, d)
        return out

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"verl actor config has no key {key!r} (set it: VerlActorConfig({key}=...))") from None


def _verl_kl(name: str):
    from rlkl.divergences import kl_estimate

    base = name[:-1] if name.endswith("+") else name
    est = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}.get(base)
    if est is None:
        raise ValueError(f"kl_loss_type={name!r}: supported kl/k1, mse/k2, low_var_kl/k3 with optional '+'")
    straight = name.endswith("+") and est != "k2"
    return lambda logprob, ref_logprob: kl_estimate(logprob - ref_logprob.detach(), est, straight)


def _call_verl(self: LossAdapter, logp, batch):
    o = self.options
    mask = batch.mask  # verl 0.9.1 passes response_mask as bool (workers/utils/losses.py)
    kwargs = dict(old_log_prob=_pad(batch.logp_old, batch), log_prob=logp, advantages=self.token_advantages(batch),
                  response_mask=mask, loss_agg_mode=o["loss_agg_mode"], config=o["config"])
    if _accepts(self.fn, "rollout_is_weights"):
        kwargs["rollout_is_weights"] = None
    loss = _scalar(self.fn(**kwargs), self.name)
    if o["kl_coef"]:
        ref = _pad(batch.logp_ref, batch)
        kl_fn = o["kl_penalty"]
        kld = (kl_fn(logprob=logp, ref_logprob=ref, kl_penalty=o["kl_loss_type"]) if kl_fn is not None
               else _verl_kl(o["kl_loss_type"])(logp, ref))
        agg = o["agg_loss"]
        if agg is not None:
            kl = agg(loss_mat=kld, loss_mask=mask, loss_agg_mode=o["loss_agg_mode"],
                     **dict(getattr(o["config"], "global_batch_info", None) or {}))
        else:
            kl = aggregate(torch.where(mask, kld, torch.zeros_like(kld)), mask, o["loss_agg_mode"])
        loss = loss + o["kl_coef"] * kl
    return loss


def from_verl(policy_loss_fn: Callable, advantage: Any = None, loss_agg_mode: str = "token-mean",
              config: Any = None, kl_coef: float = 0.0, kl_loss_type: str = "low_var_kl",
              kl_penalty: Optional[Callable] = None, agg_loss: Optional[Callable] = None,
              name: Optional[str] = None) -> LossAdapter:
    """A verl policy loss (``@register_policy_loss`` signature) as the actor's total loss.

    The result is verl 0.9.1's actor loss (``workers/utils/losses.py::ppo_loss``): ``pg_loss`` from
    ``policy_loss_fn(old_log_prob=, log_prob=, advantages=, response_mask=, loss_agg_mode=, config=,
    rollout_is_weights=None)``, plus ``kl_coef · agg_loss(kl_penalty(log_prob, ref_log_prob, kl_loss_type))``
    when ``kl_coef > 0`` (verl's ``use_kl_loss``).

    Args:
      policy_loss_fn: the policy loss; its first return value (or the value itself) is the scalar loss.
      advantage: an rlkl Advantage (e.g. ``GroupStandardized()`` = verl's ``grpo`` estimator), a Method, or a
        callable ``batch -> [B] | [B, T]``.
      loss_agg_mode: verl's ``actor.loss_agg_mode``; config: what the loss reads as ``config``
        (default `VerlActorConfig()`; a dict is wrapped).
      kl_coef, kl_loss_type: verl's ``actor.kl_loss_coef`` / ``actor.kl_loss_type`` (the KL loss is off at 0).
      kl_penalty, agg_loss: your own ``kl_penalty(logprob, ref_logprob, kl_penalty)`` / ``agg_loss(loss_mat,
        loss_mask, loss_agg_mode, **global_batch_info)`` (default: rlkl's estimators and ``aggregate``).
    """
    if not callable(policy_loss_fn):
        raise ValueError(f"policy_loss_fn must be callable, got {type(policy_loss_fn).__name__}")
    _check_advantage(advantage)
    mode = coerce(AggMode, "loss_agg_mode", loss_agg_mode).value
    cfg = VerlActorConfig(loss_agg_mode=mode) if config is None else (
        VerlActorConfig(config) if isinstance(config, dict) and not isinstance(config, VerlActorConfig) else config)
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef and kl_penalty is None:
        _verl_kl(kl_loss_type)  # ValueError for an unknown type, now
    opts = dict(loss_agg_mode=mode, config=cfg, kl_coef=float(kl_coef), kl_loss_type=kl_loss_type,
                kl_penalty=kl_penalty, agg_loss=agg_loss)
    return LossAdapter(_call_verl, policy_loss_fn, "verl", name or getattr(policy_loss_fn, "__name__", "verl_loss"),
                       advantage, opts)


# ------------------------------------------------------------------------------------------------ TRL
def _trl_aggregate(per_token: Tensor, mask: Tensor, loss_type: str, max_len: Optional[int]) -> Tensor:
    """``GRPOTrainer``'s reduction (TRL 1.10–1.16, one process): grpo, bnpo/dapo (token sum / token count),
    dr_grpo (token sum / (B · max_completion_length))."""
    m = mask.to(per_token.dtype)
    tok = torch.where(mask, per_token, torch.zeros_like(per_token))
    if loss_type == "grpo":
        return ((tok * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if loss_type in ("bnpo", "dapo"):
        return (tok * m).sum() / m.sum().clamp(min=1.0)
    return (tok * m).sum() / (per_token.shape[0] * max_len)


def _call_trl(self: LossAdapter, logp, batch):
    o = self.options
    kwargs = {"per_token_logps": logp, "old_per_token_logps": _pad(batch.logp_old, batch),
              "advantages": (self.sequence_advantages(batch) if o["sequence_advantages"]
                             else self.token_advantages(batch)),
              "completion_mask": batch.mask.to(torch.int64)}  # TRL's completion_mask is an int tensor
    if _accepts(self.fn, "ref_per_token_logps"):
        kwargs["ref_per_token_logps"] = _pad(batch.logp_ref, batch)
    per_token = self.fn(**kwargs)
    if not isinstance(per_token, Tensor) or tuple(per_token.shape) != tuple(logp.shape):
        raise ValueError(f"{self.name} must return the per-token loss [B, T] = {tuple(logp.shape)}, got "
                         f"{type(per_token).__name__}{tuple(per_token.shape) if isinstance(per_token, Tensor) else ''}")
    return _trl_aggregate(per_token, batch.mask, o["loss_type"], o["max_completion_length"])


def from_trl(per_token_loss_fn: Callable, advantage: Any = None, loss_type: str = "dapo",
             max_completion_length: Optional[int] = None, sequence_advantages: bool = True,
             name: Optional[str] = None) -> LossAdapter:
    """A TRL-style per-token loss, aggregated as TRL's ``GRPOTrainer`` does for ``loss_type``.

    ``per_token_loss_fn(per_token_logps=, old_per_token_logps=, advantages=, completion_mask=,
    [ref_per_token_logps=]) -> [B, T]`` (the names of ``GRPOTrainer._compute_loss``); ``advantages`` is ``[B]``
    as in TRL (``sequence_advantages=False`` passes ``[B, T]``). Put your KL term (β·k3 …) inside the function,
    as TRL does.

    Args:
      loss_type: ``grpo`` (seq-mean-token-mean), ``bnpo``/``dapo`` (token-mean, one process), ``dr_grpo`` (token
        sum / (B · ``max_completion_length``), which is then required).
    """
    if not callable(per_token_loss_fn):
        raise ValueError(f"per_token_loss_fn must be callable, got {type(per_token_loss_fn).__name__}")
    _check_advantage(advantage)
    if loss_type not in TRL_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not one of {list(TRL_LOSS_TYPES)}")
    if loss_type == "dr_grpo" and (not isinstance(max_completion_length, int) or max_completion_length < 1):
        raise ValueError("loss_type='dr_grpo' divides by max_completion_length: pass it (a positive int)")
    opts = dict(loss_type=loss_type, max_completion_length=max_completion_length,
                sequence_advantages=bool(sequence_advantages))
    return LossAdapter(_call_trl, per_token_loss_fn, "trl", name or getattr(per_token_loss_fn, "__name__", "trl_loss"),
                       advantage, opts)


# ------------------------------------------------------------------------------------------------ polgrad
def _call_polgrad(self: LossAdapter, logp, batch):
    adv = self.sequence_advantages(batch) if self.options["sequence_advantages"] else self.token_advantages(batch)
    kwargs = dict(logprobs=logp, old_logprobs=_pad(batch.logp_old, batch), advantages=adv, response_mask=batch.mask)
    if _accepts(self.fn, "ref_logprobs"):
        kwargs["ref_logprobs"] = _pad(batch.logp_ref, batch)
    return _scalar(self.fn(**kwargs), self.name)


def from_polgrad(fn: Callable, advantage: Any = None, sequence_advantages: bool = True,
                 name: Optional[str] = None) -> LossAdapter:
    """polgrad's keyword convention: ``fn(*, logprobs, old_logprobs, advantages, response_mask[, ref_logprobs])``.

    ``advantages`` is ``[B]`` (polgrad broadcasts it over tokens); ``sequence_advantages=False`` passes ``[B, T]``.
    rlkl does not need polgrad installed for this adapter.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    _check_advantage(advantage)
    return LossAdapter(_call_polgrad, fn, "polgrad", name or getattr(fn, "__name__", "polgrad_loss"), advantage,
                       dict(sequence_advantages=bool(sequence_advantages)))


# ------------------------------------------------------------------------------------------------ dispatch
_HINTS = {
    "verl": ({"old_log_prob", "log_prob", "advantages", "response_mask"}, "rlkl.testing.from_verl(fn, advantage=...)"),
    "trl": ({"per_token_logps", "advantages"}, "rlkl.testing.from_trl(fn, advantage=..., loss_type=...)"),
    "polgrad": ({"logprobs", "old_logprobs", "advantages", "response_mask"},
                "rlkl.testing.from_polgrad(fn, advantage=...)"),
}


def as_rlkl_loss(loss: Any):
    """A Method, a `LossSpec`, a `LossAdapter`, or a callable in rlkl's signature; a clear ValueError naming the
    adapter for the other conventions (a verl / TRL / polgrad signature is recognised by its parameter names)."""
    from rlkl.methods import Method
    from rlkl.toy.expected import LossSpec

    if isinstance(loss, (Method, LossSpec, LossAdapter)):
        return loss
    if not callable(loss):
        raise ValueError(f"expected a loss function, a Method or a LossSpec, got {type(loss).__name__}")
    try:
        names = set(inspect.signature(loss).parameters)
    except (TypeError, ValueError):
        names = set()
    for _, (keys, hint) in _HINTS.items():
        if keys <= names:
            raise ValueError(f"{getattr(loss, '__name__', 'loss')}{tuple(inspect.signature(loss).parameters)} is not "
                             f"rlkl's loss_fn(logp, batch) signature; wrap it: {hint}")
    return from_rlkl(loss)
