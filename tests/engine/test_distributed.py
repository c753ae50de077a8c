"""pvtbuild on real dask clusters, as a user runs it: the CLI in its own process, a local cluster
or `scripts/cluster.sh`'s scheduler and workers, and real faults (kill -9 a worker, kill the run,
a poisoned input, no scheduler). All traffic stays on 127.0.0.1. Each run is bounded by a timeout
that only guards against hangs; nothing here asserts speed.

Every subprocess starts in its own session, so "nothing the run started outlives it" is checked
as: no live process is left in that session.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from distributed import Client, get_task_stream

from pvtbuild.build_dir import build_config
from pvtbuild.config import load_pipeline
from pvtbuild.engine.stage_files import finished_record, read_record
from pvtbuild.pipeline import run_encode, run_render

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO_MANIFEST = ROOT / "manifests" / "demo.jsonl"
N_CLIPS = 10
HANG_GUARD = 240  # seconds; a run that takes this long is stuck, not slow
DATASET_JSON = Path("dataset") / "dataset.json"

# One clip per shard, so a run has many tasks and a fault lands in the middle of it.
PIPELINE = """\
name: dist-test
seed: 0
select:
  clips_per_source: 3
render:
  clips_per_shard: 1
encode:
  formats: [encodec]
  weights: random
exec:
  jobs: 2
"""


# --- helpers ----------------------------------------------------------------------------


def session_processes(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def wait_until_gone(sid: int, bound: float = 30.0) -> list[int]:
    """Poll until session `sid` has no live process; returns what is left after `bound` seconds."""
    deadline = time.monotonic() + bound
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def start_cli(*args: str | Path, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "pvtbuild"), *map(str, args)], cwd=ROOT, stdout=stdout,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    proc = start_cli(*args)
    try:
        _, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        kill_session(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def kill_session(proc: subprocess.Popen) -> None:
    """Clean up after a failed test: whatever is left of the session dies."""
    for pid in session_processes(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def n_records(stage_dir: Path) -> int:
    return len(list(stage_dir.glob("shard-*.json")))


def wait_for_records(stage_dir: Path, n: int, proc: subprocess.Popen) -> int:
    """Wait until `n` shard records exist (a shard is finished); returns how many there are."""
    deadline = time.monotonic() + HANG_GUARD
    while (have := n_records(stage_dir)) < n:
        assert proc.poll() is None, f"the run ended before {n} shards were written:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    return have


def stage_files(stage_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stage_dir.iterdir()) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard_digests(dataset: dict) -> list[tuple[str, str]]:
    """(file, sha256) of every TFRecord shard of a dataset.json, all splits."""
    return sorted((s["file"], s["sha256"]) for split in dataset["splits"].values() for s in split["shards"])


def check_stage(stage_dir: Path, reference: Path) -> None:
    """Every clip exactly once, every shard intact, and the same bytes as the reference run."""
    rows = [json.loads(line) for line in (stage_dir / "manifest.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == N_CLIPS
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows if r["status"] != "ok"]
    params = json.loads((stage_dir / "stage.json").read_text())["params"]
    for i in range(N_CLIPS):
        assert finished_record(stage_dir, i, params) is not None, f"shard {i} does not verify"
    assert stage_files(stage_dir) == stage_files(reference)


# --- fixtures ---------------------------------------------------------------------------


def demo_inputs(base: Path, pipeline_text: str, n_clips: int) -> tuple[Path, Path, Path]:
    """(pipeline, selection manifest of the first `n_clips` demo clips, reference build rendered in-process)."""
    pipeline = base / "pipeline.yaml"
    pipeline.write_text(pipeline_text)
    rows = [json.loads(line) for line in DEMO_MANIFEST.read_text().splitlines()][:n_clips]
    for r in rows:
        r["source"] = str((DEMO_MANIFEST.parent / r["source"]).resolve())
    selection = base / "selection.jsonl"
    selection.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference = base / "reference"
    run_render(load_pipeline(pipeline, midi=str(selection), **{"exec.scheduler": "sync"}), reference)
    return pipeline, selection, reference


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(pipeline, selection manifest of N_CLIPS demo clips, reference build rendered in-process)."""
    return demo_inputs(tmp_path_factory.mktemp("dist"), PIPELINE, N_CLIPS)


