"""The checks registry, and check() giving instant feedback in a notebook."""

import numpy as np
import pytest
import torch

from answer_key import NO_REFERENCE, WRAPPERS
from minimoe.grading import REGISTRY, StudentError, check, exercises_for_chapter, get_exercise, run_checks
from minimoe.grading.feedback import MESSAGE_CHARS, check_seed
from minimoe.grading.guard import Tripped, guarded, resolve
from minimoe.grading.registry import exercise, expect_close, expect_equal, expect_number, short
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


# --- issue 19: NaN, hidden checks, visibility, seeds, capped messages, the answer key -------------

NAN = float("nan")


@pytest.mark.parametrize("got", [NAN, float("inf"), -float("inf"), torch.tensor(NAN), torch.tensor([NAN])])
def test_nan_and_inf_never_pass_expect_number(got):
    with pytest.raises(AssertionError):
        expect_number(got, 3.0, "x")
    with pytest.raises(AssertionError):
        expect_number(got, 0.0, "x")


def test_nan_never_passes_expect_equal_or_expect_close():
    for got in (NAN, torch.tensor(NAN), [1, NAN], (NAN,)):
        for want in (1.0, 0, [1, 2.0], (3.0,)):
            with pytest.raises(AssertionError):
                expect_equal(got, want, "x")
    want = torch.tensor([1.0, 2.0])
    for got in (torch.tensor([NAN, 2.0]), torch.tensor([1.0, float("inf")]), torch.full((2,), NAN, dtype=torch.float64)):
        with pytest.raises(AssertionError):
            expect_close(got, want, "x")
    expect_number(2.0 * (1 + 1e-9), 2.0, "close enough")
    expect_equal(3, 3, "equal")


def test_student_values_in_messages_are_capped():
    with pytest.raises(AssertionError) as e:
        expect_equal("x" * 10_000_000, "y", "decode(...)")
    assert len(str(e.value)) < 500
    huge: list = []
    for _ in range(30):
        huge = [huge, huge]  # its full repr would have 2**30 parts
    assert len(short(huge)) <= 300
    ex = exercise("99.long_message_for_test", "a check whose message is huge", functions=("f",))
    try:
        @ex.check("huge", points=1, hint="none")
        def _huge(student, rng):
            raise AssertionError("z" * 1_000_000)

        [outcome] = run_checks(ex, LocalStudent({"f": lambda: 1}))
        assert len(outcome.message) <= MESSAGE_CHARS
    finally:
        del REGISTRY["99.long_message_for_test"]


def test_hidden_checks_run_in_the_grader_only_and_carry_visibility(capsys):
    ex = exercise("99.hidden_for_test", "visible and hidden checks", functions=("f",))
    try:
        @ex.check("visible", points=1, hint="h")
        def _visible(student, rng):
            expect_equal(student.call("f"), 1, "f()")

        @ex.check("instructor only", points=2, hint="h", hidden=True)
        def _hidden(student, rng):
            expect_equal(student.call("f"), 2, "f()")

        with pytest.raises(ValueError, match="visibility"):
            ex.check("bad", points=1, hint="h", visibility="sometimes")
        student = LocalStudent({"f": lambda: 1})
        graded = run_checks(ex, student)
        assert [(o.name, o.hidden, o.visibility, o.points) for o in graded] == [
            ("visible", False, "visible", 1.0), ("instructor only", True, "after_published", 0.0)]
        report = check("99.hidden_for_test", namespace={"f": lambda: 1})
        assert "instructor only" not in capsys.readouterr().out
        assert report.passed and (report.score, report.max_score) == (1, 1)
    finally:
        del REGISTRY["99.hidden_for_test"]


def test_random_inputs_depend_on_the_submission_and_the_check_only():
    seen = []
    ex = exercise("99.seeded_for_test", "records its random inputs", functions=("f",))
    try:
        @ex.check("a", points=1, hint="h")
        def _a(student, rng):
            seen.append(("a", torch.rand(3, generator=rng).tolist()))

        @ex.check("b", points=1, hint="h")
        def _b(student, rng):
            seen.append(("b", torch.rand(3, generator=rng).tolist()))

        student = LocalStudent({})
        run_checks(ex, student, key=b"submission one")
        run_checks(ex, student, key=b"submission one")
        run_checks(ex, student, key=b"submission two")
        first, again, other = seen[0:2], seen[2:4], seen[4:6]
        assert first == again, "a regrade must see the same inputs"
        assert first[0][1] != first[1][1], "each check gets its own inputs"
        assert first != other, "another submission gets other inputs"
        assert check_seed(b"k", "99.x", "a") == check_seed(b"k", "99.x", "a") != check_seed(b"k", "99.x", "b")
    finally:
        del REGISTRY["99.seeded_for_test"]


