"""Exact audit of rollout corrections behind an inference-engine sampler: bias against two objectives, variance.

Setting (docs/theory.md §7): the trainer is at θ = θ_old (π_θ = π_old, the first update
after a rollout), the engine samples groups from q = Sampler(π_old) (``rlkl.toy.samplers.SampledPolicy``) and
reports log-probs; a Method with rollout correction c weights its policy loss by w = c(π_old/q_reported). For each
correction this module computes, in float64:

* g_c = E_{groups ~ q}[∇_θ L_c] (``rlkl.toy.expected.expected_gradient(..., sampler=)``, the method's own loss);
* against the **full** objective J(π_θ): t = −c_agg·∇J(π_θ) and the gap g_c − t;
* against the **deployed** objective J(T(π_θ)), T = the sampler applied to π_θ with kept sets and precision offset
  frozen at π_old (``rlkl.toy.samplers.deployed_policy``): t_dep = −c_agg·∇J(T(π_θ)) and g_c − t_dep;
* the exact variance tr Cov[ĝ] of the per-group gradient ĝ = ∇_θ L_c(y_1..y_G) under q (all ordered G-tuples).

Each gap is split as  g_c − t = [g_0 − t] + Σ_k mismatch_k + residual, where g_0 is the method's mismatch-free
expected gradient (full reading: π_old samples, the trainer sees π_θ; deployed reading: T(π_old) = q samples and
the trainer sees T(π_θ)), decomposed into the method's own terms by ``rlkl.toy.audit.audit_one``, and the
mismatch terms come from a closed form, independent of the method's code (:func:`formula_gradient`): for a
score-function loss at θ = θ_old (Reinforce, PPO-clip or GSPO surrogate at ratio 1, any per-row aggregation)

    F(D, w, Tr) = Σ_x ρ(x) Σ_y D(y|x) a(y) Σ_t [−w_t(y)·(h_D(y) − β·pen_t(y)) + β·κ_t(y)] ∇_θ log Tr_θ(a_t|s_t)

with D the sampling distribution, h_D(y) = E_{y_2..y_G ~ D}[A_1 | y_1 = y] the shaped advantage, pen_t the
reward-side KL penalty, κ_t the KL-loss coefficient, a(y) the aggregation's row weight and Tr the policy the trainer
differentiates. The terms are the changes of F along a fixed path, one mismatch source at a time (docs/audit.md,
"Rollout–trainer mismatch" section):

* ``processed_vs_raw``: raw (log softmax(z_e)) instead of processed (log q) reported log-probs in w;
* ``cap_truncation`` / ``rejection``: the correction's cap / mask against the same ratio unbounded;
* ``kept_set_renormalization`` (full reading, mask replay): the trainer differentiates π_θ^K instead of π_θ;
* ``truncation_mass``: full reading — the sampler's cut (q = 0 outside K_s, which no weight can recover);
  deployed reading — the trainer differentiates π_θ instead of π_θ renormalized over K_s;
* ``temperature``: full — sampling at τ instead of 1; deployed — the trainer's untempered π_θ;
* ``precision_mismatch``: full — the engine's logits z_e (bf16/fp16 rounding or a perturbation) instead of z;
  deployed — the trainer's logits without the engine's offset.

``unexplained`` is ‖g_c − t − Σ method terms − Σ mismatch terms‖/‖t‖: it compares the engine (the method's own
loss on enumerated groups) with the closed forms, so it is a real check (<= 1e-10 expected). The full-reading
terms are registered in ``rlkl.toy.terms`` (importing this module registers them), so
``rlkl.toy.audit.audit_one(..., sampler=)`` measures them with the method's own terms.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

import torch

from rlkl.components import (GSPO, AggMode, GeometricMeanIS, KLLoss, KLReward, MaskReplay,
                             NoCorrection, PPOClip, Reinforce, RolloutCorrection, RewardForm, SequenceMIS,
                             SequenceTIS, TokenMIS, TokenTIS, correction_from_spec)
from rlkl.losses import LOG_RATIO_CLAMP
from rlkl.options import LogprobsMode, StrEnum
from rlkl.sampling import Sampler
from rlkl.toy import reference as ref_
from rlkl.toy import terms as _terms_registry
from rlkl.toy.audit import audit_one, shaped_reward
from rlkl.toy.expected import (_call, _group_factors, _prepare, _tuples_for_prompt, expected_gradient, loss_spec,
                               make_batch, replays_kept_set, threads_for)
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.montecarlo import token_logp_jacobian
from rlkl.toy.policies import Policy
from rlkl.toy.samplers import SampledPolicy, TransformedPolicy, deployed_policy

Tensor = torch.Tensor

__all__ = ["Reading", "MISMATCH_TERM_DOCS", "DEFAULT_CORRECTIONS", "reference_weights", "formula_gradient",
           "exact_group_variance", "audit_mismatch", "MismatchResult"]


class Reading(StrEnum):
    """Which objective a trainer behind a sampler is judged against: FULL J(π_θ), or DEPLOYED J(T(π_θ))."""

    FULL = "full"
    DEPLOYED = "deployed"


MISMATCH_TERM_DOCS = {
    "processed_vs_raw": "the engine reports raw log-probs (before temperature/truncation) instead of log q",
    "cap_truncation": "the correction's cap cuts large ratios (vs the same ratio uncapped)",
    "rejection": "the correction's mask drops ratios outside its bounds (vs the same ratio unmasked)",
    "kept_set_renormalization": "mask replay: the trainer differentiates π_θ renormalized over the kept set",
    "truncation_mass": "top-k/top-p/min-p cut: q = 0 outside the kept set (full) / the trainer ignores the cut "
                       "(deployed)",
    "temperature": "sampling at temperature τ (full) / the trainer's untempered π_θ (deployed)",
    "precision_mismatch": "the engine's logits (bf16/fp16 rounding, perturbation) differ from the trainer's",
}

#: the corrections `rlkl audit --correction` compares by default
DEFAULT_CORRECTIONS = ("none", "token_tis:2", "seq_tis:2", "token_mis:2", "seq_mis:2", "gm", "mask_replay")


class NotCovered(ValueError):
    """The closed form :func:`formula_gradient` does not apply to this method (the gap is then not decomposed)."""


# ------------------------------------------------------------------------------------------------ weights
def reference_weights(correction: RolloutCorrection, log_ratio: Tensor, mask: Tensor) -> Tensor:
    """w of each correction rule written out directly (a reference for the audit): ``[M, T]``, 0 on padding.

    ρ = exp(clamp(log ρ, ±20)); token TIS min/max-clamp of ρ_t; sequence TIS of Π_t ρ_t; masked IS ρ·1[bounds];
    geometric mean exp(mean_t log ρ_t) (capped); none and mask replay 1.
    """
    m = mask.to(log_ratio.dtype)
    lr = log_ratio * m

    def guard(x: Tensor) -> Tensor:
        return torch.exp(torch.clamp(x, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))

    def bound(w: Tensor, hi: Optional[float], lo: Optional[float]) -> Tensor:
        w = w if hi is None else torch.minimum(w, torch.full_like(w, hi))
        return w if lo is None else torch.maximum(w, torch.full_like(w, lo))

    seq = lr.sum(-1, keepdim=True).expand_as(lr)
    if isinstance(correction, (NoCorrection, MaskReplay)):
        w = torch.ones_like(lr)
    elif isinstance(correction, TokenTIS):
        w = bound(guard(lr), correction.cap, correction.floor)
    elif isinstance(correction, SequenceTIS):
        w = bound(guard(seq), correction.cap, correction.floor)
    elif isinstance(correction, TokenMIS):  # SequenceMIS is a TokenMIS subclass
        r = guard(seq if isinstance(correction, SequenceMIS) else lr)
        ok = torch.ones_like(r, dtype=torch.bool)
        if correction.upper is not None:
            ok &= r <= correction.upper
        if correction.lower is not None:
            ok &= r >= correction.lower
        w = torch.where(ok, r, torch.zeros_like(r))
    elif isinstance(correction, GeometricMeanIS):
        n = m.sum(-1, keepdim=True).clamp(min=1.0)
        w = bound(guard(lr.sum(-1, keepdim=True) / n).expand_as(lr), correction.cap, None)
    else:
        raise NotCovered(f"no reference rule for {correction!r}")
    return w * m


# ------------------------------------------------------------------------------------------------ closed form
def _row_weights(method, mdp: TreeMDP) -> Tensor:
    """a(y): the aggregation's weight of one response's token sum in a group's loss (× G rows / G): ``[P·N]``."""
    _, _, mask, _ = mdp.stacked()
    lengths = mask.sum(-1).to(torch.float64)
    mode = method.aggregation.mode
    if mode is AggMode.SEQ_MEAN_TOKEN_SUM:
        return torch.ones_like(lengths)
    if mode is AggMode.SEQ_MEAN_TOKEN_MEAN:
        return 1.0 / lengths
    if mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM:
        return torch.full_like(lengths, 1.0 / float(method.aggregation.horizon or mdp.horizon))
    if not mdp.fixed_length:
        raise NotCovered("token-mean with variable lengths couples the rows of a group")
    return torch.full_like(lengths, 1.0 / mdp.horizon)


