"""The exact engine: small tabular autoregressive MDPs where every response can be enumerated.

* `TreeMDP` (mdp.py): prompts × token trees with optional EOS, rewards per (prompt, response).
* Policies (policies.py): `TabularPolicy`, `LogLinearPolicy`, `UnnormalizedPolicy`.
* Objectives (objectives.py): exact J = E_x[U(p) − β·D] and its gradient, plus the local fields loss-side
  penalties follow.
* `expected_gradient` (expected.py): the exact E[∇ loss] of a Method under a behaviour policy.
* `mc_gradient` (montecarlo.py): the same Method on sampled groups, with standard errors.
* `audit` (audit.py): the verdict of a Method against its intended objective, bias split into named terms.
"""

from rlkl.toy.audit import audit, audit_one, verify_rows
from rlkl.toy.expected import ExpectedGradient, LossSpec, brute_force_expected_gradient, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.montecarlo import MonteCarloGradient, mc_gradient
from rlkl.objective import Objective
from rlkl.toy.objectives import objective_gradient, objective_value
from rlkl.toy.policies import LogLinearPolicy, Policy, TabularPolicy, UnnormalizedPolicy

__all__ = [
    "TreeMDP", "Policy", "TabularPolicy", "LogLinearPolicy", "UnnormalizedPolicy", "Objective",
    "objective_value", "objective_gradient", "LossSpec", "ExpectedGradient", "expected_gradient",
    "brute_force_expected_gradient", "MonteCarloGradient", "mc_gradient", "audit", "audit_one", "verify_rows",
]
