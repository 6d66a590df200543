"""EDLM energies: the coAR kernel normalises, NCE trains only the energy and lowers the exact KL
to the truth, and sample.py names the fix for every bad energy input.

Toy: L = 4, V = 3 (81 sequences, 256 partially masked x_t), enumerated exactly.
"""

import functools
import importlib.util
import itertools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mdm import precision
from mdm.energy import denoiser_log_prob
from mdm.energy.autoregressive import ar_energy, ar_log_probs, make_ar_energy
from mdm.energy.network import EnergyNetwork
from mdm.errors import CheckpointError, ConfigError
from mdm.networks import Transformer, TransformerConfig
from mdm.objectives.nce import NCEObjective, useless_energy_loss
from mdm.schedules import make_schedule
from oracles import JointOracleModel

L, V = 4, 3
MASK = V
SEQS = np.array(list(itertools.product(range(V), repeat=L)), np.int32)
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cfg(causal=False, vocab=V):
    return TransformerConfig(vocab_size=vocab, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, causal=causal)


@functools.lru_cache(maxsize=None)
def _init(module, seed=0, length=L):
    """The module's own initialisation (compiled once per module and seed)."""
    return nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(seed), jnp.zeros((1, length), jnp.int32)))["params"]


def _random_params(module, seed=0):
    """Params of `module`'s shapes filled with N(0, 0.3^2) from numpy: a random "trained" network
    without compiling the initialiser."""
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32)))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.3, a.shape), a.dtype), shapes)


def _completions(xt):
    xt = np.asarray(xt)
    return SEQS[np.all((SEQS == xt) | (xt == MASK), axis=1)]


def _all_partial_canvases():
    """Every x_t: each position masked or holding a value ((V + 1)^L = 256 of them)."""
    return np.array(list(itertools.product(range(V + 1), repeat=L)), np.int32)


# ----------------------------------------------------------------------------- AR energies


def test_coar_kernel_sums_to_one_and_plain_ar_to_the_ar_mass():
    model = Transformer(_cfg(causal=True))
    params = _random_params(model, 1)
    ar_logits = lambda x: model.apply({"params": params}, x)  # noqa: E731
    patterns = [[MASK] * L, [MASK, 1, MASK, MASK], [0, MASK, 2, MASK], [MASK, MASK, MASK, 1], [2, 0, MASK, 1]]
    rows_x0, rows_xt, which = [], [], []
    for i, p in enumerate(patterns):
        c = _completions(p)
        rows_x0.append(c)
        rows_xt.append(np.broadcast_to(np.asarray(p, np.int32), c.shape))
        which.append(np.full(len(c), i))
    x0, xt, which = map(np.concatenate, (rows_x0, rows_xt, which))
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(len(x0), L, V)) * 2.0, jnp.float32)

    @jax.jit
    @functools.partial(precision.under, "energy")  # float32 matmuls, as the library's energy paths use
    def kernels(x0, xt):
        logp = denoiser_log_prob(logits, x0, xt, MASK)
        co = ar_energy(ar_logits, x0, xt, logp, mask=MASK, carry_over=True)
        plain = ar_energy(ar_logits, x0, xt, logp, mask=MASK, carry_over=False)
        return logp - co, logp - plain, ar_log_probs(ar_logits, jnp.asarray(SEQS), MASK).sum(-1)

    log_co, log_plain, log_ar_all = (np.asarray(a, np.float64) for a in kernels(jnp.asarray(x0), jnp.asarray(xt)))
    p_ar = np.exp(log_ar_all)
    assert abs(p_ar.sum() - 1.0) < 1e-5  # the AR model itself scores all L positions (start symbol)
    for i, p in enumerate(patterns):
        co_total = np.exp(log_co[which == i]).sum()
        assert abs(co_total - 1.0) < 1e-5, (p, co_total)
        ok = np.all((SEQS == np.asarray(p)) | (np.asarray(p) == MASK), axis=1)
        mass = p_ar[ok].sum()  # the AR mass of the completions, by enumeration
        np.testing.assert_allclose(np.exp(log_plain[which == i]).sum(), mass, rtol=1e-5)
        if i > 0:
            assert mass < 0.9  # plain AR is not normalised: its Z is this mass
    # The coAR kernel itself is the AR conditional chain over the masked positions only.
    assert (
        make_ar_energy(model, params=params).normalised and not make_ar_energy(model, params=params, carry_over=False).normalised
    )


