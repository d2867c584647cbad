"""verl / TRL configs → an rlkl Method, its batch layout, and a classification of every key.

``translate_verl`` / ``translate_trl`` never stop at the first problem: every key is classified
(:mod:`rlkl.integrations.keys`), every untranslatable key is named with its reason, and the framework defaults
that were used are stated (verl 0.9.1; TRL by version: ``use_bias_correction_kl`` defaults to False up to TRL 1.9
and to True from 1.10 on — checked in the 1.0.0, 1.5.0, 1.9.2, 1.10.0 and 1.16.0 wheels; 1.16.0 is the newest
release on PyPI when this was written). ``Translation.require_method()`` raises a ValueError listing the
problems; ``rlkl.integrations.flags.from_verl`` / ``from_trl`` are that.

Values given as strings are parsed as the frameworks parse them: verl through OmegaConf's typed nodes
(``"false"``, ``"no"``, ``"off"``, ``"0"`` → False; ``"1e-3"`` → 0.001), TRL through ``HfArgumentParser``'s rules
(``string_to_bool``: yes/no, true/false, t/f, y/n, 1/0, case-insensitive; ``int()``, ``float()``).

The inference engine's keys (verl ``algorithm.rollout_correction.*``, ``rollout.{temperature, top_k, top_p,
logprobs_mode}``; TRL ``use_vllm``, ``vllm_importance_sampling_*``, ``temperature``, ``top_k``, ``top_p``,
``min_p``) become the Method's ``correction`` and ``Translation.sampler`` (:mod:`rlkl.integrations.rollout`, with
their version-gated defaults).

The intended objective of a translated config is what the framework documents: E[R] − β·KL(π‖π_ref) with a KL
(β > 0), E[R] without; an rlkl plug-in method (``adv_estimator=frpo``, ``rpg_*``) keeps its own claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from rlkl.components import (CISPO, GSPO, RPG, AggMode, Aggregation, Estimator, FutureReturn, GPGAdvantage,
                             GroupCentered, GroupStandardized, KLLoss, KLReward, LeaveOneOut, LengthWeightedCentered,
                             NoKL, PassAtK, PPOClip, Reinforce, RewardForm, RPGClip, Std, TokenWhitened)
from rlkl.integrations.config_files import RawConfig, load_trl, load_verl
from rlkl.integrations.keys import TRL_RULES, VERL_RULES, Kind, classify
from rlkl.integrations.microbatch import BatchLayout, Pool
from rlkl.integrations import rollout as ro
from rlkl.methods import REGISTRY, Method
from rlkl.objective import NO_REGULARIZER, REVERSE_KL_TO_REF
from rlkl.sampling import Sampler

__all__ = ["KeyReport", "Translation", "translate_verl", "translate_trl", "VERL_VERSION", "TRL_VERSIONS",
           "VERL_DEFAULTS", "trl_defaults"]

VERL_VERSION = "0.9.1"
#: TRL versions whose GRPOConfig defaults rlkl states (newest: 1.16)
TRL_VERSIONS = ((1, 0), (1, 16))
_A = "actor_rollout_ref.actor."
_R = "actor_rollout_ref.rollout."


@dataclass(frozen=True)
class KeyReport:
    """One key: its value, kind (:class:`~rlkl.integrations.keys.Kind`), category of an ignored key, the reason,
    and where it was read (``file:line`` / ``override k``)."""

    key: str
    value: Any
    kind: Kind
    category: str = ""
    reason: str = ""
    where: str = ""

    def line(self) -> str:
        at = f"{self.where}: " if self.where else ""
        return f"{at}{self.key}={self.value!r}: {self.reason}"


@dataclass
class Translation:
    """A translated config.

    Attributes:
      framework, version, origin: what was read. method: the Method (None when a key is unsupported).
      layout: the batch layout of the token-mean normalizer; group_size: G (None: the config does not say);
      steps_per_rollout: optimizer steps per
      rollout batch (steps after the first sample from an older policy).
      keys: every key given, classified; defaults: the translated/layout keys not given, with the default used.
      values: the effective value of every translated/layout key; notes: facts the user should know.
      sampler: the inference engine's sampler relative to the τ-tempered π the trainer differentiates
        (``rlkl.integrations.rollout``); the identity when nothing is truncated. The rollout correction is the
        Method's ``correction``.
    """

    framework: str
    version: str
    origin: str
    method: Optional[Method]
    layout: BatchLayout
    group_size: Optional[int]
    steps_per_rollout: int
    keys: list[KeyReport]
    defaults: dict[str, Any]
    values: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    sampler: Sampler = field(default_factory=Sampler)

    def by_kind(self, kind: Kind | str) -> list[KeyReport]:
        return [k for k in self.keys if k.kind == Kind(kind)]

    @property
    def unsupported(self) -> list[KeyReport]:
        return self.by_kind(Kind.UNSUPPORTED)

    def require_method(self, who: str = "") -> Method:
        """The Method, or a ValueError naming every unsupported key with its reason."""
        if self.method is not None and not self.unsupported:
            return self.method
        lines = "; ".join(k.line() for k in self.unsupported) or "no method"
        raise ValueError(f"{who or 'translate'}: {self.framework} config {self.origin} is not translatable: {lines}")

    def to_dict(self) -> dict:
        """JSON-able summary (keys grouped by kind)."""
        return {"framework": self.framework, "version": self.version, "origin": self.origin,
                "method": self.method.to_dict() if self.method is not None else None,
                "layout": {"pool": self.layout.pool.value, "groups": self.layout.groups,
                           "micro_rows": self.layout.micro_rows, "source": self.layout.source},
                "group_size": self.group_size, "steps_per_rollout": self.steps_per_rollout,
                "keys": {kind.value: [{"key": k.key, "value": _jsonable(k.value), "category": k.category,
                                       "reason": k.reason, "where": k.where} for k in self.by_kind(kind)]
                         for kind in Kind},
                "defaults": {k: _jsonable(v) for k, v in self.defaults.items()},
                "values": {k: _jsonable(v) for k, v in self.values.items()}, "notes": list(self.notes),
                "sampler": self.sampler.describe(),
                "correction": self.method.correction.spec() if self.method is not None else None}


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v)


class _Problems(dict):
    """key → reason of the untranslatable keys (first reason wins)."""

    def add(self, key: str, reason: str) -> None:
        self.setdefault(key, reason)


# ================================================================================================ verl
#: verl 0.9.1 defaults of every key rlkl reads (its composed trainer/config/ppo_trainer.yaml)
VERL_DEFAULTS: dict[str, Any] = {
    "algorithm.adv_estimator": "gae", "algorithm.norm_adv_by_std_in_grpo": True,
    "algorithm.use_kl_in_reward": False, "algorithm.kl_penalty": "kl", "algorithm.kl_ctrl.type": "fixed",
    "algorithm.kl_ctrl.kl_coef": 0.001, _A + "use_kl_loss": False, _A + "kl_loss_type": "low_var_kl",
    _A + "kl_loss_coef": 0.001, _A + "clip_ratio": 0.2, _A + "clip_ratio_low": 0.2, _A + "clip_ratio_high": 0.2,
    _A + "clip_ratio_c": 3.0, _A + "loss_agg_mode": "token-mean", _A + "loss_scale_factor": None,
    _A + "policy_loss.loss_mode": "vanilla", _A + "entropy_coeff": 0.0, _R + "n": 1, _R + "response_length": 512,
    "data.max_response_length": 512, "data.train_batch_size": 1024, _A + "ppo_mini_batch_size": 256,
    _A + "ppo_epochs": 1, _A + "shuffle": False, "trainer.balance_batch": True, "algorithm.gamma": 1.0,
    **ro.VERL_ROLLOUT_DEFAULTS,
}
_VERL_TYPES = {k: (bool if isinstance(v, bool) else int if isinstance(v, int) else float if isinstance(v, float)
                   else str) for k, v in VERL_DEFAULTS.items()}
_VERL_TYPES.update({_A + "loss_scale_factor": int, _A + "entropy_coeff": float, _A + "rollout_n": int,
                    "algorithm.kl_ctrl.kl_coef": float, _A + "kl_loss_coef": float, **ro.VERL_ROLLOUT_TYPES})

_VERL_KL = {"kl": Estimator.K1, "k1": Estimator.K1, "mse": Estimator.K2, "k2": Estimator.K2,
            "low_var_kl": Estimator.K3, "k3": Estimator.K3}
#: verl 0.9.1 advantage estimators rlkl cannot (yet) express, with the reason
_VERL_ADV_REFUSED = {
    "gae": "needs a value model (critic): rlkl has no critic; its estimators are critic-free (no critic/value model)",
    "remax": "ReMax's baseline is the reward of an extra greedy rollout per prompt, which rlkl's trees do not sample",
    "optimal_token_baseline": "a per-token baseline from Σπ² statistics of the actor; rlkl has no such component",
    "tir_optimal_token_baseline": "a per-token baseline from Σπ² statistics of the actor; rlkl has no such component",
    "gdpo": "GDPO normalizes several reward components separately; rlkl audits one reward R(x, y)",
}
#: verl 0.9.1 policy-loss modes rlkl cannot express, with the reason
_VERL_LOSS_REFUSED = {
    "sapo": "SAPO's soft sigmoid gate has no rlkl component",
    "clip_cov": "Clip-Cov clips tokens by a batch covariance statistic (data-dependent mask)",
    "kl_cov": "KL-Cov penalizes tokens selected by a batch covariance statistic",
    "geo_mean": "the geometric-mean ratio of GMPO has no rlkl component",
    "dro": "DRO's loss has no rlkl component",
    "dppo_tv": "DPPO's trust-region mask has no rlkl component",
    "dppo_kl": "DPPO's trust-region mask has no rlkl component",
    "bypass_mode": "the rollout-correction bypass loss has no rlkl component",
}


def _verl_plugin_names() -> tuple[str, ...]:
    """The rlkl methods the verl plug-in registers (``rlkl.integrations.verl.VERL_METHOD_NAMES``), verl-free."""
    return tuple(n for n, m in REGISTRY.items() if isinstance(m.kl, FutureReturn) or isinstance(m.policy_loss, RPG))


def _typed(value: Any, typ: type, framework: str) -> Any:
    """``value`` as ``typ`` the way the framework parses it (OmegaConf nodes for verl, HfArgumentParser for TRL)."""
    if value is None:
        return None
    if framework == "verl":
        from omegaconf.errors import ValidationError
        from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

        node = {bool: BooleanNode, int: IntegerNode, float: FloatNode, str: StringNode}[typ]
        try:
            return node(value)._value()
        except ValidationError:
            raise ValueError(f"{value!r} is not a valid {typ.__name__} (OmegaConf)") from None
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("yes", "true", "t", "y", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("no", "false", "f", "n", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a bool (HfArgumentParser: yes/no, true/false, t/f, y/n, 1/0)")
    if typ is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value!r} is not an int")
    try:
        return typ(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a valid {typ.__name__}") from None


def _normalize_verl_key(key: str) -> str:
    return _A + key[len("actor."):] if key.startswith("actor.") else key


def translate_verl(source: Any = None, overrides: Any = (), name: str = "verl_config") -> Translation:
    """Translate a verl 0.9.1 config: a YAML path, a (nested or dotted) mapping, a ``RawConfig``, or None (verl's
    defaults), with Hydra-style ``overrides`` (a list or a command-line string).

    ``actor.`` is accepted as a short form of ``actor_rollout_ref.actor.``.
    """
    if isinstance(source, RawConfig):
        raw = source
    elif source is None or isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        raw = load_verl(source, overrides)
    elif isinstance(source, Mapping):
        raw = load_verl(None, overrides, mapping={_normalize_verl_key(str(k)): v for k, v in source.items()})
    else:
        raise ValueError(f"from_verl needs a mapping of flags (a dict / JSON object) or a YAML path, got "
                         f"{type(source).__name__} {source!r}")
    given = {_normalize_verl_key(k): v for k, v in raw.values.items()}
    where = {_normalize_verl_key(k): v for k, v in raw.where.items()}
    problems = _Problems()
    values, defaults = _effective(given, VERL_DEFAULTS, _VERL_TYPES, "verl", problems)
    if _A + "rollout_n" in given and _R + "n" not in given and values.get(_A + "rollout_n") is not None:
        values[_R + "n"] = values[_A + "rollout_n"]
    notes: list[str] = []
    method = _verl_method(values, given, problems, notes, name)
    correction = ro.verl_correction(values, problems, notes)
    sampler = ro.verl_sampler(values, problems, notes)
    if method is not None:
        method = method.replace(correction=correction)
    # keys the user wrote (their file, overrides, mapping) — not the defaults Hydra composed in
    stated = set(where) | (set() if "composed by Hydra" in raw.origin else set(given))
    layout, G, steps = _verl_layout(values, method, problems, notes, stated)
    keys = _classify_all(given, where, VERL_RULES, problems,
                         f"unknown to verl {VERL_VERSION}'s ppo_trainer config (misspelled, or from another verl "
                         "version)", "verl")
    if any(k.kind is Kind.UNSUPPORTED for k in keys):
        method = None
    return Translation("verl", VERL_VERSION, raw.origin, method, layout, G, steps, keys, defaults, values, notes,
                       sampler)


def _effective(given: dict, defaults: dict, types: dict, framework: str, problems: _Problems
               ) -> tuple[dict, dict]:
    values, used = {}, {}
    for key, default in defaults.items():
        if key in given:
            try:
                values[key] = _typed(given[key], types[key], framework)
            except ValueError as exc:
                problems.add(key, f"invalid value: {exc}")
                values[key] = default
        else:
            values[key] = used[key] = default
    for key, typ in types.items():
        if key not in defaults and key in given:
            try:
                values[key] = _typed(given[key], typ, framework)
            except ValueError as exc:
                problems.add(key, f"invalid value: {exc}")
    return values, used


def _classify_all(given: dict, where: dict, rules, problems: _Problems, unknown: str, framework: str
                  ) -> list[KeyReport]:
    out = []
    for key, value in given.items():
        kind, category, reason = classify(key, value, rules, unknown)
        if key in problems:
            kind, reason = Kind.UNSUPPORTED, problems[key]
        out.append(KeyReport(key, value, kind, category, reason, where.get(key, "")))
    for key, reason in problems.items():  # a default that cannot be translated (e.g. adv_estimator=gae)
        if key not in given:
            out.append(KeyReport(key, None, Kind.UNSUPPORTED, "", f"({framework} default) {reason}", "default"))
    return out


def _verl_kl(name: Any) -> tuple[Optional[Estimator], bool, str]:
    """verl's KL type name → (estimator, straight-through, problem); ``k2+`` is plain k2."""
    if not isinstance(name, str):
        return None, False, f"KL type must be a string, got {name!r}"
    plus = name.endswith("+")
    base = name[:-1] if plus else name
    if base not in _VERL_KL:
        return None, False, (f"KL type {name!r} has no rlkl equivalent (supported: kl/k1, mse/k2, low_var_kl/k3, "
                             "with optional '+')")
    est = _VERL_KL[base]
    return est, plus and est is not Estimator.K2, ""


