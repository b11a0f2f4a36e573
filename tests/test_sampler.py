"""Level mixing, atom-budget batching, rank sharding and mid-epoch resume."""

from __future__ import annotations

import numpy as np
import pytest

from mfdata.sampler import FidelityBatchSampler, LevelMixing, interleave, make_batches

RNG = np.random.default_rng(0)
N_ATOMS = RNG.integers(3, 30, 1300)
POOLS = {
    "gfn2-xtb": np.arange(0, 1000),
    "wb97x-631gd": np.arange(1000, 1200),
    "ccsdt-ccpvdz": np.arange(1200, 1300),
}


def level_of(sample: int) -> str:
    return next(level for level, ids in POOLS.items() if sample in set(ids.tolist()))


def drawn_fractions(sampler: FidelityBatchSampler) -> dict[str, float]:
    samples = np.concatenate([np.array(b) for b in sampler])
    counts = {level: np.isin(samples, ids).sum() for level, ids in POOLS.items()}
    return {level: c / len(samples) for level, c in counts.items()}


def test_natural_epoch_sees_every_sample_once():
    sampler = FidelityBatchSampler(POOLS, N_ATOMS, batch_size=7, seed=1)
    samples = np.concatenate([np.array(b) for b in sampler])
    assert sorted(samples.tolist()) == list(range(1300))


@pytest.mark.parametrize(
    ("mixing", "expected"),
    [
        (
            LevelMixing(mode="balanced"),
            {"gfn2-xtb": 1 / 3, "wb97x-631gd": 1 / 3, "ccsdt-ccpvdz": 1 / 3},
        ),
        (
            LevelMixing(mode="explicit", ratios={"gfn2-xtb": 1, "ccsdt-ccpvdz": 1}),
            {"gfn2-xtb": 0.5, "wb97x-631gd": 0.0, "ccsdt-ccpvdz": 0.5},
        ),
        (
            LevelMixing(mode="temperature", temperature=2.0),
            {
                level: len(ids) ** 0.5 / sum(len(i) ** 0.5 for i in POOLS.values())
                for level, ids in POOLS.items()
            },
        ),
    ],
)
def test_mixing_ratios(mixing, expected):
    sampler = FidelityBatchSampler(POOLS, N_ATOMS, mixing=mixing, epoch_size=3000, batch_size=10)
    for level, fraction in drawn_fractions(sampler).items():
        assert fraction == pytest.approx(expected[level], abs=1e-3)


def test_oversampled_level_repeats_only_after_all_seen():
    mixing = LevelMixing(mode="explicit", ratios={"ccsdt-ccpvdz": 1})
    sampler = FidelityBatchSampler(POOLS, N_ATOMS, mixing=mixing, epoch_size=250, batch_size=5)
    samples = np.concatenate([np.array(b) for b in sampler])
    values, counts = np.unique(samples, return_counts=True)
    assert set(values.tolist()) == set(POOLS["ccsdt-ccpvdz"].tolist())
    assert counts.min() == 2 and counts.max() == 3


def test_schedule_changes_with_epoch():
    mixing = LevelMixing(
        mode="schedule",
        schedule=[
            {"epoch": 0, "ratios": {"gfn2-xtb": 1}},
            {"epoch": 2, "ratios": {"ccsdt-ccpvdz": 1}},
        ],
    )
    sampler = FidelityBatchSampler(POOLS, N_ATOMS, mixing=mixing, epoch_size=100, batch_size=10)
    assert drawn_fractions(sampler)["gfn2-xtb"] == 1.0
    sampler.set_epoch(1)
    assert drawn_fractions(sampler)["gfn2-xtb"] == 1.0
    sampler.set_epoch(2)
    assert drawn_fractions(sampler)["ccsdt-ccpvdz"] == 1.0


def test_bad_mixing_is_an_error():
    with pytest.raises(ValueError, match="needs 'ratios'"):
        LevelMixing(mode="explicit")
    with pytest.raises(ValueError, match="not in the data"):
        LevelMixing(mode="explicit", ratios={"mp2-ccpvdz": 1}).weights({"gfn2-xtb": 3}, 0)


def test_atom_budget_batches():
    batches = make_batches(np.arange(1300), N_ATOMS, max_atoms=100)
    assert all(N_ATOMS[b].sum() <= 100 for b in batches)
    assert sum(len(b) for b in batches) == 1300
    # greedy: adding the next sample would have overflowed the budget
    assert all(
        N_ATOMS[a].sum() + N_ATOMS[b[0]] > 100
        for a, b in zip(batches[:-1], batches[1:], strict=True)
    )
    with pytest.raises(ValueError, match="more than"):
        FidelityBatchSampler(POOLS, N_ATOMS, max_atoms=20)


