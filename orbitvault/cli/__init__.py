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

import click

from orbitvault import __version__, allocator
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
    cli()
