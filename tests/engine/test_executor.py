"""The executor on a real local dask cluster (worker processes under nannies) and in-process:
results, failures (a raising task, a task that kills its worker), worker setup, and errors
that must be one line. The stage failure path (`planning.plan_stage` run by `run_stages`) is checked here
too, on the same cluster."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import urllib.request
from pathlib import Path

import dask
import pytest
from distributed import Client, Nanny, Scheduler, SpecCluster, get_worker

from pvtbuild.engine import processes
from pvtbuild.engine.cluster import ALLOWED_FAILURES, dask_settings
from pvtbuild.engine.executor import Executor, open_executor
from pvtbuild.engine.manifest import ManifestRow
from pvtbuild.engine.planning import each_shard, plan_stage, run_stages
from pvtbuild.engine.processes import WORKER_ENV, cores, prepare_process
from pvtbuild.engine.stage_files import ShardRecord, read_manifest, write_record
from pvtbuild.engine.summary import StageSummary
from pvtbuild.engine.tasks import After, Task, TaskFailure
from pvtbuild.errors import PvtbuildError

# --- task functions (module level: workers import them) ----------------------------------


def square(x: int) -> int:
    return x * x


def attempt(log: str, x: int) -> int:
    """Square x, noting each attempt in `log`; raises on the poisoned input 3, dies on 4."""
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    if x == 3:
        raise ValueError("poisoned input 3")
    if x == 4:
        os._exit(1)  # like a crash in native code: the worker process is gone
    return x * x


def worker_setup() -> dict:
    return {"env": {k: os.environ.get(k) for k in [*WORKER_ENV, "PVTBUILD_THREADS", "OMP_NUM_THREADS"]},
            "daemon": multiprocessing.current_process().daemon}


def demo_rows(items: list[int], status: str) -> list[ManifestRow]:
    """A demo shard's rows: what `shard_task` records ("ok"), and the planner's rows of a failed shard."""
    return [ManifestRow(str(x), "demo", status, {}, "p") for x in items]


def run_alone(executor: Executor, stage_dir, params, groups, make, failed_rows, summary) -> None:
    """One stage alone, one task per unfinished shard (`make(i, group)`), as a stage plans and runs it."""
    run_stages(executor, [plan_stage(stage_dir, params, groups, each_shard(make), failed_rows, summary)])


def shard_task(index: int, items: list[int], stage_dir: str) -> ShardRecord:
    if 13 in items:
        raise ZeroDivisionError("unlucky item 13")
    record = ShardRecord("demo", index, "", "", "p", demo_rows(items, "ok"))
    write_record(Path(stage_dir), record)
    return record


def dies_mid_write(index: int, items: list[int], stage_dir: str) -> ShardRecord:
    """Leave what a worker killed inside `atomic_write` leaves (its temporary), then finish as the rerun would."""
    (Path(stage_dir) / f".shard-{index:05d}.npz.x1y2.tmp").write_bytes(b"PK half a shard")
    return shard_task(index, items, stage_dir)


def total(numbers: list[int]) -> int:
    return sum(numbers)


def write_into(index: int, items: list[int], folder: str) -> ShardRecord:
    """A task whose output folder is not one: every input fails the same way, the environment's."""
    (Path(folder) / f"shard-{index}.npz").write_bytes(b"")
    raise AssertionError("unreachable")


