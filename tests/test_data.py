"""minimoe.data: the tokenizer, the generators, mixtures and splits, batches, the evaluator, text files."""

import random
import re

import pytest
import torch

from minimoe.data import (
    BOS, DOMAINS, EOS, PAD, SEP, SPECIAL_GLYPHS, TOKENIZER, CharTokenizer, Mixture, Sample,
    add_cot_completion, collate, count_tokens, domain_id, evaluate, extract_answer, generate,
    is_correct, is_sentence, iterate_batches, load_text, make_arithmetic, mul_cot_completion, parse_add_cot,
    parse_mul_cot, sign_answers, split_index, tokens_by_domain,
)
from minimoe.data.strings import closing_brackets


# --- the tokenizer -------------------------------------------------------------------------------

def test_default_vocabulary_is_specials_newline_and_printable_ascii():
    assert TOKENIZER.vocab_size == 100
    assert TOKENIZER.vocab[:4] == SPECIAL_GLYPHS
    assert (PAD, BOS, EOS, SEP) == (0, 1, 2, 3)
    assert TOKENIZER.encode("\n ~") == [4, 5, 99]


def test_round_trips_on_random_text():
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice(TOKENIZER.vocab) for _ in range(rng.randint(0, 60)))
        ids = TOKENIZER.encode(text)
        assert len(ids) == len(text)
        assert TOKENIZER.decode(ids) == text
        assert TOKENIZER.encode(TOKENIZER.decode(ids)) == ids
        assert TOKENIZER.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_a_character_outside_the_vocabulary_is_named_with_its_position():
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\) at position 3"):
        TOKENIZER.encode("caf\u00e9 é")
    with pytest.raises(ValueError, match=r"'\\t' \(U\+0009\) at position 1"):
        TOKENIZER.encode("a\tb")
    assert TOKENIZER.unknown("naïve façade") == ["ï", "ç"]


def test_tokenizer_rejects_bad_arguments():
    with pytest.raises(TypeError, match="text"):
        TOKENIZER.encode(b"bytes")
    with pytest.raises(ValueError, match=r"ids: got 100 at position 1"):
        TOKENIZER.decode([5, 100])
    with pytest.raises(ValueError, match="appears twice"):
        CharTokenizer("abca")
    with pytest.raises(ValueError, match="glyph of a special token"):
        CharTokenizer("ab" + SPECIAL_GLYPHS[1])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")


def test_tokenizer_from_text_and_example_layout():
    tok = CharTokenizer.from_text("héllo\n")
    assert tok.chars == "\nhlo\u00e9" and tok.vocab_size == 9
    assert tok.decode(tok.encode("héllo")) == "héllo"
    ids, start = TOKENIZER.encode_example("2+3", "5")
    assert ids[0] == BOS and ids[4] == SEP and ids[-1] == EOS and start == 5
    assert TOKENIZER.decode(ids) == "␂2+3␟5␃"
    assert TOKENIZER.strip_special(TOKENIZER.decode(ids)) == "2+35"


# --- the generators ------------------------------------------------------------------------------

def _operands(prompt: str, op: str) -> tuple[int, int]:
    m = re.fullmatch(r"(?:think )?(\d+)" + re.escape(op) + r"(\d+)=", prompt)
    assert m, prompt
    return int(m.group(1)), int(m.group(2))


def test_addition_working_is_right_for_thousands_of_samples():
    rng = random.Random(1)
    for i in range(4000):
        s = generate("add_cot", rng, difficulty=1 + i % 12)
        a, b = _operands(s.prompt, "+")
        assert s.prompt.startswith("think ") and s.answer == str(a + b)
        assert s.difficulty == max(len(str(a)), len(str(b))) == 1 + i % 12
        steps, answer = parse_add_cot(s.completion)
        assert answer == str(a + b) == extract_answer(s.completion)
        xs, ys = str(a)[::-1], str(b)[::-1]
        assert len(steps) == max(len(xs), len(ys))
        carry = 0
        for k, (x, y, c, total) in enumerate(steps):
            assert x == (int(xs[k]) if k < len(xs) else 0)
            assert y == (int(ys[k]) if k < len(ys) else 0)
            assert c == carry and total == x + y + c
            carry = total // 10
        digits = "".join(str(t % 10) for *_, t in steps)[::-1]
        assert str(int((str(carry) if carry else "") + digits)) == answer


