"""What the command-line scripts share: quiet logging and one-line errors."""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from typing import Callable

from mdm.errors import ConfigError, MdmError


def run_cli(body: Callable[[list[str]], None], argv: list[str]) -> int:
    """Runs `body(argv)`; an MdmError is printed as `error: <message>` and gives exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mdm").setLevel(logging.INFO)
    from absl import logging as absl_logging  # orbax logs every save at INFO through absl

    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        body(argv)
    except MdmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


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
