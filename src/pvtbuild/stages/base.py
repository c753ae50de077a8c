"""The stage interface: what every stage of the pipeline says, and says the same way.

A stage is one module of `pvtbuild.stages` holding one class that implements `Stage`:
- `name`: its folder in the build directory (and its command);
- `reads`: the stage whose output it plans on, handed to `plan` when that stage ran in the
  same command (None: it reads nothing handed on, or reads the build directory itself);
- `streams`: whether it can start on its upstream's shards while that stage still runs
  (its tasks then take the upstream's unfinished shards as `After`s);
- `enabled(cfg)`: whether `pvtbuild run` includes it (qa: `qa.enabled`);
- `check(cfg, together)`: before any work (no executor started, nothing written), one line
  on a bad input; `together` names the stages of the same command;
- `worker_paths(cfg)`: the inputs its workers must see, for the executor's preflight;
- `plan(cfg, out, executor, upstream)`: a `StageRun` (finished shards plus tasks), or `Ready`
  when there is no work (render's clips read from a selection manifest); `upstream` is what
  the stage it reads handed on (`StageRun.upstream()`), or None when that stage did not run
  in this command (the stage then reads its output from `out`).

`pvtbuild.pipeline` holds the stages in order and runs any sub-list of them. Adding a stage
(say `embed`, a global conditioning vector per clip computed from the encode output) is one
module, `stages/embed.py`, with a class implementing `Stage` (`reads = "encode"`, `streams = True`
if it works shard by shard), and one entry in `pipeline.STAGES` after the stage it reads (plus a
command in `cli/build.py` if it should run alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pvtbuild.config import PipelineConfig
from pvtbuild.engine.executor import Executor
from pvtbuild.engine.planning import StageRun


@dataclass(frozen=True)
class Ready:
    """A stage's output that needed no work: handed on as is, with no summary."""

    output: Any

    def upstream(self) -> Any:
        return self.output


class Stage(Protocol):
    """One stage of the pipeline (see the module docstring for what each member means)."""

    name: str
    reads: str | None
    streams: bool

    def enabled(self, cfg: PipelineConfig) -> bool: ...

    def check(self, cfg: PipelineConfig, together: frozenset[str]) -> None: ...

    def worker_paths(self, cfg: PipelineConfig) -> dict[str, str]: ...

    def plan(self, cfg: PipelineConfig, out: Path, executor: Executor, upstream: Any) -> StageRun | Ready: ...
