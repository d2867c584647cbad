"""Figure 4 data: the future-KL term.

Per-token KL *losses* (k1, k2, k3, verl's k3+, ρ·k3) follow the local, frozen-prefix KL gradient and miss the
future-KL score term of the sequence-level KL(π‖π_ref); FRPO's future return (and a per-token −β·k1 reward with
reward-to-go) puts it back. On random binary trees of growing horizon T, the *KL part* of each method's exact
expected gradient, E[∇L](β) − E[∇L](0) (``rlkl.toy.expected.expected_gradient``; linear in β on-policy), is compared
with c·β·∇KL_seq(π‖π_ref) (``rlkl.toy.objectives.objective_gradient``): relative error
‖(g_β − g_0) − cβ∇KL‖/‖cβ∇KL‖. Same policy seed per T.
"""

from __future__ import annotations

from pathlib import Path


from . import write_config, write_csv, write_json
from rlkl.methods import REGISTRY
from rlkl.toy.audit import aggregation_scale, make_setup
from rlkl.toy.expected import expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.objective import Objective
from rlkl.toy.objectives import objective_gradient

METHODS = ("grpo_k1_loss", "grpo_k2_loss", "grpo", "grpo_k3_plus", "grpo_is_k3", "ppo_k1_rtg", "frpo", "frpo_k3")
BETA = 0.1


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    horizons = [1, 2, 3, 4, 5, 6] if quick else [1, 2, 3, 4, 5, 6, 7, 8]
    seeds = [seed + k for k in range(3 if quick else 8)]
    V, P, G = 2, 2, 2  # G = 2 keeps the reward-to-go method's response-coupled enumeration small (N² groups)
    kl_obj = Objective("none", "reverse_kl", "sequence", "ref", beta=1.0)
    rows = []
    for T in horizons:
        for s in seeds:
            mdp = TreeMDP.random(V, T, P, reward="binary", seed=51 + 7 * s + T)
            pi, _, ref = make_setup(mdp, s)
            beh = pi.detached()
            # objective_gradient of J = −1·KL  →  ∇KL = −∇J
            grad_kl = -objective_gradient(kl_obj, mdp, pi, ref, beh)
            for name in METHODS:
                m = REGISTRY[name]
                c = aggregation_scale(m, mdp)
                g_b = expected_gradient(m.replace(beta=BETA), mdp, pi, ref=ref, group_size=G).grad
                g_0 = expected_gradient(m.replace(beta=0.0), mdp, pi, ref=ref, group_size=G).grad
                target = c * BETA * grad_kl  # the loss gradient of +cβ·KL
                kl_part = g_b - g_0
                rel = float((kl_part - target).norm() / target.norm())
                tiny = kl_part.norm() <= 1e-12 * target.norm()  # k1 loss: zero up to round-off
                cos = 0.0 if tiny else float((kl_part * target).sum() / (kl_part.norm() * target.norm()))
                rows.append({"T": T, "seed": s, "method": name, "rel_error_kl_part": rel, "cosine": cos,
                             "norm_ratio": float(kl_part.norm() / target.norm())})
    write_csv(out_dir / "future_kl.csv", rows)
    write_config(out_dir, "fig_future_kl", quick, seed, vocab=V, prompts=P, group_size=G, beta=BETA,
                 horizons=horizons, policy_seeds=seeds, methods=list(METHODS),
                 trees="TreeMDP.random(V, T, P, binary, seed=51 + 7*s + T)")
    return write_json(out_dir / "future_kl.json", {"horizons": horizons, "seeds": seeds, "methods": list(METHODS),
                                                   "beta": BETA, "group_size": G, "vocab": V, "rows": rows})
