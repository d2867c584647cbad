"""Helpers of scripts/gpu_check.sh: the parity of rlkl's losses on a device against CPU, and the trainer's throughput
from a run directory. Prints one line per check; exit 1 when a parity check fails.

    python scripts/gpu_check.py parity --device cuda
    python scripts/gpu_check.py throughput RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _batch(device: str, B: int = 64, T: int = 32, G: int = 8, seed: int = 0):
    from rlkl.methods import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(B, T, generator=g) * 3 - 0.05  # [B, T] behaviour log-probs
    logp_ref = logp_old + 0.3 * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # [B, T] right-padded
    rewards = (torch.rand(B, generator=g) < 0.5).float()
    logp = logp_old + 0.1 * torch.randn(B, T, generator=g)  # the policy, slightly off-policy
    to = lambda x: x.to(device)  # noqa: E731
    return to(logp), RolloutBatch(logp_old=to(logp_old), logp_ref=to(logp_ref), mask=to(mask), rewards=to(rewards),
                                  group_size=G)


def parity(device: str, methods: list[str], tol: float) -> int:
    """Loss value and ∂loss/∂logp of each method on ``device`` against CPU, float32, the same inputs."""
    from rlkl.methods import get_method

    status = 0
    for name in methods:
        out = {}
        for dev in ("cpu", device):
            logp, batch = _batch(dev)
            logp = logp.clone().requires_grad_(True)
            loss, _ = get_method(name).loss(logp, batch)
            (grad,) = torch.autograd.grad(loss, logp)
            out[dev] = (loss.detach().cpu().double(), grad.cpu().double())
        (l0, g0), (l1, g1) = out["cpu"], out[device]
        rel_l = float((l1 - l0).abs() / l0.abs().clamp_min(1e-12))
        rel_g = float((g1 - g0).abs().max() / g0.abs().max().clamp_min(1e-12))
        ok = rel_l <= tol and rel_g <= tol
        status |= 0 if ok else 1
        print(f"parity {name:12s} {device} vs cpu: loss rel diff {rel_l:.2e}, grad max rel diff {rel_g:.2e} "
              f"({'ok' if ok else 'FAIL'}, tol {tol:g})")
    return status


def model_parity(device: str, tol: float) -> int:
    """The GPT's logits on ``device`` (float32, and bf16 autocast on CUDA) against CPU float32."""
    from rlkl.lm.model import GPT, GPTConfig, autocast

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=4, n_head=4, d_model=128)).eval()
    x = torch.randint(0, 13, (32, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x).double()
        m_dev = m.to(device)
        fp32 = m_dev(x.to(device)).double().cpu()
        with autocast(device):
            low = m_dev(x.to(device)).double().cpu()
    d32, dlow = float((fp32 - ref).abs().max()), float((low - ref).abs().max())
    ok = d32 <= tol * max(1.0, float(ref.abs().max()))
    print(f"parity GPT logits {device} vs cpu: float32 max abs diff {d32:.2e} ({'ok' if ok else 'FAIL'}); "
          f"with the trainer's autocast (bf16 on CUDA) {dlow:.2e}")
    return 0 if ok else 1


def throughput(run_dir: str, skip: int = 3) -> int:
    """Completions/s and tokens/s of an RL run's steps after the first ``skip`` (warm-up, compilation)."""
    rd = Path(run_dir)
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines() if x.strip()]
    cfg = json.loads((rd / "config.json").read_text())
    steps = [r for r in rows if "time/step" in r][skip:]
    if not steps:
        print(f"throughput {rd}: fewer than {skip + 1} steps")
        return 1
    secs = sum(r["time/step"] for r in steps)
    n = len(steps) * cfg["prompts_per_step"] * cfg["group_size"]
    toks = sum(r["response_tokens"] for r in steps)
    print(f"throughput {rd.name}: {n / secs:.0f} completions/s, {toks / secs:.0f} response tokens/s over {len(steps)} "
          f"steps (B = {cfg['prompts_per_step'] * cfg['group_size']}, device {cfg['device']}, compile {cfg['compile']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("parity")
    a.add_argument("--device", default="cuda")
    a.add_argument("--methods", nargs="+", default=["grpo", "frpo", "rpg_reinforce_urkl"])
    a.add_argument("--tol", type=float, default=1e-5)
    b = sub.add_parser("throughput")
    b.add_argument("run_dir")
    args = p.parse_args(argv)
    if args.cmd == "parity":
        from rlkl.lm.model import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as exc:
            print(f"gpu_check: {exc}", file=sys.stderr)
            return 2
        return parity(args.device, args.methods, args.tol) | model_parity(args.device, args.tol)
    return throughput(args.run_dir)


if __name__ == "__main__":
    raise SystemExit(main())
