"""The tool commands: soundfont-audit, inspect. Each parses its options and calls one library function,
imported when the command runs: loading the CLI (`pvtbuild --help`, any other command) needs neither."""

from __future__ import annotations

from pathlib import Path

import click

from pvtbuild.cli.common import cli
from pvtbuild.errors import PvtbuildError


@cli.command("soundfont-audit")
@click.argument("soundfont")
@click.option("--programs", default="0,40,56", show_default=True,
              help="GM programs (bank 0) to audit, comma-separated.")
@click.option("--pitch-min", type=int, default=48, show_default=True, help="Lowest MIDI pitch played.")
@click.option("--pitch-max", type=int, default=72, show_default=True, help="Highest MIDI pitch played.")
@click.option("--velocities", default="40,80,120", show_default=True, help="Velocities each note is played at.")
def soundfont_audit(soundfont: str, programs: str, pitch_min: int, pitch_max: int, velocities: str) -> None:
    """Play every note of SOUNDFONT (a .sf2/.sf3 path or registry name) through FluidSynth and check it.

    Pitch within 30 cents, onset latency, loudness rising with velocity, no silence, no clipping,
    release length; prints a table and exits non-zero when a note fails (see audit.py).
    """
    from pvtbuild.tools.audit import audit_soundfont, parse_programs  # noqa: PLC0415  (numpy, the synth)

    report = audit_soundfont(soundfont, parse_programs(programs, "--programs"), pitch_min, pitch_max,
                             parse_programs(velocities, "--velocities"))
    click.echo("\n".join(report.lines()))
    if not report.ok:
        raise PvtbuildError(f"{report.soundfont}: {len(report.failures)} of {len(report.notes)} notes fail the audit "
                            "(rows marked FAIL above)")


@cli.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--verify", is_flag=True,
              help="Re-hash every shard, decode every record; exit non-zero on any mismatch.")
@click.option("--plot", "plot_ids", multiple=True,
              help="Write ID.png (controls over time, CQT or mel above). Repeatable.")
@click.option("--plot-random", type=int, default=0, help="Plot N clips drawn with --seed.")
@click.option("--wav", "wav_ids", multiple=True,
              help="Write ID.wav, decoded from whichever format is stored. Repeatable.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Where plots and WAVs go.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --plot-random.")
def inspect(dataset: Path, verify: bool, plot_ids: tuple[str, ...], plot_random: int, wav_ids: tuple[str, ...],
            out_dir: Path, seed: int) -> None:
    """Summarise DATASET; optionally verify it, plot clips, export WAVs."""
    from pvtbuild.tools.inspection import InspectOptions, inspect_dataset  # noqa: PLC0415  (the qa stage)

    for line in inspect_dataset(InspectOptions(dataset, verify, plot_ids, plot_random, wav_ids, out_dir, seed)):
        click.echo(line)