def check_covered(method, mdp: TreeMDP) -> None:
    """NotCovered unless the closed form applies: Reinforce / PPOClip / GSPO surrogate, a per-prompt advantage, a
    per-row aggregation (token-mean only at fixed length)."""
    from rlkl.components import CISPO, GPGAdvantage, GroupCentered, GroupStandardized, LeaveOneOut, PassAtK, Raw

    _row_weights(method, mdp)
    if not isinstance(method.policy_loss, (Reinforce, PPOClip, GSPO, CISPO)):
        raise NotCovered(f"policy loss {type(method.policy_loss).__name__} is not a score-function surrogate at "
                         "ratio 1 (RPG carries its own KL to π_old)")
    if not isinstance(method.advantage, (GroupStandardized, GroupCentered, LeaveOneOut, Raw, PassAtK, GPGAdvantage)):
        raise NotCovered(f"advantage {type(method.advantage).__name__}: the closed form takes a sequence advantage "
                         "that depends on the group's values only")


def formula_gradient(method, mdp: TreeMDP, sampling: Policy, weights: Tensor, trainer: Policy,
                     ref: Optional[Policy], group_size: int) -> Tensor:
    """F(D, w, Tr) of the module docstring, at θ = θ_old: shaped like ``trainer.theta``.

    Args:
      method: the Method (its advantage, KL term, β and aggregation); the policy loss must be covered.
      sampling: D, the distribution groups are drawn from (``probs()``).
      weights: ``[P·N, T]`` correction weights w_t(y) of every enumerated response (ignored off D's support).
      trainer: Tr, the policy whose token log-probs the loss differentiates (its values are also π_old's: θ = θ_old).
      ref: π_ref (None: the rollout log-probs, as the engine's default).
    """
    check_covered(method, mdp)
    P, N, T = mdp.num_prompts, mdp.num_responses, mdp.horizon
    _, _, mask, rewards = mdp.stacked()
    with torch.no_grad():
        D = sampling.probs().detach()  # [P, N]
        support = (D > 0).reshape(-1, 1) & mask  # [P·N, T]
        old = trainer.token_logp().detach()
        old = torch.where(support, old, torch.zeros_like(old))  # off D's support: never sampled, keep finite
        lref = ref.token_logp().detach() if ref is not None else old
        lref = torch.where(support, lref, torch.zeros_like(lref))
        delta = (old - lref) * mask
        beta = float(method.beta)
        values = rewards.clone()
        pen = torch.zeros_like(old)
        kcoef = torch.zeros_like(old)
        if method.kl_active:
            seq = method.kl.sequence_penalty(delta, mask)
            values = values - beta * seq if seq is not None else values
            tok = method.kl.token_penalty(delta, mask)
            pen = tok if tok is not None else pen
            if isinstance(method.kl, KLLoss):
                kcoef = ref_.kl_loss_coefficients(method.kl, delta, torch.zeros_like(delta))[0] * mask  # ρ = 1
        h = shaped_reward(mdp, sampling, values.reshape(P, N), group_size, method.advantage).reshape(-1, 1)
        a = _row_weights(method, mdp).unsqueeze(1)
        w = torch.where(support, weights, torch.zeros_like(weights))
        coef = (-w * (h - beta * pen) + beta * kcoef) * a * mask
        coef = coef * (mdp.prompt_probs.unsqueeze(1) * D).reshape(-1, 1)
        coef = torch.where(support, coef, torch.zeros_like(coef))
    (g,) = torch.autograd.grad(trainer.token_logp(), trainer.theta, grad_outputs=coef, allow_unused=True)
    return torch.zeros_like(trainer.theta) if g is None else g


