"""Record verl's and TRL's own loss values and gradients on seeded batches as JSON fixtures (tests/fixtures/peers).

Run inside the integration venvs (scripts/test_integrations.sh builds them):

    ~/.cache/rlkl/venvs/verl/bin/python scripts/record_peer_fixtures.py verl
    ~/.cache/rlkl/venvs/trl/bin/python scripts/record_peer_fixtures.py trl

Each fixture is one framework config (in the framework's own flag names) and one float64 batch of an optimizer
step split into micro-batches: the framework's functions are called exactly as its trainer calls them, micro-batch by
micro-batch, and the fixture stores the summed loss, its gradient w.r.t. the per-token log-probs and (verl) the
framework's advantages. The default test suite (tests/test_peer_fixtures.py) replays every fixture against the
rlkl Method that ``from_verl`` / ``from_trl`` translate the config to, with the batch layout the translation states —
without the frameworks installed. tests/test_integrations_{verl,trl}.py re-record in memory and compare with the
stored files, so upstream drift shows as a failing, regenerable fixture.

* verl 0.9.1: ``core_algos``' advantage estimators (rewards on the last token, groups by uid) and the actor loss as
  ``verl.workers.utils.losses.ppo_loss`` composes it — ``get_policy_loss_fn(loss_mode)(...)`` plus
  ``agg_loss(kl_penalty(...)) · kl_loss_coef`` — on each micro-batch with the global batch info the FSDP engine
  passes (mini-batch token count, rows, dp size 1), summed over micro-batches.
* TRL 1.16: ``GRPOTrainer._compute_loss`` itself, on a stand-in trainer that holds the attributes
  ``GRPOTrainer.__init__`` sets from the GRPOConfig, with the log-prob forward replaced by the batch's log-probs;
  each micro-batch gets TRL's ``num_items_in_batch`` of the whole generation batch and
  ``current_gradient_accumulation_steps``; the losses are summed as the HF Trainer accumulates them.

Rollout-correction weights (tests/fixtures/peers/rollout): for each rollout-correction config, the weights the
framework multiplies the policy loss by, on a seeded (trainer log-probs, engine log-probs, mask) batch — verl's
``compute_rollout_correction_and_rejection_mask`` (as ``compute_rollout_correction_and_add_to_batch`` calls it) and
TRL's rule, which lives inline in ``GRPOTrainer._generate_and_score_completions``: :func:`trl_is_rule` runs that
block of TRL's own source (``inspect.getsource``) on the tensors, so the fixture is TRL's code, not a restatement.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "peers"
F64 = torch.float64


def seeded_batch(seed: int, B: int = 8, T: int = 6, G: int = 4) -> dict:
    """A float64 rollout of B rows in groups of G (contiguous), right-padded masks, binary-ish rewards; log-ratios
    kept within ±0.6 so that verl's k3 clamp (at 10) never acts."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp_old = -torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.05
    logp_ref = logp_old + 0.3 * torch.randn(B, T, generator=g, dtype=F64).clamp(-2, 2)
    logp = logp_old + 0.25 * torch.randn(B, T, generator=g, dtype=F64).clamp(-2, 2)
    rewards = torch.rand(B, generator=g, dtype=F64).round(decimals=1)
    zero = ~mask
    return {"logp": logp.masked_fill(zero, 0.0), "logp_old": logp_old.masked_fill(zero, 0.0),
            "logp_ref": logp_ref.masked_fill(zero, 0.0), "mask": mask, "rewards": rewards, "group_size": G}


def _micro_index(B: int, micro_rows: int, seed: int) -> torch.Tensor:
    """Micro-batch ids of a shuffled split into micro-batches of ``micro_rows`` rows (as TRL shuffles)."""
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(1000 + seed))
    idx = torch.empty(B, dtype=torch.long)
    idx[perm] = torch.arange(B) // micro_rows
    return idx


def _lists(x: torch.Tensor) -> list:
    return x.to(F64).tolist() if x.is_floating_point() else x.to(torch.long).tolist()


