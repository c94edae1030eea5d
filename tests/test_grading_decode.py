"""Answer files are read and decoded without trusting them: every hostile file is refused, quickly."""

import io
import os
import time

import pytest
import torch

from evil_answers import crafted
from minimoe.grading.decode import AnswerDecoder, Caps, DecodeError, read_answer, rebuild

EVIL = crafted()


@pytest.fixture(scope="module")
def decoder():
    d = AnswerDecoder(timeout=20, cpu_seconds=20)
    yield d
    d.close()


def saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_plain_answers_come_back_equal(decoder):
    value = {"status": "ok", "value": (torch.arange(6.0).view(2, 3)[:, 1:], [1, 2.5, "x", None, True], {3: "k"})}
    got = decoder.decode(saved(value))
    t, items, d = got["value"]
    assert torch.equal(t, torch.tensor([[1.0, 2.0], [4.0, 5.0]])) and t.is_contiguous()
    assert items == [1, 2.5, "x", None, True] and d == {3: "k"}
    assert isinstance(got["value"], tuple)


@pytest.mark.parametrize("name, message, seconds", [
    ("hash_bomb", "took more than", 4.0),  # it never ends: the decoder gives up when told
    ("deep_key", "crashed the decoder|took more than", 20.0),  # a loaded machine may run out of time first
    ("repr_bomb", "more than 200000 parts", 20.0),
    ("compressed", "compressed entry", 20.0),
    ("bad_key", "dict key of type tuple", 20.0),
])
def test_hostile_answers_are_refused_and_the_decoder_carries_on(decoder, name, message, seconds):
    data = EVIL[name]()
    assert len(data) < 2_000_000
    start = time.process_time()
    with pytest.raises(DecodeError, match=message):
        decoder.decode(data, seconds)
    assert time.process_time() - start < 5, "the grader's own process did the work"
    assert decoder.decode(saved({"status": "ok", "value": 1}))["value"] == 1


def test_rebuild_caps_depth_nodes_numbers_and_text():
    nested: list = []
    for _ in range(40):
        nested = [nested]
    with pytest.raises(DecodeError, match="nested more than"):
        rebuild(nested, Caps(max_depth=32))
    with pytest.raises(DecodeError, match="parts"):
        rebuild(list(range(100)), Caps(max_nodes=50))
    with pytest.raises(DecodeError, match="numbers in tensors"):
        rebuild([torch.zeros(10), torch.zeros(10)], Caps(max_elements=15))
    with pytest.raises(DecodeError, match="characters"):
        rebuild(["a" * 10, "b" * 10], Caps(max_string=15))
    with pytest.raises(DecodeError, match="4096 bits"):
        rebuild(1 << 5000)
    with pytest.raises(DecodeError, match="complex"):
        rebuild([1j])
    view = torch.zeros(1).expand(1 << 30)  # a gigantic view of one number
    with pytest.raises(DecodeError, match="numbers in tensors"):
        rebuild(view)
    shared = [1, 2]
    assert rebuild([shared, shared]) == [[1, 2], [1, 2]]


def test_answer_files_must_be_regular_small_and_not_links(tmp_path):
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "ok.pt").write_bytes(b"abc")
        assert read_answer(folder, "ok.pt") == b"abc"
        os.mkfifo(tmp_path / "fifo.pt")
        start = time.monotonic()
        with pytest.raises(DecodeError, match="not a regular file"):
            read_answer(folder, "fifo.pt")  # no writer: a blocking open would wait forever
        assert time.monotonic() - start < 20
        secret = tmp_path / "secret"
        secret.write_text("the grader's file")
        os.symlink(secret, tmp_path / "link.pt")
        with pytest.raises(DecodeError, match="could not be opened"):
            read_answer(folder, "link.pt")
        with open(tmp_path / "big.pt", "wb") as f:
            f.truncate(1 << 30)  # sparse: a gigabyte that costs nothing on disk
        with pytest.raises(DecodeError, match="more than"):
            read_answer(folder, "big.pt", max_bytes=1 << 20)
        with pytest.raises(FileNotFoundError):
            read_answer(folder, "missing.pt")
    finally:
        os.close(folder)
