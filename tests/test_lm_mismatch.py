"""The LM trainer behind an inference-engine sampler: q from the engine, the kept-mass identity on real rollouts,
mask replay, the mismatch metrics, the config flags and the default run unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from rlkl.lm.metrics import mismatch_metrics
from rlkl.lm.model import sample, sample_engine
from rlkl.lm.sft import load_reference
from rlkl.lm.train import TrainConfig, build_method, build_sampler, collect_rollout, compute_loss, train
from rlkl.methods import get_method
from rlkl.sampling import Sampler, kept_set

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(ref_path, **kw):
    base = dict(method="grpo", task="addition", difficulty=1, ref=ref_path, steps=2, prompts_per_step=4, group_size=4,
                lr=1e-3, warmup_steps=2, eval_every=2, eval_prompts=6, eval_samples=4, checkpoint_every=100,
                num_threads=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _rollout(ref_path, sampler, replay=False, seed=1):
    policy, task, _ = load_reference(ref_path)
    prompts = task.sample_prompts(8, torch.Generator().manual_seed(0))
    ro = collect_rollout(policy, policy, policy, task, prompts, 4, torch.Generator().manual_seed(seed),
                         sampler=sampler, replay=replay)
    return policy, task, ro


def test_identity_engine_samples_exactly_like_the_policy(ref_path):
    policy, task, _ = load_reference(ref_path)
    prompts = task.sample_prompts(6, torch.Generator().manual_seed(0))
    a = sample(policy, prompts, task.max_response_len, task.eos_id, torch.Generator().manual_seed(4))
    b = sample_engine(policy, prompts, task.max_response_len, task.eos_id, torch.Generator().manual_seed(4),
                      Sampler())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=1e-6)
    assert b[3].all()  # nothing cut


def test_engine_tokens_lie_in_the_kept_sets_and_ratio_is_the_kept_mass(ref_path):
    s = Sampler(top_p=0.8)
    policy, task, ro = _rollout(ref_path, s)
    m = ro.mask
    assert ro.kept.gather(-1, ro.responses.unsqueeze(-1)).squeeze(-1)[m].all()
    # the kept sets are the top-p sets of the trainer's own logits (same model, same float32 numbers)
    seq = torch.cat([ro.prompts, ro.responses], 1)
    P = ro.prompts.shape[1]
    with torch.no_grad():
        logits = policy(seq[:, :-1])[:, P - 1:]
    assert torch.equal(kept_set(torch.log_softmax(logits, -1), top_p=0.8)[m], ro.kept[m])
    ro.set_behaviour(logits)
    # T20 on real rollouts: π_old/q = S_t for every sampled token (float32 round-off)
    ratio = (ro.logp_old - ro.logp_sample).exp()[m]
    torch.testing.assert_close(ratio, ro.kept_logmass.exp()[m], rtol=0, atol=2e-5)
    assert ro.kept_logmass.exp()[m].min() < 0.999  # something was cut
    assert ro.metrics["engine_kept_mass"] == pytest.approx(float(ro.kept_logmass.exp()[m].mean()), abs=1e-5)
    # KL(q‖π_old) at a state = −log S exactly when only truncation acts
    assert ro.metrics["mismatch_kl_exact"] == pytest.approx(float(-ro.kept_logmass[m].mean()), abs=1e-5)


def test_mask_replay_makes_the_ratio_one(ref_path):
    s = Sampler(top_p=0.7)
    policy, task, ro = _rollout(ref_path, s, replay=True)
    method = build_method(_cfg(ref_path, rollout_correction="mask_replay"))
    loss, diag = compute_loss(policy, method, ro, 4)
    assert diag["rollout/ratio_mean"].item() == pytest.approx(1.0, abs=2e-6)  # π_old^K/q = 1 at τ = 1
    assert diag["rollout/kept_mass"].item() < 0.999
    assert ro.metrics["mismatch_kl_exact"] == pytest.approx(0.0, abs=1e-6)
    # the loss is Method.loss on log-probs renormalized over the kept sets, computed here independently
    seq = torch.cat([ro.prompts, ro.responses], 1)
    P = ro.prompts.shape[1]
    logits = policy(seq[:, :-1])[:, P - 1:]
    z = logits.masked_fill(~ro.kept, float("-inf"))
    logp = (z - torch.logsumexp(z, -1, keepdim=True)).gather(-1, ro.responses[..., None])[..., 0]
    expected, _ = method.loss(logp, ro.batch(4))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_mismatch_metrics_by_hand():
    # one state, three tokens π_old = (0.5, 0.3, 0.2), kept {0, 1}: q = (0.625, 0.375, 0), S = 0.8
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))
    kept = torch.tensor([[[True, True, False]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    d = mismatch_metrics(logits, torch.log_softmax(logits, -1), Sampler(top_p=0.75), kept, mask)
    assert d["engine_kept_mass"] == pytest.approx(0.8, rel=1e-6)
    assert d["mismatch_kl_exact"] == pytest.approx(-math.log(0.8), rel=1e-5)  # Σ q log(q/π) = log(1/S)


def test_config_flags_build_the_engine_and_reject_bad_values(ref_path):
    assert build_sampler(_cfg(ref_path)) is None  # default: π_old samples
    s = build_sampler(_cfg(ref_path, top_p=0.8, top_k=3, temperature=0.7, sampler_dtype="bfloat16", logprobs="raw"))
    assert (s.top_p, s.top_k, s.temperature, s.dtype.value, s.logprobs.value) == (0.8, 3, 0.7, "bfloat16", "raw")
    assert build_method(_cfg(ref_path, rollout_correction="token_tis:2")).correction.spec() == "token_tis:2"
    for bad in (dict(top_p=1.5), dict(top_p=0.0), dict(top_k=-1), dict(temperature=0.0), dict(min_p=1.0),
                dict(sampler_dtype="int8"), dict(logprobs="cooked"), dict(rollout_correction="token_tis:1"),
                dict(rollout_correction="bogus")):
        with pytest.raises(ValueError):
            _cfg(ref_path, **bad)


def test_cli_flags_reach_the_config(ref_path, tmp_path, capsys):
    from rlkl.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--task", "addition", "--difficulty", "1", "--ref", ref_path, "--steps", "1",
               "--prompts_per_step", "2", "--group_size", "4", "--eval_every", "1", "--eval_prompts", "4",
               "--eval_samples", "2", "--num_threads", "1", "--device", "cpu", "--top-p", "0.8",
               "--rollout-correction", "seq_mis:3", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["top_p"] == 0.8 and cfg["rollout_correction"] == "seq_mis:3"
    method = json.loads((out / "method.json").read_text())
    assert method["correction"] == {"kind": "SequenceMIS", "upper": 3.0, "lower": None}
    row = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    for key in ("diag/rollout/ratio_mean", "diag/rollout/kept_mass", "diag/rollout/ess", "diag/rollout/kl_k3",
                "diag/rollout/rejected_fraction", "mismatch_kl_exact", "engine_kept_mass"):
        assert key in row, key
    assert main(["train", "--ref", ref_path, "--top-p", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "top_p" in capsys.readouterr().err


def test_default_run_has_no_mismatch_metrics(ref_path, tmp_path):
    rows = train(_cfg(ref_path, steps=1), tmp_path / "plain", progress=False)
    assert not any(k.startswith(("diag/rollout/", "mismatch_", "engine_")) for r in rows for k in r)
