"""What the stages fed by render shard i (encode, qa) share: its clips, its arrays, and their rows.

Each such stage writes one shard per render shard, with one manifest row per clip the render
shard holds; a row names the clip's source and the sha256 of the audio it was made from
(`row_from_render`), so a row can be traced to the exact audio it judged or encoded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from pvtbuild.engine.manifest import ManifestRow
from pvtbuild.engine.stage_files import ShardRecord, read_shard_arrays, write_record
from pvtbuild.errors import InputError


def rendered_rows(render: ShardRecord) -> list[ManifestRow]:
    """The render rows of the clips a render shard holds (those rendered ok), in its order."""
    return [r for r in render.rows if r.stage == "render" and r.status == "ok"]


def row_from_render(render_row: ManifestRow, stage: str, params: str, status: str,
                    outputs: dict[str, str] | None = None, info: dict[str, Any] | None = None) -> ManifestRow:
    """`stage`'s manifest row for the clip of a render row: its inputs are the clip's source and audio sha256."""
    inputs = {"source": render_row.inputs.get("source", ""), "audio": render_row.outputs.get("audio", "")}
    return ManifestRow(render_row.id, stage, status, inputs, params, outputs or {}, info or {})


def unknown_render_row(clip_id: str) -> ManifestRow:
    """The render row of a clip a render shard holds but whose record lacks it (never in pvtbuild's own)."""
    return ManifestRow(clip_id, "render", "")


def read_render_input(stage: str, index: int, render: ShardRecord, render_params: str, params: str,
                      render_dir: Path, stage_dir: Path, names: Iterable[str],
                      skipped_row: Callable[[ManifestRow, str], ManifestRow]
                      ) -> dict[str, np.ndarray] | ShardRecord:
    """What a task of a stage fed by render shard `index` (encode, qa) reads: the arrays `names`
    (`read_shard_arrays`), or, when there is nothing to read, the task's final record, written:

    - the render task failed (or ran with other params than `render_params`): failed, so it is retried with it;
    - the render shard holds no clip: empty;
    - its file is missing or damaged: failed, one `skipped_row(render row, status)` per clip.
    """
    if render.failed or render.params != render_params:
        return write_record(stage_dir, ShardRecord(stage, index, "", "", params, [], failed=True))
    if not render.file:
        return write_record(stage_dir, ShardRecord(stage, index, "", "", params, []))
    try:
        return read_shard_arrays(render_dir, render, names)
    except InputError as e:
        status = f"skipped: {e}; rerun render"
        rows = [skipped_row(r, status) for r in rendered_rows(render)]
        return write_record(stage_dir, ShardRecord(stage, index, "", "", params, rows, failed=True))

