"""What does this verl / TRL config optimize? The translated Method, its exact audit on toy trees with the batch
layout's term, the equivalent registered method, and the smallest flag change that makes it exact.

``explain(translation, ...)`` returns a JSON-able report; ``format_report`` renders it; ``main_config`` is
``rlkl audit --verl CONFIG.yaml [key=value ...] | --verl-overrides "..." | --trl CONFIG.yaml|JSON``.

The config's expected update on a tree is the Method's (``rlkl.toy.audit.audit_one``) plus the ``batch_layout``
term (:func:`rlkl.integrations.microbatch.layout_term`: token-mean normalized over the trainer's mini-batch or
micro-batch instead of the group); the verdict EXACT means ‖E[∇ loss] + c∇J‖ ≤ tol·‖c∇J‖ for the objective the
framework documents (E[R] − β·KL(π‖π_ref), or E[R] without a KL).

The fix search enumerates the framework's objective-shaping flags (verl: adv_estimator ∈ {grpo, rloo},
norm_adv_by_std_in_grpo, where the KL goes and its estimator, loss_agg_mode, loss_mode ∈ {vanilla, gspo, gpg};
TRL: loss_type, scale_rewards, use_bias_correction_kl, importance_sampling_level), keeps β, orders the settings
by the number of keys that change, takes those for which ``Method.predicted_bias_terms`` predicts no bias, and
confirms them with the exact audit on the same trees.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from typing import Any, Optional, Sequence

import torch

from rlkl.components import AggMode, NoCorrection
from rlkl.integrations import translate as tr
from rlkl.integrations.microbatch import TERM_DOC, TERM_NAME, BatchLayout, layout_term
from rlkl.methods import REGISTRY, Method

__all__ = ["equivalent_method", "audit_config", "smallest_fix", "explain", "format_report", "main_config"]

#: groups an exact expectation may enumerate per prompt before the audit falls back to a smaller G
MAX_AUDIT_GROUPS = 300_000
_FIELDS = ("advantage", "policy_loss", "kl", "aggregation", "correction")


def _known_methods() -> dict[str, Method]:
    """The registry (``rlkl.methods.REGISTRY``)."""
    from rlkl import methods

    return dict(REGISTRY)


def equivalent_method(m: Method) -> tuple[Optional[str], list[str]]:
    """(registered name, differing component fields): ``[]`` = the same components (β may differ); otherwise the
    registered method differing in one component, or (None, []) when none is that close."""
    best = None
    for name, r in _known_methods().items():
        diff = [f for f in _FIELDS if getattr(r, f) != getattr(m, f)]
        if not diff:
            return name, []
        if len(diff) == 1 and best is None:
            best = (name, diff)
    return best if best is not None else (None, [])


def _enumeration_size(method: Method, mdp: Any, G: int) -> int:
    """Groups the exact engine enumerates for ``method`` (the exchangeable routes' count)."""
    from rlkl.toy.expected import choose_route, loss_spec

    route, class_by = choose_route(loss_spec(method, mdp, G), mdp)
    N = mdp.num_responses
    if route == "per_sample":
        return N * mdp.num_prompts
    K = N if class_by == "response" else int(torch.unique(mdp.rewards).numel())
    if route == "exchangeable":
        return mdp.num_prompts * N * math.comb(K + G - 2, G - 1)
    return mdp.num_prompts * N ** G


def _group_size(t: tr.Translation, method: Method, mdps: Sequence[Any], fallback: int, notes: list) -> int:
    G = t.group_size or fallback
    if G != fallback and method.is_group_based:
        size = max(_enumeration_size(method, mdp, G) for mdp in mdps)
        if size > MAX_AUDIT_GROUPS:
            notes.append(f"G={G} from the config would enumerate {size:,} groups on these trees; audited with "
                         f"G={fallback} (--group-size)")
            G = fallback
    return G


def audit_config(method: Method, layout: BatchLayout, mdps: Sequence[Any], seeds: Sequence[int], group_size: int,
                 off_policy: bool = False, policy: str = "tabular", tol: float = 1e-8) -> list[dict]:
    """Audit records of ``method`` (``rlkl.toy.audit.audit_one``) with the layout's ``batch_layout`` term added:
    ``config_rel_error`` / ``config_exact`` are the verdict of Method + layout."""
    from rlkl.toy.audit import audit_one, make_setup

    records = []
    for mdp in mdps:
        for s in seeds:
            pi, old, ref = make_setup(mdp, s, off_policy, policy)
            res = audit_one(method, mdp, pi, old if off_policy else None, ref, group_size, tol=tol,
                            setup={"seed": int(s), "policy": policy})
            rec = dict(res.record)
            term = layout_term(method, layout, mdp, pi, old if off_policy else None, ref, group_size,
                               method_grad=res.grad)
            denom = float(res.target.norm()) or 1.0
            rel = float(term.norm()) / denom
            g_cfg = res.grad + term
            rec["layout"] = layout.describe()
            rec["config_rel_error"] = float((g_cfg - res.target).norm()) / denom
            rec["config_exact"] = rec["config_rel_error"] <= tol
            if rel > tol:
                gap = g_cfg - res.target
                cos = float((term * gap).sum() / (term.norm() * gap.norm())) if gap.norm() > 0 else float("nan")
                rec["bias_terms"] = {**rec["bias_terms"], TERM_NAME: {"rel_norm": rel, "cosine_with_bias": cos}}
            records.append(rec)
    return records


def mismatch_config(t: tr.Translation, method: Method, mdps: Sequence[Any], seeds: Sequence[int], group_size: int,
                    policy: str = "tabular", notes: Optional[list] = None) -> list[dict]:
    """Mismatch-audit records (``rlkl.toy.mismatch.audit_mismatch``) of ``method`` behind the config's sampler: its
    own correction, and no correction for comparison. ``[]`` when the sampler is the identity (q = π_old: every
    correction weight is 1 and :func:`audit_config` is the whole story)."""
    from rlkl.components import NoCorrection
    from rlkl.toy.audit import make_setup
    from rlkl.toy.mismatch import audit_mismatch

    if t.sampler.is_identity:
        return []
    corrections = [method.correction] + ([] if isinstance(method.correction, NoCorrection) else [NoCorrection()])
    records = []
    for mdp in mdps:
        for s in seeds:
            pi, _, ref = make_setup(mdp, s, False, policy)
            res = audit_mismatch(method, mdp, pi, t.sampler, ref, group_size, corrections,
                                 setup={"seed": int(s), "policy": policy})
            records += [r.record for r in res]
    if notes is not None and not t.layout.is_group and method.aggregation.mode is AggMode.TOKEN_MEAN:
        notes.append("the mismatch audit normalizes token-mean over each group (the batch_layout term of the "
                     "exact audit above is not added to it)")
    return records


# ------------------------------------------------------------------------------------------------ fix search
def _verl_space(v: dict, beta: float) -> list[dict]:
    A = tr._A
    adv = [{"algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True},
           {"algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": False},
           {"algorithm.adv_estimator": "rloo"}]
    if beta > 0:
        kl = [{A + "use_kl_loss": True, "algorithm.use_kl_in_reward": False, A + "kl_loss_type": k,
               A + "kl_loss_coef": beta} for k in ("kl", "mse", "low_var_kl", "kl+", "low_var_kl+")]
        kl += [{"algorithm.use_kl_in_reward": True, A + "use_kl_loss": False, "algorithm.kl_penalty": k,
                "algorithm.kl_ctrl.kl_coef": beta, "algorithm.kl_ctrl.type": "fixed"}
               for k in ("kl", "mse", "low_var_kl")]
    else:
        kl = [{A + "use_kl_loss": False, "algorithm.use_kl_in_reward": False}]
    agg = [{A + "loss_agg_mode": m.value} for m in AggMode]
    loss = [{A + "policy_loss.loss_mode": m} for m in ("vanilla", "gspo", "gpg")]
    return [{**a, **k, **g, **lo} for a, k, g, lo in itertools.product(adv, kl, agg, loss)]


def _trl_space(v: dict, beta: float) -> list[dict]:
    out = []
    for lt, sc, level in itertools.product(("grpo", "bnpo", "dr_grpo", "dapo", "luspo"), ("group", "none"),
                                           ("token", "sequence")):
        for bc in ((True, False) if beta > 0 else (v["use_bias_correction_kl"],)):
            out.append({"loss_type": lt, "scale_rewards": sc, "importance_sampling_level": level,
                        "use_bias_correction_kl": bc})
    return out


def _candidate(t: tr.Translation, change: dict):
    """(method, layout, problems) of the config with ``change`` applied to its effective values."""
    values = {**t.values, **change}
    given = dict(values)
    problems = tr._Problems()
    notes: list = []
    if t.framework == "verl":
        m = tr._verl_method(values, given, problems, notes, "candidate")
        layout, _, _ = tr._verl_layout(values, m, problems, notes, set())  # G as the translation
    else:
        m = tr._trl_method(values, given, problems, "candidate", tr._trl_version(t.version))
        layout, _, _ = tr._trl_layout(values, m, problems, notes, 1)
    return (None if problems else m), layout


def _predicted(m: Method, layout: BatchLayout, off_policy: bool, variable_length: bool) -> list[str]:
    terms = list(m.predicted_bias_terms(off_policy=off_policy, variable_length=variable_length))
    if variable_length and m.aggregation.mode is AggMode.TOKEN_MEAN and not layout.is_group:
        terms.append(TERM_NAME)
    return terms


def smallest_fix(t: tr.Translation, mdps: Sequence[Any], seeds: Sequence[int], group_size: int,
                 off_policy: bool = False, policy: str = "tabular", tol: float = 1e-8, max_verify: int = 6) -> dict:
    """The fewest flag changes for which the config is EXACT for its documented objective on these trees."""
    if t.method is None:
        return {"status": "untranslatable"}
    if t.method.objective not in (tr.REVERSE_KL_TO_REF, tr.NO_REGULARIZER):
        return {"status": "skipped", "reason": "the fix search covers the frameworks' built-in estimators (this "
                "config uses an rlkl plug-in method with its own claim)"}
    beta = t.method.beta
    space = _verl_space(t.values, beta) if t.framework == "verl" else _trl_space(t.values, beta)
    variable = any(not mdp.fixed_length for mdp in mdps)
    scored = []
    for change in space:
        diff = {k: v for k, v in change.items() if t.values.get(k) != v}
        m, layout = _candidate(t, change)
        if m is None:
            continue
        scored.append((len(diff), len(_predicted(m, layout, off_policy, variable)), diff, m, layout))
    scored.sort(key=lambda s: (s[1] > 0, s[0], s[1]))
    tried = 0
    for dist, npred, diff, m, layout in scored:
        if npred or tried >= max_verify:
            break
        tried += 1
        recs = audit_config(m, layout, mdps, seeds, group_size, off_policy, policy, tol)
        if all(r["config_exact"] for r in recs):
            return {"status": "exact" if not diff else "fix", "changes": diff, "method": m.to_dict(),
                    "rel_error": max(r["config_rel_error"] for r in recs)}
    nearest = min(scored, key=lambda s: (s[1], s[0])) if scored else None
    out = {"status": "none", "reason": "no setting of the searched keys is exact for the documented objective "
           "on these trees"}
    if nearest is not None:
        out.update(nearest_changes=nearest[2], nearest_terms=_predicted(nearest[3], nearest[4], off_policy, variable))
    return out


# ------------------------------------------------------------------------------------------------ report
def explain(t: tr.Translation, mdps: Optional[Sequence[Any]] = None, seeds: Sequence[int] = (0,),
            group_size: int = 4, off_policy: bool = False, policy: str = "tabular", tol: float = 1e-8,
            fix: bool = True, beta: Optional[float] = None) -> dict:
    """The report of a translated config (see the module docstring); ``group_size`` is used when the config
    does not state G (or its G is too large to enumerate)."""
    from rlkl.toy.audit import default_mdps

    mdps = list(mdps) if mdps is not None else default_mdps()
    report: dict = {"translation": t.to_dict(), "notes": list(t.notes)}
    m = t.method
    if m is None:
        return report
    if beta is not None and m.has_kl:
        m = m.replace(beta=float(beta))
        t.method = m
    name, diff = equivalent_method(m)
    report["equivalent"] = {"name": name, "differs_in": diff}
    G = _group_size(t, m, mdps, group_size, report["notes"])
    report["group_size"] = G
    report["audits"] = audit_config(m, t.layout, mdps, seeds, G, off_policy, policy, tol)
    report["sampler"] = t.sampler.describe()
    report["correction"] = m.correction.spec()
    if not t.sampler.is_identity:
        if off_policy:
            report["notes"].append("the mismatch audit is at θ = θ_old: not run with --off-policy")
        else:
            Gm = min(G, group_size)
            if Gm != G:
                report["notes"].append(f"mismatch audit with G={Gm} (--group-size): its exact variance enumerates "
                                       f"all ordered G-tuples")
            report["mismatch"] = mismatch_config(t, m, mdps, seeds, Gm, policy, report["notes"])
    elif not isinstance(m.correction, NoCorrection):
        report["notes"].append(f"the sampler is π_old itself (no truncation on the toy trees): the correction "
                               f"{m.correction.spec()} gives every token weight 1 there; set top_p / top_k / min_p "
                               "to audit it against a truncated sampler")
    if fix:
        report["fix"] = smallest_fix(t, mdps, seeds, G, off_policy, policy, tol)
    return report


def _keys_text(t: dict) -> list[str]:
    keys = t["keys"]
    lines = []
    for kind in ("translated", "layout"):
        if keys[kind]:
            items = ", ".join(f"{k['key'].replace('actor_rollout_ref.', '')}={k['value']!r}"
                              + (f" (= {t['values'][k['key']]!r})" if isinstance(k["value"], str)
                                 and not isinstance(t["values"].get(k["key"], k["value"]), str) else "")
                              for k in keys[kind])
            lines.append(f"  {kind} ({len(keys[kind])}): {items}")
    if t["defaults"]:
        items = ", ".join(f"{k.replace('actor_rollout_ref.', '')}={v!r}" for k, v in t["defaults"].items())
        lines.append(f"  defaults used ({t['framework']} {t['version']}): {items}")
    ign = keys["ignored"]
    if ign:
        by: dict[str, int] = {}
        for k in ign:
            by[k["category"]] = by.get(k["category"], 0) + 1
        lines.append(f"  ignored ({len(ign)}, do not affect the objective): "
                     + ", ".join(f"{c} {n}" for c, n in sorted(by.items(), key=lambda x: -x[1])))
    for k in keys["unsupported"]:
        at = f"{k['where']}: " if k["where"] else ""
        lines.append(f"  NOT SUPPORTED {at}{k['key']}={k['value']!r}: {k['reason']}")
    return lines


def format_report(rep: dict) -> str:
    """Human-readable text of :func:`explain`'s report."""
    t = rep["translation"]
    lines = [f"{t['framework']} {t['version']} config: {t['origin']}"] + _keys_text(t)
    if t["layout"]["source"]:
        lines.append(f"  batch layout: {t['layout']['source']}")
    lines += [f"  note: {n}" for n in rep["notes"]]
    if t["method"] is None:
        lines.append("method: none (the keys above marked NOT SUPPORTED have no rlkl equivalent)")
        return "\n".join(lines)
    m = Method.from_dict(t["method"])
    eq = rep["equivalent"]
    known = _known_methods()
    same = (f"= registered {eq['name']!r}" + (f" (β={m.beta:g} here)" if m.beta != known[eq['name']].beta else "")
            if eq["name"] and not eq["differs_in"] else
            f"registered {eq['name']!r} except its {', '.join(eq['differs_in'])}" if eq["name"] else
            "no registered method has these components")
    lines.append(f"method: {same}")
    for f in _FIELDS:
        lines.append(f"  {f:12s} {getattr(m, f)!r}")
    lines.append(f"  beta         {m.beta:g}    intended objective: {m.bound_objective(rep['group_size']).describe()}")
    lines.append("")
    behind = "; q = π_old, the sampler's mismatch below" if rep.get("mismatch") else ""
    lines.append(f"exact audit on toy trees (G={rep['group_size']}{behind}; EXACT = E[grad loss] = -c grad J to "
                 "1e-8):")
    for r in rep["audits"]:
        verdict = "EXACT" if r["config_exact"] else "BIASED"
        terms = ", ".join(f"{k}={v['rel_norm']:.2g}" for k, v in r["bias_terms"].items()) or "-"
        mdp = r["mdp"]["name"] + ("/off" if r["mdp"]["off_policy"] else "")
        lines.append(f"  {mdp:<26} {verdict:<7} rel_error {r['config_rel_error']:.2e}  bias terms: {terms}")
    if any(TERM_NAME in r["bias_terms"] for r in rep["audits"]):
        lines.append(f"  ({TERM_NAME}: {TERM_DOC})")
    lines.append(f"  sampler {rep.get('sampler', 'identity')} (relative to the τ-tempered π the trainer "
                 f"differentiates); rollout correction {rep.get('correction', 'none')}")
    if rep.get("mismatch"):
        from rlkl.toy.mismatch_cli import format_records

        lines.append("")
        lines.append("rollout–trainer mismatch (the config's sampler; its correction and none):")
        lines.append(format_records(rep["mismatch"]))
    fix = rep.get("fix")
    if fix:
        lines.append("")
        lines.append(_fix_text(fix, t["framework"]) + (" (with q = π_old: the search does not change the sampler "
                                                       "or the correction)" if rep.get("mismatch") else ""))
    return "\n".join(lines)


def _flags(changes: dict, framework: str) -> str:
    if framework == "verl":
        return " ".join(f"{k}={v}" for k, v in changes.items())
    return ", ".join(f"{k}={v!r}" for k, v in changes.items())


def _fix_text(fix: dict, framework: str) -> str:
    status = fix["status"]
    if status == "exact":
        return "smallest change: none (the config is exact for its documented objective on these trees)"
    if status == "fix":
        return (f"smallest change to exact ({len(fix['changes'])} key{'s' if len(fix['changes']) > 1 else ''}, "
                f"verified: rel_error {fix['rel_error']:.1e}): {_flags(fix['changes'], framework)}")
    if status == "skipped":
        return f"smallest change: {fix['reason']}"
    if status == "none":
        near = fix.get("nearest_changes")
        text = f"smallest change: {fix['reason']}"
        if near is not None:
            text += (f"; nearest ({', '.join(fix['nearest_terms']) or 'no'} bias terms left): "
                     f"{_flags(near, framework) or '(the current config)'}")
        return text
    return ""


# ------------------------------------------------------------------------------------------------ CLI
def _verl_args(tokens: Sequence[str], override_text: Optional[str]) -> tuple[Any, list[str]]:
    """(config path or mapping or None, overrides) from ``--verl`` tokens and ``--verl-overrides``."""
    from rlkl.integrations.config_files import split_overrides

    source: Any = None
    overrides: list[str] = []
    for tok in tokens or ():
        if source is None and tok.lstrip().startswith("{"):
            source = json.loads(tok)
            if not isinstance(source, dict):
                raise ValueError("--verl JSON must be an object of flags")
        elif source is None and "=" not in tok and not tok.startswith("~"):
            source = tok
        else:
            overrides.append(tok)
    if override_text:
        overrides += split_overrides(override_text)
    return source, overrides


def translation_from_args(args: argparse.Namespace) -> tr.Translation:
    """The Translation of ``--verl ... / --verl-overrides ... / --trl ...`` (``rlkl audit``, ``rlkl train``)."""
    if args.trl and (args.verl or args.verl_overrides):
        raise ValueError("give either --trl or --verl/--verl-overrides, not both")
    if args.trl:
        src = json.loads(args.trl) if args.trl.lstrip().startswith("{") else args.trl
        return tr.translate_trl(src, trl_version=getattr(args, "trl_version", None))
    source, overrides = _verl_args(args.verl, args.verl_overrides)
    return tr.translate_verl(source, overrides)


def main_config(args: argparse.Namespace) -> int:
    """``rlkl audit --verl ... | --verl-overrides ... | --trl ...``: print the report (or JSON with ``--json``)."""
    from rlkl.toy.audit import default_mdps

    t = translation_from_args(args)
    mdps = default_mdps(args.vocab, args.horizon, args.prompts, args.eos, args.seeds, args.reward)
    rep = explain(t, mdps, args.seeds, args.group_size, args.off_policy, args.policy, beta=args.beta)
    if args.json:
        print(json.dumps(rep, indent=2, default=repr))
    else:
        print(format_report(rep))
    if t.method is None:
        bad = ", ".join(k.key for k in t.unsupported)
        print(f"rlkl audit: error: the {t.framework} config is not translatable ({len(t.unsupported)} key"
              f"{'s' if len(t.unsupported) != 1 else ''} not supported: {bad}; reasons above)", file=sys.stderr)
        return 2
    return 0
