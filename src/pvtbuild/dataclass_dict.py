"""One helper for the records that are JSON data already (manifest rows, clip specs, shard records).

`dataclasses.asdict` deep-copies every nested dict: for a render stage's rows that was ~15 % of its time.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def shallow_dict(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields as a dict, by name, in field order; values are not copied."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
