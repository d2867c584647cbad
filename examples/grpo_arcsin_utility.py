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
# # GRPO's implicit utility: 2·arcsin√p, and the exact finite-group U_G
#
# For binary rewards, a prompt with success probability p gets the expected GRPO update w_G(p)·∇p with
# w_G = E[A | r=1] − E[A | r=0]; so GRPO ascends U_G(p) = ∫_0^p w_G, which tends to 2·arcsin√p as G → ∞ (its
# derivative 1/√(p(1−p)) up-weights hard and easy prompts). Small groups are far from that limit: U_2 = p,
# U_3 = √2·p (docs/theory.md T12; FRPO arXiv 2601.10201 Prop. 3.1).
#
# Run: `.venv/bin/python examples/grpo_arcsin_utility.py` (a second), or open it as a notebook with jupytext.

# %%
import torch

from rlkl.advantages import group_standardized
from rlkl.utility import finite_group_utility, finite_group_weight, grpo_utility

Gs = (2, 4, 8, 64)
print(f"{'p':>5} {'2asin(sqrt p)':>14}" + "".join(f"{'U_' + str(G):>9}" for G in Gs))
for p in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
    row = "".join(f"{finite_group_utility(p, G):>9.4f}" for G in Gs)
    print(f"{p:>5} {grpo_utility(p):>14.4f}{row}")

# %% [markdown]
# How large the update is relative to the G → ∞ limit, w_G(p)·√(p(1−p)) (1 = the arcsin limit):

# %%
print("update weight relative to the G->inf limit, w_G(p)*sqrt(p(1-p)):")
for p in (0.05, 0.5):
    print(f"  p={p}: " + "  ".join(f"G={G}: {finite_group_weight(p, G) * (p * (1 - p)) ** 0.5:.3f}" for G in Gs))

# %% [markdown]
# A Monte Carlo check of w_G(p) with the library's GRPO advantage (population std, ε = 0). Because the advantages
# of a group sum to zero, E[Σ_i A_i r_i] = G·p(1−p)·w_G(p): each group gives one independent sample of w_G, so the
# standard error is the spread over groups / √(number of groups).

# %%
G, p, n = 8, 0.3, 200_000
gen = torch.Generator().manual_seed(0)
r = (torch.rand(n * G, generator=gen, dtype=torch.float64) < p).to(torch.float64)
A = group_standardized(r, G, eps=0.0, std="population")
per_group = (A * r).view(n, G).sum(1) / (G * p * (1 - p))       # [n] i.i.d. samples with mean w_G(p)
w_mc, se = per_group.mean().item(), per_group.std().item() / n ** 0.5
print(f"\nG={G}, p={p}: exact w_G = {finite_group_weight(p, G):.4f}, sampled = {w_mc:.4f} ± {se:.4f} (s.e.), "
      f"limit 1/sqrt(p(1-p)) = {(p * (1 - p)) ** -0.5:.4f}")
