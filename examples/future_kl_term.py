"""What the future-KL term adds.

The sequence KL(π‖π_ref) = E_y Σ_t log(π/π_ref)(a_t|s_t) depends on θ through the *states* too: its gradient is
E[Σ_t ∇log π(a_t|s_t) · Σ_{j≥t} log(π/π_ref)_j] (future return). A per-token KL loss (k2, k3+, ρ·k3) keeps only
the local j = t part; FRPO's advantage carries the whole future sum. Exact check on a small tree (rlkl.toy).
Run: python examples/future_kl_term.py
"""

from rlkl.methods import get_method
from rlkl.toy.audit import aggregation_scale, make_setup
from rlkl.toy.expected import expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.objective import Objective
from rlkl.toy.objectives import objective_gradient

beta = 0.1
kl_only = Objective("none", "reverse_kl", "sequence", "ref", beta=1.0)   # J = −KL_seq
print(f"{'T':>2} {'method':<14}{'rel. error of the KL part of E[grad L]':>40}")
for T in (1, 2, 4):
    mdp = TreeMDP.random(vocab_size=2, horizon=T, num_prompts=1, reward="binary", seed=T)
    pi, _, ref = make_setup(mdp, seed=0)
    grad_kl = -objective_gradient(kl_only, mdp, pi, ref, pi.detached())      # ∇ KL_seq(π‖π_ref)
    for name in ("grpo_k2_loss", "grpo", "frpo"):
        m = get_method(name)
        g = [expected_gradient(m.replace(beta=b), mdp, pi, ref=ref, group_size=2).grad for b in (beta, 0.0)]
        target = aggregation_scale(m, mdp) * beta * grad_kl                  # loss gradient of +c·β·KL
        err = ((g[0] - g[1]) - target).norm() / target.norm()
        print(f"{T:>2} {name:<14}{err.item():>40.2e}")
print("\nT=1: no future, k2 is exact. T>1: only FRPO (future return) stays at round-off; k3 is wrong even at T=1")
print("(it is the forward-KL gradient).")
