"""`rlkl audit`: exact audit of a method's expected gradient against its intended objective.

    rlkl audit --method grpo --vocab 3 --horizon 3 --prompts 2 --group-size 4 --seeds 0 1
    rlkl audit --method all --eos --json > audit.json

Each record compares E[∇ loss] (exact, over all G-tuples or the exchangeable route) with −c·∇J for the method's
intended objective J, and splits the gap into named bias terms (docs/audit.md).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `rlkl audit` options on ``parser``."""
    parser.add_argument("--method", default="all", help="registered method name, comma-separated names, or 'all' "
                        "(see `rlkl methods`)")
    parser.add_argument("--vocab", type=int, default=3, help="vocabulary size V (EOS included with --eos)")
    parser.add_argument("--horizon", type=int, default=3, help="maximal response length T")
    parser.add_argument("--prompts", type=int, default=2, help="number of prompts P")
    parser.add_argument("--eos", action="store_true", help="variable-length responses (token V-1 is EOS)")
    parser.add_argument("--reward", choices=("binary", "real"), default="binary", help="binary verifier or N(0,1)")
    parser.add_argument("--group-size", type=int, default=4, help="group size G")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="MDP/policy seeds (one audit each)")
    parser.add_argument("--beta", type=float, default=None, help="override the method's KL coefficient β")
    parser.add_argument("--off-policy", action="store_true", help="sample from a perturbed behaviour policy π_old")
    parser.add_argument("--policy", choices=("tabular", "loglinear"), default="tabular", help="policy class")
    parser.add_argument("--json", action="store_true", help="print the records as JSON (schema: docs/audit.md)")
    parser.add_argument("--verl", nargs="+", metavar=("CONFIG.yaml", "KEY=VALUE"), default=None,
                        help="audit a verl config: a YAML file (verl's own ppo_trainer.yaml, composed by Hydra, or a "
                             "plain one) and/or Hydra-style key=value overrides (docs/integrations.md)")
    parser.add_argument("--verl-overrides", default=None, metavar='"KEY=VALUE ..."',
                        help="verl overrides as one string, e.g. the `python3 -m verl.trainer.main_ppo ...` line of "
                             "an example script")
    parser.add_argument("--trl", default=None, metavar="CONFIG.yaml|JSON",
                        help="audit TRL GRPOConfig arguments: a YAML/JSON file or a JSON object")
    parser.add_argument("--trl-version", default=None, help="TRL version whose defaults apply (default 1.16)")


def _format(records: list[dict], skipped: list[str]) -> str:
    from rlkl.toy.audit import DEFAULT_TOL, EXPLAINED_TOL

    lines = [f"{'method':<24} {'mdp':<26} {'verdict':<7} {'rel_err':>9} {'cosine':>7}  bias terms (relative size)"]
    for r in records:
        verdict = ("EXACT" if r["exact"] else "BIASED") + ("!" if r.get("as_predicted") is False else "")
        terms = ", ".join(f"{k}={v['rel_norm']:.2g}" for k, v in r["bias_terms"].items())
        if r["unexplained"] > EXPLAINED_TOL:
            terms += f"  [unexplained {r['unexplained']:.2g}]"
        if r.get("unpredicted_terms"):
            terms += f"  [unpredicted: {', '.join(r['unpredicted_terms'])}]"
        if r.get("missing_terms"):
            terms += f"  [predicted but absent: {', '.join(r['missing_terms'])}]"
        mdp = r["mdp"]["name"] + ("/off" if r["mdp"]["off_policy"] else "")
        lines.append(f"{r['method']:<24} {mdp:<26} {verdict:<7} {r['rel_error']:>9.2e} {r['cosine']:>7.4f}  {terms}")
    lines += [f"skipped: {s}" for s in skipped]
    n_ok = sum(bool(r.get("as_predicted")) for r in records)
    lines += ["", f"{n_ok}/{len(records)} records as predicted" + (f", {len(skipped)} skipped" if skipped else ""),
              f"verdict: EXACT = E[grad loss] = -c grad J to {DEFAULT_TOL:g} (c: aggregation constant); ! = not as "
              f"predicted: the terms present (> {DEFAULT_TOL:g}) are not those of rlkl.toy.terms, or more than "
              f"{EXPLAINED_TOL:g} of the gap is unexplained (docs/audit.md)"]
    return "\n".join(lines)