@pytest.fixture
def cluster(tmp_path):
    """`scripts/cluster.sh start 2 0` (two workers, any free port); stopped, by its pids, afterwards."""
    env = dict(os.environ, CLUSTER_DIR=str(tmp_path / "cluster"), PY=sys.executable, DASK=str(BIN / "dask"))
    script = ["bash", str(ROOT / "scripts" / "cluster.sh")]
    started = subprocess.run([*script, "start", "2", "0"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=HANG_GUARD)
    cluster_dir = tmp_path / "cluster"
    pids = [int(p.read_text()) for p in sorted(cluster_dir.glob("*.pid"))]
    try:
        assert started.returncode == 0, started.stderr
        address = json.loads((cluster_dir / "scheduler.json").read_text())["address"]
        assert f"dask scheduler: {address}" in started.stdout
        assert address.startswith("tcp://127.0.0.1:")
        yield address, cluster_dir
    finally:
        stopped = subprocess.run([*script, "stop"], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=HANG_GUARD)
    assert stopped.returncode == 0, stopped.stderr
    assert not list(cluster_dir.glob("*.pid"))
    for pid in pids:  # each process started its own session: all of it is gone
        assert wait_until_gone(pid) == [], f"process of session {pid} outlived cluster-stop"
    for log in cluster_dir.glob("worker-*.log"):  # workers left by themselves, none had to be killed
        assert "still alive after" not in log.read_text(), log.read_text()[-2000:]


def stock_env() -> dict[str, str]:
    """This environment without anything pvtbuild or a previous cluster could have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PVTBUILD_", "MALLOC_", "DASK_", "OMP_"))}


@contextlib.contextmanager
def stopped_afterwards() -> Iterator[list[subprocess.Popen]]:
    """Yields a list for the block to add the processes it starts, each in its own session; afterwards
    each session gets SIGTERM (last started first: workers before their scheduler), and no process of
    any may be left."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        left = {}
        for proc in reversed(procs):
            if left_over := wait_until_gone(proc.pid, bound=30.0):
                left[proc.args[1]] = left_over
                kill_session(proc)
            proc.wait()
    # dask's own processes and the MIDI parsers they started all left on SIGTERM
    assert not left, f"processes outlived their stopped cluster: {left}"


@contextlib.contextmanager
def started_stock_cluster(tmp_path: Path, worker_env: dict[str, str] | None = None) -> Iterator[str]:
    """`dask scheduler` and `dask worker --nworkers 2 --nthreads 1` as anyone starts them: stock
    nannies (daemonic workers, MALLOC_TRIM_THRESHOLD_=65536), no pvtbuild-specific environment
    (`worker_env`: what a test adds to the workers'). Yields the scheduler address; every process
    is stopped, by session, afterwards, and none may be left."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with stopped_afterwards() as procs:
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", "127.0.0.1:0"], cwd=tmp_path, env=stock_env(),
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "scheduler.log", "w"), start_new_session=True))
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
             "--nworkers", "2", "--nthreads", "1"], cwd=tmp_path,
            env={**stock_env(), **(worker_env or {})}, stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "worker.log", "w"), start_new_session=True))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=HANG_GUARD)
        yield address


@pytest.fixture
def stock_cluster(tmp_path):
    with started_stock_cluster(tmp_path) as address:
        yield address


# --- tests ------------------------------------------------------------------------------


def test_stock_dask_workers_build_the_same_dataset_bytes_as_an_in_process_run(inputs, stock_cluster, tmp_path):
    """Daemonic workers under stock nannies (no pvtbuild environment) once skipped every clip: the
    MIDI parser needed a multiprocessing child, which daemonic processes may not have."""
    _, selection, _ = inputs
    args = ("run", ROOT / "pipelines" / "demo.yaml", "--midi", selection, "--random-weights")

    local = run_cli(*args, "--out", tmp_path / "local", "--scheduler", "sync")
    stock = run_cli(*args, "--out", tmp_path / "stock", "--scheduler", stock_cluster)

    assert local.returncode == 0, local.stderr
    assert stock.returncode == 0, stock.stderr
    assert "Traceback" not in stock.stderr
    for stage in ("render", "encode"):
        statuses = [json.loads(line)["status"] for line in
                    (tmp_path / "stock" / stage / "manifest.jsonl").read_text().splitlines()]
        assert statuses == ["ok"] * N_CLIPS, statuses
    dataset = [json.loads((tmp_path / run / DATASET_JSON).read_text()) for run in ("local", "stock")]
    assert shard_digests(dataset[1]) == shard_digests(dataset[0]) != []


def test_render_piped_into_another_command_reaches_eof_and_leaves_no_process(inputs, tmp_path):
    """The MIDI parser processes of the local cluster's workers once outlived the run and held
    its stdout open, so `pvtbuild render ... | tail` never ended."""
    pipeline, selection, reference = inputs
    proc = start_cli("render", "--pipeline", pipeline, "--midi", selection, "--out", tmp_path / "out",
                     stdout=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=HANG_GUARD)  # returns only at EOF of stdout and stderr
        assert proc.returncode == 0, err
        assert "local dask cluster, 2 worker(s)" in out
        assert wait_until_gone(proc.pid) == [], "processes started by the run outlived it"
    finally:
        kill_session(proc)
    assert stage_files(tmp_path / "out" / "render") == stage_files(reference / "render")


@pytest.fixture(scope="module")
def staged(inputs, tmp_path_factory) -> tuple[Path, Path]:
    """(pipeline that shards what it encodes, a build of it made stage command by stage command, in-process)."""
    _, selection, _ = inputs
    base = tmp_path_factory.mktemp("staged")
    pipeline = base / "pipeline.yaml"
    pipeline.write_text(PIPELINE + "shard:\n  formats: [audio, encodec]\n")
    build = base / "build"
    for args in (("render", "--pipeline", pipeline, "--midi", selection), ("encode",), ("qa",), ("shard",)):
        done = run_cli(*args, "--out", build, "--scheduler", "sync")
        assert done.returncode == 0, done.stderr
    return pipeline, build


def check_build(build: Path, reference: Path) -> None:
    """The same render, encode and qa files and the same dataset shards as the reference build."""
    for stage in ("render", "encode", "qa"):
        assert stage_files(build / stage) == stage_files(reference / stage), stage
    dataset = [json.loads((b / DATASET_JSON).read_text()) for b in (reference, build)]
    assert shard_digests(dataset[1]) == shard_digests(dataset[0]) != []


def test_run_streams_encode_and_qa_into_render_on_a_cluster_and_builds_the_staged_bytes(inputs, staged, stock_cluster,
                                                                                        tmp_path):
    _, selection, _ = inputs
    pipeline, reference = staged

    with Client(stock_cluster, timeout="60s") as client, get_task_stream(client) as stream:
        result = run_cli("run", pipeline, "--midi", selection, "--out", tmp_path / "out", "--scheduler", stock_cluster)

    assert result.returncode == 0, result.stderr
    spans = {t["key"]: [(s["start"], s["stop"]) for s in t["startstops"] if s["action"] == "compute"][0]
             for t in stream.data}
    render_ends = [stop for key, (_, stop) in spans.items() if key.startswith("render-")]
    later_starts = [start for key, (start, _) in spans.items() if key.startswith(("encode-", "qa-"))]
    assert len(render_ends) == N_CLIPS and len(later_starts) == 2 * N_CLIPS  # one clip per shard
    assert min(later_starts) < max(render_ends), "no encode or qa task started before rendering ended"
    check_build(tmp_path / "out", reference)


def test_a_streamed_run_killed_mid_encode_resumes_and_ends_with_the_staged_bytes(inputs, staged, tmp_path):
    _, selection, _ = inputs
    pipeline, reference = staged
    out = tmp_path / "out"
    args = ("run", pipeline, "--midi", selection, "--out", out, "--jobs", "2")
    proc = start_cli(*args)
    try:
        wait_for_records(out / "encode", 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD)
        assert wait_until_gone(proc.pid) == [], "the killed run's workers outlived it"
    finally:
        kill_session(proc)
    encoded = [i for i in range(N_CLIPS) if read_record(out / "encode", i)]
    assert 2 <= len(encoded) < N_CLIPS, f"{len(encoded)} encode shards finished: the kill was not mid-run"
    assert not (out / "dataset").exists()

    rerun = run_cli(*args)

    assert rerun.returncode == 0, rerun.stderr
    assert re.search(rf"encode: {N_CLIPS - len(encoded)} clips written, {len(encoded)} already done", rerun.stderr)
    check_build(out, reference)


def run_killing_a_worker(stage_dir: Path, worker_pid_file: Path, *args: str | Path) -> None:
    """Run the CLI, kill -9 one worker (its whole process group: nanny too) once a shard is done; it must succeed."""
    proc = start_cli(*args)
    try:
        done = wait_for_records(stage_dir, 1, proc)
        os.killpg(int(worker_pid_file.read_text()), signal.SIGKILL)
        assert done < N_CLIPS, f"{args[0]} finished before a worker could be killed"
        _, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        kill_session(proc)
    assert proc.returncode == 0, err


def listening_sockets(pids: list[int]) -> list[tuple[str, int, str]]:
    """(ip, port, process name) of every listening TCP socket of `pids` and all their descendants."""
    found = []
    for pid in pids:
        parent = psutil.Process(pid)
        for proc in [parent, *parent.children(recursive=True)]:
            found += [(c.laddr.ip, c.laddr.port, " ".join(proc.cmdline()[1:4]))
                      for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    return found


def test_cluster_script_listens_on_loopback_only_scheduler_workers_nannies_and_dashboards(cluster):
    """cluster.sh's workers once served their dashboards on 0.0.0.0; a dask worker runs whatever it is sent."""
    _, cluster_dir = cluster
    sockets = listening_sockets([int(p.read_text()) for p in sorted(cluster_dir.glob("*.pid"))])
    assert len(sockets) >= 2 + 2 * 3, sockets  # scheduler + dashboard; per worker: worker, nanny, dashboard
    assert [s for s in sockets if s[0] not in ("127.0.0.1", "::1")] == []


def test_killing_one_of_two_workers_mid_render_loses_no_clip(inputs, cluster, tmp_path):
    pipeline, selection, reference = inputs
    address, cluster_dir = cluster
    out = tmp_path / "out"
    run_killing_a_worker(out / "render", cluster_dir / "worker-1.pid",
                         "render", "--pipeline", pipeline, "--midi", selection, "--out", out, "--scheduler", address)
    check_stage(out / "render", reference / "render")


def test_killing_one_of_two_workers_mid_encode_loses_no_clip(inputs, cluster, tmp_path):
    pipeline, selection, reference = inputs
    address, cluster_dir = cluster
    out, expected = tmp_path / "out", tmp_path / "expected"
    shutil.copytree(reference, out)
    shutil.copytree(reference, expected)
    run_encode(build_config(expected, None, **{"exec.scheduler": "sync"}), expected)
    run_killing_a_worker(out / "encode", cluster_dir / "worker-2.pid", "encode", "--out", out, "--scheduler", address)
    check_stage(out / "encode", expected / "encode")


def test_killed_run_resumes_without_redoing_finished_shards_and_ends_with_the_same_bytes(inputs, tmp_path):
    pipeline, selection, reference = inputs
    out = tmp_path / "out"
    args = ("render", "--pipeline", pipeline, "--midi", selection, "--out", out, "--jobs", "2")
    proc = start_cli(*args)
    try:
        wait_for_records(out / "render", 2, proc)
        proc.send_signal(signal.SIGKILL)  # the client only: its cluster must go down with it
        proc.wait(timeout=HANG_GUARD)
        assert wait_until_gone(proc.pid) == [], "the killed run's workers or parsers outlived it"
    finally:
        kill_session(proc)
    finished = {i: read_record(out / "render", i) for i in range(N_CLIPS) if read_record(out / "render", i)}
    assert 2 <= len(finished) < N_CLIPS, f"{len(finished)} shards finished: the kill was not mid-run"
    before = {i: os.stat(out / "render" / rec.file) for i, rec in finished.items()}

    rerun = run_cli(*args)

    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished)} already done" in rerun.stderr
    for i, st in before.items():
        now = os.stat(out / "render" / finished[i].file)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f"finished shard {i} was redone"
    check_stage(out / "render", reference / "render")


