"""Independent reference denoisers for tests: plug into objectives in place of a network."""

from __future__ import annotations

import dataclasses
import itertools

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class _Cfg:
    vocab_size: int
    time_conditioning: bool = False


class LogitsOracle:
    """What objectives need of a model: `apply` gives logits, which are also its 'hidden states'
    (`output_head` None: no projection is applied to them)."""

    def output_head(self, params):
        return None


class FixedLogitsModel(LogitsOracle):
    """A 'network' that ignores its input: logits[l] is the same for every x_t."""

    def __init__(self, logits_LxV: np.ndarray):
        self.logits = jnp.asarray(logits_LxV, jnp.float32)
        self.cfg = _Cfg(vocab_size=logits_LxV.shape[-1])

    def apply(self, variables, tokens_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
        return jnp.broadcast_to(self.logits, tokens_BxL.shape + self.logits.shape[-1:])


class JointOracleModel(LogitsOracle):
    """The exact denoiser of a joint law over V^L: mu(x_t)^l[v] = P(x_l = v | unmasked x_t).

    The joint is enumerated (V^L sequences), so this is exact for tiny L and V.
    """

    def __init__(self, probs: np.ndarray, length: int, vocab: int):
        self.seqs = np.array(list(itertools.product(range(vocab), repeat=length)), np.int32)  # [S, L]
        self.probs = np.asarray(probs, np.float64)
        self.cfg = _Cfg(vocab_size=vocab)

    def apply(self, variables, tokens_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
        mask = self.cfg.vocab_size
        seqs = jnp.asarray(self.seqs)
        ok = (tokens_BxL[:, None, :] == mask) | (tokens_BxL[:, None, :] == seqs[None])  # [B, S, L]
        w_BxS = jnp.all(ok, -1) * jnp.asarray(self.probs, jnp.float32)[None]
        onehot_SxLxV = seqs[..., None] == jnp.arange(self.cfg.vocab_size)[None, None, :]
        mu = jnp.einsum("bs,slv->blv", w_BxS, onehot_SxLxV.astype(jnp.float32))
        return jnp.log(mu / mu.sum(-1, keepdims=True))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.seqs[rng.choice(len(self.seqs), size=n, p=self.probs)]

    def entropy(self) -> float:
        p = self.probs[self.probs > 0]
        return float(-(p * np.log(p)).sum())


class MarkovOracleModel(LogitsOracle):
    """The exact denoiser of a `MarkovLanguage`: forward-backward posteriors, via a host callback."""

    def __init__(self, language):
        self.language = language
        self.cfg = _Cfg(vocab_size=language.vocab)

    def apply(self, variables, tokens_BxL, t_B=None, attention_mask_BxL=None, return_hidden=False):
        import jax

        mask = self.cfg.vocab_size

        def host(tokens):
            tokens = np.asarray(tokens)
            observed = tokens != mask
            post = self.language.conditionals(np.where(observed, tokens, 0), observed)
            return np.log(np.maximum(post, 1e-300)).astype(np.float32)

        shape = jax.ShapeDtypeStruct(tokens_BxL.shape + (self.cfg.vocab_size,), jnp.float32)
        return jax.pure_callback(host, shape, tokens_BxL)
