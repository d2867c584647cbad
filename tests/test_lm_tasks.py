"""Tasks: documented encodings, verifiers, and a disjoint seeded train/eval split."""

import pytest
import torch

from rlkl.lm.tasks import CharTokenizer, make_task, task_from_dict


def _ids(task, text):
    return torch.tensor([task.tokenizer.encode(text)])


def test_addition_encoding_matches_docstring_example():
    t = make_task("addition", 2)
    assert t.prompt_text([47, 85]) == "74+58="
    assert t.answer_text([47, 85]) == "231"
    assert t.parse_prompt(t.tokenizer.encode("74+58=")) == [47, 85]
    assert t.vocab_size == 13 and t.eos_id == 12 and t.prompt_len == 6 and t.max_response_len == 4
    resp, mask = t.target_responses(_ids(t, "74+58="))
    assert t.tokenizer.decode(resp[0]) == "231" and mask[0].tolist() == [True] * 4


def test_addition_answer_has_no_leading_zeros():
    t = make_task("addition", 2)
    assert t.answer_text([27, 3]) == "03"  # 30 reversed
    assert t.answer_text([0, 0]) == "0"


def test_sort_encoding():
    t = make_task("sort", 4)
    assert t.prompt_text([3, 9, 1, 4]) == "3914:" and t.answer_text([3, 9, 1, 4]) == "1349"
    assert t.prompt_len == 5 and t.max_response_len == 5 and t.vocab_size == 12


@pytest.mark.parametrize("response,reward,partial", [
    ("231$", 1.0, 1.0),
    ("2310", 0.0, 3 / 4),  # no EOS within the budget: binary reward 0
    ("232$", 0.0, 2 / 3),
    ("23$", 0.0, 2 / 3),  # missing digit
    ("2311", 0.0, 3 / 4),  # extra digit, no EOS
    ("$", 0.0, 0.0),
])
def test_addition_verifier(response, reward, partial):
    t = make_task("addition", 2)
    prompt = _ids(t, "74+58=")
    resp = torch.tensor([t.tokenizer.encode(response) + [t.eos_id] * (4 - len(response))])
    assert t.score(prompt, resp).item() == reward
    assert t.score(prompt, resp, partial_credit=True).item() == pytest.approx(partial)


def test_sort_verifier():
    t = make_task("sort", 3)
    p = _ids(t, "312:")
    assert t.score(p, _ids(t, "123$")).item() == 1.0
    assert t.score(p, _ids(t, "132$")).item() == 0.0
    assert t.score(p, _ids(t, "132$"), partial_credit=True).item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("name,difficulty", [("addition", 2), ("sort", 4)])
def test_split_is_disjoint_seeded_and_sized(name, difficulty):
    t = make_task(name, difficulty)
    allp = t._all_problems()
    frac = t.is_eval(allp).float().mean().item()
    assert abs(frac - 0.1) < 0.02
    train = t.sample_problems(2000, torch.Generator().manual_seed(0))
    assert not t.is_eval(train).any()
    ev = t.eval_problems(100)
    assert t.is_eval(ev).all() and len(set(t._keys(ev).tolist())) == 100
    assert torch.equal(ev, t.eval_problems(100))  # the same for every run
    other = make_task(name, difficulty, split_seed=1)
    assert not torch.equal(t.is_eval(allp), other.is_eval(allp))
    # same seed, same training stream
    assert torch.equal(train, t.sample_problems(2000, torch.Generator().manual_seed(0)))


def test_large_space_eval_problems_by_rejection():
    t = make_task("addition", 4)  # 10^8 problems: not enumerated
    ev = t.eval_problems(50)
    assert ev.shape == (50, 2) and t.is_eval(ev).all()


def test_target_responses_score_one_and_roundtrip():
    for t in (make_task("addition", 3), make_task("sort", 5)):
        prompts = t.sample_prompts(64, torch.Generator().manual_seed(1))
        assert prompts.shape == (64, t.prompt_len)
        resp, mask = t.target_responses(prompts)
        assert resp.shape == (64, t.max_response_len)
        assert torch.all(t.score(prompts, resp) == 1.0)
        assert task_from_dict(t.to_dict()) == t


