"""The configuration schema, start-up validation and the migration of saved configs.

Configs are plain `ml_collections.ConfigDict`s. `base_config()` declares every key with its
default; files in `configs/` start from it and change values only, so any key can be overridden
from the command line as `--config.section.key=value`. Problems are reported as `ConfigError`s,
one line each, naming the key and the fix.
"""

from __future__ import annotations

import math

import ml_collections

from mdm.errors import ConfigError
from mdm.networks.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from mdm.networks.transformer import REMAT_POLICIES
from mdm.objectives import OBJECTIVES, REGISTRY, mcd, nce
from mdm.sharding import DEFAULT_RULES, rules_to_config


def base_config() -> ml_collections.ConfigDict:
    """Every config key, with defaults suitable for a tiny CPU run."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # 'mdm' (masked diffusion ELBO), 'ar' (causal baseline), 'bd3lm' (block diffusion), 'mcd' or 'edlm_nce' (need init.workdir)
    c.objective = "mdm"

    c.model = ml_collections.ConfigDict()
    c.model.num_layers = 4
    c.model.d_model = 256
    c.model.num_heads = 4
    c.model.num_kv_heads = 0  # key/value heads of grouped-query attention (0: num_heads; must divide it)
    c.model.mlp_dim = 704
    c.model.tie_embeddings = True
    c.model.time_conditioning = False  # adaLN-zero on t; MDMs are time-agnostic by default
    c.model.rope_base = 10_000.0
    c.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (params stay float32)
    c.model.remat = "none"  # rematerialise each block: 'none', 'full', or 'save_dots' (keep matmul outputs)
    c.model.attention = "auto"  # 'auto' (cuDNN on NVIDIA GPUs, Splash on TPUs, chunked/XLA on CPUs), xla, chunked, cudnn, splash
    c.model.attention_chunk = 0  # >0: sequences per chunk of the chunked attention ('auto' uses it on CPUs)
    c.model.init_std = 0.02
    c.model.norm_eps = 1e-6  # RMSNorm epsilon (LLaMA checkpoints use 1e-5 or 1e-6)
    c.model.loss_chunk = 0  # positions per chunk of the output head in losses (0: auto, about 2^27 logits a chunk)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"  # 'linear', 'cosine' or 'polynomial'
    c.diffusion.eps = 0.0  # alpha(1) = eps; 1e-3 with 'linear' is MDLM's log-linear schedule
    c.diffusion.power = 2.0  # exponent of the 'polynomial' schedule
    c.diffusion.t_min = 1e-5  # training/eval times lie in [t_min, 1]
    c.diffusion.eval_t_samples = 8  # stratified times per sequence in evaluation
    c.diffusion.eval_estimator = "continuous"  # eval NELBO (a bound, eps ignored): 'continuous' (time) or 'count' (masked count)
    c.diffusion.shift = False  # AR adaptation: output i predicts token i from inputs shifted right (the AR head reused)
    c.diffusion.anneal_steps = 0  # AR adaptation: training attention causal -> bidirectional over this many steps

    c.block = ml_collections.ConfigDict()
    c.block.size = 16  # objective 'bd3lm': tokens per block (divides data.seq_len; seq_len = MDM, 1 = AR)

    c.data = ml_collections.ConfigDict()
    c.data.source = "embedded"  # 'embedded', 'text', 'tfds', 'synthetic' or 'tokens' (python -m mdm.data.prepare)
    c.data.path = ""  # source='text': glob of .txt/.jsonl/.parquet files; source='tokens': the prepared directory
    c.data.read_threads = -1  # threads making batches ahead of the step (0: none; -1: 2 on accelerators, 0 on CPUs)
    c.data.prefetch = 4  # batches made ahead
    c.data.text_key = "text"
    c.data.tfds_name = ""
    c.data.tfds_data_dir = ""
    c.data.tfds_train_split = "train"
    c.data.tfds_eval_split = "test"
    c.data.tokenizer = "bytes"  # 'bytes', 'stdlib-bpe' (shipped, 2,048 ids) or a path to a HuggingFace tokenizer.json
    c.data.seq_len = 128
    c.data.mode = "pack"  # 'pack' (concatenate and chunk) or 'pad' (one document per row)
    c.data.format = "documents"  # 'documents' (plain text) or 'pairs' (prompt/response, for fine-tuning; mode 'pad')
    c.data.prompt_key = "prompt"  # format 'pairs' from JSONL (source 'text'): the prompt's field ...
    c.data.response_key = "response"  # ... and the response's
    # mode 'pad': model the padding after EOS too (the model learns to stop; the MDM's NELBO then bounds -log p(x)
    # with its length, like for like with the AR twin, instead of -log p(x | length))
    c.data.supervise_padding = False
    c.data.val_percent = 5
    c.data.synthetic_vocab = 8
    c.data.synthetic_seed = 0
    c.data.synthetic_num_sequences = 4096

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.01
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.999  # 0 disables the EMA (it then equals the params)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global batch, summed over processes and micro-batches
    c.train.grad_accum = 1  # micro-batches per step
    c.train.num_steps = 1000
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.eval_batches = 8
    c.train.eval_batch_size = 32
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 2
    c.train.progress_bar = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)  # devices along (data, fsdp, tensor); one -1 takes the rest
    # logical axis -> mesh axes ('' = replicated, 'data+fsdp' = both), for params and activations;
    # the defaults are mdm.sharding.DEFAULT_RULES, the one rules table
    c.mesh.rules = ml_collections.ConfigDict(rules_to_config(DEFAULT_RULES))

    c.mcd = mcd.config_section()
    c.nce = nce.config_section()

    c.init = ml_collections.ConfigDict()
    c.init.workdir = ""  # start from this run's params (fine-tuning; the teacher/denoiser of mcd and nce)
    c.init.step = 0  # its checkpoint step (0: the latest)
    c.init.use_ema = True  # its EMA params (else the raw params)

    c.sample = ml_collections.ConfigDict()
    c.sample.num_samples = 2  # FHS samples printed at the end of training, and one at each evaluation (0: none)
    c.sample.seed = 0
    return c


def check_keys(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Raises if `config` has a key that `schema` lacks, or lacks one it has."""
    for key in config.keys():
        if key not in schema:
            raise ConfigError(f"unknown config key {prefix + key!r}; known keys: {', '.join(sorted(schema.keys()))}")
        if isinstance(schema[key], ml_collections.ConfigDict):
            check_keys(config[key], schema[key], prefix + key + ".")
    for key in schema.keys():
        if key not in config:
            raise ConfigError(f"config lacks key {prefix + key!r}; build configs from mdm.config.base_config()")


