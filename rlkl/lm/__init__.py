"""rlkl.lm: a small LM trained by RL with the same ``Method.loss`` the exact engine audits.

- ``model``: a nanoGPT-style decoder-only transformer (one file), sampling, device/autocast helpers.
- ``tasks``: synthetic verifiable tasks (reversed-digit addition, sorting) with tokenizers, verifiers and a
  seeded train/eval split.
- ``sft``: the imperfect reference policy, trained on noisy demonstrations (``rlkl sft``).
- ``metrics``: pass@k, exact entropy and KL from the full softmax, k1/k2/k3 estimates, throughput.
- ``train``: the RL loop (``rlkl train``): rollouts in groups, K updates per batch, reference refresh,
  metrics.jsonl, checkpoints, exact resume.

Nothing here downloads anything; every task is generated in-process.
"""
