"""Tasks: answers against an independent computation, splits, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from emergence_core.tasks import TASKS, TaskError, TrialData, get_task, split_indices

N_CHECK = 2000


def _words(data: TrialData, tokens: np.ndarray) -> list[list[str]]:
    vocab = data.vocab.tokens
    return [[vocab[int(t)] for t in row] for row in tokens]


def _number(ds: list[str]) -> int:
    return int("".join(ds))


def _expected(task: str, params: dict, prompt: list[str]) -> list[str]:
    """The answer computed from the prompt's text with Python's own arithmetic."""
    if task == "COPY":
        return list(prompt)
    if task == "REV":
        return list(reversed(prompt))
    if task == "SORT":
        return sorted(prompt, key=int)
    if task == "PAR":
        return [str(sum(int(b) for b in prompt) % 2)]
    if task == "MOD":
        a, op, b = prompt
        assert op == "+"
        return [str((int(a) + int(b)) % params["p"])]
    if task == "CMP":
        i = prompt.index(",")
        a, b = _number(prompt[:i]), _number(prompt[i + 1:])
        return ["<" if a < b else "=" if a == b else ">"]
    if task == "ADD":
        i = prompt.index("+")
        total = _number(prompt[:i]) + _number(prompt[i + 1:])
        return list(str(total).zfill(params["n"] + 1))
    if task == "MUL":
        i = prompt.index("*")
        product = _number(prompt[:i]) * _number(prompt[i + 1:])
        return list(str(product).zfill(params["n"] + params["m"]))
    raise AssertionError(task)


@pytest.mark.parametrize("task", list(TASKS))
def test_answers_match_independent_computation(task: str) -> None:
    data = TrialData(task, (1, 2, 3), seed=3, train_size=N_CHECK, diag_size=500)
    for ld, train, diag in zip(data.levels, data.train, data.diag, strict=True):
        spec = ld.spec
        for enc in (train, diag):
            words = _words(data, enc.tokens.numpy())
            for row in words[:N_CHECK]:
                assert row[0] == f"<L{spec.level}>"
                assert row[spec.sep_pos] == "<sep>" and row[-1] == "<eos>"
                prompt, answer = row[1:spec.sep_pos], row[spec.sep_pos + 1:-1]
                assert len(prompt) == spec.prompt_len
                assert answer == _expected(task, dict(spec.params), prompt), row
            # targets are the answer tokens; positions predict them
            got = enc.tokens.gather(1, enc.positions + 1)
            assert (got == enc.targets).all()


@pytest.mark.parametrize("task", list(TASKS))
def test_train_and_diagnostic_sets_are_disjoint(task: str) -> None:
    data = TrialData(task, (1, 2, 3), seed=0, train_size=20000)
    for ld, train, diag in zip(data.levels, data.train, data.diag, strict=True):
        assert len(np.unique(ld.train_idx)) == len(ld.train_idx)
        assert len(np.unique(ld.diag_idx)) == len(ld.diag_idx)
        assert not set(ld.train_idx.tolist()) & set(ld.diag_idx.tolist())
        # distinct indices are distinct problems: check on the token rows as well
        rows_t = {r.tobytes() for r in train.tokens.numpy()}
        rows_d = {r.tobytes() for r in diag.tokens.numpy()}
        assert not rows_t & rows_d
        assert len(ld.diag_idx) == min(1000, ld.spec.universe - len(ld.train_idx))


def test_mod_uses_forty_percent_of_the_table() -> None:
    data = TrialData("MOD", (1, 2, 3), seed=0, train_size=10**6)
    sizes = {ld.spec.params["p"]: (len(ld.train_idx), len(ld.diag_idx)) for ld in data.levels}
    assert sizes == {23: (211, 318), 59: (1392, 1000), 113: (5107, 1000)}


def test_data_is_deterministic_from_task_level_seed() -> None:
    a = TrialData("ADD", (1, 2), seed=5, train_size=3000)
    b = TrialData("ADD", (1, 2), seed=5, train_size=3000)
    c = TrialData("ADD", (1, 2), seed=6, train_size=3000)
    for la, lb, lc in zip(a.levels, b.levels, c.levels, strict=True):
        assert np.array_equal(la.train_idx, lb.train_idx)
        assert np.array_equal(la.diag_idx, lb.diag_idx)
        assert not np.array_equal(la.diag_idx, lc.diag_idx)


def test_diagnostic_set_does_not_depend_on_training_size() -> None:
    spec = get_task("SORT").level(3)
    _, d1 = split_indices(spec, 1, train_size=100, train_fraction=0.5, diag_size=1000)
    _, d2 = split_indices(spec, 1, train_size=9000, train_fraction=0.5, diag_size=1000)
    assert np.array_equal(d1, d2)


def test_one_vocabulary_covers_all_levels() -> None:
    data = TrialData("MOD", (1, 2, 3), seed=0, train_size=100)
    assert data.vocab.size == 6 + 1 + 113  # specials, '+', numbers 0..112
    for enc in data.train + data.diag:
        assert int(enc.tokens.max()) < data.vocab.size


def test_cmp_makes_every_digit_matter() -> None:
    data = TrialData("CMP", (3,), seed=0, train_size=20000)
    answers = [data.vocab.tokens[int(t)] for t in data.train[0].targets[:, 0]]
    shares = {s: answers.count(s) / len(answers) for s in "<=>"}
    assert shares["="] == pytest.approx(1 / 9, abs=0.02)
    assert shares["<"] == pytest.approx(shares[">"], abs=0.03)


def test_difficulty_parameters_can_be_overridden() -> None:
    data = TrialData("COPY", (1,), seed=0, train_size=50, level_params={1: {"length": 2}})
    assert data.specs[0].prompt_len == 2 and data.train[0].tokens.shape[1] == 2 + 2 + 3


@pytest.mark.parametrize(("call", "message"), [
    (lambda: get_task("MDO"), "did you mean 'MOD'"),
    (lambda: get_task("MOD").level(4), "unknown level 4"),
    (lambda: get_task("MOD").level(1, q=3), "unknown parameter 'q'"),
    (lambda: get_task("MOD").level(1, p=0), "positive integer"),
    (lambda: get_task("ADD").level(1, n=12), "18 digits"),
    (lambda: TrialData("PAR", (1,), seed=0, train_size=10, train_fraction=0.1,
                       level_params={1: {"length": 2}}), "too few"),
])
def test_bad_task_input_names_the_problem(call, message: str) -> None:
    with pytest.raises(TaskError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_small_cmp_universe_is_split_with_the_samplers_strata() -> None:
    """Issue 11: CMP level 1 (10,000 pairs) used to be permuted uniformly ('=' about 1%).

    Stratified by shared-prefix length, each of the 3 strata gets an equal quota up to its
    size (100 equal pairs, 900 with one shared digit), so '=' holds all 100 and both sets
    have the same composition."""
    data = TrialData("CMP", (1,), seed=0, train_size=20000)
    ld = data.levels[0]
    assert len(np.intersect1d(ld.train_idx, ld.diag_idx)) == 0
    stratum, _ = ld.spec.strata(ld.spec.params, np.concatenate([ld.train_idx, ld.diag_idx]))
    assert np.bincount(stratum).tolist() == [5000, 900, 100]
    for idx in (ld.train_idx, ld.diag_idx):
        s, _ = ld.spec.strata(ld.spec.params, idx)
        share = np.bincount(s, minlength=3) / idx.size
        np.testing.assert_allclose(share, [5000 / 6000, 900 / 6000, 100 / 6000], atol=1e-3)
    eq = [data.vocab.tokens[int(t)] for t in data.diag[0].targets[:, 0]].count("=")
    assert eq == round(1000 * 100 / 6000)


def test_chance_is_the_best_constant_answer_and_the_marginal_logprob() -> None:
    from emergence_core.tasks import answer_chance
    c = answer_chance(np.array([[1, 0], [1, 0], [0, 1], [1, 1]]))
    assert c.accuracy == 0.5 and c.answer == (1, 0)
    # position 0: 3/4 ones, position 1: 1/2 -> sum of f log f
    want = 0.75 * np.log(0.75) + 0.25 * np.log(0.25) + np.log(0.5)
    assert c.logprob == pytest.approx(want)
    par = TrialData("PAR", (3,), seed=0, train_size=100).chance[3]
    assert 0.45 <= par.accuracy <= 0.55 and par.logprob == pytest.approx(np.log(0.5), abs=2e-3)


def test_levels_with_a_universe_smaller_than_the_diagnostic_size_are_reported() -> None:
    data = TrialData("MOD", (1, 2), seed=0, train_size=20000, diag_size=1000)
    assert data.short_levels() == {1: 318}  # 529 pairs, 40% for training
    assert data.describe()[0]["diag_asked"] == 1000
