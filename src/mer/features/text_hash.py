"""Hashed bag-of-n-grams text features: scikit-learn's `HashingVectorizer`, as dense float32 rows.

Choices (recorded in the feature store's settings by `TextHasher.settings()`):

- word n-grams (`ngram_range`, default unigrams + bigrams), lowercased, scikit-learn's default tokenizer
  (`(?u)\\b\\w\\w+\\b`: words of two or more letters/digits; single letters such as "I" are not tokens);
- `alternate_sign=False`: a cell counts the n-grams that hash to it (collisions add up, never cancel);
- `norm="l2"`: every non-empty row has unit length, so long and short utterances are on the same scale;
- an empty transcript (or one without any token) gives the all-zeros row, a legitimate "no text" input.

Hashing is stateless: no vocabulary to fit or store, the same text always gives the same row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer


class TextHasher:
    """`hasher(texts)` -> float32 `[len(texts), n_features]`, one L2-normalised hashed n-gram row per text."""

    def __init__(self, n_features: int = 512, ngram_range: tuple[int, int] = (1, 2)) -> None:
        lo, hi = (int(v) for v in ngram_range)
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must be (min, max) with 1 <= min <= max, got {ngram_range}")
        self.n_features = int(n_features)
        self.ngram_range = (lo, hi)
        self._vectorizer = HashingVectorizer(
            n_features=self.n_features,
            ngram_range=self.ngram_range,
            alternate_sign=False,
            lowercase=True,
            norm="l2",
            dtype=np.float32,
        )

    @property
    def dim(self) -> int:
        return self.n_features

    def settings(self) -> dict:
        """What defines these features (recorded in the feature store; a mismatch refuses a resume)."""
        v = self._vectorizer
        return {
            "text_features": "sklearn_hashing_vectorizer",
            "text_dim": self.n_features,
            "ngram_range": list(self.ngram_range),
            "analyzer": v.analyzer,
            "token_pattern": v.token_pattern,
            "lowercase": v.lowercase,
            "alternate_sign": v.alternate_sign,
            "norm": v.norm,
        }

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Dense float32 rows, in input order; every text must be a `str` ("" for no text)."""
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i}: expected a str, got {type(t).__name__}")
        if len(texts) == 0:
            return np.zeros((0, self.n_features), dtype=np.float32)
        return self._vectorizer.transform(list(texts)).toarray().astype(np.float32, copy=False)