def _fixture(framework, version, name, config, batch, micro_index, loss, grad, advantages, note) -> dict:
    return {"framework": framework, "version": version, "case": name, "note": note, "config": config,
            "group_size": batch["group_size"],
            "batch": {k: _lists(batch[k]) for k in ("logp", "logp_old", "logp_ref", "mask", "rewards")},
            "micro_index": micro_index.tolist(), "advantages": _lists(advantages),
            "loss": float(loss), "grad": _lists(grad), "torch": torch.__version__.split("+")[0]}


# ------------------------------------------------------------------------------------------------ verl
VERL_CASES = {
    # name: (flags in verl's names, micro-batch rows)
    "grpo_k3_token_mean": ({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": True, "actor.kl_loss_coef": 0.04,
                            "actor.kl_loss_type": "low_var_kl"}, 4),
    "grpo_vectorized_k3plus_seq_mean": ({"algorithm.adv_estimator": "grpo_vectorized", "actor.use_kl_loss": True,
                                         "actor.kl_loss_coef": 0.1, "actor.kl_loss_type": "low_var_kl+",
                                         "actor.loss_agg_mode": "seq-mean-token-mean",
                                         "actor.clip_ratio_high": 0.28}, 2),
    "drgrpo_k2_norm": ({"algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": False,
                        "actor.use_kl_loss": True, "actor.kl_loss_coef": 0.05, "actor.kl_loss_type": "mse",
                        "actor.loss_agg_mode": "seq-mean-token-sum-norm", "actor.loss_scale_factor": 6}, 4),
    "rloo_k1plus_seq_sum": ({"algorithm.adv_estimator": "rloo", "actor.use_kl_loss": True, "actor.kl_loss_coef": 0.2,
                             "actor.kl_loss_type": "kl+", "actor.loss_agg_mode": "seq-mean-token-sum"}, 4),
    "rloo_vectorized_k1": ({"algorithm.adv_estimator": "rloo_vectorized", "actor.use_kl_loss": True,
                            "actor.kl_loss_coef": 0.2, "actor.kl_loss_type": "kl"}, 8),
    "gspo_token_mean": ({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "gspo",
                         "actor.clip_ratio_low": 0.05, "actor.clip_ratio_high": 0.08}, 2),
    "gspo_seq_mean": ({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "gspo",
                       "actor.loss_agg_mode": "seq-mean-token-mean", "actor.clip_ratio_low": 3e-4,
                       "actor.clip_ratio_high": 4e-4}, 4),
    "gpg_loss_grpo_adv": ({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "gpg"}, 4),
    "grpo_dual_clip": ({"algorithm.adv_estimator": "grpo", "actor.clip_ratio_low": 0.1, "actor.clip_ratio_high": 0.1,
                        "actor.clip_ratio_c": 1.5}, 4),
    "grpo_passk": ({"algorithm.adv_estimator": "grpo_passk"}, 4),
    "opo_seq_mean": ({"algorithm.adv_estimator": "opo", "actor.loss_agg_mode": "seq-mean-token-mean"}, 4),
    "gpg": ({"algorithm.adv_estimator": "gpg", "actor.policy_loss.loss_mode": "gpg"}, 2),
    "reinforce_pp": ({"algorithm.adv_estimator": "reinforce_plus_plus", "actor.use_kl_loss": True,
                      "actor.kl_loss_coef": 0.05, "actor.kl_loss_type": "mse"}, 4),
    "reinforce_pp_baseline": ({"algorithm.adv_estimator": "reinforce_plus_plus_baseline"}, 4),
    "cispo": ({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "cispo", "actor.clip_ratio_low": 0.1,
               "actor.clip_ratio_high": 0.15}, 4),
}


