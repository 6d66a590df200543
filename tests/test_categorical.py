"""Categorical sampling: exact law, Exp(1) noise resolution in both tails, tail hits vs the float32
Gumbel-max (its 2^-23 uniform grid truncates the Exp(1) noise), logit filters against a numpy reference, shapes, errors.

Statistical checks use fixed seeds and fail at p < 1e-3 (two-sided intervals: 5e-4 per side).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdm.categorical import (
    METHODS,
    exponential_from_bits,
    exponential_noise,
    filter_logits,
    sample_categorical,
)

CHUNK = 1 << 24  # noise draws per jitted call in the counting loops (64 MiB of float32)
# FAST_BITS: the counting loops draw under jax.threefry_partitionable(False), the same threefry
# hash with a simpler counter layout and ~30% cheaper bits on CPU; the laws tested do not depend
# on it, and every other test uses the default layout.
_jit_sample = jax.jit(sample_categorical, static_argnames=("method", "axis"))


def _interval(dist) -> tuple[float, float]:
    """Two-sided 1e-3 acceptance interval [lo, hi] of a frozen scipy distribution."""
    return dist.ppf(5e-4), dist.isf(5e-4)


def _chi2_pvalue(samples: np.ndarray, logits: np.ndarray) -> float:
    """Chi-square p-value of `samples` against softmax(logits) (float64); impossible ones must be 0."""
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    counts = np.bincount(samples, minlength=len(probs))
    assert counts[probs == 0].sum() == 0, "drew an excluded (-inf) entry"
    keep = probs > 0
    return stats.chisquare(counts[keep], probs[keep] * counts.sum()).pvalue


def _draw_rows(logits: np.ndarray, n: int, seed: int, method: str = "exact") -> np.ndarray:
    """n draws from one row of logits[V] (as n identical rows), as a numpy int array."""
    rows = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
    return np.asarray(_jit_sample(jax.random.key(seed), rows, method=method))


# ---------------------------------------------------------------- 1. law on small vocabularies


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_law_matches_softmax_and_never_draws_minus_inf(method, seed):
    """(exact and gumbel_f32 give identical counts here: same key, same leading bits, no tail.)"""
    logits = np.random.default_rng(seed).normal(0.0, 1.5, 5).astype(np.float32)
    logits[seed + 1] = -np.inf
    samples = _draw_rows(logits, 200_000, seed, method)
    assert _chi2_pvalue(samples, logits) > 1e-3


# ---------------------------------------------------------------- 2. noise resolution


def test_exponential_from_bits_matches_float64_on_both_tails():
    """The integer -> E map against float64 on the same 48-bit uniform, within 4 float32 ulp: every
    one of the 2^22 smallest E (up to 2^-26), every 16th low word at hi = 0 (the largest E), and
    random pairs; the extremes are 2^-49 and 49 ln 2."""
    lo = np.arange(1 << 24, dtype=np.uint32)
    rng = np.random.default_rng(0)
    cases = {
        "smallest E": (np.full(1 << 22, (1 << 24) - 1, np.uint32), lo[-(1 << 22) :]),
        "largest E": (np.zeros(1 << 20, np.uint32), lo[::16]),
        "random": tuple(rng.integers(0, 1 << 24, (2, 1 << 20), dtype=np.uint32)),
    }
    for name, (hi, lo_) in cases.items():
        got = np.asarray(jax.jit(exponential_from_bits)(hi, lo_), np.float64)
        n = hi.astype(np.float64) * 2.0**24 + lo_  # exact in float64 (48 bits)
        u = (n + 0.5) * 2.0**-48
        v = ((2.0**48 - 1 - n) + 0.5) * 2.0**-48
        want = np.where(u < 0.5, -np.log(u), -np.log1p(-v))
        assert np.max(np.abs(got / want - 1)) < 4 * 2.0**-24, name
    smallest = np.asarray(exponential_from_bits(np.uint32((1 << 24) - 1), np.uint32((1 << 24) - 1)))
    largest = np.asarray(exponential_from_bits(np.uint32(0), np.uint32(0)))
    assert smallest == np.float32(2.0**-49)
    assert abs(largest - 49 * math.log(2)) < 1e-5


SMALL = (2.0**-24, 2.0**-25, 2.0**-26)  # count E < x: float32 grids (2^-23, 2^-24 steps) give 0
LARGE = (17.0, 20.0)  # count E > y: beyond JAX mode="low"'s ~15.9 cap on -log u of its grid


@functools.partial(jax.jit, static_argnames="noise")
def _tail_counts(key: jax.Array, noise: str) -> jax.Array:
    """int32[5]: counts of E < x for x in SMALL, then of E > y for y in LARGE, among CHUNK draws."""
    if noise == "exact":
        e = exponential_noise(key, (CHUNK,))
    else:  # the float32 Gumbel path's own noise: E = exp(-G), G from mode="low"
        e = jnp.exp(-jax.random.gumbel(key, (CHUNK,), mode="low"))
    return jnp.stack([jnp.sum(e < x) for x in SMALL] + [jnp.sum(e > y) for y in LARGE])


def _noise_counts(noise: str, chunks: int, seed: int) -> np.ndarray:
    key = jax.random.key(seed)
    with jax.threefry_partitionable(False):  # see FAST_BITS
        return sum(np.asarray(_tail_counts(jax.random.fold_in(key, i), noise)) for i in range(chunks))


def _check_noise_tails(chunks: int, seed: int) -> None:
    """Exact-noise counts in their Poisson 1e-3 intervals; mode="low" noise has none below 2^-24."""
    n = chunks * CHUNK
    counts = _noise_counts("exact", chunks, seed)
    expected = [n * x for x in SMALL] + [n * math.exp(-y) for y in LARGE]
    for count, mu in zip(counts, expected):
        lo, hi = _interval(stats.poisson(mu))
        assert lo <= count <= hi, (counts, expected)
    low = _noise_counts("gumbel_low", chunks // 4, seed)
    assert not low[: len(SMALL)].any(), low


def test_exponential_noise_small_and_large_tails():
    """2^27 draws (the time budget): E < 2^-24, 2^-25, 2^-26 (expected 8, 4, 2; a float32 grid
    gives 0, outside the first interval [1, 19]), E > 17 (5.6) and E > 20 (0.28) in their Poisson
    1e-3 intervals; 2^25 mode="low" draws give 0 below 2^-24 (2 expected for exact noise).
    Resolution far below 2^-24 is pinned exactly by the integer-map tests; see also the slow test."""
    _check_noise_tails(chunks=8, seed=0)


@pytest.mark.slow
def test_exponential_noise_tails_1e9_draws():
    """The noise-tail check at full size: 2^30 draws, E < 2^-26 in the Poisson(16) interval [5, 31], E > 20
    vs 2.2 expected; 2^28 mode="low" draws give 0 below 2^-24 (16 expected for exact noise)."""
    _check_noise_tails(chunks=64, seed=7)


def test_float32_grids_floor_the_noise():
    """Every point of a 2^-24 uniform grid (torch) and of JAX's 2^-23 grid gives E >= ~grid step."""
    for bits in (24, 23):
        u = np.arange(1, 1 << bits, dtype=np.float64) * 2.0**-bits
        e = np.asarray(-jnp.log(jnp.asarray(u, jnp.float32)))
        assert e.min() >= 0.99 * 2.0**-bits


