"""What every entry point says on bad input: one line naming the problem, exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def one_line(text: object, limit: int = 400) -> str:
    """`text` as one printable line: control characters escaped (a key typed with a CR in it cannot
    split the message), cut at `limit` characters.

    >>> one_line("bad key 'a\\rb'")
    "bad key 'a\\\\rb'"
    """
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return s if len(s) <= limit else s[: limit - 3] + "..."


def fail(prog: str, problem: object) -> int:
    """Print `prog: problem` as one line on stderr; return the usage exit code."""
    print(f"{prog}: {one_line(problem)}", file=sys.stderr)
    return EXIT_USAGE


def owner_only() -> None:
    """Everything this process and its children create from here on is owner-only (umask 077).

    A run folder holds weights, the config, logs and metrics; the folders are made 0700, and the
    umask keeps every file written into them (by mp_rl, torch.profiler or matplotlib) 0600, so a
    copied or re-permissioned folder does not expose them. Children inherit the umask (the members' fork
    server too: the entry points set it before they start the server)."""
    os.umask(0o077)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line and exit code 2, not the usage block."""

    def error(self, message: str) -> None:
        raise SystemExit(fail(self.prog, message))


def config_parser(prog: str, description: str, example: str, required: bool = True) -> Parser:
    """The parser every config-taking entry point starts from: `--config` and `key.sub=value` overrides."""
    p = Parser(prog=prog, description=description)
    p.add_argument("--config", required=required, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help=f"overrides, e.g. {example}")
    return p


TRUST_FLAG = "--trust-imports"
TRUST_HELP = ("run the Python modules a run folder's config.yaml names (env.register, a 'module:' env.id); "
              "without it such a folder is refused: it may have come from elsewhere")  # fmt: skip


def check_imports(run_dir: Path, env, trusted: bool) -> None:
    """Refuse (ConfigError) a run folder whose config would import code, unless the user said to trust it.

    Why a flag, and not the folder's owner: a folder copied from elsewhere belongs to whoever copied
    it, and the import runs with the user's rights before anything else could check it. `weights_only`
    makes the checkpoint safe to load; this makes the config as safe, by asking first."""
    from mp_rl.agent.envs import code_imports
    from mp_rl.config import ConfigError
    from mp_rl.runfolder import RunFolder

    names = code_imports(env)
    if names and not trusted:
        raise ConfigError(f"{RunFolder(run_dir).config} would import {', '.join(names)}: "
                          f"if you trust that run folder, pass {TRUST_FLAG}")  # fmt: skip