def _verl_advantage(v: dict, problems: _Problems):
    """(advantage, plug-in Method or None) for ``algorithm.adv_estimator``."""
    est = v["algorithm.adv_estimator"]
    key = "algorithm.adv_estimator"
    if est in _verl_plugin_names():
        m = REGISTRY[est]
        return m.advantage, m
    if est in ("grpo", "grpo_vectorized"):
        return (GroupStandardized(Std.BESSEL, 1e-6) if v["algorithm.norm_adv_by_std_in_grpo"] else GroupCentered()), None
    if est in ("rloo", "rloo_vectorized"):
        return LeaveOneOut(), None
    if est == "grpo_passk":  # only the strict best response learns; std-normalized like grpo
        return PassAtK(bool(v["algorithm.norm_adv_by_std_in_grpo"]), Std.BESSEL, 1e-6), None
    if est == "opo":
        return LengthWeightedCentered(), None
    if est == "gpg":  # α = B/#non-zero rewards over the whole batch
        return GPGAdvantage(), None
    if est in ("reinforce_plus_plus", "reinforce_plus_plus_baseline"):
        if v["algorithm.gamma"] != 1.0:
            problems.add("algorithm.gamma", f"gamma={v['algorithm.gamma']}: REINFORCE++ with a discounted return "
                         "has no rlkl component (γ = 1: the outcome reward on every token)")
            return None, None
        return TokenWhitened(group_mean=est.endswith("_baseline")), None
    reason = _VERL_ADV_REFUSED.get(est)
    if reason is None:
        reason = (f"adv_estimator={est!r} is neither a verl {VERL_VERSION} estimator nor an rlkl plug-in name "
                  f"({', '.join(_verl_plugin_names())})")
    problems.add(key, f"adv_estimator={est!r}: {reason}")
    return None, None


