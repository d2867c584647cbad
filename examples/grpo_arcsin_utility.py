"""GRPO's implicit utility: 2·arcsin√p, and the exact finite-group U_G.

For binary rewards, a prompt with success probability p gets the expected GRPO update w_G(p)·∇p with
w_G = E[A | r=1] − E[A | r=0]; so GRPO ascends U_G(p) = ∫_0^p w_G, which tends to 2·arcsin√p as G → ∞ (its
derivative 1/√(p(1−p)) up-weights hard and easy prompts). A sampled check confirms w_G.
Run: python examples/grpo_arcsin_utility.py
"""

import torch

from rlkl.advantages import group_standardized
from rlkl.utility import finite_group_utility, finite_group_weight, grpo_utility

Gs = (2, 4, 8, 64)
print(f"{'p':>5} {'2asin(sqrt p)':>14}" + "".join(f"{'U_' + str(G):>9}" for G in Gs))
for p in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
    row = "".join(f"{finite_group_utility(p, G):>9.4f}" for G in Gs)
    print(f"{p:>5} {grpo_utility(p):>14.4f}{row}")

print("\nupdate weight relative to the G->inf limit, w_G(p)*sqrt(p(1-p)):")
for p in (0.05, 0.5):
    print(f"  p={p}: " + "  ".join(f"G={G}: {finite_group_weight(p, G) * (p * (1 - p)) ** 0.5:.3f}" for G in Gs))

# Monte Carlo check of w_G(p) with the library's GRPO advantage (population std, eps = 0)
G, p, n = 8, 0.3, 200_000
gen = torch.Generator().manual_seed(0)
r = (torch.rand(n * G, generator=gen, dtype=torch.float64) < p).to(torch.float64)
A = group_standardized(r, G, eps=0.0, std="population")
w_mc = A[r == 1].mean() - A[r == 0].mean()
print(f"\nG={G}, p={p}: exact w_G = {finite_group_weight(p, G):.4f}, sampled = {w_mc.item():.4f}, "
      f"limit 1/sqrt(p(1-p)) = {(p * (1 - p)) ** -0.5:.4f}")