# ------------------------------------------------------------------------------------------------ variance
def exact_group_variance(method, mdp: TreeMDP, policy: Policy, behaviour: Optional[Policy] = None,
                         ref: Optional[Policy] = None, group_size: Optional[int] = None, sampler: Any = None,
                         max_groups: int = 2_000_000, chunk: int = 4096) -> tuple[Tensor, float]:
    """Exact mean and tr Cov of the per-group gradient ĝ = ∇_θ L(y_1..y_G) over all ordered G-tuples.

    Groups are drawn from π_old (``behaviour``, default π_θ) or from q = ``sampler``(π_old); ĝ is recovered from
    the method's own loss on batches of whole groups (per-group normalization of ``rlkl.toy.expected``) and the
    Jacobian of the enumerated token log-probs. tr Cov = E‖ĝ‖² − ‖Eĝ‖² (prompts drawn from ρ inside the group).
    Returns:
      (mean shaped like ``policy.theta``, tr Cov).
    """
    with threads_for(mdp):
        spec = loss_spec(method, mdp, group_size)
        if spec.aggregation is None or spec.coupling == "batch":
            raise ValueError("exact_group_variance needs a method with a known, group-local aggregation")
        G = spec.group_size
        data = _prepare(mdp, policy, behaviour, ref, keep_graph=False, sampler=sampler,
                        replay=replays_kept_set(spec))
        J = token_logp_jacobian(data.chain_policy)  # [P·N·T, d]
        T, d = data.T, J.shape[1]
        mean = torch.zeros(d, dtype=torch.float64)
        second = torch.zeros((), dtype=torch.float64)
        for x in range(data.q.shape[0]):
            if data.rho[x] == 0:
                continue
            rows, probs = _tuples_for_prompt(data, x, G, max_groups)  # [M, G], [M]
            for a in range(0, rows.shape[0], chunk):
                r = rows[a:a + chunk].reshape(-1)
                batch = make_batch(data, r, G)
                leaf = data.logp[r].requires_grad_(True)
                (g,) = torch.autograd.grad(_call(spec, leaf, batch), leaf, allow_unused=True)
                g = torch.zeros_like(leaf) if g is None else g
                coef = g * _group_factors(spec, batch.mask, G, per_row_unit=False).unsqueeze(1)
                flat = (r.unsqueeze(1) * T + torch.arange(T)).reshape(-1)
                per_group = (J[flat] * coef.reshape(-1, 1)).view(-1, G * T, d).sum(1)  # [m, d]
                p = probs[a:a + chunk]
                mean += (p.unsqueeze(1) * per_group).sum(0)
                second += (p * (per_group * per_group).sum(1)).sum()
        return mean.view_as(policy.theta), float(second - mean @ mean)


