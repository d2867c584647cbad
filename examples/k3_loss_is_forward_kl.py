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
# # Why GRPO's k3 loss is a *forward*-KL gradient (and k2 the reverse one)
#
# k3 = π_ref/π_θ − 1 − log(π_ref/π_θ) estimates KL(π_θ‖π_ref) without bias, but as a loss its gradient is
# (1 − π_ref/π_θ)·∇log π_θ, whose expectation under π_θ is Σ_a (π_θ − π_ref)∇log π_θ = ∇KL(π_ref‖π_θ): the
# forward direction (mass-covering), not the reverse KL the objective names. k2 = ½ log² u gives the reverse one
# (docs/theory.md T3, T4; FRPO arXiv 2601.10201 App. B, Table 3).
#
# Run: `.venv/bin/python examples/k3_loss_is_forward_kl.py` (a second), or open it as a notebook with jupytext.

# %%
import torch

from rlkl.divergences import exact_kl
from rlkl.losses import kl_loss

torch.manual_seed(0)
V = 6
theta = torch.randn(V, dtype=torch.float64, requires_grad=True)
ref_logits = torch.randn(V, dtype=torch.float64) * 1.5

logp = torch.log_softmax(theta, -1)[:, None]             # [V, 1]: one row per possible sampled token
logp_ref = torch.log_softmax(ref_logits, -1)[:, None]
probs = logp.exp().detach()[:, 0]                        # exact expectation weights (a ~ π_θ)
mask = torch.ones(V, 1, dtype=torch.bool)


def expected_grad(estimator):
    """E_{a~π_θ}[∇ k(a)] by enumerating the V tokens (the sampling weights are data: no gradient through them)."""
    per_sample = kl_loss(logp, logp_ref, mask, estimator)[:, 0]
    return torch.autograd.grad((probs * per_sample).sum(), theta, retain_graph=True)[0]


reverse = torch.autograd.grad(exact_kl(theta, ref_logits), theta)[0]   # ∇ KL(π_θ‖π_ref)
forward = torch.autograd.grad(exact_kl(ref_logits, theta), theta)[0]   # ∇ KL(π_ref‖π_θ)

# %% [markdown]
# Distance of each estimator's expected loss gradient to the two KL gradients:

# %%
print(f"{'loss':<6}{'|E grad - grad KL(pi||ref)|':>30}{'|E grad - grad KL(ref||pi)|':>30}")
for est in ("k1", "k2", "k3"):
    g = expected_grad(est)
    print(f"{est:<6}{(g - reverse).norm().item():>30.2e}{(g - forward).norm().item():>30.2e}")
print("\nk2 matches the reverse KL, k3 the forward KL (to round-off); k1 matches neither (it is 0).")
cos = torch.nn.functional.cosine_similarity(reverse, forward, dim=0).item()
print(f"here the two directions differ: cosine(grad reverse, grad forward) = {cos:.3f}")