def _check_arguments(args: argparse.Namespace) -> None:
    """Validate the sizes and scalars before anything is built (one ValueError naming the option)."""
    import math

    from rlkl._checks import check_int, check_real
    from rlkl.toy.mdp import DEFAULT_MAX_TOKEN_SLOTS, count_responses

    check_int("--vocab", args.vocab, low=2)
    check_int("--horizon", args.horizon, low=1)
    check_int("--prompts", args.prompts, low=1)
    check_int("--group-size", args.group_size, low=1)
    for seed in args.seeds:
        check_int("--seeds", seed, low=0, high=2**32 - 1)
    check_real("--beta", args.beta, low=0.0, allow_none=True)
    digits = args.horizon * math.log10(args.vocab) + math.log10(args.prompts * args.horizon)
    n = count_responses(args.vocab, args.horizon, args.eos) if digits < 15 else None
    slots = None if n is None else args.prompts * n * args.horizon
    if slots is None or slots > DEFAULT_MAX_TOKEN_SLOTS:
        size = f"{slots:,}" if slots is not None else f"about 1e{digits:.0f}"
        raise ValueError(f"enumeration too large: --vocab {args.vocab} --horizon {args.horizon} --prompts "
                         f"{args.prompts} needs {size} token slots > {DEFAULT_MAX_TOKEN_SLOTS:,}; the audit holds every "
                         f"response (vocab^horizon per prompt): choose a smaller --vocab or --horizon")


def _run(names: list[str], mdps: list, args: argparse.Namespace) -> tuple[list[dict], list[str], bool]:
    """Audit every (method, tree); a claim the tree's rewards cannot take is skipped with a note."""
    from rlkl.methods import AWAITING_AUDIT, REGISTRY
    from rlkl.toy.audit import audit, skip_reason

    records, skipped, failed = [], [], False
    for name in names:
        method = REGISTRY[name] if name in REGISTRY else AWAITING_AUDIT[name]
        for mdp, seed in zip(mdps, args.seeds):
            reason = skip_reason(method, mdp)
            if reason is not None:
                skipped.append(f"{name} on {mdp.name}: {reason}")
                continue
            try:
                records += audit(method, [mdp], args.group_size, [seed], args.off_policy, args.beta,
                                 policy=args.policy)
            except ValueError as exc:
                print(f"rlkl audit: {name} on {mdp.name}: {exc}", file=sys.stderr)
                failed = True
    return records, skipped, failed


def main(args: argparse.Namespace) -> int:
    """Run the audit; print a table (or JSON with ``--json``). Returns 0, or 2 on bad arguments (the records
    that could be computed are printed all the same)."""
    from rlkl.methods import AWAITING_AUDIT, REGISTRY
    from rlkl.toy.audit import default_mdps

    try:
        _check_arguments(args)
    except ValueError as exc:
        print(f"rlkl audit: error: {exc}", file=sys.stderr)
        return 2
    if args.verl or args.verl_overrides or args.trl:  # a framework config instead of registered methods
        from rlkl.integrations.explain import main_config

        return main_config(args)
    names = list(REGISTRY) if args.method == "all" else [n.strip() for n in args.method.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY and n not in AWAITING_AUDIT]  # `all`: the registry
    if unknown:
        print(f"rlkl audit: error: unknown method(s) {unknown}; registered: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    try:
        mdps = default_mdps(args.vocab, args.horizon, args.prompts, args.eos, args.seeds, args.reward)
    except ValueError as exc:
        print(f"rlkl audit: {exc}", file=sys.stderr)
        return 2
    records, skipped, failed = _run(names, mdps, args)
    if args.json:  # stdout stays one JSON document; the notes go to stderr
        for note in skipped:
            print(f"rlkl audit: skipped {note}", file=sys.stderr)
    print(json.dumps(records, indent=2) if args.json else _format(records, skipped))
    return 2 if failed else 0
