"""The `rlkl` command.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``main(args) -> int``;
this file only maps names to modules, so a part of rlkl adds its command without touching the others. Only the
module of the command being run is imported (startup stays fast). A module that is missing (a part not
installed) makes its command print that and exit 2; a ``ValueError`` (bad input) is printed without a traceback
and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rlkl import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("rlkl.commands.verify", "run every verification (estimators, derivations, audit) and print the verdict table"),
    "methods": ("rlkl.commands.methods", "print the registry of methods and the choices each one makes"),
    "audit": ("rlkl.toy.cli", "exact audit of a method's expected gradient against its intended objective"),
    "derive": ("rlkl.derive", "run the symbolic derivations (sympy) and print one line per identity"),
    "sft": ("rlkl.lm.cli_sft", "train the reference policy of the LM by supervised fine-tuning"),
    "train": ("rlkl.lm.cli_train", "RL-train the small LM with any registered method"),
    "figures": ("rlkl.figures", "regenerate every figure (experiments data + paper_figures)"),
    "bench": ("rlkl.bench", "run the performance benchmarks"),
    "plot": ("rlkl.plot", "draw training curves (reward, pass@k, exact KL, entropy, clip fraction) of run dirs"),
}


def _selected(argv: list[str]) -> str | None:
    for token in argv:
        if token in COMMANDS:
            return token
        if not token.startswith("-"):
            return None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the selected command's module is imported (all of them when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        prog="rlkl",
        description="Which objective does this KL-regularized loss actually optimize? Exact answers on small problems.",
    )
    parser.add_argument("--version", action="version", version=f"rlkl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else _selected(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv is not None and name != chosen:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                p.set_defaults(_unavailable=f"`rlkl {name}` is not available ({module_name} is missing)")
                continue
            raise
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 2
    try:
        return int(args._main(args) or 0)
    except ValueError as exc:
        print(f"rlkl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
