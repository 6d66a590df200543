"""A discrete-step NLL bound of the energy-corrected model, printed beside the MDM's own NELBO.

The model p_T is the T-step sampler on the grid 1 = t_0 > ... > t_T = 0: at step k it draws
x_0 ~ p(. | x_{t_k}) and reveals each masked position with probability 1 - m(t_{k+1}) / m(t_k)
(m = 1 - alpha); p is the energy-corrected p_theta e^{-E} / Z inside the window t_k >= 1 - w
(the K -> infinity importance sampler), else the MDM's p_theta. With the forward chain q of
nested masks (l masked at t_k iff u_l < m(t_k) / m(t_0)), for every x_0

    -log p_T(x_0) <= E_q[ sum_k -log p(x_0^{S_k} | x_{t_k}) ],   S_k: revealed from t_k to t_{k+1},   (1)

and for the energy model -log p(x^S | x_t) = -log p_theta(x^S | x_t) - log Z_S(x_t) + log Z(x_t).
`chain_nll` estimates each term: an importance-weighted bound for -log Z_S, and log Z exact (0
for coAR: the total is a bound) or by Monte Carlo (an estimate, reported as a low and a high
value). `likelihood_report` pools its nats per sequence into bits per token. docs/edlm.md has
the derivation, the estimators, the cost and measured numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from mdm.energy.model import Energy, EnergyModel, denoiser_log_prob, log_mean_exp, snis_upper
from mdm.time_grids import time_grid
from mdm.process import Denoiser
from mdm.categorical import sample_categorical
from mdm.schedules import Schedule
from mdm import precision

LogNormaliser = Callable[[Array], Array]  # x_t int[B, L] -> log Z(x_t) float[B]


@dataclasses.dataclass(frozen=True)
class BoundSettings:
    """steps T and grid of the chain; n inner samples for -log Z_S; n_z proposals for log Z
    (unused when Z is known); window w: the energy is used at steps with t >= 1 - w."""

    steps: int = 1
    grid: str = "uniform"
    inner_samples: int = 4
    log_z_samples: int = 16
    window: float = 1.0

    def validate(self) -> None:
        if self.steps < 1 or self.inner_samples < 1 or self.log_z_samples < 1:
            raise ValueError(
                f"steps={self.steps}, inner_samples={self.inner_samples}, log_z_samples={self.log_z_samples} must be >= 1"
            )
        if not 0.0 <= self.window <= 1.0:
            raise ValueError(f"window={self.window} must lie in [0, 1]")


@dataclasses.dataclass(frozen=True)
class _Chain:
    """The fixed inputs of one `chain_nll` call, read by every step (closed over, not traced).

    energy is None when the energy is never used (none given, or window 0). Position l of row b
    is masked at t_k iff u_BxL[b, l] < ratio_K[k] = m(t_k) / m(t_0) and it is not observed.
    """

    denoiser: Denoiser
    energy: Energy | None
    log_z: LogNormaliser | None
    settings: BoundSettings
    mask: int
    keys_B: Array  # one key per row
    x0_BxL: Array  # int32[B, L]
    observed_BxL: Array  # bool[B, L]
    u_BxL: Array  # float32[B, L]
    times_K: Array  # float32[T + 1]
    ratio_K: Array  # float32[T + 1]

    def masked_at(self, k) -> Array:
        """bool[B, L]: the positions masked at t_k."""
        return (self.u_BxL < self.ratio_K[k]) & ~self.observed_BxL

    def log_probs(self, x_BxL: Array, k) -> Array:
        """float32[B, L, V]: log mu, the denoiser's log-probabilities at x_BxL and time t_k."""
        t_B = jnp.full((x_BxL.shape[0],), self.times_K[k])
        return jax.nn.log_softmax(self.denoiser(x_BxL, t_B).astype(jnp.float32), axis=-1)


