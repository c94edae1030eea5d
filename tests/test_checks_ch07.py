"""Chapter 07's sharding exercise: the reference earns every point, each usual mistake loses its own check."""

import math

from minimoe.grading import get_exercise, run_checks
from minimoe.grading.student import LocalStudent


def make(group_of_experts, rounding=math.ceil, moments=8):
    def bytes_per_gpu(dense, expert, world, zero, ep):
        mine = [(dense, world), (expert // ep, group_of_experts(world, ep))]

        def held(stage, per_param):
            return sum((rounding(n / g) if zero >= stage else n) * per_param for n, g in mine)

        return {"weights": held(3, 4), "gradients": held(2, 4), "optimizer": held(1, moments)}
    return bytes_per_gpu


def passed(fn) -> set[str]:
    outcomes = run_checks(get_exercise("07.sharded_bytes"), LocalStudent({"bytes_per_gpu": fn}))
    return {o.name for o in outcomes if o.passed}


ALL = {"one GPU, and ZeRO-1", "ZeRO-2 and ZeRO-3, shards rounded up", "expert parallelism with ZeRO"}


def test_the_reference_passes():
    assert passed(make(lambda world, ep: world // ep)) == ALL


def test_experts_sharded_over_every_gpu_lose_the_ep_check():
    assert passed(make(lambda world, ep: world)) == ALL - {"expert parallelism with ZeRO"}


def test_shards_rounded_down_lose_the_rounding_check():
    assert "ZeRO-2 and ZeRO-3, shards rounded up" not in passed(make(lambda world, ep: world // ep, math.floor))


def test_adam_moments_in_bf16_are_not_mixed_precision():
    assert passed(make(lambda world, ep: world // ep, moments=4)) == set()
