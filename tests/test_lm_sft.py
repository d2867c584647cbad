"""Noisy demonstrations and the SFT reference policy."""

import pytest
import torch

from rlkl.lm.sft import SFTConfig, corrupt, load_reference, noisy_demonstrations, sft_config_from_preset, train_sft
from rlkl.lm.tasks import make_task


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py


def test_corrupt_always_changes_the_answer():
    gen = torch.Generator().manual_seed(0)
    symbols = list(range(10))
    for _ in range(300):
        ans = torch.randint(0, 10, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen).tolist()
        new = corrupt(ans, symbols, gen)
        assert new != ans and abs(len(new) - len(ans)) <= 1


@pytest.mark.parametrize("noise", [0.0, 0.3, 1.0])
def test_noise_rate_controls_wrong_demonstrations(noise):
    task = make_task("addition", 2)
    prompts, resp, mask, corrupted = noisy_demonstrations(task, 2000, noise, torch.Generator().manual_seed(1))
    correct = task.score(prompts, resp)
    # a corrupted demonstration is wrong unless truncation to the budget happened to restore it (never here)
    assert torch.equal(correct == 0, corrupted)
    assert abs(corrupted.float().mean().item() - noise) < 0.03
    assert torch.all(mask.sum(1) >= 2)  # at least one digit and the EOS
    eos_pos = mask.sum(1) - 1
    assert torch.all(resp[torch.arange(2000), eos_pos] == task.eos_id)


def test_bad_sft_config():
    with pytest.raises(ValueError, match="noise_rate"):
        SFTConfig(noise_rate=1.5)
    with pytest.raises(ValueError, match="unknown task"):
        SFTConfig(task="chess")
    with pytest.raises(ValueError, match="n_head"):
        SFTConfig(n_head=3, d_model=64)
    with pytest.raises(ValueError, match="preset"):
        sft_config_from_preset("tpu_huge")


def test_sft_learns_and_checkpoint_roundtrips(tmp_path):
    cfg = SFTConfig(task="sort", difficulty=3, n_layer=1, n_head=2, d_model=32, steps=120, batch_size=64, lr=1e-2,
                    warmup_steps=10, noise_rate=0.2, eval_prompts=20, eval_samples=4, eval_every=120, num_threads=1)
    model, final = train_sft(cfg, tmp_path, progress=False)
    import json

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in rows[:10]) / 10, sum(r["loss"] for r in rows[-10:]) / 10
    assert last < 0.8 * first  # it learns
    assert set(final) >= {"pass@1", "pass@4", "greedy_acc"}
    loaded, task, payload = load_reference(tmp_path / "reference.pt")
    assert task == make_task("sort", 3) and payload["sft_config"]["noise_rate"] == 0.2
    x = torch.randint(0, 10, (5, 7))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="rlkl sft"):
        load_reference(tmp_path / "missing.pt")
