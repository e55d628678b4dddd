"""Combination: the concat identity, average's refusal of mixed sizes, named vectors."""

import numpy as np
import pytest
from helpers import cosine

from embed_collections.engine.combine import check_combine, combine_vectors
from embed_collections.errors import UsageError


def test_concat_dot_product_is_weighted_mean_of_model_cosines():
    rng = np.random.default_rng(0)
    a1, b1 = rng.normal(size=(2, 32))
    a2, b2 = rng.normal(size=(2, 48))
    weights = [0.7, 0.3]
    combined = combine_vectors([np.stack([a1, b1]), np.stack([a2, b2])], weights, "concat")[""]
    assert combined.shape == (2, 80)
    assert np.allclose(np.linalg.norm(combined, axis=1), 1.0, atol=1e-6)
    expected = 0.7 * cosine(a1, b1) + 0.3 * cosine(a2, b2)
    assert combined[0] @ combined[1] == pytest.approx(expected, abs=1e-6)


def test_concat_weights_are_relative():
    rng = np.random.default_rng(1)
    vectors = [rng.normal(size=(3, 8)), rng.normal(size=(3, 4))]
    small = combine_vectors(vectors, [1, 3], "concat")[""]
    large = combine_vectors(vectors, [10, 30], "concat")[""]
    assert np.allclose(small, large, atol=1e-6)


def test_average_is_renormalised_weighted_mean():
    a = np.array([[1.0, 0.0]])
    b = np.array([[0.0, 2.0]])
    averaged = combine_vectors([a, b], [3, 1], "average")[""]
    expected = np.array([0.75, 0.25]) / np.linalg.norm([0.75, 0.25])
    assert np.allclose(averaged[0], expected, atol=1e-6)


def test_average_refuses_mixed_dimensions_with_the_choices():
    with pytest.raises(UsageError) as error:
        check_combine("average", [32, 48], ["tiny32", "tiny48"])
    message = str(error.value)
    assert "tiny32=32" in message and "tiny48=48" in message
    assert "--combine concat" in message and "--combine named" in message


def test_named_keeps_each_model_normalised_under_its_name():
    rng = np.random.default_rng(2)
    vectors = [rng.normal(size=(2, 5)), rng.normal(size=(2, 7))]
    named = combine_vectors(vectors, [1, 1], "named", ["a", "b"])
    assert set(named) == {"a", "b"}
    assert named["b"].shape == (2, 7)
    assert np.allclose(np.linalg.norm(named["a"], axis=1), 1.0, atol=1e-6)


def test_zero_vector_stays_zero_instead_of_nan():
    combined = combine_vectors([np.zeros((1, 4)), np.ones((1, 4))], [1, 1], "concat")[""]
    assert np.array_equal(combined[0, :4], np.zeros(4))  # zero, not NaN from 0 / 0
    assert np.allclose(combined[0, 4:], np.full(4, np.sqrt(0.5) / 2))  # the other part as usual
