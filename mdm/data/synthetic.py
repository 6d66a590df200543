"""A random order-1 Markov chain language whose entropy and posteriors are exact."""

from __future__ import annotations

import bisect

import numpy as np


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats over the last axis, with 0 log 0 = 0."""
    logs = np.log(np.where(p > 0, p, 1.0))
    return -np.sum(p * logs, axis=-1)


class MarkovLanguage:
    """Sequences x_1..x_L over `vocab` symbols: x_1 ~ pi, x_l ~ P[x_{l-1}].

    Rows of the transition matrix P [vocab, vocab] are drawn from a symmetric
    Dirichlet(`concentration`) with numpy seed `seed`; pi [vocab] is the
    stationary distribution of P, so every position has marginal pi.
    """

    def __init__(self, vocab: int, seed: int, concentration: float = 0.5) -> None:
        if vocab < 1 or concentration <= 0:
            raise ValueError(f"need vocab >= 1 and concentration > 0, got {vocab=}, {concentration=}")
        self.vocab = vocab
        self.seed = seed
        self.concentration = concentration
        rng = np.random.default_rng(seed)
        self.transition = rng.dirichlet(np.full(vocab, concentration), size=vocab)
        # Solve pi (P - I) = 0 with sum(pi) = 1 (one equation replaced by the sum).
        system = self.transition.T - np.eye(vocab)
        system[-1] = 1.0
        rhs = np.zeros(vocab)
        rhs[-1] = 1.0
        self.initial = np.linalg.solve(system, rhs)
        self._initial_cdf = self._cdf(self.initial)
        self._transition_cdf = self._cdf(self.transition)
        self._initial_cdf_list = self._initial_cdf.tolist()
        self._transition_cdf_list = self._transition_cdf.tolist()

    @staticmethod
    def _cdf(p: np.ndarray) -> np.ndarray:
        cdf = np.cumsum(p, axis=-1)
        cdf[..., -1] = 1.0  # so inverse-CDF sampling of u in [0, 1) never overflows
        return cdf

    @property
    def entropy_rate(self) -> float:
        """H_rate = sum_i pi_i H(P_i), in nats per symbol."""
        return float(self.initial @ _entropy(self.transition))

    def entropy(self, length: int) -> float:
        """Exact entropy in nats of a length-`length` sequence: H(pi) + (length-1) H_rate."""
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        return float(_entropy(self.initial)) + (length - 1) * self.entropy_rate

    def sample(self, num: int, length: int, seed: int) -> np.ndarray:
        """int32 [num, length] independent sequences, deterministic given `seed`."""
        rng = np.random.default_rng(seed)
        uniforms = rng.random((length, num))
        out = np.empty((num, length), dtype=np.int32)
        if length == 0:
            return out
        out[:, 0] = np.sum(self._initial_cdf[None, :] <= uniforms[0][:, None], axis=1)
        for t in range(1, length):
            cdf = self._transition_cdf[out[:, t - 1]]
            out[:, t] = np.sum(cdf <= uniforms[t][:, None], axis=1)
        return out

    def sequence(self, index: int, length: int) -> np.ndarray:
        """int32 [length], deterministic given (self.seed, index): the index-th record."""
        seeds = np.random.SeedSequence(self.seed, spawn_key=(index,))
        uniforms = np.random.default_rng(seeds).random(length).tolist()
        out = []
        cdf = self._initial_cdf_list
        for u in uniforms:
            symbol = bisect.bisect_right(cdf, u)
            out.append(symbol)
            cdf = self._transition_cdf_list[symbol]
        return np.asarray(out, dtype=np.int32)

    def conditionals(self, tokens: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """Exact posterior marginals p(x_l | observed tokens), by forward-backward.

        Args:
          tokens: int [B, L]; values at unobserved positions are ignored.
          observed: bool [B, L]; which positions are known.
        Returns:
          float64 [B, L, vocab]; one-hot at observed positions.
        """
        tokens = np.asarray(tokens)
        observed = np.asarray(observed, dtype=bool)
        batch, length = tokens.shape
        safe = np.where(observed, tokens, 0)
        # evidence[b, t, v] = 1 if x_t = v is consistent with what is observed.
        one_hot = np.eye(self.vocab)[safe]
        evidence = np.where(observed[..., None], one_hot, 1.0)

        forward = np.empty((batch, length, self.vocab))
        f = self.initial[None, :] * evidence[:, 0]
        forward[:, 0] = f / f.sum(-1, keepdims=True)
        for t in range(1, length):
            f = (forward[:, t - 1] @ self.transition) * evidence[:, t]
            forward[:, t] = f / f.sum(-1, keepdims=True)

        backward = np.ones((batch, length, self.vocab))
        for t in range(length - 2, -1, -1):
            b = (evidence[:, t + 1] * backward[:, t + 1]) @ self.transition.T
            backward[:, t] = b / b.sum(-1, keepdims=True)

        posterior = forward * backward
        posterior /= posterior.sum(-1, keepdims=True)
        return np.where(observed[..., None], one_hot, posterior)