@pytest.mark.parametrize("budget", [None, 150])
def test_ranks_get_disjoint_shards_and_equal_batch_counts(budget):
    kwargs = {"max_atoms": budget} if budget else {"batch_size": 9}
    ranks = [
        FidelityBatchSampler(POOLS, N_ATOMS, seed=3, rank=r, world_size=3, **kwargs)
        for r in range(3)
    ]
    batches = [list(sampler) for sampler in ranks]
    assert len({len(b) for b in batches}) == 1
    # without the padding batches (at most one per rank) the shards are disjoint and complete
    flat = [np.concatenate(b) for b in batches]
    seen = np.concatenate(flat)
    assert set(seen.tolist()) == set(range(1300))
    unique = sum(len(set(f.tolist())) for f in flat)
    assert len(seen) - unique <= 3 * max(len(x) for b in batches for x in b)


def test_deterministic_and_resumable_mid_epoch():
    make = lambda: FidelityBatchSampler(POOLS, N_ATOMS, batch_size=16, seed=5)  # noqa: E731
    sampler = make()
    sampler.set_epoch(4)
    full = list(sampler)
    replay = make()
    replay.set_epoch(4)
    assert list(replay) == full
    again = make()
    again.set_epoch(4)
    iterator = iter(again)
    first = [next(iterator) for _ in range(10)]
    state = again.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert first + list(resumed) == full
    other = make()
    other.set_epoch(5)
    assert list(other) != full


BLOCKS = np.arange(1300) // 100  # 13 blocks of 100 consecutive sample ids


def test_block_shuffle_orders_by_block():
    sampler = FidelityBatchSampler(POOLS, N_ATOMS, batch_size=10, seed=2, blocks=BLOCKS)
    samples = np.concatenate(list(sampler))
    assert sorted(samples.tolist()) == list(range(1300))
    assert np.count_nonzero(np.diff(BLOCKS[samples])) == 12, "every block is one run"
    assert BLOCKS[samples][::100].tolist() != sorted(BLOCKS[samples][::100].tolist())
    # the same samples as the plain shuffle draws, only reordered (mixing is unchanged)
    mixing = LevelMixing(mode="balanced")
    plain = FidelityBatchSampler(POOLS, N_ATOMS, mixing=mixing, epoch_size=600, batch_size=6)
    block = FidelityBatchSampler(
        POOLS, N_ATOMS, mixing=mixing, epoch_size=600, batch_size=6, blocks=BLOCKS
    )
    assert sorted(np.concatenate(list(plain))) == sorted(np.concatenate(list(block)))
    # validation order: by block, pools' order within
    ordered = FidelityBatchSampler(POOLS, N_ATOMS, batch_size=50, shuffle=False, blocks=BLOCKS)
    assert np.concatenate(list(ordered)).tolist() == list(range(1300))
    with pytest.raises(ValueError, match="blocks has 5 entries"):
        FidelityBatchSampler(POOLS, N_ATOMS, batch_size=5, blocks=np.zeros(5))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 30])
def test_interleave_gives_each_worker_one_contiguous_run(n):
    batches = [np.array([i]) for i in range(n)]
    out = interleave(batches, 3)
    assert sorted(int(b[0]) for b in out) == list(range(n))
    # a DataLoader hands batch k to worker k % 3: each worker gets consecutive batches
    for w in range(3):
        got = [int(b[0]) for b in out[w::3]]
        if got:
            assert got == list(range(got[0], got[0] + len(got)))
    lengths = [len(out[w::3]) for w in range(3)]
    assert max(lengths) - min(lengths) <= 1


def test_block_shards_are_contiguous_runs_and_resume():
    kwargs = {"max_atoms": 120, "seed": 9, "blocks": BLOCKS, "world_size": 2, "num_workers": 2}
    ranks = [list(FidelityBatchSampler(POOLS, N_ATOMS, rank=r, **kwargs)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    for batches in ranks:
        seen = np.concatenate(batches)
        # each rank touches few blocks: about half of them, plus the ones at run edges
        assert len(np.unique(BLOCKS[seen])) <= 13 // 2 + 3
    sampler = FidelityBatchSampler(POOLS, N_ATOMS, rank=1, **kwargs)
    iterator = iter(sampler)
    first = [next(iterator) for _ in range(4)]
    resumed = FidelityBatchSampler(POOLS, N_ATOMS, rank=1, **kwargs)
    resumed.load_state_dict(sampler.state_dict())
    assert first + list(resumed) == ranks[1]
