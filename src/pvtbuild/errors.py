"""Errors meant for people.

A `PvtbuildError` is a user mistake or a bad input (wrong config value, missing
file, corrupt MIDI). The CLI catches it once and prints its message as one line;
anything else is a bug and keeps its traceback.
"""


from typing import Any


def brief(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: a message quoting a value from a file (which may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


class PvtbuildError(Exception):
    """A mistake the user can fix; its message is printed as one line."""


class ConfigError(PvtbuildError):
    """A pipeline config value is missing, of the wrong type or out of range."""


class InputError(PvtbuildError):
    """An input file (MIDI, SoundFont, checkpoint, shard) is unusable."""