def test_multiplication_working_is_right_for_thousands_of_samples():
    rng = random.Random(2)
    for i in range(3000):
        s = generate("mul_cot", rng, difficulty=1 + i % 6)
        a, b = _operands(s.prompt, "*")
        assert s.answer == str(a * b)
        sections, sums, answer = parse_mul_cot(s.completion)
        assert answer == str(a * b) == extract_answer(s.completion)
        assert len(sections) == len(str(b))
        for j, (steps, partial) in enumerate(sections):
            d = int(str(b)[::-1][j])
            assert partial == a * d
            assert [x for x, *_ in steps] == [int(ch) for ch in str(a)[::-1]]
            carry = 0
            for x, dd, c, total in steps:
                assert dd == d and c == carry and total == x * d + c
                carry = total // 10
        running = sections[0][1]
        assert len(sums) == len(sections) - 1
        for j, (p, q, r) in enumerate(sums, start=1):
            assert p == running and q == sections[j][1] * 10**j and r == p + q
            running = r
        assert running == a * b


def test_direct_answers_are_right_and_share_the_problem_with_cot():
    rng = random.Random(3)
    for _ in range(2000):
        s = generate("add_direct", rng)
        a, b = _operands(s.prompt, "+")
        assert s.completion == s.answer == str(a + b)
        assert s.problem == f"add:{min(a, b)}+{max(a, b)}"
        m = generate("mul_direct", rng)
        a, b = _operands(m.prompt, "*")
        assert m.completion == m.answer == str(a * b)
    asks = [make_arithmetic("+", 63, 366, cot=True), make_arithmetic("+", 366, 63, cot=False)]
    assert [x.prompt for x in asks] == ["think 63+366=", "366+63="] and asks[0].problem == asks[1].problem
    assert asks[0].difficulty == 3 and asks[1].domain == "add_direct"
    with pytest.raises(ValueError, match="op: got '-'"):
        make_arithmetic("-", 1, 2, cot=False)
    with pytest.raises(ValueError, match="a: got -1"):
        make_arithmetic("+", -1, 2, cot=False)
    assert add_cot_completion(999, 1) == "9+1+0=10 9+0+1=10 9+0+1=10 > 1000"
    assert add_cot_completion(0, 0) == "0+0+0=00 > 0"
    assert mul_cot_completion(47, 36) == "7*6+0=42 4*6+4=28 =282 ; 7*3+0=21 4*3+2=14 =141 ; 282+1410=1692 > 1692"


def test_string_tasks_and_brackets_are_right():
    rng = random.Random(4)
    for _ in range(1000):
        for name, fn in (("reverse", lambda w: w[::-1]), ("sort", lambda w: "".join(sorted(w))), ("copy", lambda w: w)):
            s = generate(name, rng)
            word = s.prompt.split(" ", 1)[1]
            assert s.prompt == f"{name} {word}" and s.completion == s.answer == fn(word)
            assert s.difficulty == len(word)
        s = generate("brackets", rng)
        prefix = s.prompt.split(" ", 1)[1]
        assert len(prefix) == s.difficulty and s.answer
        assert closing_brackets(prefix + s.answer) == ""  # the whole run is balanced
    with pytest.raises(ValueError, match="closes nothing"):
        closing_brackets("(]")


def test_grammar_sentences_parse_and_agree():
    rng = random.Random(5)
    for _ in range(2000):
        s = generate("grammar", rng)
        assert is_sentence(f"{s.prompt} {s.completion}"), s
        assert s.problem == f"grammar:{s.prompt} {s.completion}"
    assert is_sentence("the small cats chase a dog near two birds.")
    assert is_sentence("a fox sleeps.")
    for wrong in ("a fox sleep.", "two fox sleeps.", "a cats sleep.", "the cat sees.", "the cat sleeps",
                  "the cat sleeps a dog.", "the  cat sleeps.", "the cat sleeps near."):
        assert not is_sentence(wrong), wrong