def test_check_in_a_notebook_is_reproducible_for_the_same_code():
    seen = []
    ex = exercise("99.fingerprint_for_test", "records its random inputs", functions=("f",))
    try:
        @ex.check("a", points=1, hint="h")
        def _a(student, rng):
            seen.append(torch.rand(2, generator=rng).tolist())

        def f():
            return [x for x in range(3)]  # a nested code object: its digest must not hold an address

        def g():
            return 2

        check("99.fingerprint_for_test", namespace={"f": f}, quiet=True)
        check("99.fingerprint_for_test", namespace={"f": f}, quiet=True)
        check("99.fingerprint_for_test", namespace={"f": g}, quiet=True)
        assert seen[0] == seen[1] != seen[2]
    finally:
        del REGISTRY["99.fingerprint_for_test"]


def test_protected_names_must_be_dotted_and_every_declared_one_resolves():
    with pytest.raises(ValueError, match="protects"):
        exercise("99.bad_protects", "x", protects="minimoe.moe.switch_aux_loss")
    with pytest.raises(ValueError, match="protects"):
        exercise("99.bad_protects", "x", protects=("not dotted",))
    declared = [(ex.id, name) for ex in REGISTRY.values() for name in ex.protects]
    assert len(declared) >= 25
    for exercise_id, name in declared:
        holder, attr, obj = resolve(name)
        assert callable(obj), f"{exercise_id}: {name}"
    with_reference = {ex.id for ex in REGISTRY.values() if ex.chapter <= "10"} - NO_REFERENCE
    assert {ex.id for ex in REGISTRY.values() if ex.protects} >= with_reference


def _wrapper_outcomes(chapter: str) -> dict:
    namespace: dict = {}
    exec(WRAPPERS[chapter], namespace)  # noqa: S102
    student = LocalStudent(namespace)
    return {ex.id: run_checks(ex, student, key=b"wrappers") for ex in exercises_for_chapter(chapter)
            if ex.id not in NO_REFERENCE}


@pytest.mark.parametrize("chapter", sorted(WRAPPERS))
def test_wrapping_the_answer_key_earns_nothing(chapter, monkeypatch):
    import contextlib

    import minimoe.grading.student as student_module

    for exercise_id, outcomes in _wrapper_outcomes(chapter).items():
        assert outcomes and all(o.points == 0 for o in outcomes), exercise_id
        assert all("own answer" in o.message for o in outcomes), [o.message for o in outcomes]
    # The same wrappers, with the guard switched off, earn full marks: the attack is real.
    monkeypatch.setattr(student_module, "guarded", lambda protects: contextlib.nullcontext([]))
    for exercise_id, outcomes in _wrapper_outcomes(chapter).items():
        assert all(o.passed for o in outcomes), (exercise_id, [o.message for o in outcomes if not o.passed])


def test_the_guard_restores_everything_and_catches_captured_references():
    import functools
    import types

    from minimoe.moe import switch_aux_loss

    original = switch_aux_loss.__code__
    captured = switch_aux_loss
    partial = functools.partial(switch_aux_loss)
    copied = types.FunctionType(switch_aux_loss.__code__, switch_aux_loss.__globals__, None, switch_aux_loss.__defaults__)
    softmax = torch.softmax
    probs = torch.rand(6, 3).softmax(-1)
    idx = probs.topk(1, dim=-1).indices
    for attempt in (lambda: captured(probs, idx), lambda: partial(probs, idx), lambda: copied(probs, idx)):
        with guarded(["minimoe.moe.switch_aux_loss"]) as hits:
            try:
                attempt()
            except Tripped:
                pass
        assert hits == ["minimoe.moe.switch_aux_loss"]
    for attempt in (lambda: softmax(probs, -1), lambda: probs.softmax(-1), lambda: torch.nn.functional.softmax(probs, -1)):
        with guarded(["torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax"]) as hits:
            try:
                attempt()
            except Tripped:
                pass
        assert hits, "a softmax call went unnoticed"
    assert switch_aux_loss.__code__ is original and torch.softmax is softmax
    assert "softmax" not in vars(torch.Tensor)
    assert torch.allclose(captured(probs, idx), copied(probs, idx))
