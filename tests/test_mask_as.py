"""`rlkl.losses._mask_as` (a bool mask converted through its bytes) gives ``mask.to(dtype)`` bit for bit, on
contiguous and strided masks, and the losses built on it keep their values."""

import pytest
import torch

from rlkl.losses import _mask_as, aggregate, ppo_clip_loss


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_mask_as_equals_to_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(37, 11, generator=g) < 0.6
    for m in (mask, mask.t(), mask[:, ::3], mask.t().contiguous().t()):
        got = _mask_as(m, dtype)
        assert got.dtype == dtype and got.shape == m.shape
        assert torch.equal(got, m.to(dtype))


def test_masked_policy_loss_and_token_sum_aggregation_by_hand():
    # PPO clip with ratio 1 (logp = logp_old): per-token loss −A on valid tokens, 0 on padding (−0.0 for A < 0 × 0)
    logp = torch.zeros(2, 3, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = ppo_clip_loss(logp, logp, adv, mask)
    assert out.loss.tolist() == [[-1.0, -1.0, 0.0], [2.0, 0.0, 0.0]]
    # seq-mean-token-sum: rows −1 − 1 = −2 and 2, over B' = 2 sequences → 0; with row 1 = [3, pad, pad]: (−2 + 3)/2
    assert aggregate(out.loss, mask, "seq-mean-token-sum").item() == 0.0
    loss = torch.tensor([[-1.0, -1.0, 7.0], [3.0, 5.0, 5.0]], dtype=torch.float64)
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == 0.5
