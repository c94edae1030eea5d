"""minimoe.course: reproducible setup, device choice, the chapter list."""

import random

import numpy as np
import pytest
import torch

from minimoe import course


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_setup_makes_every_generator_repeat(capsys):
    threads = torch.get_num_threads()
    try:
        course.setup(seed=123, threads=1)
        first = _draws()
        course.setup(seed=123, threads=1)
        assert _draws() == first
        course.setup(seed=124, threads=1, verbose=False)
        assert _draws() != first
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "device cpu" in out and "seed 123" in out


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_setup_rejects_bad_thread_counts(bad):
    with pytest.raises(ValueError, match="threads"):
        course.setup(threads=bad, verbose=False)


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match="seed"):
        course.seed_everything("0")


def test_device_is_the_cpu_here_and_its_dtype_is_float32():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert course.device().type in ("cpu", "mps")
    assert course.preferred_dtype("cpu") is torch.float32


def test_kitchen_reports_versions():
    info = course.kitchen()
    assert info["torch"] == torch.__version__
    assert info["triton"] is None or isinstance(info["triton"], str)
    assert info["colab"] is False


def test_chapters_are_numbered_in_order_and_unique():
    numbers = [c.number for c in course.CHAPTERS]
    assert numbers == [f"{i:02d}" for i in range(len(numbers))]
    assert len({c.slug for c in course.CHAPTERS}) == len(numbers)
    assert course.chapter(3).number == "03" and course.chapter("03").slug == course.CHAPTERS[3].slug


@pytest.mark.parametrize("bad", ["99", 42, "three"])
def test_unknown_chapter_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="chapter"):
        course.chapter(bad)


def test_course_map_links_only_what_exists(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "00_setup_and_tour.ipynb").write_text("{}")
    table = course.course_map(tmp_path)
    row00 = next(line for line in table.splitlines() if line.startswith("| 00 "))
    row01 = next(line for line in table.splitlines() if line.startswith("| 01 "))
    assert "notebooks/00_setup_and_tour.ipynb" in row00 and "colab.research.google.com" in row00
    assert "planned" in row00  # no exercise file in tmp_path
    assert "colab" not in row01 and row01.count("planned") == 2