def _verl_policy_loss(v: dict, problems: _Problems):
    """(policy loss, plug-in Method or None) for ``policy_loss.loss_mode`` with verl's clip keys."""
    mode = v[_A + "policy_loss.loss_mode"]
    low, high = v[_A + "clip_ratio_low"], v[_A + "clip_ratio_high"]
    low = v[_A + "clip_ratio"] if low is None else low
    high = v[_A + "clip_ratio"] if high is None else high
    c = v[_A + "clip_ratio_c"]
    key = _A + "policy_loss.loss_mode"
    try:
        if mode in _verl_plugin_names():
            m = REGISTRY[mode]
            pl = m.policy_loss
            if isinstance(pl, RPG):
                import dataclasses

                return dataclasses.replace(pl, clip=RPGClip(low, high, c) if pl.clip else None), m
            return PPOClip(low, high, c if pl.dual is not None else None), m
        if mode == "vanilla":
            return PPOClip(low, high, dual=c), None
        if mode == "gspo":
            return GSPO(low, high), None
        if mode == "gpg":
            return Reinforce(), None
        if mode == "cispo":  # verl clamps both sides: sg[clip(ρ, 1 − clip_ratio_low, 1 + clip_ratio_high)]
            return CISPO(low, high), None
    except ValueError as exc:
        problems.add(_A + "clip_ratio_low", f"invalid clip range: {exc}")
        return None, None
    problems.add(key, f"loss_mode={mode!r} is not translatable: " + _VERL_LOSS_REFUSED.get(
        mode, f"not a verl {VERL_VERSION} loss mode nor an rlkl plug-in name"))
    return None, None