def _draws(key: Array, logits_LxV: Array, n: int) -> Array:
    """int32[n, L] exact categorical draws from one row's logits."""
    return sample_categorical(key, jnp.broadcast_to(logits_LxV, (n, *logits_LxV.shape)))


def _row_draws(keys_B: Array, logp_BxLxV: Array, n: int) -> Array:
    """int32[n, B, L]: n exact draws per row b from logp_BxLxV[b], with the key keys_B[b]."""
    return jnp.swapaxes(jax.vmap(_draws, in_axes=(0, 0, None))(keys_B, logp_BxLxV, n), 0, 1)


def _picked(logp_BxLxV: Array, tokens: Array) -> Array:
    """float32[..., B, L]: logp_BxLxV[b, l, tokens[..., b, l]] for tokens int[..., B, L] (ids clipped)."""
    safe = jnp.clip(tokens, 0, logp_BxLxV.shape[-1] - 1)
    full = jnp.broadcast_to(logp_BxLxV, tokens.shape + logp_BxLxV.shape[-1:])
    return jnp.take_along_axis(full, safe[..., None], -1)[..., 0]


def _step_keys(keys_B: Array, k) -> tuple[Array, Array, Array]:
    """(inner, log Z, coin) keys[B] of step k: fold_in(fold_in(keys_B[b], 1 + k), 0, 1 or 2)."""
    step_keys = jax.vmap(lambda key: jax.random.fold_in(key, 1 + k))(keys_B)
    return tuple(jax.vmap(lambda key, i=i: jax.random.fold_in(key, i))(step_keys) for i in range(3))


def _mixture_draws(
    k_in_B: Array, k_coin_B: Array, logp_now_BxLxV: Array, logp_next_BxLxV: Array, still_masked_BxL: Array, x0_BxL: Array, n: int
) -> tuple[Array, Array]:
    """(y int32[n, B, L], log mu_now(y) - log r(y) float32[n, B]): n draws on R from the even mixture
    r = (mu_now + mu_next) / 2 of two factorised proposals; y = x0 off R (R: still_masked_BxL).

    Sample j of row b comes from component (j + c_b) mod 2, c_b a fair coin per row, so each
    sample's law is r. r is within a factor 2 of mu_now (right for a small E) and of mu_next
    (the denoiser that has seen x^S, close to the corrected conditional for a good E).
    """
    coin_B = jax.vmap(lambda key: jax.random.bernoulli(key))(k_coin_B).astype(jnp.int32)
    from_next = (jnp.arange(n)[:, None] + coin_B[None]) % 2 == 1  # [n, B]
    y_now, y_next = _row_draws(k_in_B, logp_now_BxLxV, n), _row_draws(k_in_B, logp_next_BxLxV, n)
    on_r = still_masked_BxL[None]
    y = jnp.where(on_r, jnp.where(from_next[..., None], y_next, y_now), x0_BxL[None])
    log_now = jnp.where(on_r, _picked(logp_now_BxLxV, y), 0.0).sum(-1)
    log_next = jnp.where(on_r, _picked(logp_next_BxLxV, y), 0.0).sum(-1)
    return y, log_now - (jnp.logaddexp(log_now, log_next) - jnp.log(2.0))


def _neg_energies(energy: Energy, x0_RxBxL: Array, xt_BxL: Array, logp_BxLxV: Array, mask: int) -> Array:
    """float32[R, B]: -E(x0_RxBxL[r, b], xt_BxL[b]), all R x B candidates in one energy call."""
    reps, batch, length = x0_RxBxL.shape
    x0_rows = x0_RxBxL.reshape(-1, length)
    xt_rows = jnp.broadcast_to(xt_BxL, (reps, batch, length)).reshape(-1, length)
    logp_rows = jnp.broadcast_to(logp_BxLxV, (reps, *logp_BxLxV.shape)).reshape(-1, length, logp_BxLxV.shape[-1])
    a = -energy(x0_rows, xt_rows, denoiser_log_prob(logp_rows, x0_rows, xt_rows, mask)).astype(jnp.float32)
    return a.reshape(reps, batch)


