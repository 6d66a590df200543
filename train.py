"""Train a masked diffusion (or AR) language model.

    python train.py --workdir runs/default [--config configs/default.py] [--config.key=value ...]

With no arguments it trains configs/default.py on the embedded dataset in runs/default.
Re-running with the same --workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import logging
import pathlib
import sys

from mdm.errors import MdmError

ROOT = pathlib.Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mdm").setLevel(logging.INFO)
    from absl import logging as absl_logging  # orbax logs every save at INFO through absl

    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        from mdm.config import parse_command_line
        from mdm.loop import run

        config, flags = parse_command_line(argv, ROOT / "configs" / "default.py", {"workdir": "runs/default"})
        print(f"training {config.objective} in {flags['workdir']}")
        run(config, flags["workdir"])
    except MdmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
