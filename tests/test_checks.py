"""The value checks at the public boundary (rlkl/_checks.py): one folded number, one host sync, the old errors.

`validated` folds every value condition of a public call into s = (Σ_k Σ x_k) / d (d = max of the mask, or the min
over rows of each row's max, times `also()`), finite exactly when the conditions hold — or when a sum of finite
entries overflowed, which the entry-wise checks then clear. Inside `deferring()` the condition is the block's next
deferred check, so `Method.loss` ends with one sync for logp's values and the loss's finiteness, in that order.
"""

import math

import pytest
import torch

from rlkl._checks import _folded, _values_ok, check_float, check_token_tensors, deferring, require, validated
from rlkl.losses import aggregate, ppo_clip_loss
from rlkl.methods import RolloutBatch, get_method


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_folded_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # Σ = 10
    b = torch.tensor([[0.5, 0.5], [0.0, -1.0]])  # Σ = 0
    m = _mask([[True, False], [False, False]])  # max = 1; row maxima (1, 0): min 0
    assert float(_folded([a, b], m, False, None)) == 10.0  # 10 / 1
    assert float(_folded([a, b], m, True, None)) == float("inf")  # 10 / 0: an empty row
    assert float(_folded([a], m, False, lambda: torch.tensor(False))) == float("inf")  # also() False: d = 0
    assert math.isnan(float(_folded([a], torch.zeros(0, 2, dtype=torch.bool), False, None)))  # empty mask: nan


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_bad_entry_fails_the_fold(bad):
    a = torch.zeros(3, 4)
    a[1, 2] = bad
    assert not _values_ok([torch.ones(3, 4), a], _mask([[True] * 4] * 3))


def test_all_false_mask_fails_and_names_the_mask():
    x = torch.zeros(2, 3)
    m = torch.zeros(2, 3, dtype=torch.bool)
    assert not _values_ok([x], m)  # 0 / 0 = nan
    with pytest.raises(ValueError, match="mask"):
        check_token_tensors(m, logp=x)


def test_overflowing_sums_of_finite_entries_are_accepted():
    # float32: 4 · 3e38 overflows the sum to inf, but every entry is finite, so the entry-wise checks accept
    x = torch.full((2, 2), 3e38, dtype=torch.float32)
    m = _mask([[True, True], [True, True]])
    assert not _values_ok([x], m)
    assert check_token_tensors(m, logp=x, logp_old=x) == (2, 2)
    assert check_float("x", x) is x


def test_validated_inside_deferring_raises_at_the_end_and_input_errors_come_first():
    logp = torch.tensor([[0.0, float("nan")]])
    m = _mask([[True, True]])
    reached = []
    with pytest.raises(ValueError, match="logp contains non-finite"):
        with deferring():
            validated(lambda: check_token_tensors(m, logp=logp), logp, mask=m)
            reached.append("after validated")  # no sync yet: the block goes on
            require(torch.tensor(False), lambda: (_ for _ in ()).throw(ValueError("derived check")))
    assert reached == ["after validated"]


def test_derived_check_still_raises_when_inputs_are_fine():
    x = torch.zeros(1, 2)
    m = _mask([[True, False]])
    with pytest.raises(ValueError, match="derived check"):
        with deferring():
            validated(lambda: check_token_tensors(m, logp=x), x, mask=m)
            require(torch.tensor(False), lambda: (_ for _ in ()).throw(ValueError("derived check")))


def test_method_loss_reports_logp_before_an_overflowing_loss():
    # logp has a nan AND the advantages overflow the loss: the logp error is the one users get (as before)
    B, T = 4, 3
    mask = torch.ones(B, T, dtype=torch.bool)
    zeros = torch.zeros(B, T)
    m = get_method("grpo")
    logp = zeros.clone()
    logp[0, 0] = float("nan")
    with pytest.raises(ValueError, match="logp contains non-finite"):
        m.loss_given_advantages(logp, zeros, mask, torch.full((B, T), 3e38), zeros)
    with pytest.raises(ValueError, match="logp contains non-finite"):
        m.loss(logp, RolloutBatch(zeros, zeros, mask, torch.tensor([0.0, 1.0, 0.0, 1.0]), 4))


def test_public_losses_keep_their_errors():
    logp = torch.zeros(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask"):
        ppo_clip_loss(logp, logp, logp, mask)
    with pytest.raises(ValueError, match="mask"):
        aggregate(logp, mask, "token-mean")
    bad = logp.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="advantages contains non-finite"):
        ppo_clip_loss(logp, logp, bad, torch.ones(2, 3, dtype=torch.bool))
