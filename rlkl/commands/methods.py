"""`rlkl methods`: the registry as a table (or JSON), and what a verl/TRL flag set translates to."""

from __future__ import annotations

import argparse
import json

COLUMNS = ("name", "advantage", "kl", "is_weight", "loss", "aggregation", "beta", "intended objective", "citation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the registry as JSON records")
    parser.add_argument("--name", default=None, help="show one method with every field and its predicted biases")
    parser.add_argument("--verl", default=None, metavar="JSON",
                        help='translate a verl flag set, e.g. \'{"algorithm.adv_estimator": "grpo", '
                             '"actor.use_kl_loss": true}\'')
    parser.add_argument("--trl", default=None, metavar="JSON", help='translate TRL GRPOConfig args, e.g. \'{"beta": 0.04}\'')


def parse_flag_json(flag: str, text: str) -> dict:
    """The ``--verl`` / ``--trl`` argument: a JSON object of flag names to values, else a one-line ValueError."""
    example = '{"algorithm.adv_estimator": "grpo"}' if flag == "--verl" else '{"beta": 0.04}'
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{flag} is not valid JSON ({exc}); give an object, e.g. {flag} '{example}'") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{flag} must be a JSON object of flag names to values, got {type(cfg).__name__} "
                         f"{json.dumps(cfg)[:40]}; e.g. {flag} '{example}'")
    return cfg


def format_rows(rows: list[dict[str, str]]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    widths["citation"] = min(widths["citation"], 60)
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS), "  ".join("-" * widths[c] for c in COLUMNS)]
    for r in rows:
        lines.append("  ".join(r[c][: widths[c]].ljust(widths[c]) for c in COLUMNS))
    return "\n".join(lines)


def describe(method) -> str:
    import dataclasses

    lines = [f"{method.name}: {method.description}"]
    for f in dataclasses.fields(method):
        if f.name in ("name", "description"):
            continue
        lines.append(f"  {f.name:20s} {getattr(method, f.name)!r}")
    lines.append(f"  intended objective   {method.objective.describe()}")
    for off, var in ((False, False), (True, False), (False, True)):
        terms = method.predicted_bias_terms(off_policy=off, variable_length=var)
        when = "on-policy, fixed length" if not (off or var) else ("off-policy" if off else "variable length")
        lines.append(f"  predicted bias ({when}): {', '.join(terms) if terms else 'none (exact)'}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from rlkl.methods import REGISTRY, from_trl, from_verl, get_method

    if args.verl is not None or args.trl is not None:
        flag, text = ("--verl", args.verl) if args.verl is not None else ("--trl", args.trl)
        cfg = parse_flag_json(flag, text)
        try:
            method = from_verl(cfg) if flag == "--verl" else from_trl(cfg)
        except TypeError as exc:  # a value of the wrong type inside the object
            raise ValueError(f"{flag}: {exc}") from None
        print(describe(method))
        return 0
    if args.name:
        print(describe(get_method(args.name)))
        return 0
    rows = [m.row() for m in REGISTRY.values()]
    if args.json:
        for r, m in zip(rows, REGISTRY.values()):
            r["predicted_bias_on_policy"] = list(m.predicted_bias_terms())
        print(json.dumps(rows, indent=2))
    else:
        print(format_rows(rows))
    return 0