def test_ar_energy_refuses_a_bidirectional_model():
    with pytest.raises(ValueError, match="needs a causal model"):
        make_ar_energy(Transformer(_cfg(causal=False)))


# ----------------------------------------------------------------------------- NCE objective


def _nce(denoiser, num_negatives=1, energy_cfg=None):
    return NCEObjective(
        model=EnergyNetwork(energy_cfg or _cfg()),
        frozen_denoiser=denoiser,
        schedule=make_schedule("linear"),
        t_min=1e-3,
        num_negatives=num_negatives,
        pad_id=-1,
        token_bytes=(1,) * V,
    )


def test_init_from_copies_the_backbone_and_starts_with_a_constant_energy():
    mdm = Transformer(_cfg())
    pretrained = _random_params(mdm, 3)
    objective = _nce(mdm)
    fresh = _init(objective.model, 0)
    params, frozen = objective.init_from(fresh, pretrained)
    assert frozen["denoiser"] is pretrained
    for name in ("embedding", "final_norm", "block_0"):
        for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(pretrained[name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.any(np.asarray(params["energy_proj"]["kernel"]))
    # The zero-initialised projection: every candidate of every x_t gets the same energy.
    xt = jnp.asarray(np.repeat(_all_partial_canvases()[::17], 8, axis=0))
    x0 = jnp.asarray(SEQS[np.random.default_rng(0).integers(0, len(SEQS), len(xt))])
    e = np.asarray(jax.jit(lambda p: objective.model.apply({"params": p}, xt, None, x0))(params))
    assert np.all(e == 0.0)  # zero projection, zero hidden bias and silu(0) = 0: E = 0, the NCE-optimal constant
    with pytest.raises(ConfigError, match="--config.init.workdir"):
        objective.init_from(fresh, None)
    with pytest.raises(ConfigError, match="num_negatives=0"):
        _nce(mdm, num_negatives=0)


def test_a_train_step_changes_the_energy_and_no_denoiser_parameter():
    from mdm.state import TrainState, make_train_step

    mdm = Transformer(_cfg())
    objective = _nce(mdm, num_negatives=2)
    optimizer = optax.adam(1e-2)
    params, frozen = objective.init_from(_init(objective.model, 0), _random_params(mdm, 5))
    state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params), ema_params=params, frozen=frozen)
    before = jax.tree.map(np.asarray, state.frozen)
    params_before = jax.tree.map(np.asarray, state.params)
    batch = {"tokens": jnp.asarray(SEQS[np.random.default_rng(1).integers(0, len(SEQS), 16)])}
    step = jax.jit(make_train_step(objective, optimizer, 0.0, 1))
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.frozen)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert np.any(np.asarray(state.params["energy_proj"]["kernel"]) != params_before["energy_proj"]["kernel"])
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def _kl_to_truth(objective, params_S, p_true, oracle):
    """For each of S stacked parameter sets (leading axis S): the mean over all 256 x_t (q at
    t = 1/2: each position masked w.p. 1/2, x_0 ~ p_true) of KL(p_true(. | x_t) || p_theta
    e^{-E}(. | x_t) / Z), and the same at the all-mask x_t. Two float64[S]."""
    canvases = _all_partial_canvases()
    ok = np.all((SEQS[None] == canvases[:, None]) | (canvases[:, None] == MASK), axis=-1)  # [256, 81]
    xt = jnp.asarray(np.repeat(canvases, len(SEQS), axis=0))
    x0 = jnp.asarray(np.tile(SEQS, (len(canvases), 1)))

    @jax.jit
    def log_model(ps):
        logits = oracle.apply(None, jnp.asarray(canvases))
        logp = denoiser_log_prob(jnp.repeat(logits, len(SEQS), axis=0), x0, xt, MASK)
        energy = jax.vmap(lambda p: objective.model.apply({"params": p}, xt, None, x0))(ps)
        return (logp[None] - energy).reshape(-1, len(canvases), len(SEQS))

    log_q = np.where(ok, np.asarray(log_model(params_S), np.float64), -np.inf)  # [S, 256, 81]
    log_q -= np.logaddexp.reduce(log_q, axis=-1, keepdims=True)
    truth = np.where(ok, p_true[None], 0.0)
    weight = truth.sum(1) * 0.5**L  # P(pattern) P(observed values)
    truth /= truth.sum(1, keepdims=True)
    log_truth = np.log(np.where(truth > 0, truth, 1.0))
    kl = np.where(truth > 0, truth * (log_truth - np.where(ok, log_q, 0.0)), 0.0).sum(-1)  # [S, 256]
    return (kl * weight).sum(-1) / weight.sum(), kl[:, -1]