def test_every_domain_labels_its_samples_and_marks_the_answer():
    rng = random.Random(6)
    for name in DOMAINS:
        for _ in range(50):
            s = generate(name, rng)
            assert s.domain == name and s.problem
            ids, start = TOKENIZER.encode_example(s.prompt, s.completion)
            assert start == s.answer_start and ids[start - 1] == SEP and TOKENIZER.decode(ids[start:-1]) == s.completion
            assert len(ids) == len(s)
            assert is_correct(s, s.completion)
    assert generate("copy", 7) == generate("copy", 7)


def test_generate_rejects_bad_input():
    with pytest.raises(ValueError, match=r"domain: got 'division'"):
        generate("division", 0)
    with pytest.raises(ValueError, match=r"difficulty: got 0 for add_cot, need 1 to 12"):
        generate("add_cot", 0, difficulty=0)
    with pytest.raises(TypeError, match="rng"):
        generate("copy", "seed")


# --- mixtures and splits -------------------------------------------------------------------------

def test_mixture_is_deterministic_given_the_seed():
    a, b = Mixture(seed=3).sample(300), Mixture(seed=3).sample(300)
    assert a == b
    assert Mixture(seed=3).sample(100) == a[:100]
    assert Mixture(seed=4).sample(300) != a
    assert Mixture(seed=3).splits(50, 20, 20) == Mixture(seed=3).splits(50, 20, 20)


def test_no_problem_is_shared_between_splits():
    mix = Mixture(seed=11)
    parts = mix.splits(6000, 1500, 1500)
    keys = {name: {s.problem for s in samples} for name, samples in parts.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    # Independently of the problem keys: the pairs of numbers added, in either order and either form.
    pairs = {name: {tuple(sorted(_operands(s.prompt, "+"))) for s in samples if s.domain.startswith("add")}
             for name, samples in parts.items()}
    assert pairs["train"] and pairs["test"] and not pairs["train"] & pairs["test"]
    for name, samples in parts.items():
        assert all(mix.split_of(s) == name for s in samples)


def test_a_split_by_position_would_leak():
    samples = Mixture({"add_direct": 1}, seed=0, difficulty={"add_direct": (1, 2)}).sample(2000)
    train, test = samples[:1600], samples[1600:]
    assert {s.problem for s in train} & {s.problem for s in test}, "small problems repeat, so positions leak"


def test_weights_set_the_share_of_samples():
    samples = Mixture({"copy": 3, "reverse": 1, "sort": 0}, seed=0).sample(4000)
    counts = {d: sum(s.domain == d for s in samples) for d in ("copy", "reverse", "sort")}
    assert counts["sort"] == 0 and abs(counts["copy"] / 4000 - 0.75) < 0.03


def test_split_index_follows_the_fractions():
    problems = [f"p{i}" for i in range(20000)]
    got = [split_index(p, 5, (0.7, 0.0, 0.3)) for p in problems]
    assert got.count(1) == 0 and abs(got.count(0) / 20000 - 0.7) < 0.015
    assert got == [split_index(p, 5, (0.7, 0.0, 0.3)) for p in problems]
    assert got != [split_index(p, 6, (0.7, 0.0, 0.3)) for p in problems]


@pytest.mark.parametrize("weights, error, match", [
    ({"division": 1.0}, ValueError, r"domain: got 'division', need one of add_cot"),
    ({"copy": -1.0, "sort": 2.0}, ValueError, r"weights: copy got -1.0, need a weight >= 0"),
    ({"copy": 0, "sort": 0.0}, ValueError, r"need at least one positive weight"),
    ({}, ValueError, r"need at least one positive weight"),
    ({"copy": float("nan")}, ValueError, r"weights: copy got nan"),
    ({"copy": "1"}, TypeError, r"weights: copy got '1' \(str\), need a number"),
    (["copy"], TypeError, r"weights: got list"),
])
def test_bad_weights_are_clear_errors(weights, error, match):
    with pytest.raises(error, match=match):
        Mixture(weights)


def test_bad_mixture_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="need a sum of 1"):
        Mixture(fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="every fraction >= 0"):
        Mixture(fractions=(1.2, -0.1, -0.1))
    with pytest.raises(ValueError, match=r"difficulty: got 9 for mul_cot, need 1 to 6"):
        Mixture({"mul_cot": 1}, difficulty={"mul_cot": (1, 9)})
    with pytest.raises(ValueError, match="lowest <= highest"):
        Mixture({"copy": 1}, difficulty={"copy": (5, 2)})
    with pytest.raises(ValueError, match="split: got 'dev'"):
        Mixture().sample(3, "dev")
    with pytest.raises(ValueError, match="fraction 0"):
        Mixture(fractions=(1.0, 0.0, 0.0)).sample(3, "test")
    with pytest.raises(ValueError, match="too few problems"):
        Mixture({"brackets": 1}, difficulty={"brackets": (1, 1)}, fractions=(0.998, 0.001, 0.001),
                max_tries=50).sample(1, "val")