def _energy_terms(
    chain: _Chain, k, logp_now_BxLxV: Array, logp_next_BxLxV: Array, xt_BxL: Array, still_masked_BxL: Array
) -> tuple[Array, Array, Array]:
    """(-log Z_S estimate, log Z low, log Z high), float32[B] each, at step k.

    -log Z_S: -log mean_j w_j, w_j = mu_now(y_j) e^{-E(x^S, y_j)} / r(y_j) over `inner_samples`
    mixture draws (`_mixture_draws`). log Z: chain.log_z when given, else log mean e^{-E} (low)
    and the self-normalised value (high) over `log_z_samples` draws from mu_now.
    """
    n, xt, mask = chain.settings.inner_samples, xt_BxL, chain.mask
    k_in, k_z, k_coin = _step_keys(chain.keys_B, k)
    y, log_ratio = _mixture_draws(k_in, k_coin, logp_now_BxLxV, logp_next_BxLxV, still_masked_BxL, chain.x0_BxL, n)
    rows = [y]
    if chain.log_z is None:
        proposals = _row_draws(k_z, logp_now_BxLxV, chain.settings.log_z_samples)
        rows.append(jnp.where(xt[None] == mask, proposals, xt[None]))
    a = _neg_energies(chain.energy, jnp.concatenate(rows), xt, logp_now_BxLxV, mask)
    neg_log_zs = -log_mean_exp(a[:n] + log_ratio)
    if chain.log_z is not None:
        low = high = chain.log_z(xt).astype(jnp.float32)
    else:
        low, high = log_mean_exp(a[n:]), snis_upper(a[n:])
    return neg_log_zs, low, high


def _step_terms(chain: _Chain, k, logp_now_BxLxV: Array) -> tuple[Array, Array, Array, Array]:
    """(mdm, edlm low, edlm high) terms float32[B] of step k, and log mu at x_{t_{k+1}} float32[B, L, V].

    The MDM's term is -log p_theta(x^S | x_{t_k}); in the window the energy adds -log Z_S + log Z.
    A row that reveals nothing at step k gets 0. The denoiser call at x_{t_{k+1}} is both the
    next step's input and this step's second proposal (one call per revealing step).
    """
    masked_now, masked_next = chain.masked_at(k), chain.masked_at(k + 1)
    revealed = masked_now & ~masked_next
    term = -jnp.where(revealed, _picked(logp_now_BxLxV, chain.x0_BxL), 0.0).sum(-1)
    x_next = jnp.where(masked_next, chain.mask, chain.x0_BxL)
    last = k + 1 >= chain.settings.steps
    logp_next = jax.lax.cond(last, lambda: logp_now_BxLxV, lambda: chain.log_probs(x_next, k + 1))
    if chain.energy is None:
        return term, term, term, logp_next
    zeros = jnp.zeros_like(term)
    xt = jnp.where(masked_now, chain.mask, chain.x0_BxL)
    in_window = chain.times_K[k] >= 1.0 - chain.settings.window - 1e-6
    terms = jax.lax.cond(
        in_window, lambda: _energy_terms(chain, k, logp_now_BxLxV, logp_next, xt, masked_next), lambda: (zeros,) * 3
    )
    neg_log_zs, low, high = (jnp.where(revealed.any(-1), v, zeros) for v in terms)
    return term, term + neg_log_zs + low, term + neg_log_zs + high, logp_next


def _scan_step(chain: _Chain, carry: tuple[Array, ...], k) -> tuple[tuple[Array, ...], None]:
    """One step of the chain: carry = (mdm, edlm low, edlm high) sums float32[B] and log mu at x_{t_k}."""
    mdm, e_low, e_high, logp_now = carry
    zeros = jnp.zeros_like(mdm)
    any_revealed = (chain.masked_at(k) & ~chain.masked_at(k + 1)).any()
    t_mdm, t_low, t_high, logp_next = jax.lax.cond(
        any_revealed, lambda: _step_terms(chain, k, logp_now), lambda: (zeros, zeros, zeros, logp_now)
    )
    return (mdm + t_mdm, e_low + t_low, e_high + t_high, logp_next), None


