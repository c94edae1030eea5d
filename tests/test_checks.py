"""The checks registry, and check() giving instant feedback in a notebook."""

import numpy as np
import pytest
import torch

from minimoe.grading import REGISTRY, StudentError, check, exercises_for_chapter, get_exercise, run_checks
from minimoe.grading.registry import exercise, expect_close, expect_equal
from minimoe.grading.student import LocalStudent, plain


def count_linear_params(in_features, out_features, bias=True):
    return in_features * out_features + (out_features if bias else 0)


def stable_softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def naive_softmax(x, dim=-1):
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def last_dim_softmax(x, dim=-1):
    return stable_softmax(x, dim=-1)


def _score(exercise_id, **functions):
    ex = get_exercise(exercise_id)
    return {o.name: o for o in run_checks(ex, LocalStudent(functions))}


def test_registry_entries_are_well_formed():
    assert exercises_for_chapter("00"), "chapter 00 has a warm-up"
    for ex in REGISTRY.values():
        assert ex.checks, f"{ex.id} has no checks"
        assert ex.functions, f"{ex.id} names no functions"
        for c in ex.checks:
            assert c.points > 0 and c.hint and c.name


def test_reference_answers_get_full_marks():
    for outcome in _score("00.linear_params", count_linear_params=count_linear_params).values():
        assert outcome.passed, outcome
    for outcome in _score("00.softmax", stable_softmax=stable_softmax).values():
        assert outcome.passed, outcome


def test_common_mistakes_lose_only_their_own_points():
    naive = _score("00.softmax", stable_softmax=naive_softmax)
    assert naive["large logits stay finite"].points == 0
    assert naive["matches torch.softmax on the last dimension"].passed
    fixed_dim = _score("00.softmax", stable_softmax=last_dim_softmax)
    assert fixed_dim["works along any dimension"].points == 0
    assert fixed_dim["matches torch.softmax on the last dimension"].passed
    no_bias = _score("00.linear_params", count_linear_params=lambda i, o, bias=True: i * o)
    assert not no_bias["with a bias"].passed and no_bias["without a bias"].passed


def test_hard_coded_answers_fail():
    outcome = _score("00.linear_params", count_linear_params=lambda i, o, bias=True: 15 if bias else 12)
    assert not any(o.passed for o in outcome.values())


def test_wrong_kinds_of_answer_get_clear_messages():
    as_numpy = _score("00.softmax", stable_softmax=lambda x, dim=-1: stable_softmax(x, dim).numpy())
    assert all("ndarray" in o.message for o in as_numpy.values())
    as_bool = _score("00.linear_params", count_linear_params=lambda *a, **k: True)
    assert not any(o.passed for o in as_bool.values())
    missing = _score("00.softmax")
    assert all("not defined" in o.message for o in missing.values())


def test_not_implemented_reads_as_not_written_yet():
    def stub(*args, **kwargs):
        raise NotImplementedError("replace this line with your solution")
    outcome = _score("00.softmax", stable_softmax=stub)
    assert all("not written yet" in o.message for o in outcome.values())


def test_check_prints_marks_and_hints(capsys):
    report = check("00.softmax", namespace={"stable_softmax": naive_softmax})
    out = capsys.readouterr().out
    assert "✓ matches torch.softmax" in out and "✗ large logits stay finite" in out
    assert "hint:" in out and "2/4 points" in out
    assert report.score == 2 and report.max_score == 4 and not report.passed
    assert check("00.softmax", namespace={"stable_softmax": stable_softmax}, quiet=True).passed
    assert capsys.readouterr().out == ""


def test_check_rejects_unknown_ids():
    with pytest.raises(KeyError, match="no exercise"):
        check("00.nope", namespace={})
    with pytest.raises(TypeError):
        check(0)


def test_a_broken_check_costs_only_itself():
    ex = exercise("99.broken_for_test", "a check that crashes", functions=("f",))
    try:
        @ex.check("crashes", points=1, hint="none")
        def _crash(student, rng):
            raise ZeroDivisionError("oops")

        @ex.check("passes", points=1, hint="none")
        def _ok(student, rng):
            expect_equal(student.call("f"), 1, "f()")

        outcomes = run_checks(ex, LocalStudent({"f": lambda: 1}))
        assert [o.passed for o in outcomes] == [False, True]
        assert "could not run" in outcomes[0].message
    finally:
        del REGISTRY["99.broken_for_test"]


def test_registry_rejects_bad_definitions():
    with pytest.raises(ValueError):
        exercise("warmup", "no chapter number")
    with pytest.raises(ValueError):
        exercise("00.softmax", "registered twice")
    ex = get_exercise("00.softmax")
    with pytest.raises(ValueError):
        ex.check("x", points=0, hint="h")
    with pytest.raises(ValueError):
        ex.check("x", points=1, hint="")


def test_expect_close_uses_dtype_tolerances():
    want = torch.tensor([1.0, 2.0])
    expect_close(want + 1e-7, want, "tiny error")
    with pytest.raises(AssertionError, match="differ"):
        expect_close(want + 1e-3, want, "big error")
    with pytest.raises(AssertionError, match="shape"):
        expect_close(want[:1], want, "shape")
    with pytest.raises(AssertionError, match="NaN or inf"):
        expect_close(torch.tensor([float("nan"), 2.0]), want, "nan")
    with pytest.raises(AssertionError, match="Tensor"):
        expect_close([1.0, 2.0], want, "list")
    half = want.half()
    expect_close(half * (1 + 5e-4), half, "fp16 within its tolerance")


def test_plain_accepts_data_and_rejects_objects():
    assert plain({"a": [1, 2.5, torch.ones(2)]})["a"][0] == 1
    with pytest.raises(StudentError, match="ndarray"):
        plain(np.zeros(3))
    with pytest.raises(StudentError, match="Linear"):
        plain(torch.nn.Linear(2, 2))
