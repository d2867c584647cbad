"""The inference engine's side of a verl / TRL config: the rollout correction (a Method's ``correction``) and the
sampler (``rlkl.sampling.Sampler``) that the mismatch audit puts between π_old and the trainer.

Both frameworks compute the trainer's log-probs at the sampling temperature τ (verl divides the actor's logits by
``rollout.temperature``; TRL by ``temperature``), so the policy rlkl audits is the τ-tempered π and the sampler's
temperature relative to it is 1: what remains is the truncation (top-k, top-p, min-p) and which log-probs the
engine reports. The kept-mass identity (``rlkl.sampling``) then holds: with processed log-probs every kept token's
ratio π_old/q is the kept mass S_s.

verl 0.9.1 (``algorithm.rollout_correction``, ``trainer/ppo/rollout_corr_helper.py``): log ρ = old_log_prob −
rollout_log_prob (π_old over the engine's reported probability, the orientation rlkl uses);

* ``rollout_is=token`` / ``sequence`` with a float ``rollout_is_threshold`` C: w = min(ρ_t, C) / min(Π_t ρ_t, C)
  (TIS) → :class:`~rlkl.components.TokenTIS` / :class:`~rlkl.components.SequenceTIS`; with ``"L_U"``: w = ρ if
  L <= ρ <= U else 0 (IcePop) → :class:`~rlkl.components.TokenMIS` / :class:`~rlkl.components.SequenceMIS`;
  ``null``: no weight (:class:`~rlkl.components.NoCorrection`); the threshold's default is 2.0;
* ``rollout_rs`` (rejection by a k1/k2/k3 statistic of log ρ), ``rollout_is_batch_normalize=True`` and
  ``bypass_mode=True`` are refused (reasons in :data:`VERL_REFUSED`);
* sampler: ``rollout.top_k`` (−1 vLLM / 0 HF: off), ``rollout.top_p`` (1.0: off), ``rollout.logprobs_mode``
  (vLLM's ``processed_logprobs``, the default → processed; ``raw_logprobs`` → raw, exact at τ = 1 only).

TRL (``GRPOTrainer`` with ``use_vllm=True`` and ``vllm_importance_sampling_correction=True``, the default once
vLLM is on): log ρ_t = old_per_token_logps − sampling_per_token_logps, ρ = exp(log ρ_t) or exp(Σ_t log ρ_t);

* ``token_truncate`` / ``sequence_truncate``: w = clamp(ρ, C_min, C_max) → TokenTIS / SequenceTIS (cap, floor);
* ``token_mask`` / ``sequence_mask`` (default): w = ρ, set to 0 when ρ < C_min or ρ > C_max → TokenMIS /
  SequenceMIS (plain IS when both bounds are None);
* C_max = ``vllm_importance_sampling_clip_max`` (default 3.0), C_min = ``vllm_importance_sampling_clip_min``
  (default None) from TRL 1.6 on (``vllm_importance_sampling_cap``, deprecated there, overrides C_max when set);
  up to 1.5 ``vllm_importance_sampling_cap`` (default 3.0) is C_max and there is no C_min. Checked in the 1.0.0,
  1.5.0, 1.9.2, 1.10.0, 1.13.0 and 1.16.0 wheels: the mode defaults to ``sequence_mask`` and the cap to 3.0 in all;
* without vLLM (transformers generation) or with the correction off: no weight;
* sampler: ``top_k`` (0: off), ``top_p`` (1.0: off), ``min_p`` (None: off); TRL's vLLM engine reports processed
  log-probs (``logprobs_mode="processed_logprobs"`` in colocate mode and in ``trl vllm-serve``).

Both rules multiply the per-token policy loss only, not the KL loss (rlkl's ``token_weights``).
"""

from __future__ import annotations

from typing import Any, Optional

from rlkl.components import NoCorrection, RolloutCorrection, SequenceMIS, SequenceTIS, TokenMIS, TokenTIS
from rlkl.options import LogprobsMode
from rlkl.sampling import Sampler

__all__ = ["VERL_ROLLOUT_DEFAULTS", "VERL_ROLLOUT_TYPES", "VERL_REFUSED", "trl_rollout_defaults",
           "TRL_ROLLOUT_TYPES", "verl_correction", "verl_sampler", "trl_correction", "trl_sampler",
           "parse_verl_threshold"]