def chain_nll(
    denoiser: Denoiser,
    energy: Energy | None,
    keys_B: Array,
    x0_BxL: Array,
    *,
    mask: int,
    schedule: Schedule,
    settings: BoundSettings = BoundSettings(),
    log_z: LogNormaliser | None = None,
    observed_BxL: Array | None = None,
) -> dict[str, Array]:
    """Per-sequence terms of the discrete chain (1), float32[B] nats each (one chain per row).

    'mdm': the T-step bound of the factorised MDM (a true bound on its T-step sampler).
    'edlm': with the energy; a bound in expectation when `log_z` is given (or the energy is
    normalised and log_z = zeros), else with log Z_n (biased low: an optimistic estimate).
    'edlm_upper': the same with the self-normalised upper value of log Z (equal to 'edlm' when
    `log_z` is given). 'tokens': modelled positions per row. observed_BxL: positions given, never
    masked or scored (padding).
    """
    settings.validate()
    batch, length = x0_BxL.shape
    times = time_grid(settings.steps, settings.grid)
    observed = jnp.zeros_like(x0_BxL, bool) if observed_BxL is None else observed_BxL
    chain = _Chain(
        denoiser=denoiser,
        energy=energy if settings.window > 0 else None,
        log_z=log_z,
        settings=settings,
        mask=mask,
        keys_B=keys_B,
        x0_BxL=x0_BxL,
        observed_BxL=observed,
        u_BxL=jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (length,)))(keys_B),
        times_K=times,
        ratio_K=schedule.mask_prob(times) / schedule.mask_prob(times[0]),
    )
    zeros = jnp.zeros((batch,), jnp.float32)
    logp0 = chain.log_probs(jnp.where(chain.masked_at(0), mask, x0_BxL), 0)
    carry = (zeros, zeros, zeros, logp0)
    (mdm, e_low, e_high, _), _ = jax.lax.scan(functools.partial(_scan_step, chain), carry, jnp.arange(settings.steps))
    return {"mdm": mdm, "edlm": e_low, "edlm_upper": e_high, "tokens": (~observed).sum(-1).astype(jnp.float32)}


def _pooled(nats_N: np.ndarray, tokens_N: np.ndarray) -> tuple[float, float]:
    """(sum nats / sum tokens, its ratio-estimator standard error across sequences)."""
    r = nats_N.sum() / tokens_N.sum()
    n = len(nats_N)
    se = math.sqrt(((nats_N - r * tokens_N) ** 2).sum() * n / max(n - 1, 1)) / tokens_N.sum()
    return float(r), float(se)


