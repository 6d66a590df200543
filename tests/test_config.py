"""Configs: every shipped file loads, overrides are typed, bad input is one clear line."""

import pathlib
import subprocess
import sys

import pytest

from mdm.config import base_config, validate
from mdm.cli import load_config, parse_command_line
from mdm.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.py"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_validates(path):
    config = load_config(path)
    if config.objective in ("mcd", "edlm_nce"):  # these start from a trained MDM named on the command line
        with pytest.raises(ConfigError, match="init.workdir"):
            validate(config)
        config.init.workdir = "runs/default"
    validate(config)


def test_overrides_are_parsed_with_the_type_of_the_default():
    config, flags = parse_command_line(
        [
            "--workdir",
            "/tmp/x",
            "--config.model.d_model=64",
            "--config.optim.lr=3e-4",
            "--config.optim.warmup_steps",
            "7",
            "--config.model.tie_embeddings=false",
            "--config.data.source=synthetic",
            "--config.optim.min_lr_ratio=1",
        ],
        DEFAULT,
        {"workdir": "runs/default"},
    )
    assert flags["workdir"] == "/tmp/x"
    assert config.model.d_model == 64 and config.optim.lr == 3e-4 and config.optim.warmup_steps == 7
    assert config.model.tie_embeddings is False and config.data.source == "synthetic"
    assert config.optim.min_lr_ratio == 1.0 and isinstance(config.optim.min_lr_ratio, float)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--config.model.dmodel=64"], "unknown config key 'model.dmodel'"),
        (["--config.modle.d_model=64"], "unknown config key 'modle.d_model'"),
        (["--config.model.d_model=abc"], "expects int, got 'abc'"),
        (["--config.model.d_model=1.5"], "expects int, got float"),
        (["--config.model.tie_embeddings=maybe"], "expects a bool"),
        (["--config.model=3"], "is a section"),
        (["--config", "configs/nope.py"], "not found"),
        (["--wrkdir=/tmp"], "unknown flag --wrkdir"),
        (["--config.model.num_heads=3"], "not divisible by model.num_heads=3"),
        (["--config.train.batch_size=30", "--config.train.grad_accum=4"], "batch_size=30 is not divisible"),
        (["--config.data.seq_len=1"], "data.seq_len=1 must be >= 2"),
        (["--config.data.source=text"], "needs --config.data.path"),
        (["--config.data.path=corpus.txt"], "data.path='corpus.txt' is read only by data.source='text'"),
        (
            ["--config.data.source=synthetic", "--config.data.path=a.jsonl"],
            "(this config has data.source='synthetic'): add --config.data.source=text or drop",
        ),
        (
            ["--config.data.format=pairs", "--config.data.mode=pad", "--config.data.path=p.jsonl"],
            "data.path='p.jsonl' is read only by data.source='text'",
        ),
        (["--config.objective=gpt"], "objective='gpt'"),
        (["--config.diffusion.schedule=sqrt"], "diffusion.schedule='sqrt'"),
        (["--config.optim.warmup_steps=100000"], "warmup_steps=100000"),
    ],
)
def test_bad_command_lines_are_one_clear_line(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_command_line(argv, DEFAULT, {"workdir": "runs/default"})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--config.optim.min_lr_ratio=1.5"], "optim.min_lr_ratio=1.5 must lie in [0, 1]"),
        (["--config.optim.min_lr_ratio=-0.1"], "optim.min_lr_ratio=-0.1 must lie in [0, 1]"),
        (["--config.optim.b1=1"], "optim.b1=1.0 must lie in [0, 1)"),
        (["--config.optim.b1=-0.5"], "optim.b1=-0.5 must lie in [0, 1)"),
        (["--config.optim.b2=1"], "optim.b2=1.0 must lie in [0, 1)"),
        (["--config.optim.b2=1.01"], "optim.b2=1.01 must lie in [0, 1)"),
        (["--config.optim.lr=0"], "optim.lr=0.0 must be a finite number > 0"),
        (["--config.optim.lr=-1e-3"], "optim.lr=-0.001 must be a finite number > 0"),
        (["--config.optim.lr=float('inf')"], None),  # not a literal: a parse error, still one line
        (["--config.optim.lr=1e999"], "optim.lr=inf must be a finite number > 0"),
        (["--config.optim.weight_decay=-0.01"], "optim.weight_decay=-0.01 must be >= 0"),
        (["--config.seed=-1"], "seed=-1 must lie in [0, 2**31 - 1"),
        (["--config.seed=2147483648"], "seed=2147483648 must lie in [0, 2**31 - 1"),
        (["--config.data.synthetic_seed=-1"], "data.synthetic_seed=-1 must lie in [0,"),
        (["--config.train.batch_size=0"], "train.batch_size=0 must be >= 1"),
        (["--config.train.batch_size=-4"], "train.batch_size=-4 must be >= 1"),
        (["--config.train.num_steps=0"], "train.num_steps=0 must be >= 1"),
        (["--config.train.num_steps=-5"], "train.num_steps=-5 must be >= 1"),
    ],
)
def test_out_of_range_optim_train_and_seed_values_are_one_line_naming_the_key(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_command_line(argv, DEFAULT, {"workdir": "runs/default"})
    text = str(err.value)
    assert "\n" not in text
    if message is not None:
        assert message in text
        assert "warmup" not in text  # e.g. num_steps=0 is reported as itself, not as a bad warmup_steps


@pytest.mark.parametrize(
    "argv",
    [
        ["--config.optim.min_lr_ratio=0", "--config.optim.b1=0", "--config.optim.weight_decay=0"],
        ["--config.optim.min_lr_ratio=1", "--config.optim.b2=0.999"],
        ["--config.seed=0"],
        ["--config.seed=2147483647"],
        ["--config.train.num_steps=1", "--config.optim.warmup_steps=0", "--config.train.batch_size=1"],
    ],
)
def test_values_on_the_edges_of_the_allowed_ranges_are_accepted(argv):
    parse_command_line(argv, DEFAULT, {"workdir": "runs/default"})


def test_config_files_may_not_add_keys(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "from mdm.config import base_config\ndef get_config():\n    c = base_config()\n    c.model.depth = 3\n    return c\n"
    )
    with pytest.raises(ConfigError, match="unknown config key 'model.depth'"):
        load_config(path)


@pytest.mark.parametrize(
    "body,message",
    [
        ("    raise RuntimeError('no GPU\\nsecond line')", "get_config() raised RuntimeError: no GPU; fix the file"),
        ("    return {}['model']", "get_config() raised KeyError: 'model'; fix the file"),
        ("    return 3", "get_config() returned int, not a ConfigDict"),
    ],
)
def test_an_exception_inside_get_config_is_one_line(tmp_path, body, message):
    path = tmp_path / "broken.py"
    path.write_text(f"def get_config():\n{body}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"config file {str(path)!r}: {message}"


def test_base_config_declares_every_key_it_validates():
    validate(base_config())


def test_train_py_reports_bad_input_in_one_line_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--workdir", str(tmp_path), "--config.model.d_modle=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'model.d_modle'")
