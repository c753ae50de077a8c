"""What a stage hands the executor: `Task`s, `After` (a task argument standing for another task's result)
and `TaskFailure` (what a task that raised yields instead of a result).

A leaf module: stages build tasks without importing anything of dask or of the executor's processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class After:
    """A task argument that stands for the result of another task of the same `Executor.run`.

    This is how stages stream into each other: an encode task takes `After(render task key)`
    in place of the render shard's record, and starts as soon as that render task has
    finished (on a cluster: while other render tasks still run). It may appear as an argument
    or inside a list / tuple argument. When the task it names failed, the task taking it
    fails with the same reason, without running.
    """

    key: str


@dataclass(frozen=True)
class Task:
    """One unit of work: a module-level function and picklable arguments (workers import the function).

    Each task writes one output shard itself and returns a small summary, so that nothing large
    travels back to the client.
    """

    key: str  # unique within a run, e.g. "render-00003"
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    resources: dict[str, float] = field(default_factory=dict)
    group: str = ""  # the progress bar it counts in (a stage name); "" for the run's `desc`


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised (or whose worker kept dying): the stage records its items as skipped."""

    reason: str


def afters(args: Any) -> Iterator[After]:
    """The `After`s among a task's arguments (top level, or in a list / tuple argument)."""
    for arg in args:
        if isinstance(arg, After):
            yield arg
        elif isinstance(arg, (list, tuple)):
            yield from (a for a in arg if isinstance(a, After))


def resolve(args: tuple[Any, ...], lookup: Callable[[str], Any]) -> tuple[Any, ...]:
    """The task's arguments with each `After` replaced by `lookup(key)` (a result, or a dask future)."""
    def one(arg: Any) -> Any:
        if isinstance(arg, After):
            return lookup(arg.key)
        if isinstance(arg, (list, tuple)) and any(isinstance(a, After) for a in arg):
            return [lookup(a.key) if isinstance(a, After) else a for a in arg]
        return arg

    return tuple(one(arg) for arg in args)


def one_line(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters, for a manifest row or an error message."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:300]