#: where verl's estimator itself is not float64-exact: (relative tolerance of the advantages, the reason)
ADVANTAGE_RTOL = {
    "grpo_vectorized": (1e-6, "group mean/std in float32 (verl.utils.groupwise.group_mean_std casts the scores)"),
    "gpg": (1e-6, "alpha = bsz / count_nonzero(scores) is a float32 tensor"),
    "reinforce_plus_plus": (1e-7, "verl_F.masked_mean divides by mask.sum() + 1e-8"),
    "reinforce_plus_plus_baseline": (1e-7, "verl_F.masked_mean divides by mask.sum() + 1e-8"),
}


def record_verl() -> dict[str, dict]:
    import numpy as np
    import verl
    from verl.trainer.ppo import core_algos
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig

    out = {}
    for seed, (name, (flags, micro_rows)) in enumerate(VERL_CASES.items()):
        flags = {**flags, "actor_rollout_ref.rollout.n": 4}
        b = seeded_batch(seed)
        B, G = b["mask"].shape[0], b["group_size"]
        a = {k.split(".", 1)[1]: v for k, v in flags.items() if k.startswith("actor.")}
        loss_mode = a.pop("policy_loss.loss_mode", "vanilla")
        base = dict(strategy="fsdp", rollout_n=G, ppo_mini_batch_size=B // G, ppo_micro_batch_size_per_gpu=micro_rows,
                    clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0,
                    loss_agg_mode="token-mean", use_kl_loss=False, kl_loss_coef=0.001, kl_loss_type="low_var_kl")
        base.update(a)
        cfg = FSDPActorConfig(policy_loss=PolicyLossConfig(loss_mode=loss_mode), **base)
        # advantages: verl's estimator, reward on the last response token, groups by uid
        last = b["mask"].long().cumsum(-1).argmax(-1)
        tlr = torch.zeros_like(b["logp_old"])
        tlr[torch.arange(B), last] = b["rewards"]
        uids = np.array([f"p{i // G}" for i in range(B)], dtype=object)
        from verl.trainer.config import AlgoConfig

        algo = AlgoConfig(norm_adv_by_std_in_grpo=flags.get("algorithm.norm_adv_by_std_in_grpo", True))
        est = core_algos.get_adv_estimator_fn(flags["algorithm.adv_estimator"])
        kw = {"norm_adv_by_std_in_grpo": algo.norm_adv_by_std_in_grpo} if "grpo" in flags["algorithm.adv_estimator"] \
            else {}
        adv, _ = est(token_level_rewards=tlr, response_mask=b["mask"].long(), index=uids, config=algo, **kw)
        # the actor loss, micro-batch by micro-batch, with the engine's global batch info (dp size 1)
        micro = torch.arange(B) // micro_rows  # verl splits the (un-shuffled) mini-batch in order
        logp = b["logp"].clone().requires_grad_(True)
        total = torch.zeros((), dtype=F64)
        for j in range(int(micro.max()) + 1):
            r = micro == j
            cfg.global_batch_info.update(dp_size=1, batch_num_tokens=int(b["mask"].sum()), global_batch_size=B,
                                         loss_scale_factor=cfg.loss_scale_factor)
            pg, _ = core_algos.get_policy_loss_fn(loss_mode)(
                old_log_prob=b["logp_old"][r], log_prob=logp[r], advantages=adv[r], response_mask=b["mask"][r],
                loss_agg_mode=cfg.loss_agg_mode, config=cfg, rollout_is_weights=None)
            loss = pg
            if cfg.use_kl_loss:
                kld = core_algos.kl_penalty(logprob=logp[r], ref_logprob=b["logp_ref"][r], kl_penalty=cfg.kl_loss_type)
                kl = core_algos.agg_loss(loss_mat=kld, loss_mask=b["mask"][r], loss_agg_mode=cfg.loss_agg_mode,
                                         **cfg.global_batch_info)
                loss = loss + kl * cfg.kl_loss_coef
            total = total + loss
        (grad,) = torch.autograd.grad(total, logp)
        fx = _fixture(
            "verl", verl.__version__, name, flags, b, micro, total.detach(), grad, adv,
            f"core_algos.{est.__name__} + policy loss {loss_mode!r} + kl_penalty/agg_loss over {int(micro.max()) + 1} "
            "micro-batches with the FSDP engine's global batch info")
        fx["advantage_rtol"], fx["advantage_rtol_reason"] = ADVANTAGE_RTOL.get(flags["algorithm.adv_estimator"],
                                                                               (1e-12, "float64 throughout"))
        out[f"verl_{name}"] = fx
    return out


