"""ResumableSampler and EvalShardSampler: sharding, epochs, mid-epoch skip."""

import pytest
from torch.utils.data import DistributedSampler

from recon_ft.data import EvalShardSampler, ResumableSampler, SampleKey, unpack_key


def _indices(sampler):
    return [k.index for k in sampler]


@pytest.mark.parametrize("data_len", [10, 11])
def test_two_ranks_disjoint_and_cover_the_data(data_len):
    shards = [_indices(ResumableSampler(data_len, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == (data_len + 1) // 2
    assert set(shards[0]) | set(shards[1]) == set(range(data_len))
    overlap = set(shards[0]) & set(shards[1])
    assert len(overlap) == (0 if data_len % 2 == 0 else 1)  # one padded duplicate, as DistributedSampler
    dropped = [_indices(ResumableSampler(data_len, seed=1, drop_last=True, rank=r, world_size=2)) for r in range(2)]
    assert len(dropped[0]) == len(dropped[1]) == data_len // 2 and not set(dropped[0]) & set(dropped[1])


def test_same_order_as_distributed_sampler_per_epoch():
    class Sized:
        def __len__(self):
            return 13

    for epoch in (0, 3):
        for rank in range(2):
            ours = ResumableSampler(13, seed=7, rank=rank, world_size=2)
            ref = DistributedSampler(Sized(), num_replicas=2, rank=rank, shuffle=True, seed=7)
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            keys = list(ours)
            assert [k.index for k in keys] == list(ref)
            assert all(isinstance(k, SampleKey) and k.epoch == epoch for k in keys)


def test_epochs_reshuffle_and_repeat():
    s = ResumableSampler(50, seed=0)
    e0 = _indices(s)
    assert _indices(s) == e0 and sorted(e0) == list(range(50))
    s.set_epoch(1)
    assert _indices(s) != e0 and sorted(_indices(s)) == list(range(50))
    assert _indices(ResumableSampler(8, shuffle=False)) == list(range(8))


def test_skip_resumes_with_exactly_the_remaining_indices():
    for rank in range(2):
        s = ResumableSampler(21, seed=3, rank=rank, world_size=2)
        s.set_epoch(2)
        full = list(s)
        assert len(s) == s.num_samples == 11
        s.skip(4)
        assert len(s) == 7
        rest = list(s)
        assert rest == full[4:]
        assert len(s) == 11 and list(s) == full  # consumed: the next iteration is whole again
    s.skip(100)
    assert len(s) == 0 and list(s) == []
    with pytest.raises(ValueError):
        s.skip(-1)


def test_eval_shards_each_item_once_without_padding():
    shards = [list(EvalShardSampler(11, rank=r, world_size=2)) for r in range(2)]
    assert shards == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    assert [len(EvalShardSampler(11, rank=r, world_size=2)) for r in range(2)] == [6, 5]
    assert list(EvalShardSampler(3)) == [0, 1, 2]  # no process group: one rank


def test_unpack_key():
    assert unpack_key(5) == (5, 0)
    assert unpack_key(SampleKey(5, 2)) == (5, 2)