def _verl_kl_term(v: dict, adv_method, problems: _Problems) -> tuple[Any, float]:
    in_reward, in_loss = v["algorithm.use_kl_in_reward"], v[_A + "use_kl_loss"]
    loss_coef = v[_A + "kl_loss_coef"]
    if adv_method is not None and adv_method.kl_active:  # an rlkl estimator with its own KL (FRPO)
        if in_reward:
            problems.add("algorithm.use_kl_in_reward", f"adv_estimator={v['algorithm.adv_estimator']} carries its "
                         "own KL in the advantage; set algorithm.use_kl_in_reward=False (the KL would be fused twice)")
        if in_loss and loss_coef != 0:
            problems.add(_A + "kl_loss_coef", "verl's KL loss would add a second KL term; set use_kl_loss=False or "
                         "kl_loss_coef=0 (FRPO's KL is in the advantage)")
        if v["algorithm.kl_ctrl.type"] != "fixed":
            problems.add("algorithm.kl_ctrl.type", "β of FRPO is algorithm.kl_ctrl.kl_coef: use kl_ctrl.type=fixed")
        return adv_method.kl, v["algorithm.kl_ctrl.kl_coef"]
    if in_reward and in_loss:
        problems.add(_A + "use_kl_loss", "use_kl_in_reward and use_kl_loss together: rlkl Methods take one KL term")
        return NoKL(), 0.0
    if v["algorithm.kl_ctrl.type"] != "fixed" and in_reward:
        problems.add("algorithm.kl_ctrl.type", "only algorithm.kl_ctrl.type='fixed' is translatable (an adaptive β "
                     "changes over training)")
    if in_reward:
        est, plus, why = _verl_kl(v["algorithm.kl_penalty"])
        if why or plus:
            problems.add("algorithm.kl_penalty", why or "a '+' KL type only changes gradients; in the reward it is "
                         "detached")
            return NoKL(), 0.0
        beta = v["algorithm.kl_ctrl.kl_coef"]
        # REINFORCE++ whitens the per-token return (the KL as a reward-to-go); every other estimator sums the
        # token-level rewards into the sequence score (the KL fused)
        form = RewardForm.REWARD_TO_GO if v["algorithm.adv_estimator"] == "reinforce_plus_plus" else RewardForm.FUSED
        return (KLReward(est, form), beta) if beta > 0 else (NoKL(), 0.0)
    if in_loss:
        est, plus, why = _verl_kl(v[_A + "kl_loss_type"])
        if why:
            problems.add(_A + "kl_loss_type", why)
            return NoKL(), 0.0
        return (KLLoss(est, straight_through=plus), loss_coef) if loss_coef > 0 else (NoKL(), 0.0)
    return NoKL(), 0.0