# ------------------------------------------------------------------------------------------------ TRL
TRL_CASES = {
    # name: (GRPOConfig arguments, gradient_accumulation_steps)
    "dapo_default_beta": ({"beta": 0.04}, 2),
    "dapo_clip_higher": ({"epsilon_high": 0.28}, 4),
    "bnpo": ({"loss_type": "bnpo", "beta": 0.02}, 2),
    "grpo_k3": ({"loss_type": "grpo", "beta": 0.04, "use_bias_correction_kl": False}, 2),
    "dr_grpo": ({"loss_type": "dr_grpo", "max_completion_length": 6, "scale_rewards": "none"}, 2),
    "grpo_sequence": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "beta": 0.04,
                       "use_bias_correction_kl": False}, 4),
    "luspo_sequence": ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, 2),
    "cispo": ({"loss_type": "cispo", "epsilon_high": 1.2, "beta": 0.02}, 2),
}


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x, reduction="sum"):
        return x


def _trl_stand_in(args, ga: int, logp: torch.Tensor):
    """An object with the attributes ``GRPOTrainer.__init__`` sets from ``args`` that ``_compute_loss`` reads;
    its log-prob forward returns ``logp`` rows."""
    stub = SimpleNamespace(
        args=args, beta=args.beta, loss_type=args.loss_type, epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        importance_sampling_level=args.importance_sampling_level, top_entropy_quantile=args.top_entropy_quantile,
        off_policy_mask_threshold=args.off_policy_mask_threshold, use_vllm=False,
        vllm_importance_sampling_correction=args.vllm_importance_sampling_correction,
        max_completion_length=args.max_completion_length, entropy_coef=args.entropy_coef,
        use_adaptive_entropy=args.use_adaptive_entropy, _entropy_bonus_enabled=False, _entropy_window_stats=None,
        _last_world_entropy=None, aux_loss_enabled=False, router_aux_loss_coef=0.0,
        current_gradient_accumulation_steps=ga, model=SimpleNamespace(training=True), accelerator=_Accelerator(),
        _metrics=defaultdict(lambda: defaultdict(list)))
    stub.rows = None
    stub._get_per_token_logps_and_entropies = lambda *a, **k: (logp[stub.rows], torch.zeros_like(logp[stub.rows]),
                                                               None)
    return stub


def record_trl() -> dict[str, dict]:
    import trl
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rlkl.integrations.flags import from_trl
    from rlkl.methods import RolloutBatch

    out = {}
    for seed, (name, (kwargs, ga)) in enumerate(TRL_CASES.items()):
        b = seeded_batch(100 + seed)
        B, T = b["mask"].shape
        micro_rows = B // ga
        config = {"num_generations": b["group_size"], "per_device_train_batch_size": micro_rows,
                  "gradient_accumulation_steps": ga, **kwargs}
        args = GRPOConfig(output_dir="/tmp/rlkl-peer-fixtures", use_cpu=True, bf16=False, report_to=[], **config)
        # TRL's advantages are computed in _generate_and_score_completions (not a function); the fixture gives the
        # group advantage of the config as input: rlkl's, checked against TRL's live trainer in the TRL tests
        method = from_trl(config)
        rb = RolloutBatch(b["logp_old"], b["logp_ref"], b["mask"], b["rewards"], b["group_size"])
        adv_seq = method.sequence_advantages(rb)
        logp = b["logp"].clone().requires_grad_(True)
        stub = _trl_stand_in(args, ga, logp)
        micro = _micro_index(B, micro_rows, seed)
        num_items = b["mask"].sum()  # the generation batch's completion tokens (one process)
        total = torch.zeros((), dtype=F64)
        for j in range(ga):
            r = (micro == j).nonzero().squeeze(1)
            stub.rows = r
            inputs = {"prompt_ids": torch.zeros(len(r), 1, dtype=torch.long),
                      "prompt_mask": torch.ones(len(r), 1, dtype=torch.long),
                      "completion_ids": torch.zeros(len(r), T, dtype=torch.long),
                      "completion_mask": b["mask"][r].long(), "advantages": adv_seq[r],
                      "old_per_token_logps": b["logp_old"][r], "ref_per_token_logps": b["logp_ref"][r],
                      "num_items_in_batch": num_items}
            total = total + GRPOTrainer._compute_loss(stub, None, inputs)
        (grad,) = torch.autograd.grad(total, logp)
        out[f"trl_{name}"] = _fixture(
            "trl", trl.__version__, name, config, b, micro, total.detach(), grad,
            adv_seq[:, None].expand(B, T) * b["mask"],
            f"GRPOTrainer._compute_loss on {ga} shuffled micro-batches of {micro_rows} rows (advantages given)")
    return out


