"""The loss path reads no value on the host and keeps every tensor on the input's device — checked on a CPU.

On an accelerator a host sync (``.item()``, ``bool(t)``, ``nonzero``, boolean indexing) stalls the stream, and a
tensor built without ``device=`` lands on the CPU. Both are invisible on a CPU-only machine, so two stand-ins:

* **counting** — ``tests/syncs.py`` records every aten op that hands a value (or a data-dependent shape) to the
  host, and the ``tolist`` / ``numpy`` / ``cpu`` calls that copy without one. Documented budget: ``RolloutBatch``
  validates with one sync (its rollout fields, ``logp_rollout`` and ``kept_logmass``, included), ``Method.loss``
  ends with one (``logp``'s values, then the derived checks), its backward and its diagnostics with none;
* **meta tensors** — every op runs its shape kernel only, so any read of a value raises, and a non-scalar CPU
  tensor mixed in raises "found at least two devices", as it would beside a CUDA tensor. rlkl's public checks
  refuse meta inputs (they hold no data: ``rlkl._checks._require_data``); the test lifts only that refusal and
  runs the trusted path (``validate=False`` inside ``deferring``, as the exact engine calls it).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import rlkl._checks
from rlkl._checks import deferring
from rlkl.integrations import loss_from_advantages
from rlkl.losses import aggregate, ppo_clip_loss
from rlkl.methods import RolloutBatch, get_method, list_methods
from syncs import HostSyncs

B, T, G = 8, 5, 4


def _batch(dtype, rollout: bool, seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(B, T, generator=g, dtype=dtype) - 0.1
    logp_ref = logp_old + 0.05 * torch.randn(B, T, generator=g, dtype=dtype)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False  # one shorter response: padding is exercised
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], dtype=dtype)  # every group mixed
    extra = {}
    if rollout:
        extra = dict(logp_rollout=logp_old + 0.01 * torch.randn(B, T, generator=g, dtype=dtype),
                     kept_logmass=-0.01 * torch.rand(B, T, generator=g, dtype=dtype))
    return RolloutBatch(logp_old, logp_ref, mask, rewards, G, **extra)


# -- the two stand-ins can fail ----------------------------------------------------------------------------------
def test_the_counter_sees_each_kind_of_sync_and_none_in_pure_ops():
    x = torch.tensor([1.0, -2.0, 3.0])
    with HostSyncs() as s:
        torch.where(x > 0, x, 0.0).sum() * 2  # pure: no sync
    assert s.total == 0
    with HostSyncs() as s:
        float(x.sum())  # .item(): 1
        bool((x > 0).any())  # bool(): 1
        x[x > 0]  # boolean indexing: 1
        (x > 0).nonzero()  # nonzero: 1
        x.tolist()  # a host copy without an aten op on a CPU tensor: 1
    assert s.total == 5, s.count


def test_the_counter_sees_a_sync_in_a_backward():
    class ReadsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * float(grad.sum())  # a planted .item() in the backward

    x = torch.ones(3, requires_grad=True)
    y = ReadsInBackward.apply(x).sum()
    with HostSyncs() as s:
        y.backward()
    assert s.total == 1


def test_meta_tensors_raise_on_a_read_and_on_a_cpu_tensor_mixed_in():
    m = torch.zeros(2, 3, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        float(m.sum())
    with pytest.raises(RuntimeError, match="device"):
        m + torch.zeros(2, 3)  # a tensor built without device=
    assert (m + torch.tensor(2.0)).device.type == "meta"  # a 0-dim CPU scalar is allowed, as beside CUDA


# -- the host-sync budget ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rollout", [False, True], ids=["plain", "rollout_fields"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_method_loss_makes_one_host_sync_and_its_backward_and_diagnostics_none(dtype, rollout):
    with HostSyncs() as s:
        batch = _batch(dtype, rollout)
    assert s.total == 1, s.count  # validated(): every value condition, the rollout fields too, in one sync
    for name in list_methods():
        logp = batch.logp_old.clone().requires_grad_()
        with HostSyncs() as s_loss:
            loss, diagnostics = get_method(name).loss(logp, batch)
        with HostSyncs() as s_backward:
            loss.backward()
        with HostSyncs() as s_diag:
            values = dict(diagnostics)
        assert (s_loss.total, s_backward.total, s_diag.total) == (1, 0, 0), (name, s_loss.count, s_diag.count)
        assert values and torch.isfinite(loss) and torch.isfinite(logp.grad).all(), name


def test_framework_entry_and_public_losses_make_one_host_sync_each():
    batch = _batch(torch.float32, False)
    m = get_method("grpo")
    adv = m.advantages(batch)
    logp = batch.logp_old.clone().requires_grad_()
    with HostSyncs() as s:
        loss_from_advantages(m, logp, batch.logp_old, batch.logp_ref, batch.mask, adv)
    assert s.total == 1, s.count
    with HostSyncs() as s:
        out = ppo_clip_loss(logp, batch.logp_old, adv, batch.mask)
    assert s.total == 1, s.count
    with HostSyncs() as s:
        aggregate(out.loss, batch.mask, "seq-mean-token-mean").backward()
    assert s.total == 1, s.count  # aggregate's own validation; its backward reads nothing


# -- no value read, no tensor off the input's device -------------------------------------------------------------
def _on_meta(batch: RolloutBatch) -> RolloutBatch:
    out = copy.copy(batch)  # the validated batch, its tensors moved (the dataclass' checks ran on the real values)
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            object.__setattr__(out, f.name, value.to("meta"))
    return out


# two of the four (dtype, rollout fields) pairs: each dtype and each batch layout once (meta ops cost ~1 s a pair)
@pytest.mark.parametrize("dtype,rollout", [(torch.float32, False), (torch.float64, True)],
                         ids=["f32-plain", "f64-rollout_fields"])
def test_trusted_method_loss_reads_no_value_and_stays_on_the_inputs_device(monkeypatch, dtype, rollout):
    monkeypatch.setattr(rlkl._checks, "_require_data", lambda name, x: None)  # meta inputs stand in for CUDA
    batch = _on_meta(_batch(dtype, rollout))
    for name in list_methods():
        logp = batch.logp_old.clone().requires_grad_()
        with deferring() as checks:  # the derived checks are recorded, never read (they are meta tensors too)
            loss, diagnostics = get_method(name).loss(logp, batch, validate=False)
            loss.backward()
            values = dict(diagnostics)
            recorded = [ok for ok, _ in checks._items]
            checks._items.clear()
        off = {k: v.device for k, v in values.items() if v.device.type != "meta"}
        assert loss.device.type == "meta" and logp.grad.device.type == "meta" and not off, (name, off)
        assert all(ok.device.type == "meta" and ok.dim() == 0 for ok in recorded), name
        assert values and all(v.dim() == 0 and v.dtype == dtype for v in values.values()), name


def _public_calls():
    """(id, call) for the public estimators on ``[B, T]`` meta inputs, options off their defaults where a branch
    differs (the Methods above reach the defaults)."""
    import rlkl.advantages as A
    import rlkl.divergences as D
    import rlkl.losses as L
    import rlkl.sampling as S

    V = 6

    def f(*shape):
        return torch.empty(*shape, device="meta")

    x, r, mask = f(B, T), f(B), torch.ones(B, T, dtype=torch.bool, device="meta")
    every = torch.ones(B, V, dtype=torch.bool, device="meta")
    return [
        ("future_return", lambda: A.future_return(x, mask, include_current=False)),
        ("reward_to_go_discounted", lambda: A.reward_to_go(x, mask, gamma=0.9)),
        ("frpo_regularizer_forward_kl", lambda: A.frpo_regularizer(x, mask, "forward_kl", include_local=False)),
        ("frpo_advantages", lambda: A.frpo_advantages(r, x, x, mask, G, 0.1)),
        ("masked_whiten", lambda: A.masked_whiten(x, mask)),
        ("length_weighted_centered", lambda: A.length_weighted_centered(r, torch.ones(B, device="meta"), G)),
        ("pass_at_k_advantage", lambda: A.pass_at_k_advantage(r, G)),
        ("gpg_advantage_group", lambda: A.gpg_advantage(r, G, scope="group")),
        ("batch_standardized", lambda: A.batch_standardized(r)),
        ("masked_mean", lambda: L.masked_mean(x, mask)),
        ("reinforce_loss_off_policy", lambda: L.reinforce_loss(x, x, mask, x).loss),
        ("gspo_loss", lambda: L.gspo_loss(x, x, x, mask).loss),
        ("cispo_loss", lambda: L.cispo_loss(x, x, x, mask).loss),
        ("rao_blackwell_kl", lambda: D.rao_blackwell_kl(f(B, T, V), f(B, T, V), mask)),
        ("monte_carlo_kl", lambda: D.monte_carlo_kl(x, x, mask)),
        ("unnormalized_kl", lambda: D.unnormalized_kl(f(B, V), f(B, V))),
        ("sequence_is_weights_capped", lambda: S.sequence_is_weights(x, mask, cap=2.0)),
        ("masked_is_weights_sequence", lambda: S.masked_is_weights(x, mask, True, 2.0, 0.5)),
        ("geometric_mean_weights", lambda: S.geometric_mean_weights(x, mask, cap=2.0)),
        ("mismatch_diagnostics", lambda: S.mismatch_diagnostics(x, x, mask)),
        ("effective_sample_size", lambda: S.effective_sample_size(x, mask)),
        ("kept_set", lambda: S.kept_set(f(B, V), top_k=3, top_p=0.9, min_p=0.05)),
        ("kept_log_softmax", lambda: S.kept_log_softmax(f(B, V), every)),
        ("exact_mismatch_kl", lambda: S.exact_mismatch_kl(f(B, T, V), f(B, T, V), mask)),
    ]


def test_trusted_public_estimators_read_no_value_and_stay_on_the_inputs_device(monkeypatch):
    monkeypatch.setattr(rlkl._checks, "_require_data", lambda name, x: None)  # meta inputs stand in for CUDA
    for name, call in _public_calls():
        with rlkl._checks.trusted(), deferring() as checks:  # as a trusted caller runs them: no value read
            out = call()
            checks._items.clear()
        outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, tuple) else [out]
        assert outs and all(o.device.type == "meta" for o in outs), (name, [o.device for o in outs])


def test_lm_update_forward_and_backward_stay_on_the_models_device():
    """The small LM's update path (shared-prefix forward of G responses per prompt, token log-probs, backward): no
    tensor built off the model's device (its sampling loop reads one flag per token on the host, by design: EOS)."""
    from rlkl.lm.model import GPT, GPTConfig
    from rlkl.lm.train import policy_logp

    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, d_model=16)).to("meta")
    n, group, P, R = 3, 4, 5, 6
    prompts = torch.zeros(n, P, dtype=torch.long, device="meta")
    responses = torch.zeros(n * group, R, dtype=torch.long, device="meta")
    logp = policy_logp(model, prompts, responses, group)  # [n·G, R]
    logp.sum().backward()
    assert logp.shape == (n * group, R) and logp.device.type == "meta"
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())
