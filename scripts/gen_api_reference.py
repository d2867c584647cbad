"""Write docs/reference.md: the public functions and classes of rlkl with their signatures and docstrings.

    .venv/bin/python scripts/gen_api_reference.py            # regenerate docs/reference.md
    .venv/bin/python scripts/gen_api_reference.py --check    # exit 1 if docs/reference.md is stale

Public = the module's ``__all__`` when it has one, else every name defined in the module (not imported) that does
not start with "_". tests/test_docs.py fails when the file is stale.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "reference.md"

#: the library's public modules, in reading order (a module that does not exist in this version is skipped)
MODULES = (
    "rlkl.divergences", "rlkl.utility", "rlkl.advantages", "rlkl.losses", "rlkl.components", "rlkl.objective",
    "rlkl.methods", "rlkl.options", "rlkl.sampling", "rlkl.toy", "rlkl.testing", "rlkl.integrations.flags",
    "rlkl.integrations.translate", "rlkl.integrations.rollout", "rlkl.integrations.microbatch", "rlkl.lm.train", "rlkl.lm.sft", "rlkl.lm.metrics",
    "rlkl.plot", "rlkl.plotting",
)


def public_names(module) -> list[str]:
    """The module's public names, in ``__all__`` order or else in source order."""
    if hasattr(module, "__all__"):
        return [n for n in module.__all__ if inspect.isfunction(getattr(module, n)) or
                inspect.isclass(getattr(module, n))]
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) == module.__name__:
            out.append(name)
    return out


def _signature(obj) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    return re.sub(r" at 0x[0-9a-f]+", "", sig)


def _doc(obj) -> str:
    doc = inspect.getdoc(obj) or "*(no docstring)*"
    return "\n".join("    " + line if line.strip() else "" for line in doc.splitlines())


def _class_members(cls) -> list[tuple[str, object]]:
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        if inspect.isfunction(func) and func.__doc__:
            out.append((name, func))
        elif isinstance(member, property) and member.__doc__:
            out.append((name, member))
    return out


def render() -> str:
    lines = ["# rlkl API reference", "",
             "Generated from the docstrings by `scripts/gen_api_reference.py` (do not edit by hand; "
             "`tests/test_docs.py` fails when it is stale). Overview and conventions: [api.md](api.md); the claims "
             "behind the formulas: [theory.md](theory.md).", ""]
    present = []
    for name in MODULES:
        try:
            present.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    lines += ["Modules: " + ", ".join(f"[`{m.__name__}`](#{m.__name__.replace('.', '')})" for m in present), ""]
    for module in present:
        lines += [f"## {module.__name__}", ""]
        summary = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
        if summary:
            lines += [summary, ""]
        for name in public_names(module):
            obj = getattr(module, name)
            kind = "class" if inspect.isclass(obj) else "def"
            lines += [f"### `{module.__name__}.{name}`", "", "```python", f"{kind} {name}{_signature(obj)}", "```",
                      "", _doc(obj), ""]
            if inspect.isclass(obj):
                for mname, member in _class_members(obj):
                    sig = "" if isinstance(member, property) else _signature(member)
                    lines += [f"- **`{name}.{mname}{sig}`**", "", _doc(member), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/reference.md differs from the code")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run .venv/bin/python scripts/gen_api_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
