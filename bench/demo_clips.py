"""Real clips for the benchmarks: the first clips of the committed demo selection, rendered (not timed)."""

from __future__ import annotations

import json
from pathlib import Path

from pvtbuild.config import config_from_dict
from pvtbuild.pipeline import run_render

REPO = Path(__file__).resolve().parent.parent


def render_demo_clips(tmp: Path, n_clips: int, name: str) -> Path:
    """Render the first `n_clips` of manifests/demo.jsonl into `tmp/build` (random EnCodec weights, in-process)."""
    rows = [json.loads(line) for line in (REPO / "manifests" / "demo.jsonl").read_text().splitlines()][:n_clips]
    for row in rows:
        row["source"] = str((REPO / "manifests" / row["source"]).resolve())
    selection = tmp / "selection.jsonl"
    selection.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({"name": name, "midi": str(selection), "render": {"clips_per_shard": 8},
                            "encode": {"weights": "random"}, "exec": {"scheduler": "sync"}})
    out = tmp / "build"
    run_render(cfg, out)
    return out