def test_exponential_noise_bulk_law():
    e = exponential_noise(jax.random.key(3), (200_000,))
    assert e.dtype == jnp.float32 and bool(jnp.all(e > 0))
    assert stats.kstest(np.asarray(e, np.float64), "expon").pvalue > 1e-3


# ---------------------------------------------------------------- 3. tail hits


@functools.partial(jax.jit, static_argnames=("rows", "method"))
def _tail_hits(key: jax.Array, logits: jax.Array, rows: int, method: str) -> jax.Array:
    """Number of draws (out of `rows`) that pick a token other than the dominant token 0."""
    samples = sample_categorical(key, jnp.broadcast_to(logits, (rows, logits.shape[-1])), method=method)
    return jnp.sum(samples != 0)


def _tail_experiment(logits: np.ndarray, rows: int, chunks: int, methods: tuple[str, ...]) -> tuple[float, dict]:
    """True tail rate of the float32 logits, and the tail hit counts of rows * chunks draws per method."""
    weights = np.exp(logits.astype(np.float64))
    rate = weights[1:].sum() / weights.sum()
    key = jax.random.key(11)
    logits_j = jnp.asarray(logits)
    with jax.threefry_partitionable(False):  # see FAST_BITS
        hits = {m: sum(int(_tail_hits(jax.random.fold_in(key, i), logits_j, rows, m)) for i in range(chunks)) for m in methods}
    return rate, hits


