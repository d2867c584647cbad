"""`rlkl audit` behind an inference-engine sampler: per rollout correction, the exact bias against the full and
the deployed objective and the exact variance (``rlkl.toy.mismatch``; docs/audit.md, "Rollout–trainer mismatch").

    rlkl audit --method grpo --top-p 0.8 --correction none,token_tis:2,seq_mis:2,mask_replay
    rlkl audit --method rloo --temperature 0.7 --top-k 3 --sampler-dtype bfloat16 --logprobs raw --json

Any sampler option or ``--correction`` switches `rlkl audit` to this mode.
"""

from __future__ import annotations

import argparse
import json
import sys

_SAMPLER_FLAGS = ("temperature", "top_k", "top_p", "min_p", "sampler_dtype", "sampler_noise", "logprobs",
                  "correction")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the sampler / correction options of `rlkl audit` on ``parser``."""
    g = parser.add_argument_group("rollout–trainer mismatch (any of these switches to the mismatch audit)")
    g.add_argument("--temperature", type=float, default=None, help="sampler temperature τ (default 1)")
    g.add_argument("--top-k", type=int, default=None, help="sampler top-k (ties by token index)")
    g.add_argument("--top-p", type=float, default=None, help="sampler top-p in (0, 1]")
    g.add_argument("--min-p", type=float, default=None, help="sampler min-p in [0, 1)")
    g.add_argument("--sampler-dtype", choices=("float64", "float32", "bfloat16", "float16"), default=None,
                   help="round the engine's logits to this precision")
    g.add_argument("--sampler-noise", type=float, default=None, help="σ of a seeded logit perturbation")
    g.add_argument("--logprobs", choices=("processed", "raw"), default=None,
                   help="log-probs the engine reports: log q (processed, default) or before any transformation")
    g.add_argument("--correction", default=None,
                   help="comma-separated rollout corrections: none, token_tis:C, seq_tis:C, token_mis:U, seq_mis:U "
                        "(or L_U), token_is, seq_is, gm[:C], mask_replay (default: a standard set)")


def requested(args: argparse.Namespace) -> bool:
    """True when a sampler option or ``--correction`` was given."""
    return any(getattr(args, k, None) is not None for k in _SAMPLER_FLAGS)


def _sampler(args):
    from rlkl.sampling import Sampler

    kw = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
          "dtype": args.sampler_dtype, "noise": args.sampler_noise, "logprobs": args.logprobs}
    return Sampler(**{k: v for k, v in kw.items() if v is not None})


def _terms(d: dict) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in d.items()) or "-"


def format_records(records: list[dict]) -> str:
    """The table `rlkl audit` prints in mismatch mode (one block per method and MDP)."""
    lines = []
    blocks: dict = {}
    for r in records:
        blocks.setdefault((r["method"], r["mdp"]["name"], r["mdp"].get("seed")), []).append(r)
    for (method, mdp, _), rs in blocks.items():
        r0 = rs[0]
        lines.append(f"{method}: {r0['objective']} | sampler {r0['sampler']} | {mdp} G={r0['group_size']} | "
                     f"mean kept mass {r0['kept_mass']:.4f}")
        lines.append(f"  the method's own bias without a sampler: full {r0['full']['method_bias']:.3g} "
                     f"[{_terms(r0['full']['method_terms'])}]; deployed {r0['deployed']['method_bias']:.3g} "
                     f"[{_terms(r0['deployed']['method_terms'])}]")
        lines.append(f"  {'correction':<13} {'bias full':>9} {'deployed':>9} {'variance':>9}  "
                     "mismatch terms: full | deployed")
        for r in rs:
            var = "-" if r["variance"] is None else f"{r['variance']:.3g}"
            unexpl = max(r["full"]["unexplained"], r["deployed"]["unexplained"])
            flag = f"  [unexplained {unexpl:.1g}]" if unexpl > 1e-10 else ""
            lines.append(f"  {r['correction']:<13} {r['full']['rel_bias']:>9.3g} {r['deployed']['rel_bias']:>9.3g} "
                         f"{var:>9}  {_terms(r['full']['mismatch_terms'])} | "
                         f"{_terms(r['deployed']['mismatch_terms'])}{flag}")
        for note in r0["notes"]:
            lines.append(f"  note: {note}")
        lines.append("")
    lines.append("bias = ‖E[∇L] − (−c∇J)‖/‖c∇J‖ against J(π_θ) (full) and J(T(π_θ)) (deployed: the sampler applied to "
                 "π_θ); variance = tr Cov of the per-group gradient under q; terms are relative to the same ‖c∇J‖ "
                 "(docs/audit.md)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the mismatch audit; print the table (or ``--json`` records). Returns 0, or 2 on bad arguments."""
    from rlkl.methods import REGISTRY
    from rlkl.toy.audit import default_mdps, make_setup
    from rlkl.toy.mismatch import DEFAULT_CORRECTIONS, audit_mismatch

    try:
        if getattr(args, "off_policy", False):
            raise ValueError("--off-policy is not supported with a sampler: the mismatch audit is at θ = θ_old")
        if any(getattr(args, k, None) for k in ("verl", "verl_overrides", "trl")):
            raise ValueError("the sampler options audit registered methods (--method); a --verl/--trl config "
                             "states its own sampler and correction (verl actor_rollout_ref.rollout.top_p/top_k, "
                             "algorithm.rollout_correction.rollout_is; TRL top_p/top_k/min_p, use_vllm, "
                             "vllm_importance_sampling_*)")
        sampler = _sampler(args)
        from rlkl.components import correction_from_spec

        specs = DEFAULT_CORRECTIONS if args.correction is None else [s for s in args.correction.split(",") if s]
        corrections = [correction_from_spec(s.strip()) for s in specs]
        if not corrections:
            raise ValueError("--correction needs at least one correction, e.g. none,token_tis:2")
        names = list(REGISTRY) if args.method == "all" else [n.strip() for n in args.method.split(",") if n.strip()]
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; registered: {', '.join(REGISTRY)}")
        mdps = default_mdps(args.vocab, args.horizon, args.prompts, args.eos, args.seeds, args.reward)
        records = []
        for name in names:
            m = REGISTRY[name]
            if args.beta is not None and m.has_kl:
                m = m.replace(beta=float(args.beta))
            for mdp, seed in zip(mdps, args.seeds):
                pi, _, ref = make_setup(mdp, seed, policy=args.policy)
                res = audit_mismatch(m, mdp, pi, sampler, ref, args.group_size, corrections,
                                     setup={"seed": int(seed), "policy": args.policy})
                records += [r.record for r in res]
    except ValueError as exc:
        print(f"rlkl audit: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(records, indent=2) if args.json else format_records(records))
    return 0
