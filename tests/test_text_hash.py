"""Hashed n-gram text features: scikit-learn's HashingVectorizer with our settings, as float32 dense rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from mer.features.text_hash import TextHasher

TEXTS = [
    "I am SO happy today!",
    "Oh no, no, no...",
    "",
    "   ",
    "Why would you do that to me",
    "happy happy joy",
]


def test_rows_equal_sklearn_with_documented_settings():
    hasher = TextHasher(256, (1, 2))
    got = hasher(TEXTS)
    want = HashingVectorizer(n_features=256, ngram_range=(1, 2), alternate_sign=False, norm="l2").transform(
        TEXTS
    )
    assert got.shape == (len(TEXTS), 256) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.toarray(), rtol=1e-6, atol=1e-7)


def test_unit_rows_zero_rows_for_no_text_and_case_insensitive():
    rows = TextHasher(512)(TEXTS + ["i am so HAPPY today!", "a !"])
    norms = np.linalg.norm(rows, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 4, 5]], 1.0, rtol=1e-6)
    assert not rows[2].any() and not rows[3].any()  # "" and blanks: the all-zeros "no text" row
    assert not rows[7].any()  # no token of two or more characters
    np.testing.assert_array_equal(rows[0], rows[6])  # lowercased
    assert (rows >= 0).all()  # alternate_sign=False: collisions add up, never cancel


def test_counts_and_bigrams():
    uni = TextHasher(2**18, (1, 1))
    row = uni(["happy happy sad"])[0]
    happy, sad = uni(["happy"])[0].argmax(), uni(["sad"])[0].argmax()
    assert row[happy] == pytest.approx(2 * row[sad])  # term counts before the L2 norm
    assert np.count_nonzero(row) == 2
    bi = TextHasher(2**18, (1, 2))
    assert np.count_nonzero(bi(["happy happy sad"])[0]) == 4  # + "happy happy", "happy sad"
    assert np.count_nonzero(TextHasher(2**18, (2, 2))(["happy happy sad"])[0]) == 2


def test_stateless_and_settings():
    a, b = TextHasher(64, (1, 3)), TextHasher(64, (1, 3))
    np.testing.assert_array_equal(a(TEXTS), b(TEXTS))
    np.testing.assert_array_equal(a(TEXTS[::-1]), a(TEXTS)[::-1])
    s = a.settings()
    assert (
        s["text_dim"] == 64
        and s["ngram_range"] == [1, 3]
        and s["norm"] == "l2"
        and s["alternate_sign"] is False
    )
    assert a([]).shape == (0, 64)


def test_bad_input():
    with pytest.raises(TypeError, match="text 1: expected a str, got NoneType"):
        TextHasher(8)(["ok", None])
    with pytest.raises(ValueError, match="n_features must be >= 1"):
        TextHasher(0)
    with pytest.raises(ValueError, match="1 <= min <= max"):
        TextHasher(8, (2, 1))