def attempts(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.fixture(scope="module")
def local():
    with open_executor(None, jobs=2, quiet=True) as ex:
        yield ex


# --- tests ------------------------------------------------------------------------------


def test_local_cluster_and_in_process_yield_every_task_once_with_the_same_results(local):
    tasks = [Task(f"sq-{i}", square, (i,)) for i in range(12)]
    with open_executor("sync", jobs=1) as sync:
        expected = {t.key: r for t, r in sync.run(tasks, desc="sync")}
    got = [(t.key, r) for t, r in local.run(tasks, desc="dask")]
    assert len(got) == len(tasks)
    assert dict(got) == expected == {f"sq-{i}": i * i for i in range(12)}
    assert local.n_workers == 2


def test_the_dashboard_link_printed_at_start_serves_the_dask_dashboard(local):
    assert local.dashboard.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(local.dashboard, timeout=30) as page:
        assert page.status == 200 and b"Dask" in page.read()


def test_local_workers_get_one_thread_share_each(local):
    setups = local.client.run(worker_setup)
    assert len(setups) == 2
    for setup in setups.values():
        assert setup["env"] == {**WORKER_ENV, "PVTBUILD_THREADS": str(max(1, cores() // 2)),
                                "OMP_NUM_THREADS": str(max(1, cores() // 2))}


def prepared_here() -> bool:
    return processes._prepared


def test_every_task_runs_in_a_process_whose_malloc_setting_was_made_at_run_time(local):
    tasks = [Task(f"prep-{i}", prepared_here, ()) for i in range(4)]
    assert all(r is True for _, r in local.run(tasks, desc="prepare"))
    # once per process: a second call changes nothing
    assert local.client.run(prepare_process) == {w: False for w in local.client.scheduler_info()["workers"]}


def test_a_local_cluster_leaves_this_process_environment_as_it_found_it(monkeypatch):
    monkeypatch.delenv("PVTBUILD_THREADS", raising=False)  # a value in the environment would win (dask's rule)
    before = dict(os.environ)
    with open_executor(None, jobs=1, threads_per_job=7, quiet=True) as ex:
        assert ex.client.run(worker_setup).popitem()[1]["env"]["PVTBUILD_THREADS"] == "7"
    assert dict(os.environ) == before  # dask's nanny had copied its workers' settings in here
    assert os.environ.get("PVTBUILD_THREADS") != "7"


def test_a_raising_task_becomes_a_failure_after_one_attempt_and_the_others_finish(local, tmp_path):
    log = tmp_path / "attempts"
    tasks = [Task(f"try-{i}", attempt, (str(log), i)) for i in (1, 2, 3, 5)]

    results = {t.args[1]: r for t, r in local.run(tasks, desc="poison")}

    assert results[3] == TaskFailure("ValueError: poisoned input 3")
    assert {x: results[x] for x in (1, 2, 5)} == {1: 1, 2: 4, 5: 25}
    assert attempts(log).count(3) == 1  # not retried: the same input raises again


def test_a_task_that_keeps_killing_its_worker_is_given_up_and_the_run_goes_on(local, tmp_path):
    log = tmp_path / "attempts"
    tasks = [Task(f"die-{i}", attempt, (str(log), i)) for i in (1, 4, 2)]

    results = {t.args[1]: r for t, r in local.run(tasks, desc="crash")}

    assert isinstance(results[4], TaskFailure)
    assert f"died {ALLOWED_FAILURES + 1} times" in results[4].reason
    assert (results[1], results[2]) == (1, 4)
    assert attempts(log).count(4) == ALLOWED_FAILURES + 1  # retried on fresh workers, then given up
    local.client.wait_for_workers(2, timeout=120)  # the nannies replace the dead workers


def test_a_failed_shard_is_recorded_as_skipped_rows_and_redone_by_the_next_run(local, tmp_path):
    groups = [[1, 2], [13, 14], [5]]
    def make(i, group):
        return Task(f"demo-{i}", shard_task, (i, group, str(tmp_path)))

    summary = StageSummary("demo")
    run_alone(local, tmp_path, "p", groups, make, demo_rows, summary)

    status = {r.id: r.status for r in read_manifest(tmp_path)}
    assert status == {"1": "ok", "2": "ok", "5": "ok", "13": "skipped: task failed: ZeroDivisionError: unlucky item 13",
                      "14": "skipped: task failed: ZeroDivisionError: unlucky item 13"}
    assert summary.failed_shards and summary.skipped["task failed: ZeroDivisionError: unlucky item 13"] == 2
    assert json.loads((tmp_path / "shard-00001.json").read_text())["params"] == "failed:p"

    groups[1] = [12, 14]  # the input was fixed: the next run redoes only the failed shard
    again = StageSummary("demo")
    run_alone(local, tmp_path, "p", groups, make, demo_rows, again)
    assert (again.ok, again.reused) == (2, 3)
    assert {r.status for r in read_manifest(tmp_path)} == {"ok"}


def worker_name(x: int) -> str:
    return str(get_worker().name)


def test_tasks_asking_for_a_gpu_run_only_on_workers_that_advertise_one(tmp_path):
    workers = {"cpu": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1"}},
               "gpu": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "resources": {"GPU": 1}}}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    with dask.config.set(dask_settings(1)), SpecCluster(workers, scheduler, silence_logs=True) as cluster, \
            Client(cluster) as client:
        ex = Executor(client, "cpu + gpu")
        assert ex.worker_resources() == {"GPU": 1}
        tasks = [Task(f"enc-{i}", worker_name, (i,), resources={"GPU": 1}) for i in range(6)]
        tasks += [Task(f"ren-{i}", worker_name, (i,)) for i in range(6)]
        ran_on = {t.key: r for t, r in ex.run(tasks, desc="mixed")}
    assert {ran_on[f"enc-{i}"] for i in range(6)} == {"gpu"}
    assert {ran_on[f"ren-{i}"] for i in range(6)} <= {"cpu", "gpu"}


def test_a_task_needing_a_resource_no_worker_has_stops_with_one_line_instead_of_waiting(local):
    task = Task("gpu-0", square, (2,), resources={"GPU": 1})
    with pytest.raises(PvtbuildError, match=r"needs GPU=1, but no worker .* --resources GPU=1"):
        list(local.run([task], desc="gpu"))


def test_an_address_where_nothing_listens_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PvtbuildError, match=rf"^no dask scheduler answers at tcp://127.0.0.1:{port}: "):
        with open_executor(f"tcp://127.0.0.1:{port}", jobs=1):
            pass


@pytest.mark.parametrize("address", ["127.0.0.1", "http://127.0.0.1:8786", "tcp://:8786", "tcp://host:99999",
                                     "tcp://host:port"])
def test_a_malformed_scheduler_address_is_one_clear_error(address):
    with pytest.raises(PvtbuildError, match="expected tcp://HOST:PORT, 'sync', or nothing"):
        with open_executor(address, jobs=1):
            pass


def test_in_process_tasks_run_in_order_and_a_user_error_stops_the_run():
    def user_mistake(x: int) -> int:
        raise PvtbuildError("bad config")

    with open_executor("sync", jobs=1) as sync:
        assert [r for _, r in sync.run([Task(f"s-{i}", square, (i,)) for i in range(3)], desc="s")] == [0, 1, 4]
        with pytest.raises(PvtbuildError, match="bad config"):
            list(sync.run([Task("u", user_mistake, (1,))], desc="u"))


def test_preflight_names_the_worker_that_cannot_see_a_path_in_one_line(local, tmp_path):
    local.preflight({"SoundFont": str(tmp_path)}, writable=str(tmp_path / "new" / "build"))  # all fine: no error
    with pytest.raises(PvtbuildError) as e:
        local.preflight({"SoundFont": str(tmp_path / "gone.sf2")}, writable=str(tmp_path))
    assert re.fullmatch(rf"pre-flight: worker tcp://127\.0\.0\.1:\d+ cannot see the SoundFont at {tmp_path}/gone\.sf2 "
                        r"\(and 1 more problem\(s\)\); nothing was run", str(e.value)), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("where", ["in-process", "local cluster"])
def test_a_task_taking_another_tasks_result_gets_it_and_fails_when_that_task_failed(where, local, tmp_path):
    ex = local if where == "local cluster" else Executor(None, "in-process")
    log = tmp_path / "attempts"
    tasks = [Task("a", square, (3,)), Task("b", total, ([After("a"), 1],)), Task("c", square, (After("b"),)),
             Task("bad", attempt, (str(log), 3)), Task("after-bad", square, (After("bad"),))]

    results = {t.key: r for t, r in ex.run(tasks, desc="chain")}

    assert (results["a"], results["b"], results["c"]) == (9, 10, 100)
    assert results["bad"] == results["after-bad"] == TaskFailure("ValueError: poisoned input 3")
    assert attempts(log) == [3]


def test_a_stage_whose_first_tasks_all_fail_the_same_way_stops_the_run_and_records_nothing(local, tmp_path):
    """Every clip skipped with one reason, and the run going on, was how a broken worker setup looked."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the tasks expect their folder")
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    def make(i, group):
        return Task(f"env-{i}", write_into, (i, group, str(blocked)))

    with pytest.raises(PvtbuildError, match=r"^demo: its first 3 tasks all failed the same way, which is the "
                                            r"environment, not the input: NotADirectoryError: .*rerun when"):
        run_alone(local, stage_dir, "p", [[1], [2], [3], [4], [5]], make, demo_rows, StageSummary("demo"))
    assert list(stage_dir.iterdir()) == []  # no skipped rows: a rerun after the fix does every shard


def test_a_temporary_that_a_killed_worker_left_is_gone_when_the_stage_finishes(tmp_path):
    def failed(group, status):
        return []

    def make(i, group):
        return Task(f"demo-{i}", dies_mid_write, (i, group, str(tmp_path)))

    run_alone(Executor(None, "in-process"), tmp_path, "p", [[1], [2]], make, failed, StageSummary("demo"))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl", "shard-00000.json", "shard-00001.json"]
