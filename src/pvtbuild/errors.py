"""Errors meant for people.

A `PvtbuildError` is a user mistake or a bad input (wrong config value, missing
file, corrupt MIDI). The CLI catches it once and prints its message as one line;
anything else is a bug and keeps its traceback.
"""


class PvtbuildError(Exception):
    """A mistake the user can fix; its message is printed as one line."""


class ConfigError(PvtbuildError):
    """A pipeline config value is missing, of the wrong type or out of range."""


class InputError(PvtbuildError):
    """An input file (MIDI, SoundFont, checkpoint, shard) is unusable."""