# ------------------------------------------------------------------------------------------------ rollout weights
ROLLOUT_DIR = OUT / "rollout"
_RC = "algorithm.rollout_correction."
VERL_ROLLOUT_CASES = {
    "is_token_default": {_RC + "rollout_is": "token"},
    "is_token_icepop": {_RC + "rollout_is": "token", _RC + "rollout_is_threshold": "0.6_1.5"},
    "is_sequence_tis": {_RC + "rollout_is": "sequence", _RC + "rollout_is_threshold": 3.0},
    "is_sequence_icepop": {_RC + "rollout_is": "sequence", _RC + "rollout_is_threshold": "0.3_2.5"},
}
TRL_ROLLOUT_CASES = {
    "sequence_mask_default": {},
    "sequence_mask_both": {"vllm_importance_sampling_clip_min": 0.3, "vllm_importance_sampling_clip_max": 2.5},
    "token_mask": {"vllm_importance_sampling_mode": "token_mask", "vllm_importance_sampling_clip_min": 0.6,
                   "vllm_importance_sampling_clip_max": 1.5},
    "token_truncate": {"vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_max": 1.5},
    "sequence_truncate": {"vllm_importance_sampling_mode": "sequence_truncate", "vllm_importance_sampling_clip_min": 0.5,
                          "vllm_importance_sampling_clip_max": 2.0},
}


