"""AdamW for the small LM, through torch's fused/foreach kernel, without importing ``torch._dynamo``.

``torch.optim.AdamW`` wraps its constructor and ``step`` in ``torch._disable_dynamo``, which imports
``torch._dynamo`` on first use — 2–10 s of CPU for a process whose whole RL run may take 20 s. The update
itself is torch's own: :class:`AdamW` keeps the same per-parameter state (``step``, ``exp_avg``,
``exp_avg_sq``) and calls the functional ``torch.optim.adam.adam`` with ``decoupled_weight_decay=True``
(exactly what ``torch.optim.AdamW`` does) and ``fused=True`` (one kernel per parameter group; ``foreach``
where the device has no fused kernel). Its ``state_dict`` has torch's layout, so a checkpoint written by
either optimizer loads into the other.

Update (Loshchilov & Hutter, arXiv 1711.05101, Alg. 2, as torch implements it), per parameter θ with
gradient g at step t:  θ ← θ(1 − lr·λ);  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;
θ ← θ − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam as _adam_functional

_FUSED_DEVICES = ("cpu", "cuda")


class AdamW:
    """Minimal AdamW over one parameter group (``param_groups[0]["lr"]`` is the learning rate to set).

    Args:
        params: the parameters to optimize (tensors that require grad; all on one device).
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW``.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("AdamW got no parameters")
        devices = {p.device.type for p in self.params}
        if len(devices) != 1:
            raise ValueError(f"AdamW parameters must be on one device, got {sorted(devices)}")
        self.fused = devices.pop() in _FUSED_DEVICES and all(p.dtype.is_floating_point for p in self.params)
        self.param_groups = [{"lr": float(lr), "betas": (float(betas[0]), float(betas[1])), "eps": float(eps),
                              "weight_decay": float(weight_decay), "amsgrad": False, "maximize": False}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _state(self, i: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        if i not in self.state:  # lazily, like torch (a parameter that never had a gradient has no state)
            self.state[i] = {"step": torch.tensor(0.0, dtype=torch.float32),
                             "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return self.state[i]

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW update of every parameter that has a gradient."""
        g = self.param_groups[0]
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        states = [self._state(i, self.params[i]) for i in idx]
        if self.fused:  # the fused kernel counts steps in a tensor on the parameter's device
            for s, i in zip(states, idx):
                s["step"] = s["step"].to(self.params[i].device)
        _adam_functional([self.params[i] for i in idx], [self.params[i].grad for i in idx],
                         [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                         [s["step"] for s in states], foreach=not self.fused, fused=self.fused,
                         decoupled_weight_decay=True, amsgrad=False, beta1=g["betas"][0], beta2=g["betas"][1],
                         lr=g["lr"], weight_decay=g["weight_decay"], eps=g["eps"], maximize=False)

    def state_dict(self) -> dict:
        """torch's optimizer layout: ``{"state": {index: {...}}, "param_groups": [{..., "params": [0..n-1]}]}``."""
        return {"state": {i: {k: v.clone() for k, v in s.items()} for i, s in self.state.items()},
                "param_groups": [{**self.param_groups[0], "params": list(range(len(self.params)))}]}

    def load_state_dict(self, sd: dict) -> None:
        """Restore a :meth:`state_dict` (also one written by ``torch.optim.AdamW`` for the same parameters)."""
        try:
            group = dict(sd["param_groups"][0])
            n = len(group.pop("params"))
            state = {int(i): s for i, s in sd["state"].items()}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an optimizer state dict ({type(exc).__name__}: {exc})") from None
        if n != len(self.params) or len(sd["param_groups"]) != 1:
            raise ValueError(f"optimizer state dict is for {n} parameters in {len(sd['param_groups'])} group(s); "
                             f"this optimizer has {len(self.params)} in 1")
        self.param_groups[0].update({k: group[k] for k in ("lr", "betas", "eps", "weight_decay") if k in group})
        self.state = {}
        for i, s in state.items():
            p = self.params[i]
            self.state[i] = {"step": torch.as_tensor(s["step"], dtype=torch.float32).clone(),
                             "exp_avg": s["exp_avg"].to(p.device, p.dtype).clone(),
                             "exp_avg_sq": s["exp_avg_sq"].to(p.device, p.dtype).clone()}
