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
# # RPG's surrogates agree per sample
#
# The fully differentiable loss and the REINFORCE-style loss −sg[Weight]·log π of RPG have the *same* gradient on
# every sample, for FKL, RKL, UFKL and URKL, off-policy too (samples from π_old ≠ π_θ). Their loss values differ;
# their updates do not (docs/theory.md T14; RPG arXiv 2505.17508 Tables 1–2, Prop. 4.1).
#
# Run: `.venv/bin/python examples/rpg_surrogates_agree.py` (a second), or open it as a notebook with jupytext.

# %%
import torch

from rlkl.losses import rpg_loss

torch.manual_seed(0)
B, T, beta = 8, 5, 0.1
mask = torch.ones(B, T, dtype=torch.bool)
mask[::3, -2:] = False                                           # some shorter responses
logp_old = torch.log(torch.rand(B, T, dtype=torch.float64) * 0.9 + 0.05)
logp = (logp_old + 0.3 * torch.randn(B, T, dtype=torch.float64)).clamp(max=-1e-3).requires_grad_(True)
rewards = torch.randint(0, 2, (B,), dtype=torch.float64)
adv = (rewards - rewards.mean())[:, None].expand(B, T) * mask    # A = R − b, constant along a response

# %% [markdown]
# Both forms of every surrogate, at sequence and token level: largest per-sample gradient difference, and the
# (different) loss values.

# %%
print(f"{'divergence':<11}{'level':<10}{'max |grad diff - grad reinforce|':>34}{'loss values':>26}")
for level in ("sequence", "token"):
    for div in ("fkl", "rkl", "ufkl", "urkl"):
        grads, values = [], []
        for form in ("differentiable", "reinforce"):
            out = rpg_loss(logp, logp_old, adv, mask, div, form, beta, level=level)
            loss = out.loss.sum()
            grads.append(torch.autograd.grad(loss, logp)[0])
            values.append(loss.item())
        diff = (grads[0] - grads[1]).abs().max().item()
        print(f"{div:<11}{level:<10}{diff:>34.2e}{values[0]:>13.4f} vs {values[1]:.4f}")
print("\nSame gradients (to round-off), different loss values: pick either; the update is the same.")