_C = "algorithm.rollout_correction."
_R = "actor_rollout_ref.rollout."

#: verl 0.9.1 defaults (trainer/config/algorithm/rollout_correction.yaml, trainer/config/rollout/rollout.yaml)
VERL_ROLLOUT_DEFAULTS: dict[str, Any] = {
    _C + "rollout_is": None, _C + "rollout_is_threshold": 2.0, _C + "rollout_rs": None,
    _C + "rollout_rs_threshold": None, _C + "bypass_mode": False, _C + "rollout_is_batch_normalize": False,
    _R + "temperature": 1.0, _R + "top_k": -1, _R + "top_p": 1.0, _R + "logprobs_mode": "processed_logprobs",
}
VERL_ROLLOUT_TYPES: dict[str, type] = {
    _C + "rollout_is": str, _C + "rollout_is_threshold": str, _C + "rollout_rs": str,
    _C + "rollout_rs_threshold": str, _C + "bypass_mode": bool, _C + "rollout_is_batch_normalize": bool,
    _R + "temperature": float, _R + "top_k": int, _R + "top_p": float, _R + "logprobs_mode": str,
}

#: verl rollout-correction settings rlkl refuses, with the reason (also the rules' refuse reasons in keys.py)
VERL_REFUSED = {
    "rollout_rs": "verl's rejection sampling (k1/k2/k3 statistics of log ρ per token, or their sum/mean/max per "
                  "sequence) is applied to response_mask before the advantage and the loss: rejected tokens get a "
                  "zero advantage and leave the loss-aggregation denominators and the KL loss, while rlkl's "
                  "corrections weight the policy loss and keep the denominators; no rlkl component expresses it",
    "rollout_is_batch_normalize": "the weights are divided by their mean over the whole training batch (all "
                                  "prompts, across data-parallel ranks): a batch statistic, not a per-row function "
                                  "of ρ as rlkl's corrections are",
    "bypass_mode": "bypass mode uses the rollout's log-probs as π_old: the PPO ratio becomes π_θ/q_reported and "
                   "its clip acts on the mismatch ratio (depending on the advantage's sign), which rlkl's Methods "
                   "(a correction weight times the policy loss at π_old) do not express",
}


def trl_rollout_defaults(version: tuple[int, int]) -> dict[str, Any]:
    """GRPOConfig defaults of the sampler / vLLM importance-sampling keys for TRL ``version`` (module docstring)."""
    new = version >= (1, 6)
    out = {"use_vllm": False, "vllm_importance_sampling_correction": True,
           "vllm_importance_sampling_mode": "sequence_mask", "vllm_importance_sampling_cap": None if new else 3.0,
           "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": None}
    if new:
        out.update(vllm_importance_sampling_clip_max=3.0, vllm_importance_sampling_clip_min=None)
    return out


TRL_ROLLOUT_TYPES: dict[str, type] = {
    "use_vllm": bool, "vllm_importance_sampling_correction": bool, "vllm_importance_sampling_mode": str,
    "vllm_importance_sampling_cap": float, "vllm_importance_sampling_clip_max": float,
    "vllm_importance_sampling_clip_min": float, "temperature": float, "top_k": int, "top_p": float,
    "min_p": float, "vllm_mode": str,
}


def _component(problems, key: str, build, framework_rule: str) -> Optional[RolloutCorrection]:
    try:
        return build()
    except ValueError as exc:
        problems.add(key, f"{framework_rule}: not translatable ({exc})")
        return None


# ------------------------------------------------------------------------------------------------ verl
def parse_verl_threshold(spec: Any) -> tuple[float, Optional[float]]:
    """(upper, lower) of verl's ``rollout_is_threshold``: a float or float-like string C → (C, None) (TIS); the
    string ``"L_U"`` → (U, L) (IcePop). ValueError on anything else (verl's ``_parse_rollout_is_threshold`` rule:
    both bounds positive, L <= U)."""
    if isinstance(spec, bool) or spec is None:
        raise ValueError(f"rollout_is_threshold must be a number or 'LOWER_UPPER', got {spec!r}")
    text = str(spec).strip()
    low_text, sep, up_text = text.partition("_")
    try:
        upper = float(up_text if sep else text)
        lower = float(low_text) if sep else None
    except ValueError:
        raise ValueError(f"rollout_is_threshold {spec!r} is not a number or 'LOWER_UPPER'") from None
    if upper <= 0 or (lower is not None and (lower <= 0 or lower > upper)):
        raise ValueError(f"rollout_is_threshold {spec!r}: bounds must be positive with lower <= upper (verl raises)")
    return upper, lower


