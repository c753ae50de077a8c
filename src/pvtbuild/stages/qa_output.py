"""Reading a build's qa output: its records and its summary, for the shard stage and the commands.

The qa stage (`stages.qa`) writes them; the shard stage reads them to drop failing clips
(`qa.drop_failing`) and to copy the summary into dataset.json, without importing that stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pvtbuild.engine.stage_files import FinishedStage, read_finished_stage
from pvtbuild.errors import PvtbuildError

SUMMARY_JSON = "summary.json"


def read_qa(out: Path) -> FinishedStage | None:
    """The finished qa stage of a build, or None when qa never ran there."""
    if not (Path(out) / "qa" / "stage.json").is_file():
        return None
    return read_finished_stage(Path(out), "qa", "pvtbuild qa")


def read_summary(out: Path) -> dict[str, Any] | None:
    path = Path(out) / "qa" / SUMMARY_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def qa_status(out: Path) -> dict[str, str]:
    """Clip id -> its qa status ("ok" or "skipped: failed qa: ..."); raises when qa has not run."""
    stage = read_qa(out)
    if stage is None:
        raise PvtbuildError(f"{Path(out) / 'qa'}: no qa output to drop failing clips by; "
                            f"run `pvtbuild qa --out {out}` first")
    return {r.id: r.status for rec in stage.records for r in rec.rows}