def _verl_method(v: dict, given: dict, problems: _Problems, notes: list, name: str) -> Optional[Method]:
    advantage, adv_method = _verl_advantage(v, problems)
    policy, loss_method = _verl_policy_loss(v, problems)
    kl, beta = _verl_kl_term(v, adv_method, problems)
    if isinstance(policy, RPG):
        if not isinstance(kl, NoKL):
            problems.add(_A + "policy_loss.loss_mode", "an RPG surrogate carries its own KL (to π_old, β = "
                         "kl_loss_coef); it cannot be combined with another KL term")
        kl, beta = NoKL(), v[_A + "kl_loss_coef"]
        if v[_A + "use_kl_loss"]:
            problems.add(_A + "use_kl_loss", "with an RPG loss, β is kl_loss_coef and use_kl_loss must be False "
                         "(verl's KL loss would add a second KL term)")
    mode = v[_A + "loss_agg_mode"]
    if mode == "token-sum":
        problems.add(_A + "loss_agg_mode", "loss_agg_mode='token-sum' is not supported: a token sum grows with the "
                     "batch (no rlkl aggregation)")
        return None
    if mode not in [m.value for m in AggMode]:
        problems.add(_A + "loss_agg_mode", f"loss_agg_mode={mode!r} is not a verl aggregation mode")
        return None
    if loss_method is not None and mode != loss_method.aggregation.mode.value:
        problems.add(_A + "loss_agg_mode", f"loss_mode={loss_method.name} aggregates with "
                     f"{loss_method.aggregation.mode.value!r}; set loss_agg_mode to it (got {mode!r})")
    horizon = None
    if mode == AggMode.SEQ_MEAN_TOKEN_SUM_NORM.value:
        horizon = v[_A + "loss_scale_factor"] or v[_R + "response_length"] or v["data.max_response_length"]
    if advantage is None or policy is None:
        return None
    objective = (adv_method.objective if adv_method is not None else loss_method.objective
                 if isinstance(policy, RPG) else REVERSE_KL_TO_REF if beta > 0 else NO_REGULARIZER)
    shown = {k: given[k] for k in given if k in VERL_DEFAULTS and not k.startswith(("data.", "trainer."))}
    try:
        if beta == 0 or (isinstance(kl, NoKL) and not policy.carries_kl):
            kl, beta = NoKL(), 0.0
        return Method(name=name, advantage=advantage, policy_loss=policy, kl=kl, aggregation=Aggregation(mode, horizon),
                      beta=beta, objective=objective, citation=f"verl {VERL_VERSION} config",
                      description=f"translated from verl flags: {shown}")
    except ValueError as exc:
        problems.add("algorithm.adv_estimator", f"the translated components do not combine: {exc}")
        return None


