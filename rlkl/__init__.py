"""rlkl: exact verification of KL-regularized policy gradients for LLM reinforcement learning.

Every estimator exists once, as a pure torch function in this package; the exact engine (`rlkl.toy`),
the Monte Carlo simulator and the LM trainer (`rlkl.lm`) all call the same functions.
"""

__version__ = "0.1.0"