def verl_correction(v: dict, problems, notes: list) -> RolloutCorrection:
    """The Method's correction from verl's ``algorithm.rollout_correction.*`` (module docstring)."""
    level = v[_C + "rollout_is"]
    if level is None or str(level).lower() in ("null", "none", ""):
        return NoCorrection()
    if level not in ("token", "sequence"):
        problems.add(_C + "rollout_is", f"rollout_is={level!r} is not a verl level (token, sequence, null)")
        return NoCorrection()
    key = _C + "rollout_is_threshold"
    try:
        upper, lower = parse_verl_threshold(v[key])
    except ValueError as exc:
        problems.add(key, str(exc))
        return NoCorrection()
    seq = level == "sequence"
    if lower is None:  # TIS: w = min(ρ, C)
        rule = f"verl rollout_is={level} with threshold {upper:g} (w = min(ρ, {upper:g}))"
        c = _component(problems, key, lambda: (SequenceTIS if seq else TokenTIS)(upper), rule)
    else:  # IcePop: w = ρ·1[L <= ρ <= U]
        rule = f"verl rollout_is={level} with threshold '{lower:g}_{upper:g}' (w = ρ·1[{lower:g} <= ρ <= {upper:g}])"
        c = _component(problems, key, lambda: (SequenceMIS if seq else TokenMIS)(upper, lower), rule)
    return c if c is not None else NoCorrection()


def verl_sampler(v: dict, problems, notes: list) -> Sampler:
    """The sampler of verl's ``actor_rollout_ref.rollout.{temperature, top_k, top_p, logprobs_mode}`` relative
    to the τ-tempered π the actor differentiates (module docstring)."""
    tau, k, p, mode = v[_R + "temperature"], v[_R + "top_k"], v[_R + "top_p"], v[_R + "logprobs_mode"]
    if tau is None or tau <= 0:
        problems.add(_R + "temperature", f"rollout.temperature={tau!r}: temperature 0 is greedy decoding (the "
                     "responses are not samples of π_old); give τ > 0")
    if k is None or k in (-1, 0):
        k = None
    elif k < 0:
        problems.add(_R + "top_k", f"rollout.top_k={k}: -1 (vLLM) or 0 (HF) turns top-k off, k >= 1 keeps k tokens")
        k = None
    if p is None or not 0 < p <= 1:
        problems.add(_R + "top_p", f"rollout.top_p={p!r} must be in (0, 1]")
        p = 1.0
    logprobs = LogprobsMode.PROCESSED
    if mode == "raw_logprobs":
        logprobs = LogprobsMode.RAW
        if tau not in (None, 1.0) and tau > 0:
            problems.add(_R + "logprobs_mode", f"logprobs_mode='raw_logprobs' with rollout.temperature={tau:g}: vLLM "
                         "reports log softmax(z) before the temperature while verl's actor computes log softmax(z/τ), "
                         "so the ratio carries the temperature itself; rlkl's audit (trainer = the τ-tempered π) "
                         "expresses raw log-probs at τ = 1 only")
    elif mode != "processed_logprobs":
        problems.add(_R + "logprobs_mode", f"logprobs_mode={mode!r}: only 'processed_logprobs' (log q) and "
                     "'raw_logprobs' are log-probabilities; '*_logits' report logits, which verl would use as "
                     "log-probs")
    return Sampler(top_k=k, top_p=p, logprobs=logprobs)