def _correlated_truth():
    """p(x) proportional to exp(#equal pairs + 0.5 #zeros): tokens like to agree, a correlation
    no product of per-position marginals can represent (its exact factorised KL is 0.126 nats)."""
    equal_pairs = sum((SEQS[:, a] == SEQS[:, b]).astype(float) for a in range(L) for b in range(a + 1, L))
    p = np.exp(equal_pairs + 0.5 * (SEQS == 0).sum(1))
    return p / p.sum()


def _train_nce_runs(objective, p_true, seeds, steps=200, batch=256, lr=5e-3):
    """Independent NCE runs of `objective`'s energy network (nu = objective's), one per seed: its
    own init and its own data, time, mask and negative draws; the runs step side by side (one
    vmapped step). Returns the stacked fresh and final params (leading axis: run) and the losses
    float32[steps, runs]."""
    init = jax.jit(lambda k: nn.unbox(objective.model.init(k, jnp.zeros((1, L), jnp.int32)))["params"])
    run_keys = [jax.random.split(jax.random.PRNGKey(seed)) for seed in seeds]  # (init key, data key) per run
    fresh = jax.tree.map(lambda *a: jnp.stack(a), *[init(k[0]) for k in run_keys])
    data_keys = jnp.stack([k[1] for k in run_keys])
    optimizer = optax.adam(lr)
    probs = jnp.asarray(p_true, jnp.float32)

    def one_run(params, opt_state, key):
        k_data, k_loss = jax.random.split(key)
        tokens = jnp.asarray(SEQS)[jax.random.choice(k_data, len(SEQS), (batch,), p=probs)]
        (loss, _), grads = jax.value_and_grad(objective.loss, has_aux=True)(params, {"tokens": tokens}, k_loss, {"denoiser": {}})
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def step(params, opt_state, i):
        return jax.vmap(one_run)(params, opt_state, jax.vmap(jax.random.fold_in, (0, None))(data_keys, i))

    params, opt_state, losses = fresh, jax.vmap(optimizer.init)(fresh), []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, i)
        losses.append(loss)
    return fresh, params, np.asarray(jnp.stack(losses))


def test_nce_training_lowers_the_exact_kl_to_the_truth():
    """The exact factorised denoiser of a correlated law cannot represent the correlation; short
    NCE runs (nu = 1) of the real energy network must cut the exact KL to the truth, on average
    over x_t and at the all-mask x_t.

    Why five runs and their mean: a run starts at a saddle (the zero-initialised projection gives
    E = 0, the best constant) and the correlation signal is small next to the noise of the NCE
    gradient, so when a run leaves the saddle, and so its KL after a fixed number of steps,
    differs from trajectory to trajectory; float rounding alone (another CPU, XLA or jax release)
    makes another trajectory. The earlier form of this test (one run, batch 64, lr 3e-3, 200
    steps, KL after < 0.75 x before) passed for 70 of 96 seeds: KL ratio median 0.60, and 13
    runs never left the saddle (ratio > 0.9). At the settings here (batch 256, lr 5e-3, 200
    steps), over 192 seeds: one run's ratio is 0.24-1.0 (median 0.41, 3 runs above 0.75, 1 stuck
    at 1.0), all-mask 0.07-1.0 (median 0.27), mean NCE loss of the last 50 steps 1.31-1.39
    (median 1.32; useless 1.386). The mean of five fails the bounds below only if about three of
    the five runs stay at the saddle (bootstrap over those runs: ~1e-5); a constant or a wrong-
    signed energy gives ratios >= 1 for every run.
    """
    p_true = _correlated_truth()
    oracle = JointOracleModel(p_true, L, V)
    objective = _nce(oracle, num_negatives=1)
    fresh, params, losses = _train_nce_runs(objective, p_true, seeds=range(5))
    kl_before, kl_mask_before = _kl_to_truth(objective, fresh, p_true, oracle)
    kl_after, kl_mask_after = _kl_to_truth(objective, params, p_true, oracle)
    np.testing.assert_allclose(kl_before, 0.126, atol=0.01)  # a fresh energy is constant: the factorised model
    ratio, mask_ratio = kl_after / kl_before, kl_mask_after / kl_mask_before
    tail = losses[-50:].mean(0)  # NCE nats per sequence over each run's last 50 steps
    print(
        f"exact KL {kl_before[0]:.4f} -> {np.round(kl_after, 4)} (mean over x_t), {kl_mask_before[0]:.4f} -> "
        f"{np.round(kl_mask_after, 3)} (all-mask); ratios {np.round(ratio, 3)}, {np.round(mask_ratio, 3)}; "
        f"last-50-step loss {np.round(tail, 4)}"
    )
    assert ratio.mean() < 0.75, ratio  # measured 0.42 on average; needs at least two runs well off the saddle
    assert mask_ratio.mean() < 0.65, mask_ratio  # measured 0.28 on average
    assert tail.mean() < useless_energy_loss(1) - 0.02, tail  # measured 1.324 on average vs 1.386