def config_from_saved(saved: dict) -> tuple[ml_collections.ConfigDict, list[str]]:
    """A full config from a checkpoint's saved dict: keys the current schema lacks are dropped
    (returned, so the caller can warn) and keys it added take their defaults."""
    config = base_config()
    dropped: list[str] = []

    def merge(node: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
        for key, value in values.items():
            if key not in node:
                dropped.append(prefix + key)
            elif isinstance(node[key], ml_collections.ConfigDict):
                merge(node[key], value, prefix + key + ".")
            elif key == "remat" and isinstance(value, bool):  # saved before remat became a policy name
                node[key] = "full" if value else "none"
            else:
                node[key] = type(node[key])(value) if isinstance(node[key], float) else value

    merge(config, saved, "")
    return config, dropped


MAX_SEED = 2**31 - 1  # seeds are int32-safe: JAX keys, grain shuffles and NumPy generators all take them


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(c: ml_collections.ConfigDict, process_count: int = 1) -> None:
    """Checks values that cannot work together; each failure is one line with the fix."""
    check_keys(c, base_config())
    _validate_run(c)
    _validate_model(c)
    _validate_diffusion(c)
    _validate_data(c)
    _validate_train(c, process_count)
    _validate_mesh_init_sample(c)


def _validate_run(c: ml_collections.ConfigDict) -> None:
    _require(
        0 <= c.seed <= MAX_SEED,
        f"seed={c.seed} must lie in [0, 2**31 - 1 = {MAX_SEED}], e.g. --config.seed=0",
    )
    _require(
        0 <= c.data.synthetic_seed <= MAX_SEED,
        f"data.synthetic_seed={c.data.synthetic_seed} must lie in [0, {MAX_SEED}], e.g. --config.data.synthetic_seed=0",
    )
    _require(c.objective in OBJECTIVES, f"objective={c.objective!r}: choose one of {', '.join(OBJECTIVES)}")
    _require(
        not REGISTRY[c.objective].needs_init or bool(c.init.workdir),
        f"objective={c.objective!r} starts from a trained MDM: name its run with --config.init.workdir=runs/<mdm run>",
    )


def _validate_model(c: ml_collections.ConfigDict) -> None:
    m = c.model
    for key in ("num_layers", "d_model", "num_heads", "mlp_dim"):
        _require(m[key] >= 1, f"model.{key}={m[key]} must be >= 1")
    _require(
        m.num_kv_heads >= 0 and (m.num_kv_heads == 0 or m.num_heads % m.num_kv_heads == 0),
        f"model.num_kv_heads={m.num_kv_heads} must divide model.num_heads={m.num_heads} (0: as many as query heads)",
    )
    _require(m.norm_eps > 0, f"model.norm_eps={m.norm_eps} must be > 0")
    _require(m.d_model % m.num_heads == 0, f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}")
    _require((m.d_model // m.num_heads) % 2 == 0, f"head dim d_model/num_heads={m.d_model // m.num_heads} must be even for RoPE")
    _require(
        not (REGISTRY[c.objective].causal and m.time_conditioning),
        "model.time_conditioning=true needs objective='mdm' (an AR model has no t)",
    )
    _require(
        m.attention in ATTENTION_IMPLEMENTATIONS,
        f"model.attention={m.attention!r}: choose one of {', '.join(ATTENTION_IMPLEMENTATIONS)}",
    )
    _require(
        m.loss_chunk >= 0 and (m.loss_chunk == 0 or c.data.seq_len % m.loss_chunk == 0),
        f"model.loss_chunk={m.loss_chunk} must divide data.seq_len={c.data.seq_len} (or be 0: auto)",
    )
    _require(m.attention_chunk >= 0, f"model.attention_chunk={m.attention_chunk} must be >= 0 (0: whole batch)")
    _require(m.dtype in ("float32", "bfloat16"), f"model.dtype={m.dtype!r}: choose 'float32' or 'bfloat16'")
    _require(m.remat in REMAT_POLICIES, f"model.remat={m.remat!r}: choose one of {', '.join(REMAT_POLICIES)}")


def _validate_diffusion(c: ml_collections.ConfigDict) -> None:
    d = c.diffusion
    _require(
        d.schedule in ("linear", "cosine", "polynomial"),
        f"diffusion.schedule={d.schedule!r}: choose linear, cosine or polynomial",
    )
    _require(0.0 <= d.eps < 1.0, f"diffusion.eps={d.eps} must lie in [0, 1)")
    _require(0.0 <= d.t_min < 1.0, f"diffusion.t_min={d.t_min} must lie in [0, 1)")
    _require(d.schedule != "polynomial" or d.power > 0, f"diffusion.power={d.power} must be > 0")
    _require(d.eval_t_samples >= 1, f"diffusion.eval_t_samples={d.eval_t_samples} must be >= 1")
    _require(
        d.eval_estimator in ("continuous", "count"),
        f"diffusion.eval_estimator={d.eval_estimator!r}: choose 'continuous' or 'count'",
    )
    _require(d.anneal_steps >= 0, f"diffusion.anneal_steps={d.anneal_steps} must be >= 0 (0: bidirectional from the start)")
    _require(
        c.objective == "mdm" or not (d.shift or d.anneal_steps),
        f"diffusion.shift and diffusion.anneal_steps adapt an AR model into objective='mdm', not {c.objective!r}",
    )


def _validate_data(c: ml_collections.ConfigDict) -> None:
    data = c.data
    _require(
        data.source in ("embedded", "text", "tfds", "synthetic", "tokens"),
        f"data.source={data.source!r}: choose embedded, text, tfds, synthetic or tokens",
    )
    _require(data.source != "text" or bool(data.path), "data.source='text' needs --config.data.path='corpus/*.txt'")
    _require(
        data.source != "tokens" or bool(data.path),
        "data.source='tokens' needs --config.data.path=DIR, a directory made by python -m mdm.data.prepare",
    )
    _require(
        data.source in ("text", "tokens") or not data.path,
        f"data.path={data.path!r} is read only by data.source='text' or 'tokens' (this config has data.source={data.source!r}): "
        "add --config.data.source=text or drop --config.data.path",
    )
    _require(
        data.read_threads >= -1 and data.prefetch >= 0,
        f"data.read_threads={data.read_threads} (-1: auto) and data.prefetch={data.prefetch} must be >= -1 and >= 0",
    )
    _require(data.source != "tfds" or bool(data.tfds_name), "data.source='tfds' needs --config.data.tfds_name=NAME (e.g. lm1b)")
    _require(data.mode in ("pack", "pad"), f"data.mode={data.mode!r}: choose 'pack' or 'pad'")
    _require(data.format in ("documents", "pairs"), f"data.format={data.format!r}: choose 'documents' or 'pairs'")
    if data.format == "pairs":
        _require(
            data.source in ("embedded", "text"),
            f"data.format='pairs' reads JSONL (data.source='text') or the embedded corpus's functions, not {data.source!r}",
        )
        _require(data.mode == "pad", "data.format='pairs' puts one pair per row: set --config.data.mode=pad")
        _require(
            c.objective in ("mdm", "ar"),
            f"data.format='pairs' fine-tunes objective 'mdm' or 'ar', not {c.objective!r}",
        )
    _require(
        not data.supervise_padding or data.mode == "pad",
        "data.supervise_padding=true models the padding of pad mode: set --config.data.mode=pad (packed rows have none)",
    )
    _require(data.seq_len >= 2, f"data.seq_len={data.seq_len} must be >= 2")
    if c.objective == "bd3lm":
        size = c.block.size
        _require(
            size >= 1 and data.seq_len % size == 0,
            f"block.size={size} must divide data.seq_len={data.seq_len} (e.g. --config.block.size=16)",
        )
        _require(
            data.mode == "pack" and data.format == "documents",
            "objective='bd3lm' trains on packed documents: set --config.data.mode=pack --config.data.format=documents",
        )
        _require(
            not c.model.time_conditioning,
            "objective='bd3lm' needs a time-agnostic network (its K/V cache is exact only then): "
            "set --config.model.time_conditioning=false",
        )
    _require(0 <= data.val_percent < 100, f"data.val_percent={data.val_percent} must lie in [0, 100)")


def _validate_train(c: ml_collections.ConfigDict, process_count: int) -> None:
    t = c.train
    _require(t.num_steps >= 1, f"train.num_steps={t.num_steps} must be >= 1: set --config.train.num_steps=N (N >= 1)")
    _require(t.batch_size >= 1, f"train.batch_size={t.batch_size} must be >= 1: set --config.train.batch_size=N (N >= 1)")
    _require(t.grad_accum >= 1, f"train.grad_accum={t.grad_accum} must be >= 1 (1: no accumulation)")
    o = c.optim
    _require(
        math.isfinite(o.lr) and o.lr > 0,
        f"optim.lr={o.lr} must be a finite number > 0, e.g. --config.optim.lr=1e-3",
    )
    _require(
        0.0 <= o.min_lr_ratio <= 1.0,
        f"optim.min_lr_ratio={o.min_lr_ratio} must lie in [0, 1] (the final lr as a fraction of optim.lr)",
    )
    for key in ("b1", "b2"):
        _require(0.0 <= o[key] < 1.0, f"optim.{key}={o[key]} must lie in [0, 1), e.g. --config.optim.{key}=0.9")
    _require(
        o.weight_decay >= 0,
        f"optim.weight_decay={o.weight_decay} must be >= 0 (0 disables weight decay)",
    )
    _require(
        0 <= o.warmup_steps <= c.train.num_steps,
        f"optim.warmup_steps={o.warmup_steps} must lie in [0, train.num_steps={c.train.num_steps}]",
    )
    _require(0.0 <= o.ema_decay < 1.0, f"optim.ema_decay={o.ema_decay} must lie in [0, 1)")
    _require(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")
    _require(
        t.batch_size % (t.grad_accum * process_count) == 0,
        f"train.batch_size={t.batch_size} is not divisible by grad_accum={t.grad_accum} x processes={process_count}; "
        f"use a multiple of {t.grad_accum * process_count}",
    )
    _require(
        t.eval_batch_size % process_count == 0,
        f"train.eval_batch_size={t.eval_batch_size} is not divisible by {process_count} processes",
    )
    for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "eval_batches", "eval_batch_size"):
        _require(t[key] >= 1, f"train.{key}={t[key]} must be >= 1")


def _validate_mesh_init_sample(c: ml_collections.ConfigDict) -> None:
    _require(
        isinstance(c.mesh.shape, tuple) and len(c.mesh.shape) == 3,
        f"mesh.shape={c.mesh.shape!r} must be a (data, fsdp, tensor) tuple, e.g. --config.mesh.shape='(1,-1,1)'",
    )
    for name, axes in c.mesh.rules.items():
        bad = [a for a in axes.split("+") if a and a not in ("data", "fsdp", "tensor")]
        _require(not bad, f"mesh.rules.{name}={axes!r}: use mesh axes data, fsdp, tensor joined by '+' ('' = replicated)")
    _require(c.init.step >= 0, f"init.step={c.init.step} must be >= 0 (0: the latest checkpoint)")
    _require(c.sample.num_samples >= 0, f"sample.num_samples={c.sample.num_samples} must be >= 0")