def _verl_layout(v: dict, method: Optional[Method], problems: _Problems, notes: list, stated: set
                 ) -> tuple[BatchLayout, Optional[int], int]:
    G = v[_R + "n"]
    if G is None or G < 1:
        problems.add(_R + "n", f"rollout.n must be a positive int, got {G!r}")
        G = 1
    if method is not None and method.is_group_based and G < 2:
        if _R + "n" in stated or _A + "rollout_n" in stated:
            problems.add(_R + "n", f"rollout.n={G}: {type(method.advantage).__name__} needs groups of >= 2 "
                         "responses (verl then uses mean 0 and std 1: the raw reward)")
        else:
            notes.append(f"actor_rollout_ref.rollout.n is not set (verl's default {G} turns a group advantage into "
                         "the raw reward): the audit uses its own group size (--group-size)")
            G = None
    train, mini, epochs = v["data.train_batch_size"], v[_A + "ppo_mini_batch_size"], v[_A + "ppo_epochs"]
    if not (mini and train and epochs) or mini < 1 or train < 1 or epochs < 1 or train % mini:
        problems.add(_A + "ppo_mini_batch_size", f"data.train_batch_size={train} must be a positive multiple of "
                     f"ppo_mini_batch_size={mini} (verl asserts it), ppo_epochs={epochs} >= 1")
        return BatchLayout(), G, 1
    steps = train // mini * epochs
    if steps > 1:
        notes.append(f"{steps} optimizer steps per rollout ({train // mini} mini-batches × {epochs} epochs): steps "
                     "2.. sample from an older policy (audit with --off-policy to see the off-policy terms)")
    if method is None or method.aggregation.mode is not AggMode.TOKEN_MEAN:
        return BatchLayout(source="row-local normalizers: the layout does not change the weights"), G, steps
    if G is None:
        return BatchLayout(source="rollout.n unknown: the layout needs the group size"), G, steps
    src = f"token-mean over a mini-batch of ppo_mini_batch_size={mini} prompts × rollout.n={G} rows (verl " \
          f"{VERL_VERSION} divides every micro-batch by the mini-batch's global token count)"
    if v[_A + "shuffle"] and train > mini:
        return BatchLayout(Pool.MICRO, groups=train, micro_rows=mini * G, source=src + "; actor.shuffle=True: "
                           "rows drawn at random from the rollout"), G, steps
    if v["trainer.balance_batch"] and train > mini:
        notes.append("trainer.balance_batch=True reorders rows by length before the mini-batch split; the "
                     "batch_layout term assumes each mini-batch holds whole groups (exact with balance_batch=False "
                     "or ppo_mini_batch_size = data.train_batch_size)")
    return BatchLayout(Pool.GROUPS, groups=mini, source=src), G, steps


# ================================================================================================ TRL
def _trl_version(version: Any) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\S*)?\s*", str(version)) if version is not None else None
    if m is None:
        raise ValueError(f"trl_version must look like '1.16' or '1.10.2', got {version!r}")
    return int(m.group(1)), int(m.group(2))


def trl_defaults(version: tuple[int, int]) -> dict[str, Any]:
    """GRPOConfig / TrainingArguments defaults of the keys rlkl reads, for TRL ``version`` (1.0 – 1.16)."""
    return {"beta": 0.0, "loss_type": "dapo", "epsilon": 0.2, "epsilon_high": None, "delta": None,
            "scale_rewards": "group", "importance_sampling_level": "token",
            "use_bias_correction_kl": version >= (1, 10), "max_completion_length": 512, "num_generations": 8,
            "mask_truncated_completions": False, "top_entropy_quantile": 1.0, "entropy_coef": 0.0,
            "use_adaptive_entropy": False, "off_policy_mask_threshold": None, "num_iterations": 1,
            "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "steps_per_generation": None,
            "generation_batch_size": None, **ro.trl_rollout_defaults(version)}


_TRL_TYPES = {"beta": float, "loss_type": str, "epsilon": float, "epsilon_high": float, "delta": float,
              "scale_rewards": str, "importance_sampling_level": str, "use_bias_correction_kl": bool,
              "max_completion_length": int, "num_generations": int, "mask_truncated_completions": bool,
              "top_entropy_quantile": float, "entropy_coef": float, "use_adaptive_entropy": bool,
              "off_policy_mask_threshold": float, "num_iterations": int, "per_device_train_batch_size": int,
              "gradient_accumulation_steps": int, "steps_per_generation": int, "generation_batch_size": int,
              **ro.TRL_ROLLOUT_TYPES}
