"""The `pvtbuild` click group and what its commands share: output checks, the common options, summaries.

A `PvtbuildError` (a user mistake or a bad input) is caught once, in the group, and printed
as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click

from pvtbuild.engine.manifest import check_writable
from pvtbuild.errors import PvtbuildError

DEFAULT_PIPELINE = "pipelines/pvt.yaml"


def writable(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Option callback: an output path must be writable, checked before any work (`check_writable`)."""
    if value is not None:
        check_writable(value, param.opts[0])
    return value


def stage_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every stage command takes; each overrides its pipeline value when given."""
    options = [
        click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     callback=writable, help="Build directory shared by all stages."),
        click.option("--seed", type=int, default=None, help="Global seed (pipeline: seed)."),
        click.option("--jobs", type=int, default=None, help="Worker processes (pipeline: exec.jobs)."),
        click.option("--scheduler", default=None,
                     help="Absent: local dask cluster; 'sync': in-process; tcp://HOST:PORT or tls://HOST:PORT: "
                          "a dask cluster (TLS certificates from dask config)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)


def csv_option(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated option (`--formats cqt,disc`) as a tuple; None when it was not given."""
    return None if text is None else tuple(f.strip() for f in text.split(",") if f.strip())


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PvtbuildError as e:
            click.echo(f"pvtbuild: error: {' '.join(str(e).split())}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("pvtbuild: interrupted; finished shards are kept: rerun the same command to resume", err=True)
            ctx.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="pvtbuild")
def cli() -> None:
    """Build controllable-music-diffusion datasets from MIDI, and train on them."""


def path_str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def main() -> None:
    cli(prog_name="pvtbuild")
