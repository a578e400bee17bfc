"""The `orbitvault` command: the composition root that wires domain code, adapters and config.

Each role's commands live in their own module here and are attached to the root group below.
Exit codes follow restic's: 0 ok, 1 error, 3 incomplete, 10 no repository, 11 locked,
12 wrong password.
"""

from __future__ import annotations

import click

from orbitvault import __version__
from orbitvault.cli.backup import register as register_backup
from orbitvault.cli.constellation import constellation
from orbitvault.cli.demo import erasure_demo
from orbitvault.cli.drill import demo
from orbitvault.cli.gateway import gateway
from orbitvault.cli.node import node
from orbitvault.cli.orbit import orbit
from orbitvault.cli.pki import pki


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orbitvault")
def cli() -> None:
    """orbitvault: off-planet disaster-recovery storage."""


cli.add_command(constellation)
cli.add_command(demo)
cli.add_command(erasure_demo)
cli.add_command(gateway)
cli.add_command(node)
cli.add_command(orbit)
cli.add_command(pki)
register_backup(cli)


def main() -> None:
    cli()
