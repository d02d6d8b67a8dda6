"""`python -m mp_rl.run --config configs/<name>.yaml [key.sub=value ...]`: start a training run.

Bad input (missing file, unknown key, wrong type, out of range, bad override) prints one line
naming what is wrong and exits 2, before anything is created or started.
"""

from __future__ import annotations

import argparse
import sys

from mp_rl.config import ConfigError, dump_config, load_config

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="mp_rl.run", description="Train an off-policy agent with actor processes and a learner.")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. learner.batch_size=128"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"mp_rl.run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    print("mp_rl.run: config is valid; the training system is not part of this version yet "
          "(use --print-config to see the resolved config)", file=sys.stderr)  # fmt: skip
    return 1


if __name__ == "__main__":
    sys.exit(main())
