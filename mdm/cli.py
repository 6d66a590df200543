"""What the command-line scripts share: quiet logging and one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from mdm.errors import MdmError


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
