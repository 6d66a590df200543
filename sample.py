"""Sample from a trained run.

    python sample.py --workdir runs/default [--sampler fhs|ancestral|confidence|edlm] [--steps N]
        [--num_samples N] [--seed S] [--prompt TEXT | --infill "text with [MASK] or [MASK*8] spans"]
        [--temperature T] [--top_k K] [--top_p P] [--categorical exact|gumbel_f32|gumbel_high]
        [--tokens_per_step K] [--grid uniform|cosine] [--cache true|false]
        [--order top_prob|margin|entropy] [--block_length N] [--step N] [--params ema|raw]
        [--min_length N] [--stop_at_eos true|false] [--kv_cache true|false] [--output FILE]
    python sample.py --workdir runs/default --sampler edlm --energy ar|nce --energy_workdir DIR2
        [--is_k K] [--is_window W] [--is_temp T] [--is_preset speed|quality] [--ar_carry_over true|false]

Prints the decoded samples and appends them, with every setting that decided them, to
WORKDIR/samples.jsonl (or --output). --steps 0 means the sampler's default: exact FHS (one
token per call) or seq_len steps for ancestral/confidence/edlm.

A block diffusion run (objective bd3lm) decodes block by block with the sampler inside each block
(--steps then counts per block) and the exact K/V cache of finished blocks (--kv_cache false
recomputes everything: same samples, slower). --stop_at_eos ends a sample at its first EOS (PAD
after it; block decoding stops the row), --min_length N forbids EOS before position N. Each line
of samples.jsonl records the sample's length, its NFE and the stop rule.

--sampler edlm is EDLM's importance sampler: in the window t >= 1 - W it draws K candidates per
row from the MDM, scores them with the energy (--energy ar: the carry-over AR energy of the AR
run DIR2; nce: the NCE energy run DIR2) and keeps one with probability softmax(-E / T). It
reports the denoiser's NFE and the energy's separately.
"""

from __future__ import annotations

import json
import pathlib
import sys

from mdm.cli import prepare_output, run_cli

# Flags that choose the energy of the 'edlm' sampler.
ENERGY_FLAGS = {
    "energy": "",  # 'ar' (an AR run: carry-over AR energy) or 'nce' (a trained NCE energy run)
    "energy_workdir": "",
    "energy_step": -1,  # its checkpoint (-1: the latest)
    "ar_carry_over": True,  # --energy ar: coAR (normalised, the default) or the plain AR energy
}
RUN_FLAGS = {
    "workdir": "runs/default",
    "step": -1,
    "params": "ema",
    "num_samples": 4,
    "batch_size": 16,
    "seed": 0,
    "prompt": "",
    "infill": "",
    "output": "",
    "progress": True,
}


def check_energy_flags(flags: dict) -> None:
    """The edlm flags, checked before anything is loaded (one-line ConfigErrors)."""
    from mdm.errors import ConfigError
    from mdm.cli import check_preset
    from mdm.samplers.importance import check_importance_settings
    from mdm.trained import check_energy_source

    if flags["sampler"] == "edlm" and not flags["energy"]:
        raise ConfigError("--sampler edlm needs an energy: pass --energy ar|nce --energy_workdir DIR")
    if flags["energy"] and flags["sampler"] != "edlm":
        raise ConfigError(f"--energy is used by --sampler edlm only (got --sampler {flags['sampler']})")
    try:
        check_importance_settings(flags["is_k"], flags["is_window"], flags["is_temp"])
    except ValueError as e:
        raise ConfigError(str(e)) from e
    check_preset(flags["is_preset"])
    if flags["energy"]:
        check_energy_source(flags["energy"], flags["energy_workdir"])


def _run(argv: list[str]) -> None:
    from mdm.cli import check_workdir, parse_flags, sampler_flags
    from mdm.errors import ConfigError

    flags, _, _ = parse_flags(argv, {**RUN_FLAGS, **sampler_flags(), **ENERGY_FLAGS})
    check_workdir(flags["workdir"])
    if flags["params"] not in ("ema", "raw"):
        raise ConfigError(f"--params={flags['params']}: choose ema or raw")
    if flags["num_samples"] < 1 or flags["batch_size"] < 1:
        raise ConfigError("--num_samples and --batch_size must be >= 1")
    if flags["output"]:  # its directory is made (or refused) now, not after sampling
        prepare_output(flags["output"])

    import mdm
    from mdm.cli import settings_from_flags
    from mdm.generation import generate, make_canvas
    from mdm.trained import load_energy, load_trained

    check_energy_flags(flags)  # before any checkpoint is read
    trained = load_trained(flags["workdir"], None if flags["step"] < 0 else flags["step"], flags["params"] == "ema")
    seq_len = trained.config.data.seq_len
    settings = settings_from_flags(flags, seq_len)
    energy, energy_record = None, {}
    if flags["energy"]:
        energy, energy_record = load_energy(
            flags["energy"],
            flags["energy_workdir"],
            trained.config,
            step=None if flags["energy_step"] < 0 else flags["energy_step"],
            use_ema=flags["params"] == "ema",
            carry_over=flags["ar_carry_over"],
            denoiser_workdir=trained.workdir,
        )
    tokenizer = trained.experiment.tokenizer
    canvas = make_canvas(tokenizer, seq_len, flags["prompt"], flags["infill"])
    out = generate(
        trained.experiment.objective,
        trained.params,
        settings,
        canvas,
        flags["num_samples"],
        seed=flags["seed"],
        batch_size=flags["batch_size"],
        progress=flags["progress"],
        energy=energy,
        eos_id=tokenizer.eos_id,
    )
    output = pathlib.Path(flags["output"] or pathlib.Path(flags["workdir"]) / "samples.jsonl")
    record_base = {
        "workdir": str(trained.workdir),
        "checkpoint_step": trained.step,
        "params": flags["params"],
        "objective": trained.config.objective,
        "settings": vars(out["settings"]),
        "seed": flags["seed"],
        "prompt": flags["prompt"],
        "infill": flags["infill"],
        "nfe_total": out["nfe"],
        "energy_nfe_total": out["energy_nfe"],
        **energy_record,
        "tokens_per_s": out["tokens_per_s"],
        "stop_rule": out["settings"].stop_rule,
        "mdm_version": mdm.__version__,
    }
    with open(output, "a") as f:
        for i, row in enumerate(out["tokens"]):
            text = tokenizer.decode(row)
            print(f"--- sample {i} ---\n{text}")
            extra = {"length": int(out["lengths"][i]), "nfe": int(out["row_nfe"][i])}
            f.write(json.dumps({**record_base, "index": i, **extra, "text": text, "tokens": row.tolist()}) + "\n")
    energy_note = f", energy NFE {out['energy_nfe']} ({energy_record['energy']})" if energy is not None else ""
    print(
        f"{flags['num_samples']} samples, NFE {out['nfe']}{energy_note}, {out['tokens_per_s']:,.0f} tokens/s -> {output}",
        file=sys.stderr,
    )


def main(argv: list[str]) -> int:
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
