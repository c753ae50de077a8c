"""The `pvtbuild` command: parses options, calls one library function per command, prints summaries.

Nothing here knows how a stage works. The group and shared options are in `common`; the commands,
by what they do, in `build`, `tools` and `train` (importing them registers them on the group).
"""

from pvtbuild.cli import build, tools, train  # noqa: F401  (registers the commands)
from pvtbuild.cli.common import cli, main

__all__ = ["cli", "main"]