def likelihood_report(
    mdm_objective: Any,
    mdm_params: Any,
    energy: EnergyModel,
    batches: list[dict],
    rng: Array,
    settings: BoundSettings = BoundSettings(),
) -> dict[str, Any]:
    """The MDM's continuous NELBO, its T-step chain bound and the EDLM chain (1) on the same
    batches, pooled, in nats and bits per token, with standard errors across sequences.

    mdm_objective: a MaskedDiffusionObjective (its eval_sums gives the NELBO). The EDLM number
    is labelled 'bound' when the energy is normalised (coAR), else 'estimate'.
    """
    schedule = mdm_objective.schedule
    mask = mdm_objective.mask_id

    def one(params, energy_params, tokens, key):
        def den(x, t):
            return mdm_objective.network_logits(params, x, t, mdm_objective.attention_mask(x))

        keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(tokens.shape[0]))
        log_z = (lambda xt: jnp.zeros(xt.shape[:1], jnp.float32)) if energy.normalised else None
        return chain_nll(
            den,
            energy.bind(energy_params),
            keys,
            tokens,
            mask=mask,
            schedule=schedule,
            settings=settings,
            log_z=log_z,
            observed_BxL=~mdm_objective.real_tokens(tokens),
        )

    one = jax.jit(precision.under("energy", one))
    nelbo_sums = {"nats": 0.0, "tokens": 0.0}
    parts: dict[str, list[np.ndarray]] = {"mdm": [], "edlm": [], "edlm_upper": [], "tokens": []}
    eval_fn = jax.jit(precision.under("evaluation", mdm_objective.eval_sums))
    for i, batch in enumerate(batches):
        key = jax.random.fold_in(rng, i)
        sums = eval_fn(mdm_params, batch, key)
        nelbo_sums["nats"] += float(sums["nats"])
        nelbo_sums["tokens"] += float(sums["tokens"])
        out = one(mdm_params, energy.params, jnp.asarray(batch["tokens"]), jax.random.fold_in(key, 1))
        for k in parts:
            parts[k].append(np.asarray(out[k], np.float64))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    to_bits = 1.0 / math.log(2.0)
    report: dict[str, Any] = {
        "energy": energy.kind,
        "edlm_is": "bound" if energy.normalised else "estimate",
        "steps": settings.steps,
        "grid": settings.grid,
        "window": settings.window,
        "inner_samples": settings.inner_samples,
        "log_z_samples": None if energy.normalised else settings.log_z_samples,
        "sequences": int(arrays["tokens"].shape[0]),
        "tokens": float(arrays["tokens"].sum()),
        "mdm_nelbo_bits_per_token": nelbo_sums["nats"] / nelbo_sums["tokens"] * to_bits,
    }
    for name in ("mdm", "edlm", "edlm_upper"):
        r, se = _pooled(arrays[name], arrays["tokens"])
        report[f"{name}_chain_bits_per_token"] = r * to_bits
        report[f"{name}_chain_bits_per_token_stderr"] = se * to_bits
    diff, diff_se = _pooled(arrays["edlm"] - arrays["mdm"], arrays["tokens"])
    report["edlm_minus_mdm_chain_bits_per_token"] = diff * to_bits
    report["edlm_minus_mdm_chain_bits_per_token_stderr"] = diff_se * to_bits
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for `likelihood_report`'s dict."""
    lines = [
        f"MDM NELBO (continuous time)     {report['mdm_nelbo_bits_per_token']:.4f} bits/token",
        f"MDM {report['steps']}-step chain bound        {report['mdm_chain_bits_per_token']:.4f} "
        f"± {report['mdm_chain_bits_per_token_stderr']:.4f} bits/token",
    ]
    label = report["edlm_is"]
    inner = "no inner estimate" if report["steps"] == 1 else f"-log Z_S by {report['inner_samples']}-sample IW bound"
    if label == "bound":
        lines.append(
            f"EDLM-{report['energy']} {report['steps']}-step chain bound   {report['edlm_chain_bits_per_token']:.4f} "
            f"± {report['edlm_chain_bits_per_token_stderr']:.4f} bits/token (Z = 1 exactly; {inner})"
        )
    else:
        lines.append(
            f"EDLM-{report['energy']} {report['steps']}-step chain ESTIMATE {report['edlm_chain_bits_per_token']:.4f} "
            f"(log Z by {report['log_z_samples']}-sample MC, biased low) to {report['edlm_upper_chain_bits_per_token']:.4f} "
            f"(self-normalised upper value) ± {report['edlm_chain_bits_per_token_stderr']:.4f} bits/token: not a bound"
        )
    lines.append(
        f"EDLM - MDM (same chains)        {report['edlm_minus_mdm_chain_bits_per_token']:+.4f} "
        f"± {report['edlm_minus_mdm_chain_bits_per_token_stderr']:.4f} bits/token over {report['sequences']} sequences"
    )
    lines.append("(EDLM lines score the K -> infinity energy-corrected sampler; the K-candidate sampler approaches it)")
    return "\n".join(lines)
