"""Sample-quality metrics: generative perplexity, sample entropy, exact likelihood on synthetic data.

Conventions: generative perplexity pools token NLLs over all samples,
exp(sum NLL / sum tokens), so it does not depend on how samples are batched; entropies are
reported in both nats and bits; nothing is silently rejected or resampled.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mdm.data import MarkovLanguage
from mdm.errors import ConfigError
from mdm.objectives import AutoregressiveObjective
from mdm.objectives.base import shift_right
from mdm import precision


def sample_entropy(tokens_NxL: np.ndarray, ignore: tuple[int, ...] = ()) -> dict[str, float]:
    """Mean over samples of the entropy of each sample's own token histogram (the FHS paper's
    diversity check; degenerate, repetitive samples score low). Ids in `ignore` are skipped."""
    values = []
    for row in np.asarray(tokens_NxL):
        row = row[~np.isin(row, ignore)]
        if row.size == 0:
            values.append(0.0)
            continue
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        values.append(float(-(p * np.log(p)).sum()))
    nats = float(np.mean(values)) if values else float("nan")
    return {"sample_entropy_nats": nats, "sample_entropy_bits": nats / math.log(2)}


def generative_perplexity(
    evaluator: AutoregressiveObjective,
    params,
    tokens_NxL: np.ndarray,
    batch_size: int = 16,
    context_L: np.ndarray | None = None,
) -> dict[str, float]:
    """exp(sum of the AR evaluator's NLL / number of scored tokens) over all samples (PAD excluded).

    context_L: bool[L], positions given to the sampler (a prompt): not scored, but conditioned on,
    so the number is the perplexity of the continuation given the prompt.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1 (the samples scored per call)")
    length = tokens_NxL.shape[1]
    scored_L = jnp.ones((length,), bool) if context_L is None else ~jnp.asarray(context_L, bool)

    def nll_and_count(p, x):
        needed = evaluator.real_tokens(x) & scored_L[None, :]
        nll = evaluator.token_nll(p, shift_right(x, evaluator.mask_id), x, needed_BxL=needed)
        return nll.sum(-1), needed.sum(-1)

    nll_fn = jax.jit(precision.under("evaluation", nll_and_count))
    nats, count = 0.0, 0.0
    for start in range(0, len(tokens_NxL), batch_size):
        nll, n = nll_fn(params, jnp.asarray(tokens_NxL[start : start + batch_size], jnp.int32))
        nats += float(np.asarray(nll, np.float64).sum())
        count += float(np.asarray(n).sum())
    return {"gen_ppl": math.exp(nats / count), "gen_nats_per_token": nats / count, "gen_tokens": count}


def markov_sample_fidelity(language: MarkovLanguage, tokens_NxL: np.ndarray) -> dict[str, float]:
    """Exact mean log-likelihood per token of samples under the true generating chain.

    A perfect sampler gives -entropy(L)/L in expectation. Samples containing a non-symbol id
    (a special token) have likelihood 0 and are counted in `invalid_fraction`, not scored.
    """
    tokens = np.asarray(tokens_NxL)
    valid = np.all(tokens < language.vocab, axis=1)
    x = tokens[valid]
    length = tokens.shape[1]
    logp = np.log(language.initial[x[:, 0]]) + np.log(language.transition[x[:, :-1], x[:, 1:]]).sum(-1)
    nan = float("nan")
    return {
        "true_loglik_per_token": float(logp.mean() / length) if len(x) else nan,
        "true_loglik_per_token_stderr": float(logp.std(ddof=1) / np.sqrt(len(x)) / length) if len(x) > 1 else nan,
        "data_loglik_per_token": -language.entropy(length) / length,
        "invalid_fraction": float(1 - valid.mean()),
    }
