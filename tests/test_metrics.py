"""summarize_eval: the pooled NLL and its standard error, checked against independent computations."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mdm.metrics import summarize_eval
from mdm.objectives.base import EVAL_SUM_KEYS, per_example_sums


def _sequences(rng, num, mean_nll=2.0):
    """Per-sequence (nats, tokens): lengths vary, and each sequence has its own difficulty, so
    tokens of one sequence are correlated and a per-token s.e. would be too small."""
    tokens = rng.integers(5, 120, num).astype(np.float64)
    difficulty = rng.gamma(4.0, mean_nll / 4.0, num)  # per-sequence mean nats per token
    nats = np.array([rng.exponential(d, int(n)).sum() for d, n in zip(difficulty, tokens)])
    return nats, tokens


def _pooled(batches):
    """Sums over batches the way mdm.loop.evaluate pools them (float32 per batch, then floats)."""
    totals = {k: 0.0 for k in EVAL_SUM_KEYS}
    for nats, tokens in batches:
        sums = per_example_sums(jnp.asarray(nats), jnp.asarray(tokens), jnp.asarray(tokens))
        for k in EVAL_SUM_KEYS:
            totals[k] += float(sums[k])
    return totals


def _ratio_stderr(nats, tokens):
    """Textbook ratio-estimator s.e. of r = sum(e) / sum(n) (delta method, ddof=1), in float64:
    sqrt(var(e_b - r n_b) / m) / mean(n) over the m sequences."""
    r = nats.sum() / tokens.sum()
    z = nats - r * tokens
    return math.sqrt(np.var(z, ddof=1) / len(nats)) / tokens.mean()


def test_stderr_equals_the_ratio_estimator_computed_from_per_sequence_values():
    rng = np.random.default_rng(0)
    nats, tokens = _sequences(rng, 96)
    out = summarize_eval(_pooled([(nats[i : i + 32], tokens[i : i + 32]) for i in (0, 32, 64)]), "eval")
    assert out["eval/nats_per_token"] == pytest.approx(nats.sum() / tokens.sum(), rel=1e-5)
    assert out["eval/tokens"] == tokens.sum()
    assert out["eval/nats_per_token_stderr"] == pytest.approx(_ratio_stderr(nats, tokens), rel=1e-3)
    # the per-sequence difficulty makes it larger than the naive per-token s.e. would be
    per_token_naive = math.sqrt(nats.sum() / tokens.sum() ** 2)  # exponential: var = mean^2 per token
    assert out["eval/nats_per_token_stderr"] > 1.5 * per_token_naive


def test_stderr_of_one_sequence_or_identical_ratios_is_zero():
    out = summarize_eval(_pooled([(np.array([30.0]), np.array([10.0]))]), "x")
    assert out["x/nats_per_token"] == pytest.approx(3.0) and out["x/nats_per_token_stderr"] == 0.0
    out = summarize_eval(_pooled([(np.array([2.0, 4.0, 8.0]), np.array([1.0, 2.0, 4.0]))]), "x")
    assert out["x/nats_per_token_stderr"] == pytest.approx(0.0, abs=1e-6)


def test_stderr_matches_the_spread_of_the_estimate_over_repeated_evaluations():
    """Simulation: across many independent validation sets, the reported s.e. is the standard
    deviation of the pooled estimate (a calibrated 95% interval covers the truth ~95% of the time)."""
    rng = np.random.default_rng(1)
    num_sets, num_seqs = 1500, 40
    lengths = rng.integers(5, 120, (num_sets, num_seqs)).astype(np.float64)
    difficulty = rng.gamma(4.0, 0.5, (num_sets, num_seqs))
    # the sum of n iid Exponential(d) per-token NLLs is Gamma(n, d)
    nats = rng.gamma(lengths, difficulty)
    estimates, stderrs = [], []
    for e, n in zip(nats, lengths):
        sums = {
            "nats": e.sum(),
            "tokens": n.sum(),
            "bytes": n.sum(),
            "nats_sq": (e * e).sum(),
            "nats_tokens": (e * n).sum(),
            "tokens_sq": (n * n).sum(),
            "sequences": float(num_seqs),
        }
        out = summarize_eval(sums, "eval")
        estimates.append(out["eval/nats_per_token"])
        stderrs.append(out["eval/nats_per_token_stderr"])
    estimates, stderrs = np.array(estimates), np.array(stderrs)
    spread = estimates.std(ddof=1)
    assert np.sqrt(np.mean(stderrs**2)) == pytest.approx(spread, rel=0.1)
    truth = np.mean(estimates)  # the ratio estimator's bias is O(1/m), far below its s.e.
    coverage = np.mean(np.abs(estimates - truth) <= 1.96 * stderrs)
    assert 0.9 < coverage < 0.98


def test_metrics_writer_works_without_tensorboardx(tmp_path, monkeypatch):
    """tensorboardX is an optional extra: without it a writer keeps metrics.jsonl alone."""
    import sys

    from mdm import metrics

    for name in [m for m in sys.modules if m == "tensorboardX" or m.startswith("tensorboardX.")] + ["tensorboardX"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import tensorboardX...` raise ImportError
    assert not metrics.tensorboard_available()
    writer = metrics.MetricsWriter(tmp_path / "metrics.jsonl")
    assert writer.events is None
    writer.write(1, {"train/loss": 2.0})
    writer.write(2, {"train/loss": 1.5})
    writer.truncate_after(1)
    assert [r["step"] for r in metrics.read_metrics(tmp_path / "metrics.jsonl")] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_metrics_lines_without_a_step_or_with_garbage_are_skipped_with_one_warning(tmp_path, caplog):
    """A hand-edited or damaged metrics.jsonl neither breaks a resume (truncate_after) nor a read."""
    from mdm import metrics

    path = tmp_path / "metrics.jsonl"
    writer = metrics.MetricsWriter(path, tensorboard=False)
    writer.write(1, {"train/loss": 2.0})
    with open(path, "ab") as f:
        f.write(b'{"train/loss": 1.0}\n')  # no step
        f.write(b"\x00\xff\xfe binary \x80 garbage\n")  # not UTF-8
        f.write(b"[1, 2]\n")  # JSON, not a record
        f.write(b'{"step": "3", "train/loss": 1.0}\n')  # a step that is not an integer
    writer.write(2, {"train/loss": 1.5})
    writer.write(3, {"train/loss": 1.2})
    with caplog.at_level("WARNING", logger="mdm"):
        assert [r["step"] for r in metrics.read_metrics(path)] == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "skipped 4 line(s) that are not a record with a step (line 2, 3, 4, 5)" in warnings[0]
    writer.truncate_after(2)  # a resume from step 2 drops step 3 and the unreadable lines
    assert [r["step"] for r in metrics.read_metrics(path)] == [1, 2]
    assert path.read_bytes().count(b"\n") == 2