def _assert_tail(rate: float, n: int, hits: dict) -> None:
    truth = stats.binom(n, rate)
    lo, hi = _interval(truth)
    for method, count in hits.items():
        if method == "gumbel_f32":
            assert truth.cdf(count) < 1e-3, f"float32 Gumbel not significantly below: {hits}, expected {n * rate:.1f}"
        else:
            assert lo <= count <= hi, f"{method}: {hits}, interval [{lo}, {hi}], expected {n * rate:.1f}"


def test_tail_hits_exact_vs_gumbel_f32():
    """One token of weight 1 and 1023 tail tokens of relative weight q = 2^-25 each.

    Sizing: a tail token wins when its noise E_j < q E_0. JAX mode="low" has no E below its grid
    step 2^-23 = 4q, so the float32 path keeps only g(4) = 4/(e^4 - 1) = 7.5% of the tail. Each
    noise draw gives a tail hit with probability <= q, so for any layout the hit count is at most
    q times the number of noise draws, and a large float32 deficit needs q <~ 2^-23: >= 2^23 draws
    per expected hit (~100 hits would cost ~1e9 draws per method: the slow test's size).
    float32 path: 2^19 rows of V = 1024 (2^29 draws), 16 expected at the true rate, ~1.2 at its
    own; its count must lie below the true binomial's 1e-3 quantile (<= 4). Exact: 2^18 rows,
    8 expected, interval [1, 19], where a 2^-23 floor would expect 0.6.
    """
    logits = np.full(1024, np.log(2.0**-25), np.float32)
    logits[0] = 0.0
    rate, exact = _tail_experiment(logits, 1 << 14, 16, ("exact",))
    _assert_tail(rate, 1 << 18, exact)
    rate, low = _tail_experiment(logits, 1 << 14, 32, ("gumbel_f32",))
    _assert_tail(rate, 1 << 19, low)


@pytest.mark.slow
def test_tail_hits_at_full_size():
    """The tail-hit check at full size: 4096 tail tokens of total mass 1e-4, 1e6 draws: exact and mode="high" in the
    binomial interval (~[69, 134]); float32 Gumbel (expects ~4) significantly below."""
    tail = 4096
    logits = np.full(tail + 1, np.log(1e-4 / (1 - 1e-4) / tail), np.float32)
    logits[0] = 0.0
    rows, chunks = 4000, 250
    rate, hits = _tail_experiment(logits, rows, chunks, METHODS)
    _assert_tail(rate, rows * chunks, hits)


# ---------------------------------------------------------------- 4. filters


def _reference_filter(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Row-by-row float64 numpy version of the documented rule (ties at each boundary kept)."""
    out = logits.astype(np.float64) / temperature
    for row in out.reshape(-1, out.shape[-1]):
        if top_k:
            kth = np.sort(row)[::-1][min(top_k, len(row)) - 1]
            row[row < kth] = -np.inf
        if top_p < 1:
            order = np.argsort(-row, kind="stable")
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            mass, last = 0.0, None
            for i in order:
                mass += probs[i]
                last = row[i]
                if mass >= top_p:
                    break
            row[row < last] = -np.inf
    return out


def _ties_logits(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Logits on a coarse grid (many exact ties) with a few -inf entries."""
    logits = np.round(rng.normal(0, 2, shape) * 2) / 2
    logits[rng.random(shape) < 0.05] = -np.inf
    return logits.astype(np.float32)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (1.0, 0, 1.0),
        (0.7, 1, 1.0),
        (1.0, 5, 1.0),
        (1.3, 17, 1.0),
        (1.0, 40, 1.0),
        (1.0, 100, 1.0),
        (1.0, 0, 0.9),
        (0.5, 0, 0.5),
        (2.0, 0, 0.99),
        (1.0, 0, 1e-6),
        (1.0, 10, 0.8),
        (0.8, 3, 0.95),
    ],
)
def test_filter_logits_matches_numpy_reference(temperature, top_k, top_p):
    rng = np.random.default_rng(top_k + int(100 * top_p))
    filt = functools.partial(filter_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    for logits in (rng.normal(0, 2, (3, 7, 40)).astype(np.float32), _ties_logits(rng, (64, 40))):
        got = np.asarray(filt(jnp.asarray(logits)))
        want = _reference_filter(logits, temperature, top_k, top_p)
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        kept = ~np.isneginf(want)
        np.testing.assert_allclose(got[kept], want[kept], rtol=1e-6)
        assert kept.any(axis=-1).all()
        if top_p == 1e-6:  # only the top value (and its exact ties) survives
            np.testing.assert_array_equal(kept, logits == logits.max(-1, keepdims=True))


def test_filter_ties_are_kept_at_the_boundary():
    logits = jnp.array([3.0, 1.0, 2.0, 2.0, 0.0])
    assert np.isfinite(np.asarray(filter_logits(logits, top_k=2))).tolist() == [True, False, True, True, False]
    # 3.0 alone has mass 0.52 < 0.6, one 2.0 brings it to 0.71, and its tie is kept too
    assert np.isfinite(np.asarray(filter_logits(logits, top_p=0.6))).tolist() == [True, False, True, True, False]


def test_filter_under_jit_and_vmap_equals_eager():
    logits = jnp.asarray(np.random.default_rng(5).normal(size=(6, 30)), jnp.float32)
    filt = functools.partial(filter_logits, temperature=0.9, top_k=12, top_p=0.8)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(filt))(logits)), np.asarray(filt(logits)))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_law(temperature):
    logits = np.random.default_rng(9).normal(0.0, 1.0, 5).astype(np.float32)
    filtered = np.asarray(filter_logits(jnp.asarray(logits), temperature=temperature))
    samples = _draw_rows(filtered, 200_000, seed=4)
    assert _chi2_pvalue(samples, logits / np.float32(temperature)) > 1e-3


