"""Why k1 as a *loss* regularizes nothing.

k1 = log π_θ(a) − log π_ref(a) is an unbiased estimate of KL(π_θ‖π_ref) when a ~ π_θ, but its gradient is the
score ∇log π_θ(a), whose expectation under π_θ is Σ_a ∇π_θ(a) = ∇1 = 0. So adding β·k1 to the loss changes
nothing in expectation — in contrast with the true gradient ∇KL(π_θ‖π_ref).
Run: python examples/k1_loss_does_nothing.py
"""

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

# exact expectation over a ~ π_θ of the per-sample gradient of the k1 loss (one row per token a)
k1 = kl_loss(logp_all[:, None], logp_ref[:, None], mask, "k1")[:, 0]     # [V] per-sample loss values
expected_grad_k1 = torch.autograd.grad((probs * k1).sum(), theta)[0]

true_grad = torch.autograd.grad(exact_kl(theta, ref_logits), theta)[0]  # ∇ KL(π_θ‖π_ref)

print("KL(pi||pi_ref)             =", f"{exact_kl(theta, ref_logits).item():.4f}")
print("E[k1] (exact)              =", f"{(probs * k1).sum().item():.4f}   <- the value is right")
print("|E[grad k1 loss]|          =", f"{expected_grad_k1.norm().item():.2e}  <- zero: no regularization")
print("|grad KL(pi||pi_ref)|      =", f"{true_grad.norm().item():.4f}")

# the same with samples: the mean gradient is pure noise around zero
gen = torch.Generator().manual_seed(1)
for n in (100, 10_000, 1_000_000):
    a = torch.multinomial(probs, n, replacement=True, generator=gen)
    lp = torch.log_softmax(theta, -1)[a][:, None]
    loss = kl_loss(lp, logp_ref[a][:, None], torch.ones(n, 1, dtype=torch.bool), "k1").mean()
    g = torch.autograd.grad(loss, theta)[0]
    print(f"Monte Carlo n={n:>9,}: |mean grad of k1 loss| = {g.norm().item():.2e}")