@pytest.mark.slow
def test_nce_eval_sums_count_sequences_and_match_the_loss():
    oracle = JointOracleModel(np.full(V**L, 1.0 / V**L), L, V)
    objective = _nce(oracle, num_negatives=2)
    params = _init(objective.model, 0)
    batch = {"tokens": jnp.asarray(SEQS[:12])}
    sums = jax.jit(objective.eval_sums)(params, batch, jax.random.PRNGKey(0), {"denoiser": {}})
    assert float(sums["tokens"]) == 12 and float(sums["sequences"]) == 12 and float(sums["bytes"]) == 0
    # A fresh network has E = 0 exactly, so each sequence scores softplus(log 2) + 2 softplus(-log 2).
    per_seq = np.logaddexp(0, np.log(2)) + 2 * np.logaddexp(0, -np.log(2))
    np.testing.assert_allclose(float(sums["nats"]) / 12, per_seq, rtol=1e-5)
    assert useless_energy_loss(2) == pytest.approx(per_seq) and useless_energy_loss(1) == pytest.approx(2 * np.log(2))


# ----------------------------------------------------------------------------- sample.py


def _sample_main():
    spec = importlib.util.spec_from_file_location("sample", ROOT / "sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sampler", "edlm"], "--sampler edlm needs an energy: pass --energy ar|nce --energy_workdir DIR"),
        (["--sampler", "edlm", "--energy", "gpt"], "--energy='gpt': choose ar"),
        (["--sampler", "edlm", "--energy", "ar"], "--energy ar needs --energy_workdir DIR"),
        (
            ["--sampler", "edlm", "--energy", "ar", "--energy_workdir", "/nonexistent/ar"],
            "train the AR energy first: python train.py",
        ),
        (
            ["--sampler", "edlm", "--energy", "nce", "--energy_workdir", "/nonexistent/n"],
            "configs/edlm_nce.py --config.init.workdir",
        ),
        (["--sampler", "fhs", "--energy", "ar"], "--energy is used by --sampler edlm only"),
        (["--sampler", "edlm", "--energy", "ar", "--is_k", "0"], "is_k=0 must be an integer >= 1"),
        (["--sampler", "edlm", "--energy", "ar", "--is_window", "1.5"], "is_window=1.5 must lie in [0, 1]"),
        (["--sampler", "edlm", "--energy", "ar", "--is_temp", "0"], "is_temp=0.0 must be > 0"),
        (["--sampler", "edlm", "--energy", "ar", "--is_preset", "fast"], "--is_preset=fast: choose one of speed, quality"),
    ],
)
def test_bad_edlm_flags_are_one_line_errors(capsys, args, message):
    assert _sample_main()(["--workdir", "/nonexistent/mdm", *args, "--progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from mdm.loop import run
    from test_loop import tiny_config

    root = tmp_path_factory.mktemp("edlm_runs")
    common = {
        "data.source": "synthetic",
        "data.seq_len": 16,
        "train.num_steps": 2,
        "train.checkpoint_every": 2,
        "train.eval_every": 2,
    }
    run(tiny_config(**common), root / "mdm")
    run(tiny_config(objective="ar", **common), root / "ar")
    return root


@pytest.mark.slow
def test_sample_py_edlm_with_the_ar_energy(runs):
    out = runs / "edlm.jsonl"
    argv = ["--workdir", str(runs / "mdm"), "--sampler", "edlm", "--energy", "ar", "--energy_workdir", str(runs / "ar")]
    argv += ["--steps", "8", "--is_k", "3", "--is_preset", "", "--num_samples", "3", "--batch_size", "2", "--output", str(out)]
    assert _sample_main()(argv + ["--infill", "ab[MASK*4]c", "--progress=false"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and records[0]["energy"] == "coar" and records[0]["energy_normalised"]
    assert records[0]["settings"]["is_k"] == 3 and records[0]["settings"]["is_window"] == 0.2
    assert records[0]["nfe_total"] >= 1 and records[0]["energy_nfe_total"] % 3 == 0
    for r in records:
        assert r["tokens"][1:3] == [0, 1] and r["tokens"][7] == 2 and max(r["tokens"]) < 11


@pytest.mark.slow
def test_energy_runs_that_disagree_with_the_mdm_are_one_line_errors(runs, capsys):
    from mdm.trained import load_energy
    from mdm.trained import load_trained

    argv = ["--workdir", str(runs / "mdm"), "--sampler", "edlm", "--energy", "ar", "--energy_workdir", str(runs / "mdm")]
    assert _sample_main()(argv + ["--progress=false"]) == 2
    assert "is an objective='mdm' run, not 'ar'; pass an AR run (configs/ar.py)" in capsys.readouterr().err
    mdm_config = load_trained(runs / "mdm").config
    for key, value, message in [
        ("seq_len", 32, "was trained with data.seq_len=16 but the MDM has 32; train the energy with --config.data.seq_len=32"),
        ("synthetic_vocab", 6, "was trained with data.synthetic_vocab=8 but the MDM has 6"),
    ]:
        config = mdm_config.copy_and_resolve_references()
        config.data[key] = value
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_energy("ar", str(runs / "ar"), config)
    energy, record = load_energy("ar", str(runs / "ar"), mdm_config, carry_over=False)
    assert energy.kind == "ar" and not energy.normalised and record["energy_step"] == 2


@pytest.mark.slow
def test_sample_py_edlm_with_a_trained_nce_energy(runs, capsys):
    """configs/edlm_nce.py's path end to end: NCE training through the one loop from the MDM
    run, then sample.py --energy nce; the energy run itself refuses to sample."""
    from mdm.trained import load_energy
    from mdm.loop import run
    from mdm.trained import load_trained
    from test_loop import tiny_config

    common = {"data.source": "synthetic", "data.seq_len": 16, "train.num_steps": 2, "train.checkpoint_every": 2}
    run(tiny_config(objective="edlm_nce", **{"init.workdir": str(runs / "mdm"), "train.eval_every": 2, **common}), runs / "nce")
    out = runs / "nce.jsonl"
    argv = ["--workdir", str(runs / "mdm"), "--sampler", "edlm", "--energy", "nce", "--energy_workdir", str(runs / "nce")]
    assert _sample_main()(argv + ["--steps", "4", "--num_samples", "2", "--output", str(out), "--progress=false"]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["energy"] == "nce" and not record["energy_normalised"] and record["energy_nfe_total"] > 0
    capsys.readouterr()
    assert _sample_main()(["--workdir", str(runs / "nce"), "--progress=false"]) == 2
    assert "trains an energy head, which cannot sample by itself" in capsys.readouterr().err
    nce = load_trained(runs / "nce")
    mdm = load_trained(runs / "mdm")
    for a, b in zip(jax.tree.leaves(nce.frozen["denoiser"]), jax.tree.leaves(mdm.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the denoiser never moved
    energy, _ = load_energy("nce", str(runs / "nce"), mdm.config)
    assert energy.kind == "nce" and isinstance(nce.experiment.objective.model, EnergyNetwork)
