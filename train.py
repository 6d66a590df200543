"""Train a masked diffusion (or AR) language model.

    python train.py --workdir runs/default [--config configs/default.py] [--config.key=value ...]

With no arguments it trains configs/default.py on the embedded dataset in runs/default.
Re-running with the same --workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import pathlib
import sys

from mdm.cli import run_cli

ROOT = pathlib.Path(__file__).resolve().parent


def _run(argv: list[str]) -> None:
    import jax

    from mdm.cli import check_workdir, parse_command_line
    from mdm.distributed import initialize_from_env
    from mdm.loop import run

    initialize_from_env()
    config, flags = parse_command_line(argv, ROOT / "configs" / "default.py", {"workdir": "runs/default"})
    check_workdir(flags["workdir"])
    if jax.process_index() == 0:
        print(f"training {config.objective} in {flags['workdir']}")
    run(config, flags["workdir"])


def main(argv: list[str]) -> int:
    return run_cli(_run, argv, interrupted="interrupted: the last checkpoint is kept; run the same command to resume")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