def test_a_task_raising_on_a_poisoned_clip_is_recorded_as_skipped_and_the_run_goes_on(inputs, tmp_path):
    pipeline, selection, _ = inputs
    rows = [json.loads(line) for line in selection.read_text().splitlines()]
    rows[3]["program"] = 200  # a hand-edited selection: the synth raises ValueError on it
    poisoned = tmp_path / "poisoned.jsonl"
    poisoned.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"

    result = run_cli("render", "--pipeline", pipeline, "--midi", poisoned, "--out", out, "--jobs", "2")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows_written = (out / "render" / "manifest.jsonl").read_text().splitlines()
    status = {r["id"]: r["status"] for r in map(json.loads, rows_written)}
    assert status.pop(rows[3]["clip_id"]) == "skipped: task failed: ValueError: program must be 0..127, got 200"
    assert set(status.values()) == {"ok"} and len(status) == N_CLIPS - 1
    assert "failed shard: render-" in result.stderr


def test_a_scheduler_address_where_nothing_listens_fails_with_one_line(inputs, tmp_path):
    pipeline, selection, _ = inputs
    address = f"tcp://127.0.0.1:{free_port()}"

    result = run_cli("render", "--pipeline", pipeline, "--midi", selection, "--out", tmp_path / "out",
                     "--scheduler", address)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"pvtbuild: error: no dask scheduler answers at {address}: Connection refused"]
    assert not (tmp_path / "out" / "render").exists()


def test_a_worker_running_another_pvtbuild_version_is_named_by_the_preflight_and_nothing_is_written(inputs, tmp_path):
    pipeline, selection, _ = inputs
    other = tmp_path / "other-version"  # a newer pvtbuild's metadata, found before the installed one
    (other / "pvtbuild-99.0.dist-info").mkdir(parents=True)
    (other / "pvtbuild-99.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pvtbuild\nVersion: 99.0\n")
    out = tmp_path / "out"

    with started_stock_cluster(tmp_path, {"PYTHONPATH": str(other)}) as address:
        result = run_cli("render", "--pipeline", pipeline, "--midi", selection, "--out", out, "--scheduler", address)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        r"pvtbuild: error: pre-flight: worker tcp://127\.0\.0\.1:\d+ runs pvtbuild 99\.0, this process \S+ "
        r"\(and 1 more problem\(s\)\); nothing was run", lines[0]), lines
    assert not out.exists() or not any(out.iterdir())