# ------------------------------------------------------------------------------------------------ the audit
@dataclasses.dataclass
class MismatchResult:
    """One correction's audit: ``record`` (JSON-able, docs/audit.md) and the vectors behind it."""

    record: dict
    grad: Tensor
    targets: dict  # Reading value → target vector
    terms: dict  # Reading value → {name: vector} (method terms and mismatch terms)


def _norm(x: Tensor) -> float:
    return float(x.norm())


def _as_correction(c: Any) -> RolloutCorrection:
    if isinstance(c, RolloutCorrection):
        return c
    return correction_from_spec(c)


class _Path:
    """The closed form along the decomposition path of one sampler (shared by every correction)."""

    def __init__(self, method, mdp, policy, ref, sampler: Sampler, G: int):
        self.method, self.mdp, self.policy, self.ref, self.sampler, self.G = method, mdp, policy, ref, sampler, G
        self.mask = mdp.stacked()[2]
        proc = sampler.replace(logprobs=LogprobsMode.PROCESSED)
        self.q = SampledPolicy(policy, sampler)
        self.q_proc = SampledPolicy(policy, proc)
        no_trunc = proc.replace(top_k=None, top_p=1.0, min_p=0.0)
        no_temp = no_trunc.replace(temperature=1.0)
        self.samplers = {"truncation_mass": SampledPolicy(policy, no_trunc),
                         "temperature": SampledPolicy(policy, no_temp)}

    def F(self, method, D: Policy, reported: Tensor, trainer: Policy) -> Tensor:
        old = trainer.token_logp().detach()
        lr = torch.where(self.mask & torch.isfinite(reported) & torch.isfinite(old), old - reported,
                         torch.zeros_like(old))
        w = reference_weights(method.correction, lr, self.mask)
        return formula_gradient(method, self.mdp, D, w, trainer, self.ref, self.G)

    def trainer(self, truncation: bool, temperature: bool, precision: bool) -> Policy:
        s = self.sampler
        if not (truncation or temperature or precision):
            return self.policy
        return TransformedPolicy(self.policy, self.q.kept if truncation and s.truncates else None,
                                 self.q.offset if precision and s.changes_precision else None,
                                 s.temperature if temperature else 1.0)

    def common(self, m) -> tuple[dict, Tensor, Policy, Tensor]:
        """processed_vs_raw and the bound term; returns (terms, F after them, the trainer, F(actual))."""
        replay = m.correction.replays_kept_set
        tr = self.trainer(truncation=replay, temperature=False, precision=False)
        terms = {}
        f0 = self.F(m, self.q, self.q.reported_token_logp(), tr)
        f1 = self.F(m, self.q, self.q_proc.reported_token_logp(), tr)
        if self.sampler.logprobs is LogprobsMode.RAW:
            terms["processed_vs_raw"] = f0 - f1
        unb = m.replace(correction=m.correction.uncapped())
        f2 = self.F(unb, self.q, self.q_proc.reported_token_logp(), tr)
        if m.correction.bounded:
            terms[m.correction.bound_term] = f1 - f2
        return terms, f2, tr, f0

    def full(self, m) -> tuple[dict, Tensor, Tensor]:
        """Mismatch terms against the full objective; (terms, F(actual), F(no mismatch))."""
        terms, f, tr, f_actual = self.common(m)
        unb = m.replace(correction=m.correction.uncapped())
        if m.correction.replays_kept_set:
            f_next = self.F(unb, self.q, self.q_proc.reported_token_logp(), self.policy)
            terms["kept_set_renormalization"] = f - f_next
            f = f_next
        for name in ("truncation_mass", "temperature"):
            D = self.samplers[name]
            f_next = self.F(unb, D, D.reported_token_logp(), self.policy)
            terms[name] = f - f_next
            f = f_next
        f_base = self.F(m.replace(correction=NoCorrection()), self.policy.detached(), self.policy.token_logp().detach(),
                        self.policy)
        terms["precision_mismatch"] = f - f_base
        return terms, f_actual, f_base

    def deployed(self, m) -> tuple[dict, Tensor, Tensor]:
        """Mismatch terms against the deployed objective; (terms, F(actual), F(on-policy for T(π_θ)))."""
        terms, f, tr, f_actual = self.common(m)
        unb = m.replace(correction=m.correction.uncapped())
        flags = {"truncation": m.correction.replays_kept_set, "temperature": False, "precision": False}
        for name, key in (("truncation_mass", "truncation"), ("temperature", "temperature"),
                          ("precision_mismatch", "precision")):
            if flags[key]:
                continue
            flags[key] = True
            f_next = self.F(unb, self.q, self.q_proc.reported_token_logp(), self.trainer(**flags))
            terms[name] = f - f_next
            f = f_next
        return terms, f_actual, f