_TRL_AGG = {"grpo": AggMode.SEQ_MEAN_TOKEN_MEAN, "bnpo": AggMode.TOKEN_MEAN, "dapo": AggMode.TOKEN_MEAN,
            "dr_grpo": AggMode.SEQ_MEAN_TOKEN_SUM_NORM, "luspo": AggMode.SEQ_MEAN_TOKEN_SUM,
            "cispo": AggMode.TOKEN_MEAN}
_TRL_LOSS_REFUSED = {"sapo": "SAPO's soft sigmoid gate has no rlkl component",
                     "vespo": "VESPO's variational sequence weights have no rlkl component"}


def translate_trl(source: Any, name: str = "trl_config", trl_version: Any = None,
                  num_processes: int = 1) -> Translation:
    """Translate TRL GRPOConfig arguments (a ``GRPOConfig``, its ``to_dict()``, a mapping, a YAML/JSON path).

    ``trl_version``: whose defaults apply (default: the version of the ``GRPOConfig`` object's TRL, else 1.16, the
    newest release checked). ``num_processes``: data-parallel processes (the generation batch spans them).
    """
    raw = source if isinstance(source, RawConfig) else load_trl(source)
    version = _trl_version(trl_version if trl_version is not None else raw.version or "1.16")
    if version < TRL_VERSIONS[0]:
        raise ValueError(f"trl_version={trl_version!r}: rlkl states TRL's GRPOConfig defaults from 1.0 on")
    given = dict(raw.values)
    problems = _Problems()
    values, defaults = _effective(given, trl_defaults(version), _TRL_TYPES, "trl", problems)
    notes = []
    if version > TRL_VERSIONS[1]:
        notes.append(f"TRL {version[0]}.{version[1]} is newer than 1.16, the newest release rlkl checked: 1.16's "
                     "defaults are assumed")
    method = _trl_method(values, given, problems, name, version)
    for key in ("vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min"):
        if key in given and version < (1, 6):
            problems.add(key, f"not a field of TRL {version[0]}.{version[1]}'s GRPOConfig (added in 1.6; before "
                         "it the cap is vllm_importance_sampling_cap and there is no lower bound)")
    correction = ro.trl_correction(values, problems, notes, version)
    sampler = ro.trl_sampler(values, problems, notes)
    if method is not None:
        method = method.replace(correction=correction)
    layout, G, steps = _trl_layout(values, method, problems, notes, num_processes)
    keys = _classify_all(given, raw.where, TRL_RULES, problems,
                         "not a field of TRL's GRPOConfig / TrainingArguments / ModelConfig / GRPOScriptArguments "
                         "(TRL 1.16, transformers 5.24)", "trl")
    if any(k.kind is Kind.UNSUPPORTED for k in keys):
        method = None
    return Translation("trl", f"{version[0]}.{version[1]}", raw.origin, method, layout, G, steps, keys, defaults,
                       values, notes, sampler)


def _trl_advantage(scale: Any, problems: _Problems):
    scale = {True: "group", False: "none"}.get(scale, scale)  # as GRPOConfig.__post_init__
    if scale == "group":
        return GroupStandardized(Std.BESSEL, 1e-4)
    if scale == "none":
        return GroupCentered()
    problems.add("scale_rewards", "scale_rewards='batch' is not translatable (TRL keeps the group mean but divides "
                 "by the batch std; no rlkl component)" if scale == "batch" else
                 f"invalid value {scale!r}: TRL accepts 'group', 'batch', 'none' (or True/False)")
    return None


