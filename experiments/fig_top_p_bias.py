"""Figure data: the exact bias and variance of each rollout correction behind a truncating or lower-precision sampler.

On a random binary tree (V = 5, T = 2, P = 2; V = 4 with ``quick``) with the registry's ``rloo`` (exact for its
objective on-policy, so every bias here is the sampler's), G = 3, the trainer at θ = θ_old: for each rollout
correction and each sampler, ``rlkl.toy.mismatch.audit_mismatch`` gives the exact relative bias of E[∇L] against −c∇J(π_θ) (full objective) and
−c∇J(T(π_θ)) (the deployed, transformed policy), and the exact per-group variance tr Cov[ĝ]. Two sweeps:
(1) top-p from 1 down to 0.5 (τ = 1, processed log-probs); (2) the engine's precision at top_p = 1 (logits rounded
to float16 / bfloat16, or a seeded Gaussian logit perturbation of σ = 0.1 … 1).

Monte Carlo bands: n sampled groups (``rlkl.toy.montecarlo.mc_gradient(..., sampler=)``) give an unbiased estimate
of the bias along its exact direction u = (g − t)/‖g − t‖, ⟨ĝ_n − t, u⟩/‖t‖, with standard error
std_k⟨ĝ_k, u⟩/(√n‖t‖); and of tr Cov (the mean of ‖ĝ_k − g‖²) with its standard error.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from . import write_config, write_csv, write_json
from rlkl.components import correction_from_spec
from rlkl.methods import REGISTRY
from rlkl.sampling import Sampler
from rlkl.toy.audit import make_setup
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.mismatch import audit_mismatch
from rlkl.toy.montecarlo import mc_gradient

METHOD = "rloo"
CORRECTIONS = ("none", "token_tis:2", "seq_tis:2", "seq_mis:2", "gm", "mask_replay")
GROUP_SIZE = 3


def _samplers(quick: bool) -> list[tuple[str, str, Sampler]]:
    """(sweep, x label, sampler) for both sweeps."""
    top_ps = (1.0, 0.7) if quick else (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)
    precision = ((("bfloat16", Sampler(dtype="bfloat16")), ("σ=1", Sampler(noise=1.0, seed=7))) if quick else
                 (("float16", Sampler(dtype="float16")), ("bfloat16", Sampler(dtype="bfloat16")),
                  ("σ=0.1", Sampler(noise=0.1, seed=7)), ("σ=0.3", Sampler(noise=0.3, seed=7)),
                  ("σ=0.5", Sampler(noise=0.5, seed=7)), ("σ=1", Sampler(noise=1.0, seed=7))))
    return ([("top_p", f"{p:g}", Sampler(top_p=p)) for p in top_ps]
            + [("precision", label, s) for label, s in precision])


def _mc_projection(per_group: torch.Tensor, exact: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(estimate, s.e.) of ⟨E ĝ − t, u⟩/‖t‖ with u the exact bias direction (nan when the bias is 0)."""
    gap = exact - target
    tn = float(target.norm())
    if float(gap.norm()) <= 1e-12 * tn:
        return float("nan"), float("nan")
    u = (gap / gap.norm()).reshape(-1)
    proj = per_group @ u - float(target.reshape(-1) @ u)  # [n]
    return float(proj.mean()) / tn, float(proj.std(correction=1)) / math.sqrt(proj.shape[0]) / tn


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    n_mc = 800 if quick else 20000
    mdp = TreeMDP.random(4 if quick else 5, 2, 2, reward="binary", seed=51 + seed)  # quick: a smaller tree
    pi, _, ref = make_setup(mdp, seed)
    method = REGISTRY[METHOD]
    corrections = [correction_from_spec(c) for c in CORRECTIONS]
    rows = []
    for i, (sweep, label, sampler) in enumerate(_samplers(quick)):
        results = audit_mismatch(method, mdp, pi, sampler, ref, GROUP_SIZE, corrections)
        for k, res in enumerate(results):
            rec = res.record
            m = method.replace(correction=corrections[k])
            mc = mc_gradient(m, mdp, pi, n_mc, seed=1000 + 100 * i + k + 10_000 * seed, ref=ref,
                             group_size=GROUP_SIZE, sampler=sampler, keep_per_group=True)
            row = {"sweep": sweep, "x": label, "sampler": rec["sampler"], "correction": rec["correction"],
                   "kept_mass": rec["kept_mass"], "variance": rec["variance"],
                   "relative_variance": rec["variance"] / rec["full"]["target_norm"] ** 2, "n_mc": n_mc}
            for reading in ("full", "deployed"):
                r = rec[reading]
                est, se = _mc_projection(mc.per_group, res.grad.reshape(-1), res.targets[reading].reshape(-1))
                row.update({f"bias_{reading}": r["rel_bias"], f"mc_bias_{reading}": est, f"mc_se_{reading}": se,
                            f"unexplained_{reading}": r["unexplained"],
                            f"terms_{reading}": r["mismatch_terms"]})
            spread = ((mc.per_group - res.grad.reshape(1, -1)) ** 2).sum(1)  # ‖ĝ_k − E ĝ‖²: mean = tr Cov
            tn2 = rec["full"]["target_norm"] ** 2
            row["mc_relative_variance"] = float(spread.mean()) / tn2
            row["mc_relative_variance_se"] = float(spread.std(correction=1)) / math.sqrt(n_mc) / tn2
            rows.append(row)
    flat = [{k: v for k, v in r.items() if not k.startswith("terms_")} for r in rows]
    write_csv(out_dir / "top_p_bias.csv", flat)
    write_config(out_dir, "fig_top_p_bias", quick, seed, method=METHOD, corrections=list(CORRECTIONS),
                 group_size=GROUP_SIZE, mdp=mdp.describe(), n_mc=n_mc)
    return write_json(out_dir / "top_p_bias.json", {"method": METHOD, "objective": results[0].record["objective"],
                                                     "mdp": mdp.name, "group_size": GROUP_SIZE, "n_mc": n_mc,
                                                     "corrections": list(CORRECTIONS), "rows": rows})