# ------------------------------------------------------------------------------------------------ registry terms
def _full_terms(ctx) -> Optional[dict]:
    """The full-reading mismatch terms of an audit run behind a sampler (``ctx.extras["sampler"]``), computed once
    per `rlkl.toy.context.AuditContext`; None without a sampler, off-policy, or for a method the closed form does
    not cover (the gap then stays in the audit's ``unexplained``)."""
    sampler = ctx.extras.get("sampler")
    if sampler is None or ctx.off_policy or ctx.method is None:
        return None
    if "_mismatch_terms" not in ctx.extras:
        try:
            check_covered(ctx.method, ctx.mdp)
            base = ctx.method.replace(correction=NoCorrection())
            terms = _Path(base, ctx.mdp, ctx.policy, ctx.ref, sampler, ctx.G).full(ctx.method)[0]
        except NotCovered:
            terms = None
        ctx.extras["_mismatch_terms"] = terms
    return ctx.extras["_mismatch_terms"]


def _can_bind(correction: RolloutCorrection, sampler: Sampler) -> bool:
    """Whether the correction's bound can act: ratios above 1 need temperature or a precision change (at τ = 1
    truncation alone gives ρ = S ≤ 1, docs/theory.md T20); ratios below 1 also come from truncation."""
    other = sampler.temperature != 1.0 or sampler.changes_precision
    upper = any(getattr(correction, k, None) is not None for k in ("cap", "upper"))
    lower = any(getattr(correction, k, None) is not None for k in ("floor", "lower"))
    return (upper and other) or (lower and (other or sampler.truncates))


