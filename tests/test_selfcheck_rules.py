"""The rules of `rlkl verify`'s estimators section, each a library function against a reference written out in
rlkl/selfcheck.py from its paper's formula (Python loops and math, not the function under test), hold in float64.

They are in the default run as well as in `rlkl verify`, so a planted bug in a clip bound, a std, a sum's range, a
sign or a stop-gradient fails here too (docs/mutation.md).
"""

from __future__ import annotations

import pytest

from rlkl import selfcheck


@pytest.mark.parametrize("claim,source,name", selfcheck._RULES, ids=[r[2] for r in selfcheck._RULES])
def test_rule_holds(claim, source, name):
    err = getattr(selfcheck, name)(range(3))
    assert err < selfcheck.TOL, (claim, err)


def test_every_rule_has_a_row():
    rows = selfcheck._rule_rows(range(1))
    assert [r.claim for r in rows] == [c for c, _, _ in selfcheck._RULES]
    assert all(r.status == "PASS" for r in rows)
