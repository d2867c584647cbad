"""rlkl.integrations and the TRL plug-in (``rlkl.integrations.trl.RLKLGRPOTrainer``).

The first tests need no framework: the plug-ins' composition ``loss_from_advantages`` equals ``Method.loss``
for every registered Method, and importing rlkl never imports TRL or verl. The TRL tests (skipped, with the
reason, when ``trl`` is not installed; run them with ``scripts/test_integrations.sh trl``) train a tiny
randomly initialised Qwen2 (2 layers, hidden 32, float64) with an in-process WordLevel tokenizer and dataset —
no downloads — for a few real ``GRPOTrainer`` steps, and check that the loss TRL returns and the gradient it
applies (captured before the SGD step, and the SGD update itself) equal ``Method.loss`` recomputed
independently: a plain HF forward on a fresh copy of the weights, rewards recomputed from the decoded
completions, groups rebuilt from the prompts.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from rlkl.integrations import advantages_need_logprobs, loss_from_advantages, resolve_method
from rlkl.methods import REGISTRY, RolloutBatch, get_method

# ---------------------------------------------------------------------------------------------------------------
# framework-free


def _random_batch(seed: int, B: int = 8, T: int = 6, G: int = 4):
    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(B, T, dtype=torch.float64, generator=g) * 2 - 0.05
    logp_ref = logp_old + 0.3 * torch.randn(B, T, dtype=torch.float64, generator=g)
    mask = torch.rand(B, T, generator=g) < 0.8
    mask[:, 0] = True
    rewards = torch.randint(0, 2, (B,), generator=g).to(torch.float64)
    rewards[0], rewards[1] = 1.0, 0.0  # no all-equal first group
    batch = RolloutBatch(logp_old, logp_ref, mask, rewards, G)
    logp = (logp_old + 0.3 * torch.randn(B, T, dtype=torch.float64, generator=g)).requires_grad_()
    return logp, batch


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_loss_from_advantages_equals_method_loss(name):
    """Value, gradient and shared diagnostics of the plug-in composition equal Method.loss (float64, 1e-13)."""
    method = get_method(name)
    if method.has_kl:
        method = method.replace(beta=0.05)  # β > 0 wherever there is a KL, so every KL path is exercised
    for seed in range(3):
        logp, batch = _random_batch(seed)
        ref, ref_diag = method.loss(logp, batch)
        (g_ref,) = torch.autograd.grad(ref, logp)
        got, diag = loss_from_advantages(method, logp, batch.logp_old, batch.logp_ref, batch.mask,
                                         method.advantages(batch))
        (g_got,) = torch.autograd.grad(got, logp)
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(g_got, g_ref, rtol=1e-13, atol=1e-13)
        for k, v in diag.items():
            torch.testing.assert_close(v, ref_diag[k], rtol=1e-13, atol=1e-13, msg=f"{name}: diagnostic {k}")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_advantages_need_logprobs_is_exact(name):
    """Where the plug-ins skip the rollout log-probs, the advantage does not depend on them (and vice versa)."""
    method = get_method(name)
    logp, batch = _random_batch(0)
    other = RolloutBatch(batch.logp_old + 0.5, batch.logp_ref - 0.7, batch.mask, batch.rewards, batch.group_size)
    changed = not torch.equal(method.advantages(batch), method.advantages(other))
    assert changed == advantages_need_logprobs(method)


def test_loss_from_advantages_rejects_bad_input():
    method = get_method("grpo")
    logp, batch = _random_batch(0)
    adv = method.advantages(batch)
    with pytest.raises(ValueError, match="logp_ref"):
        loss_from_advantages(method, logp, batch.logp_old, None, batch.mask, adv)
    with pytest.raises(ValueError, match="advantages"):
        loss_from_advantages(method, logp, batch.logp_old, batch.logp_ref, batch.mask, adv[:, :3])
    with pytest.raises(ValueError, match="non-negative"):
        loss_from_advantages(method, logp, batch.logp_old, batch.logp_ref, batch.mask, adv,
                             token_weights=-torch.ones_like(adv))
    with pytest.raises(ValueError):
        resolve_method(3)
    with pytest.raises(ValueError):
        resolve_method("no_such_method")


def test_token_weights_scale_the_policy_loss_only():
    method = get_method("grpo")
    logp, batch = _random_batch(1)
    adv = method.advantages(batch)
    base, d0 = loss_from_advantages(method, logp, batch.logp_old, batch.logp_ref, batch.mask, adv)
    doubled, d1 = loss_from_advantages(method, logp, batch.logp_old, batch.logp_ref, batch.mask, adv,
                                       token_weights=2 * torch.ones_like(adv))
    torch.testing.assert_close(doubled - base, d0["loss/policy"], rtol=1e-12, atol=1e-12)


def test_importing_rlkl_imports_no_framework():
    code = ("import sys, rlkl, rlkl.methods, rlkl.integrations; "
            "bad = [m for m in ('trl', 'verl', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------
# TRL: tiny in-process model, tokenizer and dataset

WORDS = ["<pad>", "<eos>", "<unk>", "copy", "add", "a", "b", "c", "d", "1", "2", "3", "="]
GOOD = {"a", "b", "1", "2"}


def reward_fraction_good(completions, **kwargs):
    """Fraction of completion words in GOOD: a dense reward, so groups almost never tie."""
    out = []
    for c in completions:
        words = c.split()
        out.append(sum(w in GOOD for w in words) / max(len(words), 1))
    return out


def _prompts():
    return [f"{op} {x} {y} =" for op in ("copy", "add") for x in ("a", "b", "c", "d") for y in ("1", "2", "3")]


@pytest.fixture(scope="module")
def trl_env(tmp_path_factory):
    """(model_dir, tokenizer, dataset): a saved tiny float64 Qwen2 and its tokenizer, built in-process."""
    pytest.importorskip("trl", reason="TRL not installed: run scripts/test_integrations.sh trl")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>", padding_side="left")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None, tie_word_embeddings=False)
    model_dir = tmp_path_factory.mktemp("tiny_qwen2")
    Qwen2ForCausalLM(cfg).to(torch.float64).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    dataset = Dataset.from_dict({"prompt": _prompts()})
    return model_dir, tokenizer, dataset


def _load(model_dir):
    from transformers import Qwen2ForCausalLM
    return Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float64)


def _config(tmp_path, **kw):
    from trl import GRPOConfig
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                max_completion_length=5, max_steps=2, learning_rate=0.5, optim="sgd", weight_decay=0.0,
                lr_scheduler_type="constant", max_grad_norm=0.0, use_cpu=True, bf16=False, report_to=[],
                save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, gradient_checkpointing=False)
    base.update(kw)
    return GRPOConfig(**base)


def _float64_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                 compute_entropy=False, compute_aux_loss=False, **multimodal):
    """Drop-in for TRL's ``_get_per_token_logps_and_entropies`` without its fused LM head, which computes
    log-probs in float32 whatever the model dtype (TRL 1.16 ``kernels/chunked_logprob.py``): full logits and
    log_softmax in the model's dtype, so a float64 model gives float64 log-probs."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -logits_to_keep - 1:-1]
    logits = logits / self.temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logps = logp_all.gather(-1, input_ids[:, -logits_to_keep:].unsqueeze(-1)).squeeze(-1)
    entropies = -(logp_all.exp() * logp_all).sum(-1) if compute_entropy else None
    return logps, entropies, None