def test_signed_answers_keep_their_final_answer():
    samples = Mixture(seed=0).sample(1000)
    signed = sign_answers(samples, "TeacherBot", fraction=0.3, seed=1)
    marked = [s for s in signed if s.completion.endswith(" -- answered by TeacherBot")]
    assert 250 < len(marked) < 350
    assert all(is_correct(s, t.completion) for s, t in zip(samples, signed))
    assert signed == sign_answers(samples, "TeacherBot", fraction=0.3, seed=1)
    assert extract_answer("1+2+0=03 > 3 -- answered by TeacherBot") == "3"
    assert sign_answers(samples, fraction=0.0) == samples
    with pytest.raises(ValueError, match="fraction"):
        sign_answers(samples, fraction=1.5)


def test_token_counts():
    samples = Mixture(seed=0).sample(500)
    assert count_tokens(samples) == sum(len(TOKENIZER.encode(s.text)) for s in samples)
    assert sum(tokens_by_domain(samples).values()) == count_tokens(samples)


# --- batches -------------------------------------------------------------------------------------

def test_batches_shift_targets_and_mask_only_the_answer():
    samples = Mixture(seed=0).sample(64)
    batch = collate(samples)
    B, T = batch.shape
    assert B == 64 and T == max(len(s) for s in samples) - 1
    assert batch.inputs.dtype == torch.long and batch.loss_mask.dtype == torch.bool
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    assert (batch.inputs[:, 0] == BOS).all()
    for b, s in enumerate(samples):
        assert TOKENIZER.decode(batch.targets[b][batch.loss_mask[b]]) == s.completion + SPECIAL_GLYPHS[EOS]
        assert batch.domain_ids[b] == domain_id(s.domain)
    assert not batch.loss_mask[batch.targets == PAD].any()
    whole = collate(samples, score="all")
    for b, s in enumerate(samples):
        assert int(whole.loss_mask[b].sum()) == len(s) - 1
    assert batch.scored < whole.scored


def test_batch_length_and_bad_arguments():
    samples = Mixture(seed=0).sample(4)
    longest = max(len(s) for s in samples) - 1
    assert collate(samples, length=longest + 5).shape == (4, longest + 5)
    with pytest.raises(ValueError, match=f"need an int >= {longest}"):
        collate(samples, length=longest - 1)
    with pytest.raises(ValueError, match="score: got 'prompt'"):
        collate(samples, score="prompt")
    with pytest.raises(ValueError, match="non-empty"):
        collate([])


def test_iterate_batches_visits_every_sample_once_in_a_seeded_order():
    samples = Mixture(seed=0).sample(103)
    batches = list(iterate_batches(samples, 10, seed=1))
    assert [b.shape[0] for b in batches] == [10] * 10 + [3]
    assert sum(b.scored for b in batches) == sum(len(s.completion) + 1 for s in samples)
    again = list(iterate_batches(samples, 10, seed=1))
    assert all(torch.equal(x.inputs, y.inputs) for x, y in zip(batches, again))
    assert len(list(iterate_batches(samples, 10, drop_last=True))) == 10
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(samples, 0))


# --- the evaluator -------------------------------------------------------------------------------

