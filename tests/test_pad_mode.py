"""Pad mode, like for like: with the padding modelled, the MDM's NELBO bounds -log p(x) with its
length, as the AR twin's NLL does; without, it is -log p(x | length) and says so."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm.errors import ConfigError
from mdm.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from mdm.schedules import make_schedule
from oracles import JointOracleModel, _Cfg

L, SYMBOLS = 4, 2
EOS, PAD = SYMBOLS, SYMBOLS + 1
V = SYMBOLS + 2


def _documents() -> np.ndarray:
    """Every padded row: k symbols, then EOS and PADs (k < L), or L symbols (cut, no EOS)."""
    rows = []
    for k in range(L + 1):
        for symbols in itertools.product(range(SYMBOLS), repeat=k):
            tail = [] if k == L else [EOS] + [PAD] * (L - k - 1)
            rows.append(list(symbols) + tail)
    return np.array(rows, np.int32)


def _law(seed=0):
    """(probs over all V^L sequences, zero off the padded rows; the rows; their probs)."""
    docs = _documents()
    p_docs = np.random.default_rng(seed).dirichlet(np.full(len(docs), 0.6))
    seqs = np.array(list(itertools.product(range(V), repeat=L)), np.int32)
    index = {tuple(s): i for i, s in enumerate(seqs)}
    probs = np.zeros(len(seqs))
    for d, p in zip(docs, p_docs):
        probs[index[tuple(d)]] = p
    return probs, docs, p_docs


class _PrefixOracle:
    """The exact next-token model of the joint: position i of the shifted input gives p(x_i | x_<i)."""

    def __init__(self, probs):
        self.seqs = jnp.asarray(np.array(list(itertools.product(range(V), repeat=L)), np.int32))
        self.probs = jnp.asarray(probs, jnp.float32)
        self.cfg = _Cfg(vocab_size=V)

    def output_head(self, params):
        return None

    def apply(self, variables, inputs_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
        prefix_BxL = inputs_BxL[:, 1:]  # x_0 .. x_{L-2}
        onehot = (self.seqs[..., None] == jnp.arange(V)[None, None, :]).astype(jnp.float32)
        out = []
        for i in range(L):
            ok = jnp.all((self.seqs[None, :, :i] == prefix_BxL[:, None, :i]), -1) * self.probs[None]  # [B, S]
            mu = jnp.einsum("bs,sv->bv", ok, onehot[:, i]) + 1e-30
            out.append(jnp.log(mu / mu.sum(-1, keepdims=True)))
        return jnp.stack(out, 1)


class _LengthAwareOracle(JointOracleModel):
    """The exact denoiser when the padding is never masked: a masked position is a real token."""

    def apply(self, variables, tokens_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
        seqs = jnp.asarray(self.seqs)
        masked = (tokens_BxL[:, None, :] == V) & (seqs[None] != PAD)
        ok = masked | (tokens_BxL[:, None, :] == seqs[None])
        w_BxS = jnp.all(ok, -1) * jnp.asarray(self.probs, jnp.float32)[None]
        onehot_SxLxV = (seqs[..., None] == jnp.arange(V)[None, None, :]).astype(jnp.float32)
        mu = jnp.einsum("bs,slv->blv", w_BxS, onehot_SxLxV)
        return jnp.log(mu / mu.sum(-1, keepdims=True))


def _entropies(docs, p_docs):
    """(H(X), H(X | length)) in nats of the padded rows' law."""
    h = -(p_docs * np.log(p_docs)).sum()
    lengths = (docs != PAD).sum(-1)
    h_cond = 0.0
    for n in np.unique(lengths):
        q = p_docs[lengths == n]
        h_cond -= (q * np.log(q / q.sum())).sum()
    return h, h_cond


def _mean_nats(obj, batch_tokens, seed=0):
    sums = jax.jit(obj.eval_sums)(None, {"tokens": jnp.asarray(batch_tokens)}, jax.random.PRNGKey(seed))
    n = float(sums["sequences"])
    mean = float(sums["nats"]) / n
    return mean, float(np.sqrt(max(float(sums["nats_sq"]) / n - mean**2, 0.0) / n))


@pytest.mark.parametrize("estimator", ["continuous", "count"])
def test_modelled_padding_makes_the_mdm_bound_match_the_ar_nll(estimator):
    probs, docs, p_docs = _law()
    h, h_given_length = _entropies(docs, p_docs)
    assert h - h_given_length > 0.3  # the length carries information in this law
    rows = docs[np.random.default_rng(1).choice(len(docs), size=3000, p=p_docs)]
    common = dict(pad_id=PAD, token_bytes=(1,) * V, mask_padding=True)
    schedule = make_schedule("linear")
    modelled = MaskedDiffusionObjective(
        model=JointOracleModel(probs, L, V),
        schedule=schedule,
        supervise_padding=True,
        eval_t_samples=4,
        eval_estimator=estimator,
        **common,
    )
    given_length = MaskedDiffusionObjective(
        model=_LengthAwareOracle(probs, L, V), schedule=schedule, eval_t_samples=4, eval_estimator=estimator, **common
    )
    ar = AutoregressiveObjective(model=_PrefixOracle(probs), supervise_padding=True, **common)
    exact = -np.log(p_docs[[np.flatnonzero((docs == r).all(-1))[0] for r in rows]]).mean()

    m_mod, se_mod = _mean_nats(modelled, rows)
    m_len, se_len = _mean_nats(given_length, rows)
    m_ar, _ = _mean_nats(ar, rows)
    np.testing.assert_allclose(m_ar, exact, rtol=1e-4)  # the AR twin pays for EOS: exact -log p(x)
    assert abs(m_mod - exact) < 4 * se_mod + 1e-3  # an exact denoiser's bound is tight: like for like
    # Length given (the padding visible, never masked): E -log p(x | length) = H(X | length) < H(X).
    assert abs(m_len - (exact - h + h_given_length)) < 4 * se_len + 0.02 and m_len < exact - 0.3
    assert "length" in given_length.likelihood and "| length" not in modelled.likelihood


def test_modelled_padding_is_refused_where_there_is_none():
    from mdm.config import base_config, validate

    c = base_config()
    c.data.supervise_padding = True
    with pytest.raises(ConfigError, match="data.mode=pad"):
        validate(c)
    c.data.mode = "pad"
    validate(c)