def _exact_on_full_support(m) -> bool:
    """Plain sequence IS on a per-sample-unbiased advantage (leave-one-out, raw) without a KL loss: E_q[w·∇ℓ] is
    the π_old expectation for every q of full support, so temperature and precision leave no term."""
    from rlkl.components import LeaveOneOut, Raw

    return (m.correction.uncapped() == SequenceTIS(None, None) and isinstance(m.advantage, (LeaveOneOut, Raw))
            and not m.kl_in_loss)


def _predicted(name: str):
    """The theory's prediction from the method and the sampler alone. A cap or mask (``cap_truncation``,
    ``rejection``) is predicted wherever it *can* act (`_can_bind`); on a tree where no ratio crosses it the term
    is absent (the record then lists it under ``missing_terms``)."""
    def predicted(m, setting) -> bool:
        smp = getattr(setting, "sampler", None)
        if smp is None or setting.off_policy:
            return False
        c = m.correction
        reweights = not isinstance(c, (NoCorrection, MaskReplay))
        full_support = not _exact_on_full_support(m)
        return {"processed_vs_raw": smp.logprobs is LogprobsMode.RAW and reweights and
                (smp.truncates or smp.temperature != 1.0),
                "cap_truncation": c.bound_term == "cap_truncation" and c.bounded and _can_bind(c, smp),
                "rejection": c.bound_term == "rejection" and _can_bind(c, smp),
                "kept_set_renormalization": c.replays_kept_set and smp.truncates,
                "truncation_mass": smp.truncates,
                "temperature": smp.temperature != 1.0 and full_support,
                "precision_mismatch": smp.changes_precision and full_support}[name]
    return predicted