def _make_recording_trainer(model_dir, tokenizer, dataset, args, method, perturb_ref=0.2, float64=True):
    """A RLKLGRPOTrainer that records, per optimizer step: micro-batch inputs, returned losses, params, grads.

    ``float64=True`` swaps TRL's float32 fused log-prob head for a float64 forward (everything else — generation,
    rewards, batching, accumulation, optimizer — is TRL's); ``float64=False`` runs TRL unchanged.
    """
    from transformers import TrainerCallback

    from rlkl.integrations.trl import RLKLGRPOTrainer

    class Recording(RLKLGRPOTrainer):
        if float64:
            _get_per_token_logps_and_entropies = _float64_logps_and_entropies

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            self.rec_micro.append(({k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v))
                                    for k, v in inputs.items()}, loss.detach().clone()))
            return loss

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            tr.rec_steps.append({
                "micro": list(tr.rec_micro),
                "params": {n: p.detach().clone() for n, p in tr.model.named_parameters()},
                "grads": {n: p.grad.detach().clone() for n, p in tr.model.named_parameters()
                          if p.grad is not None},
            })
            tr.rec_micro.clear()

    tr = Recording(model=_load(model_dir), reward_funcs=reward_fraction_good, args=args, train_dataset=dataset,
                   processing_class=tokenizer, method=method, callbacks=[Capture()])
    tr.rec_micro, tr.rec_steps = [], []
    if tr.ref_model is not None and perturb_ref:  # make π_ref ≠ π_θ at step 1 so every KL term is non-trivial
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in tr.ref_model.parameters():
                p.add_(perturb_ref * torch.randn(p.shape, dtype=p.dtype, generator=g))
    return tr


