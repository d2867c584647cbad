# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What the future-KL term adds
#
# The sequence KL(π‖π_ref) = E_y Σ_t log(π/π_ref)(a_t|s_t) depends on θ through the *states* too: its gradient is
# E[Σ_t ∇log π(a_t|s_t) · Σ_{j≥t} log(π/π_ref)_j] (a future return). A per-token KL loss (k2, k3+, ρ·k3) keeps
# only the local j = t part; FRPO's advantage carries the whole future sum (docs/theory.md T9, T10; FRPO arXiv
# 2601.10201 Thm 4.1, Eq. 4.5). Here the exact engine (`rlkl.toy`) enumerates every response of small trees, so
# each expected gradient is an exact sum, not a sample.
#
# Run: `.venv/bin/python examples/future_kl_term.py` (seconds), or open it as a notebook with jupytext.

# %%
from rlkl.methods import get_method
from rlkl.components import Aggregation
from rlkl.toy import Objective, TabularPolicy, TreeMDP, expected_gradient, objective_gradient

beta = 0.1
kl_only = Objective("none", "reverse_kl", "sequence", "ref", beta=1.0)   # J = −KL_seq(π‖π_ref)

# %% [markdown]
# For each horizon T: a random binary tree, a random policy π and reference π_ref. The KL part of a method's expected
# gradient is E[∇L] at β minus E[∇L] at β = 0. Every method here sums its loss over tokens
# (`seq-mean-token-sum`), so its exact expected gradient is −∇J with no extra constant, and the KL part should be
# β·∇KL_seq.

# %%
print(f"{'T':>2} {'method':<14}{'rel. error of the KL part of E[grad L]':>40}")
for T in (1, 2, 4):
    mdp = TreeMDP.random(vocab_size=2, horizon=T, num_prompts=1, reward="binary", seed=T)
    pi = TabularPolicy.random(mdp, seed=10_000)
    ref = TabularPolicy.random(mdp, seed=20_000).detached()
    grad_kl = -objective_gradient(kl_only, mdp, pi, ref, pi.detached())      # ∇ KL_seq(π‖π_ref)
    for name in ("grpo_k2_loss", "grpo", "frpo"):
        m = get_method(name).replace(aggregation=Aggregation("seq-mean-token-sum"))
        g = [expected_gradient(m.replace(beta=b), mdp, pi, ref=ref, group_size=2).grad for b in (beta, 0.0)]
        target = beta * grad_kl                                              # loss gradient of +β·KL_seq
        err = ((g[0] - g[1]) - target).norm() / target.norm()
        print(f"{T:>2} {name:<14}{err.item():>40.2e}")
print("\nT=1: no future, k2 is exact. T>1: only FRPO (future return) stays at round-off; k3 is wrong even at T=1")
print("(it is the forward-KL gradient).")
