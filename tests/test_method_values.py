"""Issue 11, defect 7 at the Method boundary: every scalar of a Method's components is validated once, when the
Method is built, so a NaN β can never switch a KL term off (every check downstream is ``beta > 0``)."""

from __future__ import annotations

import math

import pytest

from rlkl.components import GSPO, FutureReturn, GroupStandardized, KLLoss, PPOClip, RPGClip
from rlkl.methods import REGISTRY


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, "0.1", None, True])
def test_beta_must_be_a_finite_non_negative_number(bad):
    with pytest.raises(ValueError, match="Method.beta"):
        REGISTRY["grpo"].replace(beta=bad)


@pytest.mark.parametrize("make,match", [
    (lambda: GroupStandardized(eps=float("nan")), "GroupStandardized.eps must be a number"),
    (lambda: PPOClip(dual=float("nan")), "PPOClip.dual must be a number"),
    (lambda: PPOClip(low=float("nan")), "PPOClip.low must be a number"),
    (lambda: PPOClip(high=float("inf")), "PPOClip.high must be finite"),
    (lambda: GSPO(5, -3), r"GSPO.low must be in \(0, 1\)"),
    (lambda: FutureReturn("alpha=nan"), "alpha"),
    (lambda: KLLoss("k3", straight_through="yes"), "KLLoss.straight_through must be a bool"),
    (lambda: RPGClip(eps_low=float("nan")), "eps_low"),
])
def test_component_scalars_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_valid_beta_is_kept_as_a_float():
    m = REGISTRY["grpo"].replace(beta=1)
    assert isinstance(m.beta, float) and m.beta == 1.0 and math.isfinite(m.beta)