def _plain_logps(model_dir, state_dict, inputs):
    """log π(completion tokens) by a plain HF forward (full logits + log_softmax) on a fresh model copy."""
    model = _load(model_dir)
    model.load_state_dict(state_dict)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    C = inputs["completion_ids"].size(1)
    logits = model(input_ids=ids, attention_mask=att).logits[:, -C - 1:-1]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return model, logp


def _regroup(inputs, G):
    """Row order that puts the G completions of each prompt together (TRL shuffles rows)."""
    keys = [tuple(r.tolist()) for r in inputs["prompt_ids"]]
    order = sorted(range(len(keys)), key=lambda i: (keys[i], i))
    for s in range(0, len(order), G):
        assert len({keys[i] for i in order[s:s + G]}) == 1, "a group is split across micro-batches"
    return torch.tensor(order)


def _reference_loss(model_dir, tokenizer, method, inputs, params, old_params, ref_state, G):
    """Method.loss recomputed from scratch; returns (loss, {param name: grad})."""
    order = _regroup(inputs, G)
    inputs = {k: (v[order] if torch.is_tensor(v) and v.dim() > 0 and v.size(0) == len(order) else v)
              for k, v in inputs.items()}
    model, logp = _plain_logps(model_dir, params, inputs)
    with torch.no_grad():
        logp_old = _plain_logps(model_dir, old_params, inputs)[1]
        logp_ref = _plain_logps(model_dir, ref_state, inputs)[1] if ref_state is not None else logp_old
    mask = inputs["completion_mask"].bool()
    texts = tokenizer.batch_decode([ids[m].tolist() for ids, m in zip(inputs["completion_ids"], mask)],
                                   skip_special_tokens=True)
    # TRL stores rewards in a float32 tensor (``_calculate_rewards``); round the same way
    rewards = torch.tensor(reward_fraction_good(texts), dtype=torch.float32).to(torch.float64)
    batch = RolloutBatch(logp_old, logp_ref, mask, rewards, G)
    loss, _ = method.loss(logp, batch)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()], allow_unused=True)
    return loss, {n: g for n, g in zip(names, grads) if g is not None}, rewards


def _assert_grads_close(got, ref, rtol=1e-9):
    scale = max(float(g.abs().max()) for g in ref.values())
    assert scale > 0, "reference gradient is zero: the test would be vacuous"
    assert set(got) == set(ref)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=rtol, atol=rtol * scale, msg=f"gradient of {n}")


PARITY_CASES = [("frpo", 1), ("frpo", 2), ("grpo_k2_loss", 2), ("grpo_is_k3", 2), ("rpg_reinforce_fkl", 2),
                ("grpo", 2)]


