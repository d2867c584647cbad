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


def format_table(rows: Iterable[Verdict]) -> str:
    """Render verdicts as a fixed-width text table, grouped by section."""
    rows = list(rows)
    lines = []
    header = f"{'status':<7} {'claim':<70} {'source':<32} detail"
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            lines.append("")
            lines.append(f"== {section} ==")
            lines.append(header)
        flag = r.status if r.expected else f"{r.status}!"
        lines.append(f"{flag:<7} {r.claim[:70]:<70} {r.source[:32]:<32} {r.detail}")
    ran = [r for r in rows if r.status != "SKIP"]
    n_ok = sum(r.ok for r in ran)
    n_skip = len(rows) - len(ran)
    lines.append("")
    lines.append(f"{n_ok}/{len(ran)} verdicts as predicted" + (f", {n_skip} skipped" if n_skip else "")
                 + ("" if n_ok == len(ran) else "  <-- some NOT as predicted (marked with !)"))
    return "\n".join(lines)


def dump_json(rows: Iterable[Verdict]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)