def test_errors():
    with pytest.raises(ValueError, match="unknown task"):
        make_task("chess", 2)
    with pytest.raises(ValueError, match="difficulty"):
        make_task("addition", 0)
    with pytest.raises(ValueError, match="not in the alphabet"):
        make_task("addition", 2).tokenizer.encode("1x")
    with pytest.raises(ValueError, match="EOS"):
        CharTokenizer("01")
    with pytest.raises(ValueError, match="split"):
        make_task("addition", 2).sample_problems(3, torch.Generator(), split="test")
    with pytest.raises(ValueError, match="only"):
        make_task("addition", 1).eval_problems(50)  # 100 problems, ~6 in the eval split


@pytest.mark.parametrize("name, difficulty", [("addition", 2), ("sort", 3), ("divisor", 2)])
def test_score_groups_equals_the_string_verifier(name, difficulty):
    """The tensor verifier (one answer per prompt, compared position by position) equals Task.score on the
    repeated prompts, for random responses (anything after an EOS, no EOS at all), the targets themselves, and
    targets with one token changed."""
    from hypothesis import given, strategies as st

    t = make_task(name, difficulty)
    prompts = t.sample_prompts(6, torch.Generator().manual_seed(1))
    G, R = 3, t.max_response_len
    target, _ = t.target_responses(prompts.repeat_interleave(G, 0))

    @given(st.lists(st.integers(0, t.vocab_size - 1), min_size=6 * G * R, max_size=6 * G * R),
           st.lists(st.integers(0, 2), min_size=6 * G, max_size=6 * G))
    def check(tokens, kinds):
        resp = torch.tensor(tokens).view(6 * G, R)
        kinds = torch.tensor(kinds)
        resp = torch.where((kinds == 1)[:, None], target, resp)  # exactly right
        flip = target.clone()
        flip[:, 0] = (flip[:, 0] + 1) % t.vocab_size
        resp = torch.where((kinds == 2)[:, None], flip, resp)  # first token wrong
        expected = t.score(prompts.repeat_interleave(G, 0), resp)
        assert torch.equal(t.score_groups(prompts, resp, G), expected)

    check()
    assert t.score_groups(prompts, target, G).tolist() == [1.0] * (6 * G)
    with pytest.raises(ValueError, match="n·G"):
        t.score_groups(prompts, target[:5], G)


def test_divisor_encoding_answers_and_verifier():
    t = make_task("divisor", 2)
    assert t.prompt_text([12]) == "12:" and t.prompt_text([7]) == "07:" and t.parse_prompt(t.tokenizer.encode("07:")) == [7]
    assert t.answers([12]) == ["1", "2", "3", "4", "6", "12"] and t.answers([1]) == ["1"]
    assert t.vocab_size == 12 and t.eos_id == 11 and t.prompt_len == 3 and t.max_response_len == 3
    assert t.multi_answer and not make_task("addition", 2).multi_answer
    p = _ids(t, "12:")
    for text, reward in (("4$", 1.0), ("12$", 1.0), ("1$", 1.0), ("5$", 0.0), ("04$", 0.0), ("0$", 0.0), ("$", 0.0),
                         ("124", 0.0), ("1:$", 0.0), ("24$", 0.0)):
        r = torch.tensor([(t.tokenizer.encode(text) + [t.eos_id] * 3)[:3]])
        assert t.score(p, r).item() == reward, text
        assert t.score_groups(p, r).item() == reward, text
    with pytest.raises(ValueError, match="partial credit"):
        t.score(p, r, partial_credit=True)
    assert len(t.split_problems("train")) + len(t.split_problems("eval")) == 99


def test_divisor_demonstrations_prefer_small_divisors():
    """N = 12: the k-th smallest divisor is drawn with probability (1/k)/H_6 (H_6 = 49/20), within 4 s.e."""
    t = make_task("divisor", 2)
    n = 6000
    resp, mask = t.demonstration_responses(_ids(t, "12:").repeat(n, 1), torch.Generator().manual_seed(0))
    assert torch.equal(t.score(_ids(t, "12:").repeat(n, 1), resp), torch.ones(n))
    got = [t.tokenizer.decode(r) for r in resp]
    for k, d in enumerate(t.answers([12]), start=1):
        p = (1 / k) / (49 / 20)
        assert abs(got.count(d) / n - p) <= 4 * (p * (1 - p) / n) ** 0.5, d


def test_tokenizer_is_shared_and_target_responses_of_no_prompts():
    task = make_task("addition", 2)
    assert task.tokenizer is task.tokenizer is make_task("addition", 2).tokenizer  # one per alphabet
    resp, mask = task.target_responses(task.sample_prompts(0, torch.Generator().manual_seed(0)))
    assert resp.shape == mask.shape == (0, task.max_response_len)
