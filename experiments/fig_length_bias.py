"""Figure 7 data: length bias of the loss aggregation modes on the EOS toy.

Exact expected-gradient ascent (no sampling noise) of the GRPO advantage with a REINFORCE loss (on-policy) on a
tree with an EOS token (tokens {0, 1, EOS}), once per aggregation mode of ``rlkl.losses.aggregate``. The reward is
1 when the first token is 0 (the "answer"), whatever follows: length carries no reward, so an unbiased update
leaves the continuation (and hence the length after the first token) alone; ``token-mean`` and
``seq-mean-token-mean`` (GRPO's 1/|y|) weight responses by length (Dr. GRPO, arXiv 2503.20783) and drift.
Each step: g = ``rlkl.toy.expected.expected_gradient`` of the method, θ ← θ − η·g/c with c the aggregation constant
(``rlkl.toy.audit.aggregation_scale``), so the modes take comparable steps. Logged: expected length E|y|, expected
length of correct / incorrect responses, success probability p.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import write_config, write_csv, write_json
from rlkl.components import AggMode, Aggregation, Reinforce
from rlkl.methods import REGISTRY
from rlkl.toy.audit import aggregation_scale
from rlkl.toy.policies import TabularPolicy
from rlkl.toy.expected import expected_gradient
from rlkl.toy.mdp import TreeMDP


def _stats(mdp, policy):
    with torch.no_grad():
        q = policy.probs().detach()  # [P, N]
        L = mdp.enumerate().lengths.to(torch.float64)  # [N]
        R = mdp.rewards
        rho = mdp.prompt_probs
        p = (q * R).sum(-1)
        length = float((rho * (q * L).sum(-1)).sum())
        len_ok = float((rho * (q * R * L).sum(-1)).sum() / (rho * p).sum())
        len_bad = float((rho * (q * (1 - R) * L).sum(-1)).sum() / (rho * (1 - p)).sum())
    return {"length": length, "length_correct": len_ok, "length_incorrect": len_bad, "success": float((rho * p).sum())}


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    T, steps, G, lr = (3, 25, 3, 0.5) if quick else (5, 120, 3, 0.5)
    mdp = TreeMDP.from_function(lambda x, y: float(y[0] == 0), 3, T, 1, eos_token=2, name=f"V3T{T}-eos-first-token")
    pi0 = TabularPolicy.random(mdp, 0.3, seed=70_000 + seed)
    curves = {}
    rows = []
    for agg_mode in AggMode:
        mode = agg_mode.value
        agg = Aggregation(agg_mode, T if agg_mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM else None)
        m = REGISTRY["no_kl"].replace(name=f"grpo_{mode}", aggregation=agg, policy_loss=Reinforce())
        c = aggregation_scale(m, mdp)
        pi = pi0.with_theta(pi0.theta.detach().clone())
        hist = [_stats(mdp, pi)]
        for _ in range(steps):
            g = expected_gradient(m, mdp, pi, group_size=G).grad
            pi = pi.with_theta((pi.theta.detach() - lr * g / c).clone())
            hist.append(_stats(mdp, pi))
        curves[mode] = {k: [h[k] for h in hist] for k in hist[0]}
        rows.append({"aggregation": mode, "length_start": hist[0]["length"], "length_end": hist[-1]["length"],
                     "length_incorrect_end": hist[-1]["length_incorrect"],
                     "length_correct_end": hist[-1]["length_correct"], "success_end": hist[-1]["success"]})
    write_csv(out_dir / "length_bias.csv", rows)
    write_config(out_dir, "fig_length_bias", quick, seed, mdp=mdp.describe(), reward="1 if first token == 0", init="TabularPolicy.random(scale 0.3, seed 70000+seed)", steps=steps, group_size=G, lr=lr,
                 method="no_kl with reinforce loss, GRPO advantage (bessel std, eps 1e-6); step θ -= lr·g/c")
    return write_json(out_dir / "length_bias.json", {"mdp": mdp.name, "horizon": T, "group_size": G, "lr": lr,
                                                     "steps": steps, "curves": curves})