def _trl_method(v: dict, given: dict, problems: _Problems, name: str, version) -> Optional[Method]:
    advantage = _trl_advantage(given.get("scale_rewards", v["scale_rewards"]), problems)
    if v["delta"] is not None:
        problems.add("delta", f"delta={v['delta']} (two-sided clip of the ratio, INTELLECT-2) is not translatable "
                     "yet")
    loss_type, level = v["loss_type"], v["importance_sampling_level"]
    if loss_type not in _TRL_AGG:
        problems.add("loss_type", f"loss_type={loss_type!r} is not translatable: " + _TRL_LOSS_REFUSED.get(
            loss_type, f"not a TRL loss type (supported: {list(_TRL_AGG)})"))
        return None
    if level not in ("token", "sequence"):
        problems.add("importance_sampling_level", f"importance_sampling_level={level!r} is not one of "
                     "['token', 'sequence']")
        return None
    eps, eps_high, beta = v["epsilon"], v["epsilon_high"], v["beta"]
    eps_high = eps if eps_high is None else eps_high
    kl = NoKL()
    if beta > 0:
        kl = KLLoss(Estimator.K3, importance_weight=bool(v["use_bias_correction_kl"]))
        if level == "sequence" and kl.importance_weight:
            problems.add("use_bias_correction_kl", "with importance_sampling_level='sequence' TRL multiplies the "
                         "per-token k3 by the *sequence* ratio; rlkl's KLLoss(importance_weight) uses the token ratio "
                         "(set use_bias_correction_kl=False, or the token level)")
    mode = _TRL_AGG[loss_type]
    horizon = v["max_completion_length"] if mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM else None
    if advantage is None or problems:
        return None
    shown = {k: given[k] for k in given if k in _TRL_TYPES}
    if loss_type == "cispo":
        if level == "sequence":
            problems.add("importance_sampling_level", "loss_type='cispo' with the sequence ratio: rlkl's CISPO "
                         "weights each token by its own ratio")
        if eps_high <= 1.0:
            problems.add("epsilon_high", f"loss_type='cispo' caps the ratio at epsilon_high itself (ε_max; TRL "
                         f"recommends 5.0): epsilon_high={eps_high} <= 1 caps every weight below 1, which rlkl's CISPO "
                         "(cap 1 + ε_high, ε_high > 0) does not express")
        if problems:
            return None
    try:
        if loss_type == "cispo":  # TRL: sg[min(ρ, ε_max)]·A·log π, no lower bound
            policy = CISPO(None, eps_high - 1.0)
        else:
            policy = GSPO(eps, eps_high) if level == "sequence" else PPOClip(eps, eps_high)
        return Method(name=name, advantage=advantage, policy_loss=policy, kl=kl, aggregation=Aggregation(mode, horizon),
                      beta=beta, objective=REVERSE_KL_TO_REF if beta > 0 else NO_REGULARIZER,
                      citation=f"TRL {version[0]}.{version[1]} GRPOConfig",
                      description=f"translated from TRL GRPOConfig: {shown}")
    except ValueError as exc:
        problems.add("epsilon", f"the translated components do not combine: {exc}")
        return None


def _trl_layout(v: dict, method: Optional[Method], problems: _Problems, notes: list,
                num_processes: int) -> tuple[BatchLayout, int, int]:
    G, b, ga = v["num_generations"], v["per_device_train_batch_size"], v["gradient_accumulation_steps"]
    if not G or G < 1 or not b or b < 1 or not ga or ga < 1:
        problems.add("num_generations", f"num_generations={G}, per_device_train_batch_size={b}, "
                     f"gradient_accumulation_steps={ga} must be positive")
        return BatchLayout(), max(1, G or 1), 1
    if method is not None and method.is_group_based and G < 2:
        problems.add("num_generations", f"num_generations={G}: a group advantage needs >= 2 completions")
    S, gen = v["steps_per_generation"], v["generation_batch_size"]
    if S is None and gen is None:
        S = ga
    if gen is None:
        gen = b * num_processes * S
    elif S is None:
        S = gen // (b * num_processes) if gen % (b * num_processes) == 0 else 0
    if S < 1 or gen % (b * num_processes) or gen % G:
        problems.add("generation_batch_size", f"generation batch of {gen} rows must be a multiple of "
                     f"per_device_train_batch_size×processes={b * num_processes} and of num_generations={G} "
                     "(TRL raises)")
        return BatchLayout(), G, 1
    steps = max(1, S // ga) * v["num_iterations"]
    if steps > 1:
        notes.append(f"{steps} optimizer steps per generation batch (steps_per_generation={S} / "
                     f"gradient_accumulation_steps={ga} × num_iterations={v['num_iterations']}): steps 2.. sample "
                     "from an older policy (audit with --off-policy)")
    K = gen // G
    if method is None or method.aggregation.mode is not AggMode.TOKEN_MEAN:
        return BatchLayout(source="row-local normalizers: equal micro-batches give the full-batch weights"), G, steps
    if v["loss_type"] == "bnpo":
        if b % G and G % b:
            notes.append("per_device_train_batch_size and num_generations do not divide each other: micro-batches "
                         "mix partial groups (covered: rows are drawn at random from the shuffled generation batch)")
        return BatchLayout(Pool.MICRO, groups=gen // num_processes // G, micro_rows=b,
                           source=f"loss_type='bnpo': token-mean over each micro-batch of per_device_train_batch_size"
                                  f"={b} rows of a shuffled generation batch of {gen} rows, / "
                                  f"gradient_accumulation_steps"), G, steps
    return BatchLayout(Pool.GROUPS, groups=K, source=f"loss_type={v['loss_type']!r}: token-mean over the "
                       f"generation batch's {gen} rows (num_items_in_batch)"), G, steps
