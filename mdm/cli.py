"""The command line: one flag parser for every script, config files and overrides, quiet logging
and one-line errors.

Flags are `--name=value` or `--name value`, typed by their defaults; scripts that take a config
also accept `--config PATH` and `--config.section.key=value` for any key of `base_config()`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import logging
import os
import pathlib
import sys
from typing import Any, Callable, Sequence

import ml_collections

from mdm.config import base_config, check_keys, validate
from mdm.errors import ConfigError, MdmError


HELP_FLAGS = ("--help", "-h")


class HelpRequested(Exception):
    """Raised by `parse_flags` for --help/-h; `run_cli` prints the script's help and exits 0."""

    def __init__(self, flags: dict[str, Any] | None = None, allow_config: bool = False):
        super().__init__("help requested")
        self.flags = flags or {}
        self.allow_config = allow_config


def _help_text(doc: str | None, request: HelpRequested) -> str:
    """The script's docstring, then its flags with their defaults."""
    lines = [(doc or "").strip()]
    if request.flags or request.allow_config:
        lines += ["", "flags (default):"]
        lines += [f"  --{name}={value}" for name, value in request.flags.items()]
        if request.allow_config:
            lines.append("  --config PATH, --config.SECTION.KEY=VALUE (any key of mdm.config.base_config())")
    return "\n".join(lines).strip()


def run_cli(body: Callable[[list[str]], None], argv: list[str], interrupted: str = "interrupted") -> int:
    """Runs `body(argv)`; an MdmError is printed as `error: <message>` and gives exit status 2.

    --help/-h prints the docstring of `body`'s module and the flags, and gives 0; Ctrl-C prints
    `interrupted` (one line) and gives 130."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mdm").setLevel(logging.INFO)
    from absl import logging as absl_logging  # orbax logs every save at INFO through absl

    absl_logging.set_verbosity(absl_logging.WARNING)
    doc = getattr(body, "__globals__", {}).get("__doc__")
    try:
        body(argv)
    except HelpRequested as request:
        print(_help_text(doc, request))
        return 0
    except MdmError as e:
        if argv and argv[0] in HELP_FLAGS:  # a script that reads a command word before its flags
            print(_help_text(doc, HelpRequested()))
            return 0
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return 0


def check_workdir(workdir: str, flag: str = "--workdir") -> str:
    """`workdir`, unless it is empty (which would mean the current directory) or an existing file."""
    if not str(workdir).strip():
        raise ConfigError(f"{flag} is empty: give the run's directory, e.g. {flag} runs/default")
    if "://" not in str(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"{flag} {workdir} is a file, not a run directory: give a directory (a new one for a new run)")
    return workdir


def prepare_output(path: str, flag: str = "--output") -> pathlib.Path:
    """`path` as a Path, after making its parent directory: a script calls this before its
    expensive work, so an output it could not write fails first, as one line, not after it."""
    out = pathlib.Path(path)
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a directory: give a file in it, e.g. {flag} {out / 'out.jsonl'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"{flag} {out}: cannot create the directory {out.parent} ({e.strerror or e}); give a writable path"
        ) from None
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"{flag} {out}: the directory {out.parent} is not writable; give a writable path")
    return out


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """Imports `get_config()` from a config file; the result is locked (no new keys)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass --config configs/<name>.py")
    spec = importlib.util.spec_from_file_location(f"mdm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file: say which and why, in one line
        raise ConfigError(f"config file {str(path)!r} failed to load: {_first_line(e)}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} defines no get_config()")
    try:
        config = module.get_config()
    except MdmError:
        raise
    except Exception as e:  # a bug inside get_config(): one line naming the file and the error
        raise ConfigError(f"config file {str(path)!r}: get_config() raised {_first_line(e)}; fix the file") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {str(path)!r}: get_config() returned {type(config).__name__}, not a ConfigDict")
    check_keys(config, base_config())
    config.lock()
    return config


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _parse_value(key: str, text: str, current: Any) -> Any:
    """Converts the command-line string `text` to the type of the current value of `key`.

    `key` is the flag as the user wrote it without dashes (e.g. 'config.model.d_model').
    """
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{key}={text}: expects a bool (true/false)")
    if isinstance(current, str):
        return text
    expected = type(current).__name__
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--{key}={text}: expects {expected}, got {text!r}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, type(current)) or isinstance(value, bool) != isinstance(current, bool):
        raise ConfigError(f"--{key}={text}: expects {expected}, got {type(value).__name__}")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets the dotted `key` (e.g. 'model.d_model') from a command-line string."""
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "the top level"
            known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
            raise ConfigError(f"unknown config key {key!r} (no {part!r} in {where}; known: {known})")
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"--config.{key} is a section; set one of its keys, e.g. --config.{key}.{next(iter(current.keys()))}=..."
        )
    with node.unlocked():
        node[parts[-1]] = _parse_value("config." + key, text, current)


def parse_flags(
    argv: Sequence[str], flags: dict[str, Any], allow_config: bool = False
) -> tuple[dict[str, Any], str | None, list[tuple[str, str]]]:
    """Parses `--name=value` / `--name value` flags typed by the defaults in `flags`.

    With `allow_config`, also `--config PATH` and `--config.key=value` (returned as the config
    path and a list of overrides). A bool flag may be given bare (`--flag`). --help/-h raises
    HelpRequested (run_cli prints the help).
    """
    values = dict(flags)
    config_path: str | None = None
    overrides: list[tuple[str, str]] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in HELP_FLAGS:
            raise HelpRequested(flags, allow_config)
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; flags look like --name=value")
        name, has_value, value = arg[2:].partition("=")
        if not has_value:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            elif isinstance(flags.get(name), bool):
                value = "true"
            else:
                raise ConfigError(f"flag --{name} needs a value: --{name}=VALUE")
        if allow_config and name == "config":
            config_path = value
        elif allow_config and name.startswith("config."):
            overrides.append((name[len("config.") :], value))
        elif name in flags:
            values[name] = _parse_value(name, value, flags[name])
        else:
            known = (["--config", "--config.KEY"] if allow_config else []) + [f"--{k}" for k in flags]
            raise ConfigError(f"unknown flag --{name}; known flags: {', '.join(known)}")
        i += 1
    return values, config_path, overrides


def parse_command_line(
    argv: Sequence[str], default_config: str | pathlib.Path, extra_flags: dict[str, Any]
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Parses `--config PATH`, `--config.key=value` and the flags named in `extra_flags`.

    `extra_flags` maps a flag name to its default; its type decides the parsing. Returns the
    overridden, validated config and the extra flag values.
    """
    flags, config_path, overrides = parse_flags(argv, extra_flags, allow_config=True)
    config = load_config(config_path or default_config)
    for key, value in overrides:
        apply_override(config, key, value)
    validate(config)
    return config, flags


