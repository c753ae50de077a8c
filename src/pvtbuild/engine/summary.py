"""A stage's end-of-run report: how many items were written, reused, skipped (by reason), and which shards failed.

Counted from the shard records as they come (`StageSummary.add`), printed by the commands (`lines`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pvtbuild.engine.manifest import skip_reason
from pvtbuild.engine.stage_files import ShardRecord


@dataclass
class StageSummary:
    """Counts for the end-of-stage report: what was written, reused, skipped (by reason), failed."""

    stage: str
    unit: str = "clip"
    done: str = "written"  # what an ok item is, in the report: "3 files with clips"
    ok: int = 0
    reused: int = 0  # items in shards found complete from an earlier run
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first file it happened to
    failed_shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def add(self, record: ShardRecord, reused: bool) -> None:
        for row in record.rows:
            if row.stage != self.stage:
                continue  # e.g. the clip rows a select shard carries beside its file rows
            status = row.status
            if status == "ok":
                if reused:
                    self.reused += 1
                else:
                    self.ok += 1
            else:
                reason = skip_reason(status) or status
                self.skipped[reason] += 1
                source = str(row.inputs.get("source", ""))
                self.examples.setdefault(reason, Path(source).name if source else row.id)

    def finish(self) -> "StageSummary":
        self.seconds = time.monotonic() - self._t0
        return self

    @property
    def total_ok(self) -> int:
        return self.ok + self.reused

    def lines(self, top: int = 8) -> list[str]:
        rate = self.ok / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.stage}: {self.ok} {self.unit}s {self.done}, {self.reused} already done, "
               f"{sum(self.skipped.values())} skipped, {self.seconds:.1f} s ({rate:.2f} {self.unit}s/s)"]
        for reason, n in self.skipped.most_common(top):
            out.append(f"  skipped {n:5d}: {reason} (e.g. {self.examples[reason]})")
        if len(self.skipped) > top:
            out.append(f"  ... and {len(self.skipped) - top} other reasons (see the stage's manifest.jsonl)")
        for f in self.failed_shards:
            out.append(f"  failed shard: {f}")
        return out
