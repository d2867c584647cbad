"""Optional plug-ins: rlkl's Methods inside TRL's ``GRPOTrainer`` and verl's loss / advantage registries.

Reading the frameworks' configs needs neither framework: ``rlkl.integrations.flags`` (``from_verl`` / ``from_trl``),
``translate`` (every key classified), ``microbatch`` (the batch layout's per-token weights and bias term),
``explain`` (``rlkl audit --verl / --trl``).

Importing this package imports neither TRL nor verl; only ``rlkl.integrations.trl`` and
``rlkl.integrations.verl`` do (install the ``trl`` / ``verl`` extras). Both plug-ins run the *same* functions as
the rest of rlkl: advantages from :meth:`rlkl.methods.Method.advantages` and the loss from
:meth:`rlkl.methods.Method.loss_given_advantages`, the composition :meth:`Method.loss` itself runs.

Why a split: the frameworks compute the advantage once per rollout batch, where whole groups are present, and
the loss later on micro-batches in which groups may be split (TRL shuffles rows; verl sends the advantage
through its data pipeline). :func:`loss_from_advantages` is ``Method.loss`` with the advantage supplied, and
``loss_from_advantages(m, logp, b.logp_old, b.logp_ref, b.mask, m.advantages(b))`` equals ``m.loss(logp, b)``
(value, gradient and diagnostics; asserted in ``tests/test_integrations_trl.py``).
"""

from __future__ import annotations

from torch import Tensor

from rlkl._checks import check_token_tensors
from rlkl.losses import PolicyLossOutput
from rlkl.methods import Method, get_method

__all__ = ["resolve_method", "advantages_need_logprobs", "policy_loss_from_advantages", "loss_from_advantages"]


def resolve_method(method: Method | str) -> Method:
    """A :class:`Method` from a Method or a registry name (``rlkl.methods.get_method``); ValueError otherwise."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        return get_method(method)
    raise ValueError(f"method must be an rlkl Method or a registered name, got {type(method).__name__}")


def advantages_need_logprobs(method: Method) -> bool:
    """Whether ``method.advantages(batch)`` reads ``batch.logp_old`` / ``batch.logp_ref``.

    True for the KL terms used as a reward (``KLReward``, ``FutureReturn``, e.g. FRPO) with β > 0; the group advantages of all other methods depend on the rewards and the mask only. The plug-ins use
    this to skip a forward pass when the rollout log-probs are not needed (checked by a test that perturbs the
    log-probs).
    """
    return method.advantages_read_logprobs


def policy_loss_from_advantages(method: Method, logp: Tensor, logp_old: Tensor, advantages: Tensor,
                                mask: Tensor) -> PolicyLossOutput:
    """The per-token policy loss of ``method`` for given ``[B, T]`` advantages (:meth:`Method.policy_loss_terms`)."""
    check_token_tensors(mask, logp=logp, logp_old=logp_old, advantages=advantages)
    return method.policy_loss_terms(logp, logp_old, advantages, mask)


def loss_from_advantages(method: Method, logp: Tensor, logp_old: Tensor, logp_ref: Tensor | None, mask: Tensor,
                         advantages: Tensor, token_weights: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
    """``Method.loss`` with the ``[B, T]`` advantages supplied (:meth:`Method.loss_given_advantages`).

    −∇_logp of the result is the Method's update on this batch given those advantages; with
    ``advantages = method.advantages(batch)`` it equals ``method.loss(logp, batch)`` exactly. See
    :meth:`rlkl.methods.Method.loss_given_advantages` for the arguments.
    """
    return method.loss_given_advantages(logp, logp_old, mask, advantages, logp_ref, token_weights)
