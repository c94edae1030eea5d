"""minimoe.profiler.sharding: bytes per GPU under ZeRO, expert and pipeline parallelism, predicted and counted."""

import pytest

from minimoe.config import ModelConfig
from minimoe.profiler.sharding import MIXED, V3, count_sharded, expert_parameters, shard, sharded_memory
from minimoe.recipe import count_params

MOE = ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4, ffn_hidden=48, n_routed_experts=4,
                  n_shared_experts=1, top_k=2, expert_hidden=16, n_dense_layers=1, max_seq_len=32)


def test_one_gpu_holds_16_bytes_per_parameter_under_mixed_precision():
    n = count_params(MOE).total
    one = sharded_memory(MOE, world=1)
    assert (one.parameters, one.gradients, one.optimizer) == (4 * n, 4 * n, 8 * n) and one.total == 16 * n
    assert sharded_memory(MOE, world=1, precision=V3).total == 12 * n


def test_each_zero_stage_shards_one_more_piece():
    n, w = count_params(MOE).total, 4
    stages = [sharded_memory(MOE, world=w, zero=z) for z in range(4)]
    assert stages[0].optimizer == 8 * n and stages[1].optimizer == 8 * shard(n, w)
    assert stages[1].gradients == 4 * n and stages[2].gradients == 4 * shard(n, w)
    assert stages[2].parameters == 4 * n and stages[3].parameters == 4 * shard(n, w)
    assert [s.total for s in stages] == sorted((s.total for s in stages), reverse=True)


def test_expert_parallelism_splits_only_the_routed_experts():
    e = expert_parameters(MOE)
    dense = count_params(MOE).total - e
    two = sharded_memory(MOE, world=2, ep=2)
    assert two.expert_params == e // 2 and two.dense_params == dense
    assert two.parameters == 4 * (dense + e // 2)


def test_deepseek_v3_on_2048_gpus():
    """V3's layout (its report): 16-way pipeline, 64-way expert parallelism, ZeRO-1 data parallelism;
    fp32 master weights and gradients, bf16 AdamW moments."""
    v3 = sharded_memory("deepseek-v3", world=2048, zero=1, ep=64, pp=16, precision=V3)
    assert v3.expert_params == -(-expert_parameters("deepseek-v3") // (16 * 64))
    assert 5e9 < v3.total < 40e9  # fits an 80 GB H800 with room for activations
    alone = sharded_memory("deepseek-v3", world=1, precision=V3)
    assert alone.total == 12 * count_params("deepseek-v3").total and alone.total / v3.total > 400


@pytest.mark.parametrize("kwargs,name", [
    (dict(world=0), "world"), (dict(world=4, zero=4), "zero"), (dict(world=6, ep=4), "world"),
    (dict(world=6, ep=3), "ep"), (dict(world=4, pp=0), "pp"),
])
def test_bad_layouts_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        sharded_memory(MOE, **kwargs)
    with pytest.raises(ValueError, match="^ep:"):
        sharded_memory(ModelConfig(vocab_size=37, d_model=32, n_layers=1, n_heads=4, ffn_hidden=8), world=2, ep=2)


def test_counted_in_real_processes_equals_the_prediction():
    counted = count_sharded(MOE, worlds=(2, 4))
    assert set(counted) == {2, 4}
    for world, ranks in counted.items():
        assert len(ranks) == world
        for i, row in enumerate(ranks[0]):
            assert all(r[i] == row for r in ranks), "every rank holds the same share"
            assert row["whole"], f"world {world}, {row}: the shards gathered back are not the model"
            want = sharded_memory(MOE, world, row["zero"], row["ep"], precision=MIXED)
            assert (row["parameters"], row["gradients"], row["optimizer"]) == (
                want.parameters, want.gradients, want.optimizer), (world, row, want)
        assert {(r["zero"], r["ep"]) for r in ranks[0]} == {(z, e) for z in range(4) for e in (1, world)}