def mismatch_batch(seed: int, B: int = 8, T: int = 6) -> dict:
    """Trainer log-probs, the engine's reported log-probs (log-ratios ~ 0.6·N(0, 1): token ratios around [0.3, 3],
    sequence ratios e^{±1.5}) and right-padded masks, float64; padding holds junk the rules must ignore."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp_old = -torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.05
    logp_rollout = logp_old - 0.6 * torch.randn(B, T, generator=g, dtype=F64)
    return {"logp_old": logp_old, "logp_rollout": logp_rollout.masked_fill(~mask, -7.0), "mask": mask}


def _weights_fixture(framework, version, name, config, batch, weights, note) -> dict:
    return {"framework": framework, "version": version, "case": name, "note": note, "config": config,
            "batch": {k: _lists(batch[k]) for k in ("logp_old", "logp_rollout", "mask")}, "weights": _lists(weights),
            "torch": torch.__version__.split("+")[0]}


def record_verl_rollout() -> dict[str, dict]:
    import verl
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_rejection_mask

    out = {}
    for seed, (name, flags) in enumerate(VERL_ROLLOUT_CASES.items()):
        b = mismatch_batch(200 + seed)
        cfg = {k[len(_RC):]: v for k, v in flags.items()}
        proto, _, _ = compute_rollout_correction_and_rejection_mask(
            old_log_prob=b["logp_old"], rollout_log_prob=b["logp_rollout"], response_mask=b["mask"].long(),
            rollout_is=cfg["rollout_is"], rollout_is_threshold=cfg.get("rollout_is_threshold", 2.0))
        out[f"verl_{name}"] = _weights_fixture(
            "verl", verl.__version__, name, flags, b, proto.batch["rollout_is_weights"],
            "rollout_corr_helper.compute_rollout_correction_and_rejection_mask(old_log_prob, rollout_log_prob, ...)")
    return out


def trl_is_rule():
    """TRL's vLLM importance-sampling block, cut from ``GRPOTrainer._generate_and_score_completions``'s source:
    ``rule(trainer, old_per_token_logps, sampling_per_token_logps, completion_mask) -> ratio`` ([B, T] or [B, 1])."""
    import inspect
    import math
    import textwrap

    from trl import GRPOTrainer

    lines = inspect.getsource(GRPOTrainer._generate_and_score_completions).splitlines()
    start = next(i for i, ln in enumerate(lines) if "per_token_logps_diff = (old_per_token_logps" in ln)
    head = next(i for i in range(start, 0, -1) if lines[i].strip().startswith("if self.use_vllm and"))
    indent = len(lines[head]) - len(lines[head].lstrip())
    end = next(i for i in range(head + 1, len(lines))
               if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= indent)
    body = textwrap.dedent("\n".join(lines[head + 1:end]))
    code = compile(body, "<GRPOTrainer._generate_and_score_completions: vLLM IS block>", "exec")

    def rule(trainer, old_per_token_logps, sampling_per_token_logps, completion_mask):
        ns = {"self": trainer, "torch": torch, "math": math, "old_per_token_logps": old_per_token_logps,
              "sampling_per_token_logps": sampling_per_token_logps, "completion_mask": completion_mask,
              "tool_mask": None}
        exec(code, ns)  # TRL's own statements, on these tensors
        return ns["vllm_importance_sampling_ratio"]

    return rule


def record_trl_rollout() -> dict[str, dict]:
    import trl
    from trl import GRPOConfig

    rule = trl_is_rule()
    out = {}
    for seed, (name, kwargs) in enumerate(TRL_ROLLOUT_CASES.items()):
        b = mismatch_batch(300 + seed)
        config = {"use_vllm": True, "num_generations": 4, **kwargs}
        args = GRPOConfig(output_dir="/tmp/rlkl-peer-fixtures", use_cpu=True, bf16=False, report_to=[], **config)
        trainer = SimpleNamespace(vllm_importance_sampling_mode=args.vllm_importance_sampling_mode,
                                  vllm_importance_sampling_clip_min=args.vllm_importance_sampling_clip_min,
                                  vllm_importance_sampling_clip_max=args.vllm_importance_sampling_clip_max)
        ratio = rule(trainer, b["logp_old"], b["logp_rollout"], b["mask"].long())
        w = ratio.expand_as(b["logp_old"]) * b["mask"]  # the loss multiplies it by the per-token loss, then masks
        out[f"trl_{name}"] = _weights_fixture(
            "trl", trl.__version__, name, config, b, w,
            "GRPOTrainer._generate_and_score_completions' vLLM importance-sampling block (TRL's source), × mask")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("framework", choices=("verl", "trl"))
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    fixtures = record_verl() if a.framework == "verl" else record_trl()
    a.out.mkdir(parents=True, exist_ok=True)
    for name, fx in fixtures.items():
        (a.out / f"{name}.json").write_text(json.dumps(fx, indent=1) + "\n")
        print(f"wrote {a.out / (name + '.json')}: loss {fx['loss']:.17g}")
    weights = record_verl_rollout() if a.framework == "verl" else record_trl_rollout()
    (a.out / "rollout").mkdir(exist_ok=True)
    for name, fx in weights.items():
        (a.out / "rollout" / f"{name}.json").write_text(json.dumps(fx, indent=1) + "\n")
        print(f"wrote {a.out / 'rollout' / (name + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
