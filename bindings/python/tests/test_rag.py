"""RagIndex: exact top-k against a numpy brute force, citations and relevance weights."""

import numpy as np
import pytest

import openledger as ol

# keccak256("a"), the well-known digest.
KECCAK_A = "0x3ac225168df54212a25c1c01fd35bebfea408fdac2e31ddd6f80a4bbf9a5f1cb"


def build(n=500, dim=16, similarity="cosine", seed=1):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    index = ol.RagIndex(dim, similarity)
    for i in range(n):
        index.add(ol.content_id(b"r%d" % i), "0x%040x" % (i % 7 + 1), "record %d" % i, emb[i])
    return index, emb


def test_content_id_is_keccak256():
    assert ol.content_id(b"a") == KECCAK_A


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_search_is_the_exact_top_k_of_a_numpy_scan(similarity):
    index, emb = build(similarity=similarity)
    assert len(index) == 500
    q = np.random.default_rng(9).normal(size=16).astype(np.float32)
    rows = emb / np.linalg.norm(emb, axis=1, keepdims=True) if similarity == "cosine" else emb
    qn = q / np.linalg.norm(q) if similarity == "cosine" else q
    ref = rows.astype(np.float64) @ qn.astype(np.float64)
    want = np.argsort(-ref, kind="stable")[:10]
    hits = index.search(q, 10)
    assert [h["snippet"] for h in hits] == ["record %d" % i for i in want]
    np.testing.assert_allclose([h["score"] for h in hits], ref[want], rtol=1e-5, atol=1e-5)
    assert hits[0]["record"] == ol.content_id(b"r%d" % want[0])


def test_embeddings_are_unit_rows_under_cosine():
    index, emb = build(n=20)
    e = index.embeddings()
    assert e.shape == (20, 16) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(e, emb / np.linalg.norm(emb, axis=1, keepdims=True), rtol=1e-6, atol=1e-7)


def test_non_contiguous_query_equals_its_copy():
    index, _ = build(n=50)
    q = np.random.default_rng(3).normal(size=32).astype(np.float32)[::2]
    assert index.search(q, 5) == index.search(np.ascontiguousarray(q), 5)


def test_relevance_weights_normalised_and_softmax():
    index = ol.RagIndex(2)
    index.add(ol.content_id(b"a"), "0x" + "01" * 20, "about cats", np.array([1, 0], dtype=np.float32))
    index.add(ol.content_id(b"b"), "0x" + "02" * 20, "about dogs", np.array([0, 1], dtype=np.float32))
    hits = index.search(np.array([0.9, 0.1], dtype=np.float32), 1)
    assert hits[0]["snippet"] == "about cats"
    assert ol.relevance_weights(hits) == [("0x" + "01" * 20, 1.0)]
    both = index.search(np.array([0.6, 0.8], dtype=np.float32), 2)
    w = dict(ol.relevance_weights(both))
    assert w["0x" + "01" * 20] == pytest.approx(0.6 / 1.4, rel=1e-6)
    s = dict(ol.relevance_weights(both, temperature=0.5))
    e = np.exp((np.array([0.8, 0.6]) - 0.8) / 0.5)
    assert s["0x" + "02" * 20] == pytest.approx(e[0] / e.sum(), rel=1e-6)
    with pytest.raises(ol.InvalidArgumentError, match="temperature"):
        ol.relevance_weights(both, temperature=0.0)
    with pytest.raises(ol.InvalidArgumentError, match="citations"):
        ol.relevance_weights([])


@pytest.mark.parametrize(
    "bad",
    [
        np.ones(4, dtype=np.float64),
        np.ones(4, dtype=np.int32),
        np.ones((2, 2), dtype=np.float32),
        [1.0, 0.0, 0.0, 0.0],
        None,
    ],
)
def test_wrong_dtype_shape_or_type_is_invalid_argument_and_adds_nothing(bad):
    index = ol.RagIndex(4)
    with pytest.raises(ol.InvalidArgumentError, match="embedding"):
        index.add(ol.content_id(b"x"), "0x" + "01" * 20, "x", bad)
    assert len(index) == 0


def test_wrong_dimension_nan_zero_vector_and_empty_index():
    index = ol.RagIndex(4)
    with pytest.raises(ol.InvalidArgumentError, match="RAG index"):
        index.search(np.ones(4, dtype=np.float32), 1)
    rec, who = ol.content_id(b"x"), "0x" + "01" * 20
    with pytest.raises(ol.InvalidArgumentError, match="dimension|expected 4"):
        index.add(rec, who, "x", np.ones(3, dtype=np.float32))
    with pytest.raises(ol.InvalidArgumentError, match="non-finite"):
        index.add(rec, who, "x", np.array([1, np.nan, 0, 0], dtype=np.float32))
    with pytest.raises(ol.InvalidArgumentError, match="norm"):
        index.add(rec, who, "x", np.zeros(4, dtype=np.float32))
    assert len(index) == 0
    with pytest.raises(ol.InvalidArgumentError, match="record"):
        index.add("0x1234", who, "x", np.ones(4, dtype=np.float32))
    with pytest.raises(ol.InvalidArgumentError, match="similarity"):
        ol.RagIndex(4, "euclid")
    with pytest.raises(ol.InvalidArgumentError):
        ol.RagIndex(0)


def test_feature_hashing_ranks_records_by_shared_words():
    h = ol.HashingEmbedder()
    assert h.dim == 512 and repr(h) == "HashingEmbedder(dim=512)"
    v = h.embed(["What does ASPIRIN treat", "", "aspirin aspirin"])
    assert v.shape == (3, 512) and v.dtype == np.float32
    assert not v[1].any() and v[2].sum() == 2.0 and v[2].max() == 2.0
    # Words are lower-cased: the aspirin coordinate is shared.
    assert (v[0] * v[2]).sum() == 2.0
    idx = ol.RagIndex(512)
    texts = ["what does aspirin treat => pain", "what does ibuprofen treat => swelling"]
    for t, e in zip(texts, h.embed(texts)):
        idx.add(ol.content_id(t.encode()), "0x" + "01" * 20, t, e)
    assert idx.search(h.embed(["aspirin treat"])[0], 1)[0]["snippet"] == texts[0]
    with pytest.raises(ol.InvalidArgumentError, match="dim"):
        ol.HashingEmbedder(0)
