import pytest

from shared.encoders.batching import pack_by_tokens


@pytest.mark.parametrize(
    ("lengths", "max_tokens", "max_batch", "expected"),
    [
        ([], 100, 8, []),
        ([5], 100, 8, [[0]]),
        ([10, 2, 5], 100, 8, [[1, 2, 0]]),                 # one batch, shortest first
        ([10, 10, 10, 10], 25, 8, [[0, 1], [2, 3]]),       # 2 x 10 fits 25, 3 x 10 does not
        ([1, 1, 1, 1, 1], 100, 2, [[0, 1], [2, 3], [4]]),  # capped by count
        ([500, 3], 100, 8, [[1], [0]]),                    # a text over budget goes alone
        ([4, 50, 4, 50], 100, 8, [[0, 2], [1, 3]]),        # 4 x 50 would be 200 padded tokens
    ],
)
def test_batches_respect_token_budget_and_count(lengths, max_tokens, max_batch, expected):
    assert pack_by_tokens(lengths, max_tokens=max_tokens, max_batch=max_batch) == expected


def test_every_index_appears_exactly_once_and_budget_holds():
    lengths = [(i * 37) % 120 + 1 for i in range(500)]
    batches = pack_by_tokens(lengths, max_tokens=512, max_batch=16)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) <= 16
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 512


def test_rejects_nonsense_budgets():
    with pytest.raises(ValueError):
        pack_by_tokens([1], max_tokens=0, max_batch=1)


def test_length_grouped_batches_cover_every_row_once_and_cut_padding():
    import numpy as np

    from shared.encoders.batching import length_grouped_batches

    lengths = np.random.default_rng(1).integers(5, 200, size=1000).tolist()
    batches = length_grouped_batches(lengths, batch_size=32, rng=np.random.default_rng(0), group_batches=10)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) == 32 for b in batches if len(b) != 1000 % 32) and sum(len(b) < 32 for b in batches) <= 4
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    order = np.random.default_rng(0).permutation(1000)
    random_padded = sum(max(lengths[i] for i in order[s:s + 32]) * len(order[s:s + 32]) for s in range(0, 1000, 32))
    assert padded < 0.75 * random_padded  # similar lengths together: far fewer pad tokens
    # a new order every call (epoch), the same for the same seed
    again = length_grouped_batches(lengths, batch_size=32, rng=np.random.default_rng(0), group_batches=10)
    assert again == batches
    assert length_grouped_batches(lengths, batch_size=32, rng=np.random.default_rng(2), group_batches=10) != batches
    with pytest.raises(ValueError):
        length_grouped_batches(lengths, batch_size=0, rng=np.random.default_rng(0))


def test_pad_batch_pads_each_side_to_a_rounded_length():
    from shared.encoders.batching import pad_batch

    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, multiple=4)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]] and mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=9, multiple=1, left=True)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype.name == mask.dtype.name == "int64"
    with pytest.raises(ValueError):
        pad_batch([[1]], pad_id=0, multiple=0)
