"""HuggingFace LLaMA-architecture checkpoints to runs of this library and back (no torch).

    python -m mdm.convert from-hf DIR --workdir OUT [--objective ar|mdm] [--seq_len 1024]
    python -m mdm.convert to-hf WORKDIR OUT [--step N] [--params ema|raw]

from-hf reads DIR/config.json (model_type llama or mistral), the weights
(model.safetensors, or shards listed in model.safetensors.index.json, read with safetensors' NumPy
API) and DIR/tokenizer.json, and writes a run (step 0, the weights as params and EMA) that
`sample.py`, `evaluate.py` and `init.workdir` read. Grouped-query attention, rope_theta,
rms_norm_eps and tied or untied heads carry over. The backbone's input embedding has one more row
than the vocabulary (the mask id), initialised to the mean of the others; ids the tokenizer has
but the checkpoint lacks (a PAD the library adds) start the same way.
to-hf writes the params back in the same layout (config.json, model.safetensors, tokenizer.json).
Anything the backbone cannot represent (RoPE scaling, attention biases, another activation,
sliding windows) is refused with one line.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
from typing import Any

import numpy as np

from mdm.errors import ConfigError

ARCHITECTURES = ("llama", "mistral")


def _safetensors():
    try:
        from safetensors import numpy as st
    except ImportError as e:  # an optional extra
        raise ConfigError("converting HuggingFace checkpoints needs safetensors: pip install 'mdm[hf]'") from e
    return st


def read_config(directory: pathlib.Path) -> dict[str, Any]:
    """DIR/config.json, checked to be a LLaMA-layout model the backbone represents exactly."""
    path = directory / "config.json"
    if not path.is_file():
        raise ConfigError(f"{directory} has no config.json: give the directory of a HuggingFace model (config.json, weights)")
    cfg = json.loads(path.read_text())
    kind = cfg.get("model_type", "?")
    if kind == "qwen2":
        raise ConfigError(f"{path}: Qwen2 has q/k/v biases, which this backbone lacks; convert a LLaMA or Mistral model")
    if kind not in ARCHITECTURES:
        raise ConfigError(f"{path}: model_type {kind!r} is not a LLaMA-architecture model; supported: {', '.join(ARCHITECTURES)}")
    problems = {
        "rope_scaling": cfg.get("rope_scaling") not in (None, {}),
        "attention_bias": bool(cfg.get("attention_bias", False)),
        "mlp_bias": bool(cfg.get("mlp_bias", False)),
        "hidden_act": cfg.get("hidden_act", "silu") != "silu",
        "sliding_window": bool(cfg.get("use_sliding_window", False)),
        "head_dim": cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
        != cfg["hidden_size"] // cfg["num_attention_heads"],
    }
    bad = [k for k, v in problems.items() if v]
    if bad:
        raise ConfigError(
            f"{path}: {bad[0]}={cfg.get(bad[0], kind)!r} has no counterpart in this backbone; convert a plain LLaMA-layout model"
        )
    return cfg


def read_weights(directory: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of DIR's safetensors file(s), as float32 NumPy arrays."""
    st = _safetensors()
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = [directory / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        raise ConfigError(
            f"{directory} has no model.safetensors or model.safetensors.index.json: save the model with safetensors"
        )
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        if not f.is_file():
            raise ConfigError(f"shard {f} listed in {index.name} is missing: download every shard")
        tensors.update({k: np.asarray(v, np.float32) for k, v in st.load_file(str(f)).items()})
    return tensors


def model_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """The `model` config keys of this library for a HuggingFace config."""
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    return {
        "num_layers": cfg["num_hidden_layers"],
        "d_model": cfg["hidden_size"],
        "num_heads": heads,
        "num_kv_heads": 0 if kv == heads else kv,
        "mlp_dim": cfg["intermediate_size"],
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "rope_base": float(cfg.get("rope_theta", 10_000.0)),
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
    }


def _take(tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
        raise ConfigError(f"the checkpoint lacks tensor {name!r}: is it a complete LLaMA-layout model?")
    value = tensors[name]
    if value.shape != shape:
        raise ConfigError(f"tensor {name!r} has shape {value.shape}, config.json implies {shape}: the files do not match")
    return value


def hf_to_params(cfg: dict[str, Any], tensors: dict[str, np.ndarray], vocab_size: int) -> dict[str, Any]:
    """The backbone's params (float32 NumPy, Flax layout) from LLaMA tensors; `vocab_size` is the
    library tokenizer's (rows beyond the checkpoint's start at the mean embedding)."""
    m = model_section(cfg)
    d, n, f = m["d_model"], m["num_heads"], m["mlp_dim"]
    kv, h = m["num_kv_heads"] or n, d // n
    v_hf = cfg["vocab_size"]
    embed = _take(tensors, "model.embed_tokens.weight", (v_hf, d))
    mean = embed.mean(0, keepdims=True)
    rows = np.concatenate([embed[:vocab_size], np.repeat(mean, max(vocab_size - v_hf, 0), 0), mean])  # the mask id's row last
    params: dict[str, Any] = {"embedding": rows, "final_norm": {"scale": _take(tensors, "model.norm.weight", (d,))}}
    for i in range(m["num_layers"]):
        pre = f"model.layers.{i}."
        q = _take(tensors, pre + "self_attn.q_proj.weight", (n * h, d)).T.reshape(d, n, h)
        k = _take(tensors, pre + "self_attn.k_proj.weight", (kv * h, d)).T.reshape(d, kv, h)
        v = _take(tensors, pre + "self_attn.v_proj.weight", (kv * h, d)).T.reshape(d, kv, h)
        attn = (
            {"qkv": {"kernel": np.stack([q, k, v], 1)}}
            if kv == n
            else {"q": {"kernel": q}, "kv": {"kernel": np.stack([k, v], 1)}}
        )
        attn["out"] = {"kernel": _take(tensors, pre + "self_attn.o_proj.weight", (d, n * h)).T.reshape(n, h, d)}
        gate = _take(tensors, pre + "mlp.gate_proj.weight", (f, d)).T
        up = _take(tensors, pre + "mlp.up_proj.weight", (f, d)).T
        params[f"block_{i}"] = {
            "attn_norm": {"scale": _take(tensors, pre + "input_layernorm.weight", (d,))},
            "attn": attn,
            "mlp_norm": {"scale": _take(tensors, pre + "post_attention_layernorm.weight", (d,))},
            "mlp": {
                "gate_up": {"kernel": np.stack([gate, up], 1)},
                "down": {"kernel": _take(tensors, pre + "mlp.down_proj.weight", (d, f)).T},
            },
        }
    if not m["tie_embeddings"]:
        head = _take(tensors, "lm_head.weight", (v_hf, d)).T
        extra = np.repeat(head.mean(1, keepdims=True), max(vocab_size - v_hf, 0), 1)
        params["head"] = {"kernel": np.concatenate([head, extra], 1)[:, :vocab_size]}
    return params


def params_to_hf(params: dict[str, Any], model: dict[str, Any], vocab_size: int) -> dict[str, np.ndarray]:
    """LLaMA tensors (float32) from the backbone's params (the mask row of the embedding dropped)."""
    d, n = model["d_model"], model["num_heads"]
    h = d // n
    out = {
        "model.embed_tokens.weight": np.asarray(params["embedding"])[:vocab_size],
        "model.norm.weight": np.asarray(params["final_norm"]["scale"]),
    }
    for i in range(model["num_layers"]):
        b, pre = params[f"block_{i}"], f"model.layers.{i}."
        attn = b["attn"]
        if "qkv" in attn:
            qkv = np.asarray(attn["qkv"]["kernel"])
            q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        else:
            q, kvk = np.asarray(attn["q"]["kernel"]), np.asarray(attn["kv"]["kernel"])
            k, v = kvk[:, 0], kvk[:, 1]
        out[pre + "self_attn.q_proj.weight"] = q.reshape(d, -1).T
        out[pre + "self_attn.k_proj.weight"] = k.reshape(d, -1).T
        out[pre + "self_attn.v_proj.weight"] = v.reshape(d, -1).T
        out[pre + "self_attn.o_proj.weight"] = np.asarray(attn["out"]["kernel"]).reshape(n * h, d).T
        gate_up = np.asarray(b["mlp"]["gate_up"]["kernel"])
        out[pre + "mlp.gate_proj.weight"] = gate_up[:, 0].T
        out[pre + "mlp.up_proj.weight"] = gate_up[:, 1].T
        out[pre + "mlp.down_proj.weight"] = np.asarray(b["mlp"]["down"]["kernel"]).T
        out[pre + "input_layernorm.weight"] = np.asarray(b["attn_norm"]["scale"])
        out[pre + "post_attention_layernorm.weight"] = np.asarray(b["mlp_norm"]["scale"])
    if not model["tie_embeddings"]:
        out["lm_head.weight"] = np.asarray(params["head"]["kernel"]).T
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def hf_config(model: dict[str, Any], vocab_size: int, tokenizer, seq_len: int) -> dict[str, Any]:
    """A LLaMA config.json for the backbone `model` section."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": model["d_model"],
        "intermediate_size": model["mlp_dim"],
        "num_hidden_layers": model["num_layers"],
        "num_attention_heads": model["num_heads"],
        "num_key_value_heads": model["num_kv_heads"] or model["num_heads"],
        "hidden_act": "silu",
        "rms_norm_eps": model["norm_eps"],
        "rope_theta": model["rope_base"],
        "tie_word_embeddings": bool(model["tie_embeddings"]),
        "vocab_size": vocab_size,
        "max_position_embeddings": seq_len,
        "bos_token_id": int(tokenizer.bos_id),
        "eos_token_id": int(tokenizer.eos_id),
        "pad_token_id": int(tokenizer.pad_id),
        "torch_dtype": "float32",
    }


def from_hf(directory: str | pathlib.Path, workdir: str | pathlib.Path, objective: str = "ar", seq_len: int = 1024) -> None:
    """Writes the HuggingFace model in `directory` as step 0 of a run in `workdir` (the tokenizer
    copied beside it). `objective`: 'ar' (the model as it is) or 'mdm' (its weights start an MDM)."""
    import jax

    from mdm.checkpoint import Checkpointer
    from mdm.config import base_config, validate
    from mdm.experiment import build
    from mdm.state import init_state

    directory, workdir = pathlib.Path(directory), pathlib.Path(workdir)
    cfg = read_config(directory)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ConfigError(f"{directory} has no tokenizer.json: save the tokenizer with the model (tokenizer.save_pretrained)")
    tensors = read_weights(directory)
    if (workdir / "checkpoints").exists():
        raise ConfigError(f"{workdir} already holds a run: give a new --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_file, workdir / "tokenizer.json")
    config = base_config()
    config.objective = objective
    for key, value in model_section(cfg).items():
        config.model[key] = value
    config.data.tokenizer = str((workdir / "tokenizer.json").resolve())
    config.data.seq_len = min(seq_len, int(cfg.get("max_position_embeddings", seq_len)))
    window = cfg.get("sliding_window")
    if window and window < config.data.seq_len:
        raise ConfigError(
            f"sliding_window={window} is shorter than seq_len {config.data.seq_len}: convert with --seq_len {window}"
        )
    config.optim.warmup_steps = 0
    validate(config)
    exp = build(config)
    params = hf_to_params(cfg, tensors, exp.tokenizer.vocab_size)
    state = init_state(exp.objective, exp.optimizer, jax.random.PRNGKey(0), config.data.seq_len, jax.tree.map(np.asarray, params))
    Checkpointer(workdir).save(0, state, {}, config)


def to_hf(workdir: str | pathlib.Path, out: str | pathlib.Path, step: int | None = None, use_ema: bool = True) -> None:
    """Writes the backbone of the run in `workdir` as a LLaMA-layout HuggingFace directory `out`."""
    import jax

    from mdm.trained import load_trained

    trained = load_trained(workdir, step, use_ema)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config, tok = trained.config, trained.experiment.tokenizer
    model = config.model.to_dict()
    tensors = params_to_hf(jax.tree.map(np.asarray, trained.params), model, tok.vocab_size)
    _safetensors().save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(hf_config(model, tok.vocab_size, tok, config.data.seq_len), indent=2))
    if config.data.tokenizer != "bytes" and config.data.source != "synthetic":
        shutil.copyfile(config.data.tokenizer, out / "tokenizer.json")


FLAGS = {"workdir": "", "objective": "ar", "seq_len": 1024, "step": -1, "params": "ema"}
USAGE = "python -m mdm.convert from-hf DIR --workdir OUT [--objective ar|mdm] | to-hf WORKDIR OUT [--step N] [--params ema|raw]"


def _body(argv: list[str]) -> None:
    from mdm.cli import parse_flags

    positional, rest = [], list(argv)
    while rest and not rest[0].startswith("-"):  # the command and its paths come first
        positional.append(rest.pop(0))
    flags, _, _ = parse_flags(rest, FLAGS)
    if len(positional) < 2 or positional[0] not in ("from-hf", "to-hf"):
        raise ConfigError(f"usage: {USAGE}")
    if positional[0] == "from-hf":
        if not flags["workdir"] or len(positional) != 2:
            raise ConfigError(f"from-hf needs the model directory and --workdir OUT: {USAGE}")
        if flags["objective"] not in ("ar", "mdm"):
            raise ConfigError(f"--objective={flags['objective']}: choose ar (the model as it is) or mdm")
        from_hf(positional[1], flags["workdir"], flags["objective"], flags["seq_len"])
        print(f"wrote {flags['workdir']} (step 0) from {positional[1]}")
        return
    if len(positional) != 3:
        raise ConfigError(f"to-hf needs the run and the output directory: {USAGE}")
    to_hf(positional[1], positional[2], None if flags["step"] < 0 else flags["step"], flags["params"] == "ema")
    print(f"wrote {positional[2]} from {positional[1]}")


def main(argv: list[str]) -> int:
    from mdm.cli import run_cli

    return run_cli(_body, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