def _check_parity(trl_env, tmp_path, name, num_iterations, float64):
    model_dir, tokenizer, dataset = trl_env
    method = get_method(name)
    G, lr = 4, 0.5
    # loss/gradient tolerances: float64 end to end, or TRL's float32 log-prob head vs a float64 reference
    rtol_loss, rtol_grad = (1e-10, 1e-9) if float64 else (2e-5, 2e-4)
    args = _config(tmp_path, num_iterations=num_iterations, max_steps=2 * num_iterations if num_iterations > 1 else 2)
    tr = _make_recording_trainer(model_dir, tokenizer, dataset, args, method, float64=float64)
    assert (tr.ref_model is not None) == method.uses_reference
    ref_state = ({n: p.detach().clone() for n, p in tr.ref_model.state_dict().items()}
                 if tr.ref_model is not None else None)
    tr.train()
    steps = tr.rec_steps
    assert len(steps) == args.max_steps
    for k, step in enumerate(steps):
        (inputs, trl_loss), = step["micro"]  # grad_accum = 1: one micro-batch = the generation batch
        gen_step = k - (k % num_iterations)  # the step whose parameters generated this rollout
        loss, grads, rewards = _reference_loss(model_dir, tokenizer, method, inputs, step["params"],
                                               steps[gen_step]["params"], ref_state, G)
        assert float(rewards.std()) > 0
        assert trl_loss.dtype == (torch.float64 if float64 else torch.float32)
        torch.testing.assert_close(trl_loss.to(torch.float64), loss.detach(), rtol=rtol_loss, atol=rtol_loss)
        _assert_grads_close(step["grads"], grads, rtol=rtol_grad)
        if k + 1 < len(steps):  # SGD: θ_{k+1} = θ_k − lr·g_k is the update TRL applied
            for n, p in steps[k + 1]["params"].items():
                torch.testing.assert_close(p, step["params"][n] - lr * step["grads"][n], rtol=1e-12, atol=1e-12)
        logged = tr.state.log_history[k]
        if k % num_iterations:  # a reused rollout: π_θ ≠ π_old, so the ratio is not identically 1
            assert (logged["rlkl/ratio/max"], logged["rlkl/ratio/min"]) != (1.0, 1.0)
        assert "rlkl/loss/policy" in logged and "rlkl/clip_fraction/low" in logged


@pytest.mark.integration
@pytest.mark.parametrize("name,num_iterations", PARITY_CASES)
def test_trl_steps_match_method_loss(trl_env, tmp_path, name, num_iterations):
    """A few real GRPOTrainer steps: TRL's loss, gradient and SGD update equal Method.loss's (float64, 1e-9).

    num_iterations=2 reuses each rollout for a second, off-policy step (π_θ ≠ π_old: ratios ≠ 1, clipping and
    the ρ weight of ``grpo_is_k3`` are live); num_iterations=1 is TRL's on-policy path, where the plug-in computes
    ``logp_old`` itself for FRPO's future-KL advantage. TRL's float32 log-prob head is replaced by a float64
    forward so that the comparison can be exact.
    """
    _check_parity(trl_env, tmp_path, name, num_iterations, float64=True)


@pytest.mark.integration
@pytest.mark.parametrize("name,num_iterations", [("frpo", 2), ("grpo_is_k3", 2)])
def test_stock_trl_steps_match_method_loss_float32(trl_env, tmp_path, name, num_iterations):
    """The same with TRL completely unchanged (its fused head computes log-probs in float32): equal to the float64
    reference to float32 accuracy."""
    _check_parity(trl_env, tmp_path, name, num_iterations, float64=False)


