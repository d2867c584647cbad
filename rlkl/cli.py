"""The `rlkl` command.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``main(args) -> int``;
this file only maps names to modules, so a part of rlkl adds its command without touching the others. Only the
module of the command being run is imported (startup stays fast). A module that is missing (a part not
installed) makes its command print that and exit 2.

Exit statuses: 0 success; 1 a check failed (``verify``, ``figures``); 2 a bad invocation, always one line on
stderr and never a traceback (argparse errors, ``ValueError``, a missing or unreadable file); 130 Ctrl-C (a
clean stop; ``sft``/``train`` keep their last checkpoint). A closed pipe (``rlkl methods | head``) ends the
command quietly with status 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rlkl import __version__


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``rlkl CMD: error: MESSAGE (see rlkl CMD --help)`` and exit 2."""

    def error(self, message: str):  # noqa: D102 — argparse's hook
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

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
    parser = _Parser(
        prog="rlkl",
        description="Which objective does this KL-regularized loss actually optimize? Exact answers on small problems.",
    )
    parser.add_argument("--version", action="version", version=f"rlkl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    try:
        return _run(argv)
    except BrokenPipeError:  # the reader of our stdout went away (`rlkl methods | head`): stop quietly
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("rlkl: interrupted", file=sys.stderr)
        return 130


def _run(argv: list[str]) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 2
    try:
        code = int(args._main(args) or 0)
        sys.stdout.flush()  # a closed pipe surfaces here, inside the handler, not at interpreter exit
        return code
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"rlkl {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