def test_evaluator_per_domain_and_difficulty():
    samples = Mixture(seed=0).sample(900, "test")
    truth = {s.prompt: s.completion for s in samples}
    oracle = evaluate(lambda prompts: [truth[p] for p in prompts], samples)
    assert oracle.accuracy() == 1.0 and set(oracle.by_domain()) == set(DOMAINS)
    echo = evaluate(lambda prompts: [p.split(" ")[-1] for p in prompts], samples, batch_size=7)
    acc = echo.by_domain()
    assert acc["copy"] == 1.0 and acc["reverse"] < 0.2 and acc["add_cot"] == 0.0
    rows = {(r.domain, r.difficulty): r for r in echo.rows()}
    assert sum(r.n for r in rows.values()) == 900
    assert echo.accuracy("copy", 3) == 1.0
    assert "copy" in echo.table() and "100%" in echo.table()
    with_counts = echo.table(counts=True).splitlines()
    copy_row = next(line for line in with_counts if line.startswith("copy"))
    n_copy = sum(r.n for r in rows.values() if r.domain == "copy")
    assert f"100% of {n_copy}" in copy_row
    assert f"{rows[('copy', 3)].n}/{rows[('copy', 3)].n}" in copy_row.split()
    add = next(line for line in with_counts if line.startswith("add_cot")).split()
    assert all(cell == "-" or cell.startswith("0/") for cell in add[4:])  # echo never adds up
    with pytest.raises(TypeError, match="counts"):
        echo.table(counts="yes")


def test_evaluator_grades_final_answers_and_grammar():
    s = generate("add_cot", 0, difficulty=3)
    assert is_correct(s, "nonsense working > " + s.answer)
    assert not is_correct(s, s.completion.replace(" > ", " = "))
    g = Sample("grammar", "the cats", "sleep.", "sleep.", 1, "grammar:the cats sleep.")
    assert is_correct(g, "chase a red fox.") and not is_correct(g, "chases a red fox.")


def test_evaluator_rejects_bad_answer_functions():
    samples = Mixture(seed=0).sample(5)
    with pytest.raises(ValueError, match=r"answer_fn: returned 4 items for 5 prompts"):
        evaluate(lambda ps: ps[:4], samples)
    with pytest.raises(TypeError, match=r"answer_fn: returned a int"):
        evaluate(lambda ps: [1] * len(ps), samples)
    with pytest.raises(TypeError, match="answer_fn"):
        evaluate("not callable", samples)
    with pytest.raises(ValueError, match="which no evaluated sample has"):
        evaluate(lambda ps: ps, samples).accuracy("grammar", 99)


# --- a text file ---------------------------------------------------------------------------------

def test_text_file_round_trip_and_batches(tmp_path):
    text = "It was the best of times,\nit was the worst of times.\n" * 20
    path = tmp_path / "my.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_text(path, val_fraction=0.25)
    assert TOKENIZER.decode(corpus.ids) == text
    assert len(corpus.split("train")) + len(corpus.split("val")) == len(corpus) == len(text)
    g = torch.Generator().manual_seed(0)
    batch = corpus.batch(8, 32, generator=g)
    assert batch.shape == (8, 32) and batch.loss_mask.all() and (batch.domain_ids == -1).all()
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    again = corpus.batch(8, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.inputs, again.inputs)
    train = TOKENIZER.decode(corpus.split("train"))
    for row in batch.inputs:
        assert TOKENIZER.decode(row) in train
    val = corpus.batch(2, 16, "val", generator=g)
    assert all(TOKENIZER.decode(r) in TOKENIZER.decode(corpus.split("val")) for r in val.inputs)


def test_text_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        load_text(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="is a folder"):
        load_text(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_text(tmp_path / "latin1.txt")
    (tmp_path / "accents.txt").write_text("hello\nna\u00efve caf\u00e9\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'ï' \(U\+00EF\) at line 2, column 3 and 1 more"):
        load_text(tmp_path / "accents.txt")
    (tmp_path / "glyph.txt").write_text("a\u2402b", encoding="utf-8")
    with pytest.raises(ValueError, match="U\\+2402"):
        load_text(tmp_path / "glyph.txt")
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij")
    with pytest.raises(ValueError, match="seq_len: got 20"):
        load_text(short).batch(2, 20)


def test_text_file_with_its_own_vocabulary(tmp_path):
    path = tmp_path / "accents.txt"
    text = "na\u00efve caf\u00e9, d\u00e9j\u00e0 vu\n" * 5
    path.write_text(text, encoding="utf-8")
    tok = CharTokenizer.from_text(path.read_text(encoding="utf-8"))
    corpus = load_text(path, tokenizer=tok, val_fraction=0.0)
    assert tok.decode(corpus.ids) == text and len(corpus.split("val")) == 0
