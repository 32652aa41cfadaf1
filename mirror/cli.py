"""The ``mirror`` command line: a thin face over the library.

Commands only parse arguments and print; every behaviour lives in a library module.
"""

from __future__ import annotations

import logging
import sys

import click

from mirror import __version__
from mirror.errors import MirrorError


class _Group(click.Group):
    """Turns library errors into one clean line and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MirrorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mirror")
@click.option("-v", "--verbose", count=True, help="-v shows requests, -vv debug.")
def main(verbose: int) -> None:
    """Keep a local, offline, verifiable mirror of a medical-imaging archive."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--images", default=100, show_default=True, help="Number of synthetic images.")
@click.option("--seed", default=0, show_default=True, help="Seed: same seed, same bytes.")
@click.option("--faults", default="", help="Fault spec, e.g. '500=0.05,reset=0.02,429=0.02'.")
@click.option("--private-fraction", default=0.1, show_default=True,
              help="Fraction of images in private datasets (visible only with a token).")
@click.option("--records", type=click.Path(exists=True, dir_okay=False),
              help="Serve image detail records from this JSON(.gz) file.")
@click.option("--segmentations", type=click.Path(exists=True, dir_okay=False),
              help="Serve segmentation detail records from this JSON(.gz) file.")
@click.option("--hostile", is_flag=True, help="Serve hostile data (reliability tests).")
def sandbox(**options) -> None:
    """Serve a local imitation of the ISIC Archive API v1 until interrupted."""
    from mirror.sources.sandbox.server import run_forever

    run_forever(**options)


if __name__ == "__main__":
    main()