def _measure(name: str):
    def measure(ctx) -> Optional[Tensor]:
        terms = _full_terms(ctx)
        return None if terms is None else terms.get(name)
    return measure


_FORMULAS = {
    "processed_vs_raw": "F(q, w(π_old/q_raw), Tr) − F(q, w(π_old/q), Tr)",
    "cap_truncation": "F(q, w_c(π_old/q), Tr) − F(q, w_ĉ(π_old/q), Tr), ĉ the correction without its cap",
    "rejection": "F(q, w_c(π_old/q), Tr) − F(q, w_ĉ(π_old/q), Tr), ĉ the correction without its mask",
    "kept_set_renormalization": "F(q, 1, π_θ^K) − F(q, 1, π_θ)",
    "truncation_mass": "F(q, w_ĉ(π_old/q), π_θ) − F(q̃, w_ĉ(π_old/q̃), π_θ), q̃ the sampler without truncation",
    "temperature": "F(q̃, w_ĉ, π_θ) − F(q̄, w_ĉ, π_θ), q̄ = softmax(z_e) (τ = 1)",
    "precision_mismatch": "F(q̄, w_ĉ(π_old/q̄), π_θ) − F(π_old, 1, π_θ)",
}

for _name, _doc in MISMATCH_TERM_DOCS.items():
    _terms_registry.register(_terms_registry.BiasTerm(
        _name, f"rollout–trainer mismatch: {_doc} (docs/theory.md §7)",
        _FORMULAS[_name] + "; F(D, w, Tr) = Σ_x ρ Σ_y D(y) a(y) Σ_t [−w_t(h_D − β pen_t) + β κ_t] ∇log Tr_t",
        _predicted(_name), _measure(_name)), replace=True)


def _reading_record(g: Tensor, own, mismatch: dict, tol: float) -> tuple[dict, dict]:
    t = own.target
    denom = _norm(t) if _norm(t) > 1e-300 else 1.0
    method_terms = {k: v for k, v in own.terms.items()}
    all_terms = {**{f"method:{k}": v for k, v in method_terms.items()}, **mismatch}
    residual = g - t - sum(all_terms.values(), torch.zeros_like(g))
    rec = {
        "target_norm": _norm(t),
        "rel_bias": _norm(g - t) / denom,
        "method_bias": _norm(own.grad - t) / denom,
        "mismatch_gap": _norm(g - own.grad) / denom,
        "method_terms": {k: _norm(v) / denom for k, v in method_terms.items() if _norm(v) / denom > tol},
        "mismatch_terms": {k: _norm(v) / denom for k, v in mismatch.items() if _norm(v) / denom > tol},
        "unexplained": _norm(residual) / denom,
    }
    return rec, all_terms


