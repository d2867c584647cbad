"""Throughput of rlkl's LM trainer against TRL's GRPOTrainer on the same problem, in one run.

Same model size (GPT-2 architecture: 2 layers, width 64, 4 heads, learned positions, tied embeddings — the
architecture of ``rlkl.lm.model.GPT``), same task (2-digit reversed addition), same group size G = 8,
16 prompts per step, same completion budget (4 tokens), temperature 1, GRPO with a k3 KL loss (β = 0.04,
so both trainers run a reference forward), one optimizer step per batch, CPU, float32, same torch
thread count. Both models start from random weights (throughput does not depend on what they know).

Reported, per torch thread count (default 1 and 2): completions per second of each (steps × batch / seconds of
training steps, after warm-up steps) over ``--repeats`` interleaved runs (rlkl, TRL, rlkl, TRL, …), their
medians and minima, and the ratio of the medians rlkl / TRL. Target on CPU: ≥ 5×. rlkl's figure includes everything its step does
(sampling, verifier, π_old and π_ref forwards, the exact full-softmax metrics, the update); its
evaluation passes are excluded. TRL's figure is ``trainer.train()`` over the measured steps.

    rlkl bench trainer_vs_trl                            # skips with a message when trl is not installed
    /path/to/venv-with-trl/bin/python benchmarks/trainer_vs_trl.py --steps 20 --threads 1 2 --repeats 3

TRL is an optional extra (``pip install 'rlkl[trl]'``); nothing here downloads a model or a dataset.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch

PROMPTS_PER_STEP, G, BETA = 16, 8, 0.04
#: arguments of ``rlkl bench --quick``
QUICK_ARGV = ("--steps", "5", "--warmup", "1", "--threads", "1", "--repeats", "1")


def bench_rlkl(steps: int, warmup: int, workdir: Path) -> dict:
    from rlkl.lm.model import GPT, GPTConfig
    from rlkl.lm.sft import SFTConfig, save_reference
    from rlkl.lm.tasks import make_task
    from rlkl.lm.train import TrainConfig, train

    task = make_task("addition", 2)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len,
                          n_layer=2, n_head=4, d_model=64))
    ref = workdir / "rlkl_ref.pt"
    save_reference(ref, model, task, SFTConfig(), {})
    cfg = TrainConfig(method="grpo", beta=BETA, task="addition", difficulty=2, ref=str(ref), steps=warmup + steps,
                      prompts_per_step=PROMPTS_PER_STEP, group_size=G, eval_every=10**6, eval_prompts=8,
                      eval_samples=1, checkpoint_every=10**6, device="cpu", num_threads=torch.get_num_threads())
    rows = train(cfg, workdir / "rlkl_run", progress=False)
    timed = [r for r in rows if r["step"] > warmup]
    seconds = sum(r["time/step"] for r in timed)
    return {"completions": len(timed) * PROMPTS_PER_STEP * G, "seconds": seconds,
            "completions_per_s": len(timed) * PROMPTS_PER_STEP * G / seconds,
            "params": model.num_params()}


def bench_trl(steps: int, warmup: int, workdir: Path) -> dict:
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    from rlkl.lm.tasks import make_task

    task = make_task("addition", 2)
    # one word per character of the task alphabet, EOS "$" mapped to the tokenizer's eos; prompts are the
    # same strings as rlkl's, written with spaces between characters
    words = ["<pad>"] + [c for c in task.alphabet if c != "$"] + ["<eos>"]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                        padding_side="left")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(words), n_positions=task.prompt_len + task.max_response_len + 2, n_embd=64,
                     n_layer=2, n_head=4, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model_dir = workdir / "trl_model"  # TRL builds its reference model from the path
    GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    n_prompts = PROMPTS_PER_STEP * (warmup + steps) * 2
    problems = task.sample_problems(n_prompts, torch.Generator().manual_seed(0))
    prompts = [" ".join(task.prompt_text(p)) for p in problems.tolist()]
    answers = [task.answer_text(p) for p in problems.tolist()]
    dataset = Dataset.from_dict({"prompt": prompts, "answer": answers})

    def reward(completions, answer, **kwargs):
        return [1.0 if c.replace(" ", "").strip() == a else 0.0 for c, a in zip(completions, answer)]

    def config(max_steps: int) -> GRPOConfig:
        return GRPOConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=PROMPTS_PER_STEP * G,
                          num_generations=G, max_completion_length=task.max_response_len, max_steps=max_steps,
                          learning_rate=3e-4, beta=BETA, loss_type="grpo", temperature=1.0, use_cpu=True, bf16=False,
                          report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0)

    warm = GRPOTrainer(model=str(model_dir), reward_funcs=reward, args=config(warmup), train_dataset=dataset,
                       processing_class=tokenizer)
    warm.train()  # warm-up steps (first-call overheads)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=reward, args=config(steps), train_dataset=dataset,
                          processing_class=tokenizer)
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    return {"completions": steps * PROMPTS_PER_STEP * G, "seconds": seconds,
            "completions_per_s": steps * PROMPTS_PER_STEP * G / seconds,
            "params": sum(p.numel() for p in trainer.model.parameters())}


def _median(xs: list[float]) -> float:
    import statistics

    return float(statistics.median(xs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="measured RL steps per trainer and run")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured warm-up steps")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts (each measured)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per trainer and thread count")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    if importlib.util.find_spec("trl") is None:
        print("trainer_vs_trl: skipped - `trl` is not importable (optional extra: pip install 'rlkl[trl]'); "
              "rlkl's trainer alone: run `rlkl train --preset cpu_tiny` and read tokens_per_s in metrics.jsonl")
        return 0
    import trl

    res: dict = {"trl_version": trl.__version__, "torch": torch.__version__, "steps": args.steps,
                 "batch": PROMPTS_PER_STEP * G, "by_threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs: dict[str, list[dict]] = {"rlkl": [], "trl": []}
        for _ in range(args.repeats):  # interleaved: rlkl, TRL, rlkl, TRL, … (load drifts hit both alike)
            with tempfile.TemporaryDirectory() as tmp:
                runs["rlkl"].append(bench_rlkl(args.steps, args.warmup, Path(tmp)))
                runs["trl"].append(bench_trl(args.steps, args.warmup, Path(tmp)))
        cps = {k: [r["completions_per_s"] for r in v] for k, v in runs.items()}
        ratio = _median(cps["rlkl"]) / _median(cps["trl"])
        pairs = [a / b for a, b in zip(cps["rlkl"], cps["trl"])]
        res["by_threads"][str(threads)] = {"completions_per_s": cps, "ratio_of_medians": ratio,
                                           "pair_ratios": pairs, "params": {k: v[0]["params"] for k, v in runs.items()}}
        print(f"threads {threads}: rlkl {_median(cps['rlkl']):8.1f} completions/s (min {min(cps['rlkl']):.1f}), "
              f"TRL {trl.__version__} {_median(cps['trl']):8.1f} (min {min(cps['trl']):.1f}); "
              f"ratio of medians {ratio:.2f}x, per-pair {min(pairs):.2f}-{max(pairs):.2f}x "
              f"({args.repeats} interleaved runs each, target >= 5x)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