# ------------------------------------------------------------------------------------------------ TRL
def trl_correction(v: dict, problems, notes: list, version: tuple[int, int]) -> RolloutCorrection:
    """The Method's correction from TRL's ``use_vllm`` / ``vllm_importance_sampling_*`` (module docstring)."""
    mode = v["vllm_importance_sampling_mode"]
    if (version >= (1, 6) and v["vllm_importance_sampling_correction"] and str(mode).endswith("_truncate")
            and v["vllm_importance_sampling_clip_min"] is None and v["vllm_importance_sampling_clip_max"] is None):
        problems.add("vllm_importance_sampling_clip_max", f"vllm_importance_sampling_mode={mode!r} needs "
                     "clip_min or clip_max (GRPOConfig raises)")
        return NoCorrection()
    if not v["use_vllm"] or not v["vllm_importance_sampling_correction"]:
        return NoCorrection()
    cap, floor = v["vllm_importance_sampling_cap"], None
    if version >= (1, 6):
        cap = v["vllm_importance_sampling_clip_max"] if cap is None else cap  # the deprecated cap overrides
        floor = v["vllm_importance_sampling_clip_min"]
        floor = None if floor is not None and floor <= 0 else floor  # clamp(min<=0) / ρ < 0: no effect on ρ > 0
        if cap is not None and floor is not None and floor >= cap:
            problems.add("vllm_importance_sampling_clip_min", f"clip_min={floor:g} must be < clip_max={cap:g} "
                         "(TRL raises)")
            return NoCorrection()
    key = "vllm_importance_sampling_mode"
    bounds = f"[{'-' if floor is None else f'{floor:g}'}, {'-' if cap is None else f'{cap:g}'}]"
    rule = f"TRL vllm_importance_sampling_mode={mode!r} with bounds {bounds}"
    classes = {"token_truncate": (TokenTIS, False), "sequence_truncate": (SequenceTIS, False),
               "token_mask": (TokenMIS, True), "sequence_mask": (SequenceMIS, True)}
    if mode not in classes:
        problems.add(key, f"vllm_importance_sampling_mode={mode!r} is not one of {list(classes)} (TRL raises)")
        return NoCorrection()
    cls, masks = classes[mode]
    if masks and cap is None and floor is None:  # TRL masks nothing: plain IS at the mode's level
        cls, masks = (SequenceTIS if mode.startswith("sequence") else TokenTIS), False
    bad_key = "vllm_importance_sampling_clip_min" if floor is not None and floor >= 1 else (
        "vllm_importance_sampling_clip_max" if version >= (1, 6) and v["vllm_importance_sampling_cap"] is None
        else "vllm_importance_sampling_cap")
    c = _component(problems, bad_key, lambda: cls(cap, floor), rule)
    if c is not None and v.get("vllm_mode") == "server":
        notes.append("vllm_mode='server': the correction assumes the server reports processed log-probs "
                     "(`trl vllm-serve` sets --logprobs-mode processed_logprobs; TRL warns otherwise)")
    return c if c is not None else NoCorrection()


def trl_sampler(v: dict, problems, notes: list) -> Sampler:
    """The sampler of TRL's ``temperature``, ``top_k``, ``top_p``, ``min_p`` relative to the τ-tempered π the
    trainer differentiates (module docstring)."""
    tau, k, p, mp = v["temperature"], v["top_k"], v["top_p"], v["min_p"]
    if tau is None or tau <= 0:
        problems.add("temperature", f"temperature={tau!r} must be > 0")
    if k is None or k == 0:
        k = None
    elif k < 0:
        problems.add("top_k", f"top_k={k}: 0 turns top-k off, k >= 1 keeps k tokens")
        k = None
    if p is None or not 0 < p <= 1:
        problems.add("top_p", f"top_p={p!r} must be in (0, 1]")
        p = 1.0
    if mp is None:
        mp = 0.0
    elif not 0 <= mp < 1:
        problems.add("min_p", f"min_p={mp!r} must be in [0, 1)")
        mp = 0.0
    if mp > 0 and (k is not None or p < 1) and v["use_vllm"]:
        notes.append("vLLM applies min-p before top-k/top-p; rlkl's sampler applies top-k → top-p → min-p (the "
                     "transformers order): the kept sets can differ when min_p and top_k/top_p are both set")
    return Sampler(top_k=k, top_p=p, min_p=mp, logprobs=LogprobsMode.PROCESSED)