def audit_mismatch(method, mdp: TreeMDP, policy: Policy, sampler: Sampler, ref: Optional[Policy] = None,
                   group_size: int = 4, corrections: Sequence[Any] = DEFAULT_CORRECTIONS, tol: float = 1e-12,
                   variance: bool = True, setup: Optional[dict] = None) -> list[MismatchResult]:
    """Audit ``method`` with each rollout correction behind ``sampler`` (module docstring).

    Args:
      method: a Method (its own correction is replaced by each of ``corrections``).
      mdp, policy: the tree and π_θ = π_old (the trainer's first update after the rollout).
      sampler: the engine's ``rlkl.sampling.Sampler``; ref: π_ref.
      group_size: G; corrections: RolloutCorrection components or their spellings (``token_tis:2``, …).
      tol: terms smaller than ``tol`` × ‖target‖ are not listed; variance: compute the exact tr Cov.
    Returns:
      one `MismatchResult` per correction.
    """
    from rlkl.methods import Method

    if not isinstance(method, Method):
        raise ValueError(f"audit_mismatch needs an rlkl Method, got {type(method).__name__}")
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be an rlkl.sampling.Sampler, got {type(sampler).__name__}")
    with threads_for(mdp):
        base = method.replace(correction=NoCorrection())
        G = group_size
        own_full = audit_one(base, mdp, policy, None, ref, G)
        q = SampledPolicy(policy, sampler)
        dep = deployed_policy(policy, q)
        notes = []
        try:
            own_dep = audit_one(base, mdp, dep, None, ref, G)
            bad = [k for k, v in own_dep.terms.items() if not bool(torch.isfinite(v).all())]
            if bad:
                raise ValueError(f"terms {bad} are not finite on a policy with zero-probability tokens")
        except ValueError as exc:  # a method term's formula cannot handle the deployed policy's zero mass
            own_dep = audit_one(base, mdp, dep, None, ref, G, decompose=False)
            notes.append(f"deployed reading: the method's own bias is not decomposed ({exc})")
        try:
            check_covered(base, mdp)
            path, note = _Path(base, mdp, policy, ref, sampler, G), None
        except NotCovered as exc:
            path = None
            notes.append(f"mismatch not decomposed: {exc}")
        with torch.no_grad():
            visit = policy.state_log_visitation().exp()  # [P, S] d_π(s)
            mean_kept = float((mdp.prompt_probs.unsqueeze(1) * visit * q.kept_mass()).sum()
                              / (mdp.prompt_probs.unsqueeze(1) * visit).sum())
        return [_audit_correction(base, _as_correction(c), mdp, policy, ref, sampler, G, own_full, own_dep, path,
                                  notes, tol, variance, mean_kept, setup) for c in corrections]


def _audit_correction(base, correction, mdp, policy, ref, sampler, G, own_full, own_dep, path, notes, tol, variance,
                      mean_kept, setup) -> MismatchResult:
    t0 = time.perf_counter()
    m = base.replace(correction=correction)
    full = audit_one(m, mdp, policy, None, ref, G, sampler=sampler)  # the registry's terms, ours included
    g = full.grad
    mism = {k: v for k, v in full.terms.items() if k in MISMATCH_TERM_DOCS}
    own_terms = {k: v for k, v in full.terms.items() if k not in MISMATCH_TERM_DOCS}
    rec, terms = _reading_record(g, dataclasses.replace(own_full, terms=own_terms), mism, tol)
    rec.update(unexplained=full.record["unexplained"], as_predicted=full.record["as_predicted"],
               predicted_terms=full.record["predicted_terms"])
    readings, targets, all_terms = {"full": rec}, {"full": full.target}, {"full": terms}
    formula_error = None
    if path is not None:
        mism_dep, _, _ = path.deployed(m)
        formula_error = _norm(path.full(m)[1] - g) / max(_norm(g), 1e-300)
        rec, terms = _reading_record(g, own_dep, mism_dep, tol)
    else:
        rec, terms = _reading_record(g, own_dep, {}, tol)
    readings["deployed"], targets["deployed"], all_terms["deployed"] = rec, own_dep.target, terms
    trcov = None
    if variance:
        _, trcov = exact_group_variance(m, mdp, policy, None, ref, G, sampler=sampler)
    record = {
        "method": base.name, "correction": correction.spec(), "sampler": sampler.describe(),
        "sampler_config": {f.name: (v.value if hasattr(v, "value") else v)
                           for f in dataclasses.fields(sampler) for v in [getattr(sampler, f.name)]},
        "mdp": {**mdp.describe(), **(setup or {})}, "group_size": G, "beta": float(base.beta),
        "objective": own_full.record["objective"], "kept_mass": mean_kept,
        "grad_norm": _norm(g), "variance": trcov, "formula_error": formula_error,
        **readings, "notes": list(notes), "seconds": time.perf_counter() - t0,
    }
    return MismatchResult(record, g, targets, all_terms)
