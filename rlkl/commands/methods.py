"""`rlkl methods`: the registry as a table (or JSON), and what a verl/TRL flag set translates to."""

from __future__ import annotations

import argparse
import json

COLUMNS = ("name", "advantage", "kl", "loss", "aggregation", "beta", "intended objective", "citation")
#: the default table (fits 120 columns); ``--wide`` shows COLUMNS
NARROW = ("name", "advantage", "kl", "loss", "aggregation", "beta")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the registry as JSON records")
    parser.add_argument("--wide", action="store_true",
                        help="also show each method's intended objective and citation (wider than 120 columns)")
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


def _loss_text(pl, wide: bool = True) -> str:
    from rlkl.components import GSPO, RPG, PPOClip

    if isinstance(pl, PPOClip):
        if not pl.clips:
            return "ppo(unclipped)"
        return f"ppo_clip({pl.low:g},{pl.high:g}" + (f",c={pl.dual:g})" if pl.dual is not None else ")")
    if isinstance(pl, GSPO):
        return f"gspo({pl.low:g},{pl.high:g})"
    if isinstance(pl, RPG):
        from rlkl.options import RPGForm, RPGLevel

        form = "diff" if pl.form is RPGForm.DIFFERENTIABLE else "reinforce"
        text = f"rpg_{form}" + ("(seq)" if pl.level is RPGLevel.SEQUENCE else "")
        if pl.clip is not None:
            text += f"+clip({pl.clip.eps_low:g},{pl.clip.eps_high:g},c={pl.clip.c:g})" if wide else "+clip"
        return text
    return type(pl).__name__.lower()


_ADV_SHORT = {"GroupStandardized": "group_std", "GroupCentered": "group_mean", "LeaveOneOut": "leave_one_out",
              "BatchStandardized": "batch_std", "Raw": "raw", "LengthWeightedCentered": "length_weighted_mean",
              "PassAtK": "pass_at_k", "GPGAdvantage": "gpg_alpha_mean", "TokenWhitened": "token_whitened"}


def _advantage_text(adv) -> str:
    name = _ADV_SHORT.get(type(adv).__name__, type(adv).__name__)
    std = getattr(adv, "std", None)
    eps = f"{adv.eps:g}".replace("e-0", "e-") if std is not None else ""
    from rlkl.options import Std

    return f"{name}({'pop' if std is Std.POPULATION else std.value},{eps})" if std is not None else name


def _kl_text(m) -> str:
    from rlkl.components import FutureReturn, KLLoss, KLReward, NoKL

    kl = m.kl
    if m.policy_loss.carries_kl:
        return f"{m.policy_loss.divergence.value} to pi_old"
    if isinstance(kl, NoKL) or m.beta == 0:
        return "none"
    if isinstance(kl, KLLoss):
        return ("rho*" if kl.importance_weight else "") + kl.estimator.value + ("+" if kl.straight_through else "") \
            + " loss"
    if isinstance(kl, KLReward):
        from rlkl.options import RewardForm

        return f"{kl.estimator.value} reward ({'fused' if kl.form is RewardForm.FUSED else 'to-go'})"
    if isinstance(kl, FutureReturn):
        return f"{kl.divergence} future"
    return type(kl).__name__


def row(m, wide: bool = True) -> dict[str, str]:
    """The registry-table row of a Method (display only)."""
    agg = m.aggregation
    return {
        "name": m.name,
        "advantage": _advantage_text(m.advantage),
        "kl": _kl_text(m),
        "loss": _loss_text(m.policy_loss, wide),
        "aggregation": agg.mode.value + (f"(C={agg.horizon})" if agg.horizon else ""),
        "beta": f"{m.beta:g}",
        "intended objective": m.objective.describe(),
        "citation": m.citation,
    }


def format_rows(rows: list[dict[str, str]], columns: tuple[str, ...] = NARROW, sep: str = " ") -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = [sep.join(c.ljust(widths[c]) for c in columns).rstrip(), sep.join("-" * widths[c] for c in columns)]
    for r in rows:
        lines.append(sep.join(r[c].ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)


def describe(method) -> str:
    lines = [f"{method.name}: {method.description}"]
    for key, value in row(method).items():
        if key != "name":
            lines.append(f"  {key:20s} {value}")
    for key in ("advantage", "policy_loss", "kl", "aggregation"):
        lines.append(f"  {key + ' (component)':20s} {getattr(method, key)!r}")
    for off, var in ((False, False), (True, False), (False, True)):
        terms = method.predicted_bias_terms(off_policy=off, variable_length=var)
        when = "on-policy, fixed length" if not (off or var) else ("off-policy" if off else "variable length")
        lines.append(f"  predicted bias ({when}): {', '.join(terms) if terms else 'none (exact)'}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from rlkl.integrations.flags import from_trl, from_verl
    from rlkl.methods import REGISTRY, get_method

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
    rows = [row(m, wide=args.wide) for m in REGISTRY.values()]
    if args.json:
        records = [{**m.to_dict(), "predicted_bias_on_policy": list(m.predicted_bias_terms())}
                   for m in REGISTRY.values()]
        print(json.dumps(records, indent=2))
    else:
        print(format_rows(rows, COLUMNS, "  ") if args.wide else format_rows(rows))
        if not args.wide:
            print("\n(--wide adds each method's intended objective and citation; --name NAME shows one method in full)")
    return 0
