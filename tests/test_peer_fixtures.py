"""Recorded verl 0.9.1 / TRL 1.16 losses and gradients (tests/fixtures/peers, written by
scripts/record_peer_fixtures.py in the integration venvs) replayed against rlkl — no framework installed.

For every fixture: the config (in the framework's own flag names) is translated by ``from_verl`` / ``from_trl``;
rlkl's loss of the optimizer step is ``split_loss`` with the batch layout the translation states (micro-batch by
micro-batch for TRL's micro-batch normalizers, the whole step for verl's global normalizers and TRL's ``dapo``), on
the recorded advantages; value and gradient must equal the framework's to 1e-12 (float64). verl's advantages must
also equal ``Method.advantages``. A failure after a framework upgrade means upstream changed: rerun the script (and
read the diff).
"""

import json
from pathlib import Path

import pytest
import torch

from rlkl.components import AggMode
from rlkl.integrations.microbatch import Pool, split_loss
from rlkl.integrations.translate import translate_trl, translate_verl
from rlkl.methods import RolloutBatch

PEERS = Path(__file__).parent / "fixtures" / "peers"
FIXTURES = sorted(PEERS.glob("*.json"))
F64 = torch.float64


def _load(path):
    fx = json.loads(path.read_text())
    b = fx["batch"]
    t = {k: torch.tensor(b[k], dtype=F64) for k in ("logp", "logp_old", "logp_ref", "rewards")}
    t["mask"] = torch.tensor(b["mask"], dtype=torch.bool)
    return fx, t


def test_fixtures_exist_for_both_frameworks():
    names = {p.name.split("_")[0] for p in FIXTURES}
    assert names == {"verl", "trl"}, "regenerate with scripts/record_peer_fixtures.py verl|trl"
    assert len(FIXTURES) >= 12


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_replay_against_rlkl(path):
    fx, b = _load(path)
    tr = translate_verl(fx["config"]) if fx["framework"] == "verl" else translate_trl(fx["config"])
    method = tr.require_method()
    adv = torch.tensor(fx["advantages"], dtype=F64)
    if fx["framework"] == "verl":  # verl's estimator = rlkl's advantage of the translated Method
        rb = RolloutBatch(b["logp_old"], b["logp_ref"], b["mask"], b["rewards"], fx["group_size"])
        # the recorder states where verl itself is not float64-exact (float32 statistics, masked_mean's +1e-8)
        tol = fx["advantage_rtol"]
        torch.testing.assert_close(method.advantages(rb), adv, rtol=tol, atol=tol, msg=fx["advantage_rtol_reason"])
    per_micro = tr.layout.pool is Pool.MICRO or method.aggregation.mode is not AggMode.TOKEN_MEAN
    micro = torch.tensor(fx["micro_index"]) if per_micro else None
    logp = b["logp"].clone().requires_grad_(True)
    loss = split_loss(method, logp, b["logp_old"], b["logp_ref"], b["mask"], adv, micro)
    (grad,) = torch.autograd.grad(loss, logp)
    assert loss.item() == pytest.approx(fx["loss"], rel=1e-12, abs=1e-14), fx["note"]
    torch.testing.assert_close(grad, torch.tensor(fx["grad"], dtype=F64), rtol=1e-11, atol=1e-13)


def test_token_mean_over_micro_batches_is_not_over_the_batch():
    """The bnpo fixture (TRL normalizes each micro-batch by its own tokens) does NOT match the whole-batch token
    mean: the layout is part of the objective (verl #7321, #2776)."""
    fx, b = _load(PEERS / "trl_bnpo.json")
    method = translate_trl(fx["config"]).require_method()
    adv = torch.tensor(fx["advantages"], dtype=F64)
    whole = split_loss(method, b["logp"], b["logp_old"], b["logp_ref"], b["mask"], adv)
    assert abs(whole.item() - fx["loss"]) > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# rollout-correction weights (tests/fixtures/peers/rollout): verl's compute_rollout_correction_and_rejection_mask
# and TRL's vLLM importance-sampling block, recorded on seeded batches
ROLLOUT = sorted((PEERS / "rollout").glob("*.json"))


def test_rollout_weight_fixtures_exist_for_both_frameworks():
    assert {p.name.split("_")[0] for p in ROLLOUT} == {"verl", "trl"}, \
        "regenerate with scripts/record_peer_fixtures.py verl|trl"


@pytest.mark.parametrize("path", ROLLOUT, ids=lambda p: p.stem)
def test_rollout_weights_replay_against_rlkl(path):
    """The translated Method's correction, through ``Method.rollout_weights`` (ρ = exp(logp_old − logp_rollout)),
    gives the framework's weights to 1e-12; each fixture exercises its bound (a capped or a dropped weight)."""
    fx = json.loads(path.read_text())
    b = {k: torch.tensor(fx["batch"][k], dtype=F64) for k in ("logp_old", "logp_rollout")}
    mask = torch.tensor(fx["batch"]["mask"], dtype=torch.bool)
    if fx["framework"] == "verl":
        tr = translate_verl({"algorithm.adv_estimator": "grpo", "actor_rollout_ref.rollout.n": 4, **fx["config"]})
    else:
        tr = translate_trl(fx["config"])
    method = tr.require_method()
    B = mask.shape[0]
    rb = RolloutBatch(b["logp_old"], b["logp_old"], mask, torch.zeros(B, dtype=F64), 4, logp_rollout=b["logp_rollout"])
    w = method.rollout_weights(rb)
    want = torch.tensor(fx["weights"], dtype=F64)
    torch.testing.assert_close(w, want, rtol=1e-12, atol=1e-14, msg=f"{fx['case']}: {method.correction!r}")
    c = method.correction
    raw = c.uncapped().weights(b["logp_old"] - b["logp_rollout"], mask)
    assert c.bounded and bool(((want != raw) & mask).any()), "the fixture never reaches the bound"
