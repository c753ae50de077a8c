"""Reading a build's qa output: its records and its summary (and the summary as lines for people), for the
shard stage, the commands and `pvtbuild inspect`.

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


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The summary as a few lines for people (`pvtbuild qa`, `pvtbuild inspect`, `make demo`)."""
    if not report or not report.get("clips"):
        return ["qa: no clip judged"]
    lines = [f"qa: {report['passed']}/{report['clips']} clips pass ({100 * report['pass_rate']:.1f} %)"]
    if report["failures"]:
        lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in report["failures"].items()))
    for inst, e in report["instruments"].items():
        def pct(key: str) -> str:
            return "-" if e.get(key) is None else f"{100 * e[key]:.1f}"
        lines.append(f"  {inst:10s} {e['clips']:5d} clips, pass {pct('pass_rate')} %, "
                     f"voiced {pct('voiced_agreement')} %, pitch class {pct('chroma_accuracy')} %, "
                     f"octave {pct('octave_accuracy')} %, "
                     f"loudness~velocity rho {e['loudness_velocity_spearman']}")
    return lines
