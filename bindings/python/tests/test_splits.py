"""Exact reward splits: Python ints in and out, sums exact to the wei."""

import numpy as np
import pytest

import openledger as ol

A = "0x" + "01" * 20
B = "0x" + "02" * 20
C = "0x" + "03" * 20
BIG = 2**256 - 1


def test_equal_scores_give_the_leftover_wei_to_the_smallest_address():
    out = ol.split_scores(100, [C, A, B], np.array([1.0, 1.0, 1.0]))
    assert out == [(A, 34), (B, 33), (C, 33)]


def test_split_of_the_largest_u256_sums_exactly():
    scores = np.random.default_rng(7).random(50)
    accounts = ["0x%040x" % (i + 1) for i in range(50)]
    out = ol.split_scores(BIG, accounts, scores)
    assert sum(a for _, a in out) == BIG
    assert all(isinstance(a, int) and a >= 0 for _, a in out)


def test_integer_weights_largest_remainder():
    out = ol.split_weights(10, [(A, 1), (B, 1), (C, 1)])
    assert out == [(A, 4), (B, 3), (C, 3)]
    out = ol.split_weights(7 * 10**30, [(A, 2**200), (B, 3 * 2**200)])
    assert out == [(A, 7 * 10**30 // 4), (B, 7 * 10**30 - 7 * 10**30 // 4)]


def test_bps_must_sum_to_ten_thousand():
    assert ol.split_bps(1_000_001, [(A, 2_500), (B, 7_500)]) == [(A, 250_000), (B, 750_001)]
    with pytest.raises(ol.SplitError, match="10000"):
        ol.split_bps(100, [(A, 2_500), (B, 2_500)])


def test_sequence_scores_and_numpy_scores_agree():
    s = [0.5, 0.25, 0.125]
    assert ol.split_scores(12345, [A, B, C], s) == ol.split_scores(12345, [A, B, C], np.array(s))


def test_negative_scores_clip_or_reject():
    out = ol.split_scores(99, [A, B], [-1.0, 1.0])
    assert out == [(A, 0), (B, 99)]
    with pytest.raises(ol.SplitError, match="negative"):
        ol.split_scores(99, [A, B], [-1.0, 1.0], negative="reject")
    with pytest.raises(ol.InvalidArgumentError, match="negative"):
        ol.split_scores(99, [A, B], [1.0, 1.0], negative="sometimes")


def test_zero_total_rejects_or_goes_to_fallback():
    with pytest.raises(ol.InvalidArgumentError, match="empty|no"):
        ol.split_weights(50, [])
    with pytest.raises(ol.SplitError, match="zero"):
        ol.split_scores(50, [A, B], [0.0, 0.0])
    assert ol.split_scores(50, [A, B], [0.0, 0.0], fallback=C) == [(C, 50)]


def test_fee_split_three_ways_sums_to_the_fee():
    fs = ol.FeeSplit(A, B, 500, 7_000)
    fee = 10**18 + 7
    accounts = ["0x%040x" % (i + 0x10) for i in range(5)]
    r = fs.split(fee, accounts, np.array([5.0, 4.0, 3.0, 2.0, 1.0]))
    assert r["protocol"] == (B, fee * 500 // 10_000)
    pool = fee * 7_000 // 10_000
    assert sum(a for _, a in r["contributors"]) == pool
    assert r["owner"] == (A, fee - r["protocol"][1] - pool)
    with pytest.raises(ol.SplitError):
        ol.FeeSplit(A, B, 5_000, 5_001).split(1, [C], [1.0])


@pytest.mark.parametrize(
    "scores",
    [
        np.ones(3, dtype=np.float32),
        np.ones(3, dtype=np.int64),
        np.ones((3, 1)),
    ],
)
def test_wrong_dtype_or_shape_numpy_is_invalid_argument(scores):
    with pytest.raises(ol.InvalidArgumentError, match="float64"):
        ol.split_scores(10, [A, B, C], scores)


def test_bad_amounts_accounts_and_scores():
    with pytest.raises(ol.InvalidArgumentError, match="amount"):
        ol.split_scores(-1, [A], [1.0])
    with pytest.raises(ol.InvalidArgumentError, match="amount"):
        ol.split_scores(2**256, [A], [1.0])
    with pytest.raises(ol.InvalidArgumentError, match="amount"):
        ol.split_scores(None, [A], [1.0])
    with pytest.raises(ol.InvalidArgumentError, match="amount"):
        ol.split_scores(1.5, [A], [1.0])
    with pytest.raises(ol.InvalidArgumentError, match=r"accounts\[1\]"):
        ol.split_scores(10, [A, "0x1234"], [1.0, 1.0])
    with pytest.raises(ol.InvalidArgumentError, match="2 scores for 3 accounts"):
        ol.split_scores(10, [A, B, C], [1.0, 1.0])
    with pytest.raises(ol.InvalidArgumentError, match="non-finite"):
        ol.split_scores(10, [A, B], np.array([1.0, np.nan]))
    with pytest.raises(ol.SplitError):
        ol.split_weights(10, [(A, 1), (A, 2)])  # duplicate account
