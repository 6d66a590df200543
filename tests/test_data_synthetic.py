"""The Markov language against brute-force enumeration and sampling statistics."""

import itertools

import numpy as np
import pytest
from scipy import stats

from mdm.data import MarkovLanguage


def _all_sequences(lang, length):
    """Every sequence [V**L, L] and its probability [V**L], by direct product."""
    seqs = np.array(list(itertools.product(range(lang.vocab), repeat=length)))
    probs = lang.initial[seqs[:, 0]].copy()
    for t in range(1, length):
        probs *= lang.transition[seqs[:, t - 1], seqs[:, t]]
    return seqs, probs


def _pooled_chisquare(observed, expected, min_expected=5.0):
    """Chi-square p-value, pooling cells whose expected count is below min_expected."""
    small = expected < min_expected
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue


def test_parameters_are_a_seeded_chain_with_stationary_start():
    lang = MarkovLanguage(6, seed=3)
    np.testing.assert_allclose(lang.transition.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(lang.initial.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(lang.initial @ lang.transition, lang.initial, atol=1e-14)
    assert (lang.initial > 0).all()
    np.testing.assert_array_equal(MarkovLanguage(6, seed=3).transition, lang.transition)
    assert not np.allclose(MarkovLanguage(6, seed=4).transition, lang.transition)


@pytest.mark.parametrize("length", [1, 2, 4])
def test_entropy_matches_enumeration(length):
    lang = MarkovLanguage(3, seed=0)
    _, probs = _all_sequences(lang, length)
    assert probs.sum() == pytest.approx(1.0, rel=1e-12)
    exact = -np.sum(probs * np.log(probs))
    assert lang.entropy(length) == pytest.approx(exact, rel=1e-12)
    if length > 1:
        rate = (lang.entropy(length) - lang.entropy(1)) / (length - 1)
        assert lang.entropy_rate == pytest.approx(rate, rel=1e-12)


def test_conditionals_match_enumeration():
    lang = MarkovLanguage(3, seed=1)
    length = 4
    seqs, probs = _all_sequences(lang, length)
    rng = np.random.default_rng(0)
    masks = np.array(list(itertools.product([False, True], repeat=length)))
    tokens = seqs[rng.choice(len(seqs), size=len(masks), p=probs)]
    got = lang.conditionals(tokens, masks)
    assert got.shape == (len(masks), length, 3) and got.dtype == np.float64
    for b, (row, observed) in enumerate(zip(tokens, masks)):
        consistent = np.all((seqs == row) | ~observed, axis=1)
        weights = probs * consistent
        for t in range(length):
            expected = np.bincount(seqs[:, t], weights=weights, minlength=3) / weights.sum()
            np.testing.assert_allclose(got[b, t], expected, rtol=1e-10, atol=1e-300)
            if observed[t]:
                np.testing.assert_array_equal(got[b, t], np.eye(3)[row[t]])


def test_sample_transition_frequencies_match_the_matrix():
    lang = MarkovLanguage(5, seed=2)
    seqs = lang.sample(num=3000, length=40, seed=0)
    assert seqs.shape == (3000, 40) and seqs.dtype == np.int32
    np.testing.assert_array_equal(seqs, lang.sample(3000, 40, seed=0))
    assert not np.array_equal(seqs, lang.sample(3000, 40, seed=1))
    first = np.bincount(seqs[:, 0], minlength=5)
    assert _pooled_chisquare(first, 3000 * lang.initial) > 1e-3
    counts = np.zeros((5, 5))
    np.add.at(counts, (seqs[:, :-1].ravel(), seqs[:, 1:].ravel()), 1)
    for i in range(5):
        assert _pooled_chisquare(counts[i], counts[i].sum() * lang.transition[i]) > 1e-3


def test_sequence_is_random_access_and_has_the_same_law():
    lang = MarkovLanguage(4, seed=5)
    np.testing.assert_array_equal(lang.sequence(7, 50), lang.sequence(7, 50))
    assert lang.sequence(7, 50).dtype == np.int32
    assert not np.array_equal(lang.sequence(7, 50), lang.sequence(8, 50))
    seqs = np.stack([lang.sequence(i, 30) for i in range(1500)])
    first = np.bincount(seqs[:, 0], minlength=4)
    assert _pooled_chisquare(first, 1500 * lang.initial) > 1e-3
    counts = np.zeros((4, 4))
    np.add.at(counts, (seqs[:, :-1].ravel(), seqs[:, 1:].ravel()), 1)
    for i in range(4):
        assert _pooled_chisquare(counts[i], counts[i].sum() * lang.transition[i]) > 1e-3