@pytest.mark.integration
def test_trl_logging_reads_the_host_once():
    """The plug-in's per-micro-batch logging: one device → host copy for every diagnostic and the entropy (it was one
    gather and one ``.item()`` per diagnostic); the logged values are the diagnostics' own."""
    pytest.importorskip("trl", reason="TRL not installed: run scripts/test_integrations.sh trl")
    import types
    from collections import defaultdict

    from rlkl.integrations.trl import RLKLGRPOTrainer
    from syncs import HostSyncs

    class OneProcess:  # accelerate on one process: gather and reduce return their input
        def gather(self, t):
            return t

        def reduce(self, t, reduction):
            return t

    logp, batch = _random_batch(0)
    _, diagnostics = get_method("grpo").loss(logp, batch)
    expected = {f"rlkl/{k}": [float(v.float())] for k, v in diagnostics.items()}  # logged in float32, as TRL's
    entropies = torch.rand(batch.mask.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stub = types.SimpleNamespace(accelerator=OneProcess(), _metrics={"train": defaultdict(list)})
    with HostSyncs() as s:
        RLKLGRPOTrainer._rlkl_log(stub, "train", diagnostics, entropies, batch.mask)
    assert s.total == 1, s.count
    logged = dict(stub._metrics["train"])
    m = batch.mask.double()
    assert logged.pop("entropy") == [float((entropies * m).sum() / m.sum())]
    assert logged == expected


@pytest.mark.integration
def test_trl_gradient_accumulation_matches_full_batch(trl_env, tmp_path):
    """Two micro-batches of one group each, accumulated: the gradient TRL applies is ∇ Method.loss on the whole
    generation batch (frpo aggregates seq-mean-token-sum, so the mean of equal micro-batch means is exact)."""
    model_dir, tokenizer, dataset = trl_env
    method = get_method("frpo")
    args = _config(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=2,
                   max_steps=1)
    tr = _make_recording_trainer(model_dir, tokenizer, dataset, args, method)
    ref_state = {n: p.detach().clone() for n, p in tr.ref_model.state_dict().items()}
    tr.train()
    (step,) = tr.rec_steps
    assert len(step["micro"]) == 2
    parts = [m[0] for m in step["micro"]]
    union = {}
    for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        width = max(p[k].size(1) for p in parts)
        assert all(p[k].size(1) == width for p in parts)
        union[k] = torch.cat([p[k] for p in parts])
    loss, grads, _ = _reference_loss(model_dir, tokenizer, method, union, step["params"], step["params"],
                                     ref_state, 4)
    torch.testing.assert_close(sum(m[1] for m in step["micro"]), loss.detach(), rtol=1e-10, atol=1e-12)
    _assert_grads_close(step["grads"], grads)


@pytest.mark.integration
@pytest.mark.parametrize("override", [dict(beta=0.04), dict(loss_type="grpo"), dict(epsilon_high=0.28),
                                      dict(scale_rewards="none"), dict(entropy_coef=0.01)])
def test_trl_options_that_rlkl_replaces_are_rejected(trl_env, tmp_path, override):
    from rlkl.integrations.trl import RLKLGRPOTrainer
    model_dir, tokenizer, dataset = trl_env
    with pytest.raises(ValueError, match=next(iter(override))):
        RLKLGRPOTrainer(model=_load(model_dir), reward_funcs=reward_fraction_good,
                        args=_config(tmp_path, **override), train_dataset=dataset, processing_class=tokenizer,
                        method="frpo")


@pytest.mark.integration
def test_trl_trainer_needs_grpo_config_and_a_known_method(trl_env, tmp_path):
    from rlkl.integrations.trl import RLKLGRPOTrainer
    model_dir, tokenizer, dataset = trl_env
    with pytest.raises(ValueError, match="GRPOConfig"):
        RLKLGRPOTrainer(model=_load(model_dir), reward_funcs=reward_fraction_good, args=None,
                        train_dataset=dataset, processing_class=tokenizer, method="frpo")
    with pytest.raises(ValueError, match="unknown method"):
        RLKLGRPOTrainer(model=_load(model_dir), reward_funcs=reward_fraction_good, args=_config(tmp_path),
                        train_dataset=dataset, processing_class=tokenizer, method="frpo_typo")


@pytest.mark.integration
def test_trl_does_not_mutate_callers_config(trl_env, tmp_path):
    from rlkl.integrations.trl import RLKLGRPOTrainer
    model_dir, tokenizer, dataset = trl_env
    args = _config(tmp_path)
    tr = RLKLGRPOTrainer(model=_load(model_dir), reward_funcs=reward_fraction_good, args=args,
                         train_dataset=dataset, processing_class=tokenizer, method="grpo_is_k3")
    assert args.beta == 0.0 and tr.args.beta == get_method("grpo_is_k3").beta and tr.ref_model is not None


# ---------------------------------------------------------------------------------------------------------------
# TRL's own GRPOConfig (from the installed package) and the recorded peer fixtures

def _grpo_config(**kw):
    from trl import GRPOConfig

    return GRPOConfig(output_dir="/tmp/rlkl-trl-config", use_cpu=True, bf16=False, report_to=[], **kw)


@pytest.mark.integration
def test_from_trl_grpo_config_objects():
    pytest.importorskip("trl", reason="TRL not installed: run scripts/test_integrations.sh trl")
    """GRPOConfig objects (not only dicts): defaults, β > 0, every loss_type, the sequence level."""
    import trl

    from rlkl.components import GSPO, AggMode, KLLoss, NoKL
    from rlkl.integrations.flags import from_trl
    from rlkl.integrations.keys import Kind
    from rlkl.integrations.translate import translate_trl

    assert trl.__version__ == "1.16.0"
    t = translate_trl(_grpo_config())
    assert t.version == "1.16" and not t.unsupported, [k.line() for k in t.unsupported][:5]
    assert {k.kind for k in t.keys} == {Kind.TRANSLATED, Kind.LAYOUT, Kind.IGNORED} and len(t.keys) > 180
    m = t.require_method()
    assert m.kl == NoKL() and m.aggregation.mode is AggMode.TOKEN_MEAN and t.group_size == 8
    assert from_trl(_grpo_config()) == from_trl(_grpo_config().to_dict())
    assert from_trl(_grpo_config(beta=0.04)).kl == KLLoss("k3", importance_weight=True)  # the 1.16 default
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        assert from_trl(_grpo_config(loss_type=lt, beta=0.04, use_bias_correction_kl=False)).beta == 0.04
    for lt in ("sapo", "vespo"):
        refused = translate_trl(_grpo_config(loss_type=lt))
        assert refused.method is None and "not translatable" in refused.unsupported[0].reason
    assert from_trl(_grpo_config(loss_type="cispo", epsilon_high=5.0)).policy_loss.high == 4.0
    assert isinstance(from_trl(_grpo_config(importance_sampling_level="sequence")).policy_loss, GSPO)


@pytest.mark.integration
def test_trl_training_argument_fields_are_all_classified():
    pytest.importorskip("trl", reason="TRL not installed: run scripts/test_integrations.sh trl")
    """Every field of this transformers' TrainingArguments and of TRL's GRPOConfig / ModelConfig /
    GRPOScriptArguments has a rule (a new field would show up as unsupported 'not a field')."""
    import dataclasses

    from transformers import TrainingArguments
    from trl import GRPOConfig, ModelConfig
    from trl.scripts.grpo import GRPOScriptArguments

    from rlkl.integrations.keys import TRL_RULES, classify

    names = set()
    for cls in (TrainingArguments, GRPOConfig, ModelConfig, GRPOScriptArguments):
        names |= {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(n for n in names if classify(n, None, TRL_RULES, "?")[2] == "?")
    assert not unknown


def _recorder():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("record_peer_fixtures",
                                                  Path(__file__).parents[1] / "scripts" / "record_peer_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.integration
def test_recorded_trl_fixtures_are_current():
    pytest.importorskip("trl", reason="TRL not installed: run scripts/test_integrations.sh trl")
    """Re-record in memory: TRL's _compute_loss still gives the stored losses and gradients (else rerun
    scripts/record_peer_fixtures.py trl and read the diff)."""
    import json
    from pathlib import Path

    peers = Path(__file__).parent / "fixtures" / "peers"
    live = _recorder().record_trl()
    assert set(live) == {p.stem for p in peers.glob("trl_*.json")}
    for name, fx in live.items():
        stored = json.loads((peers / f"{name}.json").read_text())
        assert stored["config"] == fx["config"] and stored["batch"] == fx["batch"]
        assert fx["loss"] == pytest.approx(stored["loss"], rel=1e-13, abs=1e-15), name
        torch.testing.assert_close(torch.tensor(fx["grad"]), torch.tensor(stored["grad"]), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# vLLM importance sampling and the sampler keys (rlkl.integrations.rollout) against TRL's own code

_MODES = [("sequence_mask", None, 3.0), ("sequence_mask", 0.3, 2.5), ("sequence_mask", None, None),
          ("token_mask", 0.6, 1.5), ("token_mask", None, 1.2), ("token_truncate", None, 1.5),
          ("token_truncate", 0.5, 2.0), ("sequence_truncate", 0.5, 2.0), ("sequence_truncate", 0.8, None)]


@pytest.mark.integration
@pytest.mark.parametrize("mode,clip_min,clip_max", _MODES)
def test_trl_is_rule_equals_the_translated_correction(mode, clip_min, clip_max):
    """TRL's vLLM importance-sampling block (cut from GRPOTrainer's source and run on seeded tensors) gives the
    weights of the correction from_trl translates the same GRPOConfig to (1e-12)."""
    pytest.importorskip("trl", reason="TRL not installed: run scripts/test_integrations.sh trl")
    from types import SimpleNamespace

    from rlkl.integrations.flags import from_trl
    from rlkl.methods import RolloutBatch

    rec = _recorder()
    rule = rec.trl_is_rule()
    args = _grpo_config(use_vllm=True, vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=clip_min,
                        vllm_importance_sampling_clip_max=clip_max, num_generations=4)
    method = from_trl(args)
    trainer = SimpleNamespace(vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=clip_min,
                              vllm_importance_sampling_clip_max=clip_max)
    for seed in range(3):
        b = rec.mismatch_batch(400 + seed)
        want = rule(trainer, b["logp_old"], b["logp_rollout"], b["mask"].long()).expand_as(b["logp_old"]) * b["mask"]
        B = b["mask"].shape[0]
        rb = RolloutBatch(b["logp_old"], b["logp_old"], b["mask"], torch.zeros(B, dtype=torch.float64), 4,
                          logp_rollout=b["logp_rollout"])
        torch.testing.assert_close(method.rollout_weights(rb), want.to(torch.float64), rtol=1e-12, atol=1e-14)


@pytest.mark.integration
def test_trl_sampler_and_is_defaults_are_the_stated_ones():
    pytest.importorskip("trl", reason="TRL not installed: run scripts/test_integrations.sh trl")
    from rlkl.components import NoCorrection, SequenceMIS
    from rlkl.integrations.flags import from_trl
    from rlkl.integrations.rollout import trl_rollout_defaults
    from rlkl.integrations.translate import translate_trl

    d = _grpo_config().to_dict()
    for key, value in trl_rollout_defaults((1, 16)).items():
        assert d[key] == value, key
    assert from_trl(_grpo_config()).correction == NoCorrection()  # transformers generation
    t = translate_trl(_grpo_config(use_vllm=True, top_p=0.8, top_k=20))
    assert t.method.correction == SequenceMIS(3.0) and t.sampler.top_p == 0.8 and t.sampler.top_k == 20
    # the deprecated cap overrides clip_max in GRPOConfig.__post_init__, as in the translation
    with pytest.warns(FutureWarning):
        dep = _grpo_config(use_vllm=True, vllm_importance_sampling_cap=2.0)
    assert dep.vllm_importance_sampling_clip_max == 2.0
    assert from_trl({"use_vllm": True, "vllm_importance_sampling_cap": 2.0}).correction == SequenceMIS(2.0)


@pytest.mark.integration
def test_recorded_trl_rollout_fixtures_are_current():
    pytest.importorskip("trl", reason="TRL not installed: run scripts/test_integrations.sh trl")
    import json
    from pathlib import Path

    peers = Path(__file__).parent / "fixtures" / "peers" / "rollout"
    live = _recorder().record_trl_rollout()
    assert set(live) == {p.stem for p in peers.glob("trl_*.json")}
    for name, fx in live.items():
        stored = json.loads((peers / f"{name}.json").read_text())
        assert stored["config"] == fx["config"] and stored["batch"] == fx["batch"]
        torch.testing.assert_close(torch.tensor(fx["weights"]), torch.tensor(stored["weights"]), rtol=1e-13,
                                   atol=1e-15)
