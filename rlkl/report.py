"""Verdict records shared by `rlkl verify`, `rlkl derive` and `rlkl audit`.

A part of rlkl that has claims to check exposes ``verify_rows(quick: bool) -> list[Verdict]``; `rlkl verify`
collects them (see ``rlkl.commands.verify.PROVIDERS``) and prints one table.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Iterable, Literal

Status = Literal["PASS", "FAIL", "EXACT", "BIASED", "SKIP"]
OK_STATUSES = ("PASS", "EXACT", "BIASED")  # BIASED is a correct *finding* when the spec predicts the bias


@dataclass(frozen=True)
class Verdict:
    """One checked claim.

    Attributes:
      section: which part checked it ("estimators", "derivations", "audit", ...).
      claim: what is claimed, in words.
      source: where the claim comes from (paper + equation, or spec section).
      status: PASS/FAIL for identities; EXACT/BIASED for audited methods (BIASED with ``expected=True`` is
        the predicted outcome); SKIP when it could not run here.
      detail: numbers (relative error, residual, bias size).
      seconds: wall time of the check.
      expected: whether ``status`` is what the spec predicts (a FAIL, or an unexpected EXACT/BIASED, is False).
    """

    section: str
    claim: str
    source: str
    status: Status
    detail: str = ""
    seconds: float = 0.0
    expected: bool = True

    @property
    def ok(self) -> bool:
        return self.status != "FAIL" and self.expected

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: width of the terminal table (`rlkl verify`, `rlkl derive`); ``wide=True`` puts each verdict on one line instead
TABLE_WIDTH = 120
#: column widths of the wrapped table: status, claim, source; detail takes the rest of TABLE_WIDTH
_COLUMNS = (7, 46, 30)


def _cells(r: Verdict) -> tuple[str, str, str, str]:
    return (r.status if r.expected else f"{r.status}!"), r.claim, r.source, r.detail


def _wrapped_lines(cells: tuple[str, ...], widths: tuple[int, ...]) -> list[str]:
    """One table row as lines: every cell wrapped to its column, the columns side by side."""
    import textwrap

    cols = [textwrap.wrap(c, w, break_on_hyphens=False) or [""] for c, w in zip(cells, widths)]
    height = max(map(len, cols))
    lines = []
    for i in range(height):
        parts = [(col[i] if i < len(col) else "").ljust(w) for col, w in zip(cols, widths)]
        lines.append(" ".join(parts).rstrip())
    return lines


def format_table(rows: Iterable[Verdict], wide: bool = False, width: int = TABLE_WIDTH) -> str:
    """Render verdicts as a text table grouped by section, nothing cut.

    Args:
      rows: the verdicts.
      wide: one line per verdict (columns padded, never wrapped or cut); otherwise every cell is wrapped so that
        no line is longer than ``width``.
      width: line length of the wrapped table (default 120).
    Returns:
      the table, with a closing line "n/m verdicts as predicted".
    """
    rows = list(rows)
    if wide:
        w_claim = max([len(r.claim) for r in rows] + [5])
        w_source = max([len(r.source) for r in rows] + [6])
        widths = (_COLUMNS[0], w_claim, w_source, max([len(r.detail) for r in rows] + [6]))
    else:
        rest = width - sum(_COLUMNS) - len(_COLUMNS)
        if rest < 20:
            raise ValueError(f"table width {width} is too small; use at least {sum(_COLUMNS) + len(_COLUMNS) + 20}")
        widths = (*_COLUMNS, rest)
    lines = []
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            lines += ["", f"== {section} ==", " ".join(h.ljust(w) for h, w in
                                                    zip(("status", "claim", "source", "detail"), widths)).rstrip()]
        cells = _cells(r)
        lines += ([" ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()] if wide
                  else _wrapped_lines(cells, widths))
    ran = [r for r in rows if r.status != "SKIP"]
    n_ok = sum(r.ok for r in ran)
    n_skip = len(rows) - len(ran)
    lines.append("")
    lines.append(f"{n_ok}/{len(ran)} verdicts as predicted" + (f", {n_skip} skipped" if n_skip else "")
                 + ("" if n_ok == len(ran) else "  <-- some NOT as predicted (marked with !)"))
    return "\n".join(lines)


def dump_json(rows: Iterable[Verdict]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)