def sampler_flags() -> dict[str, Any]:
    """The sampler flags of sample.py and evaluate.py, one per `SamplerSettings` field with its
    default (0 stands for None: exact FHS steps, one block), plus `is_preset` ('speed' or 'quality'
    sets EDLM's is_k and is_window)."""
    from mdm.samplers import SamplerSettings

    flags = {f.name: (0 if f.default is None else f.default) for f in dataclasses.fields(SamplerSettings)}
    return {**flags, "is_preset": ""}


def check_preset(preset: str) -> None:
    """A one-line ConfigError unless `preset` ('' for none) names an EDLM importance preset."""
    from mdm.samplers import EDLM_PRESETS

    if preset and preset not in EDLM_PRESETS:
        raise ConfigError(f"--is_preset={preset}: choose one of {', '.join(EDLM_PRESETS)}")


def settings_from_flags(flags: dict[str, Any], seq_len: int):
    """The validated `SamplerSettings` of parsed `sampler_flags()`; ancestral, confidence and
    edlm default to seq_len steps. Problems are one-line ConfigErrors."""
    from mdm.samplers import EDLM_PRESETS, SamplerSettings

    values = {f.name: flags[f.name] for f in dataclasses.fields(SamplerSettings)}
    values.update({f.name: None for f in dataclasses.fields(SamplerSettings) if f.default is None and not values[f.name]})
    if values["steps"] is None and values["sampler"] != "fhs":
        values["steps"] = seq_len
    preset = flags.get("is_preset", "")
    if preset:
        check_preset(preset)
        defaults = SamplerSettings()
        if (values["is_k"], values["is_window"]) != (defaults.is_k, defaults.is_window):
            raise ConfigError("give --is_preset or --is_k/--is_window, not both")
        values.update(EDLM_PRESETS[preset])
    settings = SamplerSettings(**values)
    try:
        settings.validate(seq_len)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return settings
