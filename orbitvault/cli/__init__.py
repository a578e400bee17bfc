"""The `orbitvault` command: the composition root that wires domain code, adapters and config.

Each role's commands live in their own module here and are attached to the root group below.
Exit codes follow restic's: 0 ok, 1 error, 3 incomplete, 10 no repository, 11 locked,
12 wrong password.

The operator commands (node, gateway, constellation, orbit, pki, the demos) are imported only
when invoked: they pull in the gRPC adapters, X.509 and the orbit model, which would otherwise
add about 0.1 s to every backup-client command.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from typing import NoReturn

import click

from orbitvault import __version__, allocator
from orbitvault.cli import backup_common
from orbitvault.cli.backup import register as register_backup

_LAZY = {
    "constellation": ("orbitvault.cli.constellation", "constellation"),
    "demo": ("orbitvault.cli.drill", "demo"),
    "erasure-demo": ("orbitvault.cli.demo", "erasure_demo"),
    "gateway": ("orbitvault.cli.gateway", "gateway"),
    "node": ("orbitvault.cli.node", "node"),
    "orbit": ("orbitvault.cli.orbit", "orbit"),
    "pki": ("orbitvault.cli.pki", "pki"),
}


class _Root(click.Group):
    """The root group, loading operator commands on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            module, attr = _LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orbitvault")
def cli() -> None:
    """orbitvault: off-planet disaster-recovery storage."""


register_backup(cli)


def main() -> None:
    allocator.tune()
    backup_common.PROCESS_ENDS_WITH_COMMAND = True
    try:
        cli()
    except SystemExit as e:
        _exit(e)


def _exit(e: SystemExit) -> NoReturn:
    """Leave without tearing the interpreter down when nothing is left to run: freeing a large
    restore's or backup's objects one by one took 0.2 s after the work was done. Every write is
    finished (and fsynced) by then; what remains is flushed here."""
    code = e.code
    if not (code is None or isinstance(code, int)) or any(
        not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
    ):
        raise e  # a message to print, or threads to wait for: the normal way out
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone (a pipe's reader left)
            code = code or 1
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    os._exit(code or 0)
