"""Figure 6 data: RPG-Style Clip.

(a) Loss shape: per-token loss and its autograd gradient ∂ℓ/∂log π_θ against w = π_θ/π_old for advantage +1 and
−1, from the library's own functions on a grid of w: ``rlkl.losses.ppo_clip_loss`` with dual clip, and
``rlkl.losses.rpg_loss`` (differentiable URKL surrogate with RPG-Style Clip, Alg. 1; and RPG-REINFORCE with
RPG-Style Clip, Alg. 2, whose gradient is −(wA + C_KL) on the active set). Clip parameters: RPG's
(ε_low, ε_high, c) = (0.2, 0.28, 10); β = 0.1 for the RPG curves (β = 0 makes them identical to PPO dual clip).
(b) Bias and variance against the off-policy distance on a binary tree: π_old = π_θ + s·noise; sequence-level
RPG-REINFORCE (UFKL and URKL to π_old, leave-one-out baseline) with and without RPG-Style Clip, and the registry's
token-level clipped RPG-REINFORCE URKL (per-token ratios; leave-one-out baseline too, so the leave-in shrink
does not mix in). Bias: ``rlkl.toy.audit.audit_one`` relative error against the intended
objective; variance: exact per-group covariance trace by enumeration (experiments.fig_mc_convergence).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from . import write_config, write_csv, write_json
from .fig_mc_convergence import exact_group_moments
from rlkl.losses import RPGClip, ppo_clip_loss, rpg_loss
from rlkl.components import LeaveOneOut
from rlkl.methods import REGISTRY
from rlkl.toy.audit import audit_one, make_setup
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.montecarlo import token_logp_jacobian
from rlkl.toy.objectives import sequence_divergence

CLIP = RPGClip(eps_low=0.2, eps_high=0.28, c=10.0)
BETA = 0.1
LOGP_OLD = float(np.log(0.3))  # π_old(a|s) of the token whose ratio varies (RPG-REINFORCE's value needs log π)


def _shape(w_grid: torch.Tensor) -> dict:
    out = {}
    n = w_grid.numel()
    mask = torch.ones(n, 1, dtype=torch.bool)
    logp_old = torch.full((n, 1), LOGP_OLD, dtype=torch.float64)
    for A in (1.0, -1.0):
        adv = torch.full((n, 1), A, dtype=torch.float64)
        curves = {}
        for label, fn in (
            ("ppo_dual_clip", lambda lp: ppo_clip_loss(lp, logp_old, adv, mask, CLIP.eps_low, CLIP.eps_high, CLIP.c)),
            ("rpg_urkl_clip", lambda lp: rpg_loss(lp, logp_old, adv, mask, "urkl", "differentiable", BETA, "token",
                                                  CLIP)),
            ("rpg_reinforce_urkl_clip", lambda lp: rpg_loss(lp, logp_old, adv, mask, "urkl", "reinforce", BETA,
                                                            "token", CLIP)),
            ("rpg_urkl_noclip", lambda lp: rpg_loss(lp, logp_old, adv, mask, "urkl", "differentiable", BETA,
                                                    "token", None)),
        ):
            lp = (LOGP_OLD + torch.log(w_grid)).unsqueeze(1).clone().requires_grad_(True)
            out_ = fn(lp)
            loss = out_.loss
            (g,) = torch.autograd.grad(loss.sum(), lp)
            curves[label] = {"loss": loss.detach().squeeze(1), "grad_logp": g.squeeze(1)}
        out["pos" if A > 0 else "neg"] = curves
    return out


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    w = torch.logspace(np.log10(0.3), np.log10(20.0), 300 if quick else 1200, dtype=torch.float64)
    shape = _shape(w)
    # (b) off-policy sweep
    scales = [0.0, 0.3, 0.75, 1.5] if quick else [0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0]
    G = 3
    mdp = TreeMDP.random(2, 3, 2, reward="binary", seed=41 + seed)
    pi, _, ref = make_setup(mdp, seed)
    J = token_logp_jacobian(pi)
    variants = {}
    for div in ("ufkl", "urkl"):
        base = REGISTRY[f"rpg_reinforce_{div}_seq"].replace(beta=BETA)
        variants[f"{div}_seq_noclip"] = base
        variants[f"{div}_seq_clip"] = base.replace(policy_loss=dataclasses.replace(base.policy_loss, clip=CLIP))
    variants["urkl_token_clip"] = REGISTRY["rpg_reinforce_urkl"].replace(beta=BETA, advantage=LeaveOneOut())
    rows = []
    for s in scales:
        old = pi.perturbed(s, 30_000 + seed).detached() if s > 0 else pi.detached()
        with torch.no_grad():
            kl = float((mdp.prompt_probs * sequence_divergence(mdp, old, pi.detached(), "reverse_kl")).sum())
        for name, m in variants.items():
            res = audit_one(m, mdp, pi, old if s > 0 else None, ref, G, decompose=False)
            target_norm = float(res.target.norm())
            _, trcov, _ = exact_group_moments(m, mdp, pi, ref, G, behaviour=old, jacobian=J)
            rows.append({"scale": s, "kl_old_to_theta": kl, "variant": name, "rel_bias": res.record["rel_error"],
                         "cosine": res.record["cosine"], "relative_variance": trcov / target_norm**2,
                         "trace_cov": trcov, "target_norm": target_norm})
    write_csv(out_dir / "clip_sweep.csv", rows)
    write_config(out_dir, "fig_rpg_clip", quick, seed, clip={"eps_low": CLIP.eps_low, "eps_high": CLIP.eps_high,
                 "c": CLIP.c}, beta=BETA, logp_old=LOGP_OLD, w_range=[0.3, 20.0], mdp=mdp.describe(), group_size=G,
                 off_policy_scales=scales, variants=list(variants))
    return write_json(out_dir / "rpg_clip.json", {"w": w, "clip": {"eps_low": CLIP.eps_low, "eps_high": CLIP.eps_high,
                                                                    "c": CLIP.c}, "beta": BETA, "shape": shape,
                                                 "sweep": rows, "mdp": mdp.name, "group_size": G})
