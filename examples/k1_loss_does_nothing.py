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
# # Why k1 as a *loss* regularizes nothing
#
# k1 = log π_θ(a) − log π_ref(a) is an unbiased estimate of KL(π_θ‖π_ref) when a ~ π_θ, but its gradient is the
# score ∇log π_θ(a), whose expectation under π_θ is Σ_a ∇π_θ(a) = ∇1 = 0. Adding β·k1 to the loss changes nothing
# in expectation, unlike the true gradient ∇KL(π_θ‖π_ref) (docs/theory.md T2; Tang & Munos arXiv 2506.09477).
#
# Run: `.venv/bin/python examples/k1_loss_does_nothing.py` (a second), or open it as a notebook with jupytext.

# %%
import torch

from rlkl.divergences import exact_kl
from rlkl.losses import kl_loss

torch.manual_seed(0)
V = 6                                                    # a one-token "response" over V tokens
theta = torch.randn(V, dtype=torch.float64, requires_grad=True)
ref_logits = torch.randn(V, dtype=torch.float64)

logp_all = torch.log_softmax(theta, -1)                  # log π_θ(a) for every token a
logp_ref = torch.log_softmax(ref_logits, -1)
probs = logp_all.exp().detach()                          # sampling distribution (sg: samples are data)
mask = torch.ones(V, 1, dtype=torch.bool)

# %% [markdown]
# The exact expectation over a ~ π_θ of the per-sample k1 loss and of its gradient (one row per token a):

# %%
k1 = kl_loss(logp_all[:, None], logp_ref[:, None], mask, "k1")[:, 0]     # [V] per-sample loss values
expected_grad_k1 = torch.autograd.grad((probs * k1).sum(), theta)[0]
true_grad = torch.autograd.grad(exact_kl(theta, ref_logits), theta)[0]  # ∇ KL(π_θ‖π_ref)

print("KL(pi||pi_ref)             =", f"{exact_kl(theta, ref_logits).item():.4f}")
print("E[k1] (exact)              =", f"{(probs * k1).sum().item():.4f}   <- the value is right")
print("|E[grad k1 loss]|          =", f"{expected_grad_k1.norm().item():.2e}  <- zero: no regularization")
print("|grad KL(pi||pi_ref)|      =", f"{true_grad.norm().item():.4f}")

# %% [markdown]
# The same with samples: the mean gradient of the k1 loss is pure noise around zero, shrinking as 1/√n.

# %%
gen = torch.Generator().manual_seed(1)
for n in (100, 10_000, 1_000_000):
    a = torch.multinomial(probs, n, replacement=True, generator=gen)
    lp = torch.log_softmax(theta, -1)[a][:, None]
    loss = kl_loss(lp, logp_ref[a][:, None], torch.ones(n, 1, dtype=torch.bool), "k1").mean()
    g = torch.autograd.grad(loss, theta)[0]
    print(f"Monte Carlo n={n:>9,}: |mean grad of k1 loss| = {g.norm().item():.2e}")