# ---------------------------------------------------------------- 5. shapes, dtypes, jit


@pytest.mark.parametrize("method", METHODS)
def test_batched_shapes_dtype_and_jit(method):
    """[B, L, V] -> int32[B, L] under jit, with typed keys and (per row, under vmap) legacy uint32
    keys; a row whose only finite entry is 4 always draws 4."""
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 16)), jnp.float32)
    logits = logits.at[1, 2].set(-jnp.inf).at[1, 2, 4].set(-50.0)
    draw = jax.jit(functools.partial(sample_categorical, method=method), static_argnames="axis")
    batched = draw(jax.random.key(0), logits)
    per_row = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.PRNGKey(1), 3), logits)
    for out in (batched, per_row):
        assert out.shape == (3, 5) and out.dtype == jnp.int32
        assert ((0 <= np.asarray(out)) & (np.asarray(out) < 16)).all() and out[1, 2] == 4
    if method == "exact":
        moved = draw(jax.random.key(0), jnp.moveaxis(logits, -1, 0), axis=0)
        assert moved.shape == (3, 5) and moved.dtype == jnp.int32 and moved[1, 2] == 4


def test_noise_is_the_integer_map_of_the_key_bits():
    """exponential_noise = exponential_from_bits of the key's two 24-bit words, so the exhaustive
    checks of the map carry over to the noise (given uniform bits from JAX)."""
    key = jax.random.key(5)
    bits = jax.random.bits(key, (2, 1000), jnp.uint32) >> 8
    assert bits.max() < 1 << 24 and bits.max() >= 1 << 23
    np.testing.assert_array_equal(exponential_noise(key, (1000,)), exponential_from_bits(bits[0], bits[1]))


def test_noise_shape_dtype_and_per_key_vmap():
    keys = jax.random.split(jax.random.key(0), 4)
    noise = jax.jit(exponential_noise, static_argnums=1)
    e = jax.jit(jax.vmap(lambda k: exponential_noise(k, (2, 3))))(keys)
    assert e.shape == (4, 2, 3) and e.dtype == jnp.float32
    assert np.array_equal(np.asarray(e[1]), np.asarray(noise(keys[1], (2, 3))))
    assert noise(keys[0], ()).shape == ()


# ---------------------------------------------------------------- 6. bad arguments


def test_bad_arguments_raise():
    logits = jnp.zeros(4)
    with pytest.raises(ValueError, match="unknown categorical method 'gumbel'.*exact, gumbel_f32, gumbel_high"):
        sample_categorical(jax.random.key(0), logits, method="gumbel")
    for temperature in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            filter_logits(logits, temperature=temperature)
    for top_p in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            filter_logits(logits, top_p=top_p)
    for top_k in (-1, 2.5):
        with pytest.raises(ValueError, match="top_k"):
            filter_logits(logits, top_k=top_k)
