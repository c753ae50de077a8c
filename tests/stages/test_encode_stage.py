"""The encode stage end to end: real FluidSynth renders, the real CQT and EnCodec (random weights).

Four 8 s clips from the demo selection are rendered once (two render shards: 3 + 1 clips);
each test copies that render output into its own build directory and encodes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from paths import REPO
from pvtbuild.build_dir import build_config
from pvtbuild.cli import cli
from pvtbuild.compute import ENCODE_THREADS, encode_threads
from pvtbuild.config import CqtConfig, PipelineConfig, config_from_dict
from pvtbuild.encoders import encodec as enc_mod
from pvtbuild.encoders.cqt import CqtEncoder
from pvtbuild.encoders.encodec import build_random_model, load_encodec
from pvtbuild.engine.cluster import dask_settings
from pvtbuild.engine.executor import Executor, open_executor
from pvtbuild.engine.manifest import sha256_bytes, sha256_file
from pvtbuild.engine.stage_files import read_record, write_record
from pvtbuild.errors import InputError, PvtbuildError
from pvtbuild.pipeline import run_all, run_encode, run_render
from pvtbuild.stages.encode import encode, shards_per_task, task_resources

N_CLIPS = 4


def pipeline_config(midi: Path, **overrides) -> PipelineConfig:
    """The default PVT config on a small selection: 8 s clips, render shards of 3, random weights, in-process."""
    data = {"name": "encode-test", "midi": str(midi), "render": {"clips_per_shard": 3},
            "encode": {"weights": "random", "batch_size": 1}, "exec": {"scheduler": "sync", "jobs": 1}}
    return config_from_dict(data, **overrides)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """A build directory holding the render output of 4 demo clips."""
    root = tmp_path_factory.mktemp("rendered")
    rows = [json.loads(line) for line in (REPO / "manifests" / "demo.jsonl").read_text().splitlines()][:N_CLIPS]
    for row in rows:
        row["source"] = str((REPO / "manifests" / row["source"]).resolve())
    selection = root / "selection.jsonl"
    selection.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "build"
    summaries = run_render(pipeline_config(selection), out)
    assert summaries[-1].total_ok == N_CLIPS, summaries[-1].lines()
    return out


def copy_build(rendered: Path, dest: Path) -> Path:
    shutil.copytree(rendered, dest)
    return dest


def encode_build(out: Path, **overrides):
    """Run the encode stage on `out` with the config the build directory recorded, plus overrides."""
    [summary] = run_encode(build_config(out, None, **overrides), out)
    return summary


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def render_audio(out: Path) -> tuple[list[str], np.ndarray]:
    shards = [npz(p) for p in sorted((out / "render").glob("shard-*.npz"))]
    return [str(i) for s in shards for i in s["id"]], np.concatenate([s["audio"] for s in shards])


def stage_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "encode").iterdir())}


@pytest.fixture(scope="module")
def encoded(rendered, tmp_path_factory) -> Path:
    """The 4 clips encoded in every format, batch size 1."""
    out = copy_build(rendered, tmp_path_factory.mktemp("encoded") / "build")
    summary = encode_build(out)
    assert (summary.ok, summary.reused, sum(summary.skipped.values())) == (N_CLIPS, 0, 0), summary.lines()
    return out


def test_one_encode_shard_per_render_shard_with_the_contract_shapes_dtypes_and_ids(encoded):
    for i, n in enumerate((3, 1)):
        arrays = npz(encoded / "encode" / f"shard-{i:05d}.npz")
        assert set(arrays) == {"id", "cqt", "encodec", "disc"}
        np.testing.assert_array_equal(arrays["id"], npz(encoded / "render" / f"shard-{i:05d}.npz")["id"])
        assert arrays["cqt"].shape == (n, 2, 216, 1921) and arrays["cqt"].dtype == np.float32
        assert arrays["encodec"].shape == (n, 128, 600) and arrays["encodec"].dtype == np.float32
        assert arrays["disc"].shape == (n, 16, 600) and arrays["disc"].dtype == np.int16
        assert 0 <= arrays["disc"].min() and arrays["disc"].max() <= 1023
        assert len(np.unique(arrays["disc"])) > 100  # random codebooks are initialised, not all zeros
        record = read_record(encoded / "encode", i)
        assert record.sha256 == sha256_file(encoded / "encode" / record.file)
        render_rows = {r.id: r for r in read_record(encoded / "render", i).rows}
        for k, row in enumerate(record.rows):
            assert row.id == arrays["id"][k] and row.status == "ok" and row.stage == "encode"
            assert row.outputs == {f: sha256_bytes(arrays[f][k].tobytes()) for f in ("cqt", "encodec", "disc")}
            assert row.inputs["audio"] == render_rows[row.id].outputs["audio"]
            assert row.info["weights"] == "random"
    manifest = [json.loads(line) for line in (encoded / "encode" / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in manifest] == render_audio(encoded)[0]
    assert json.loads((encoded / "encode" / "encoder.json").read_text()) == {
        "formats": ["cqt", "encodec", "disc"], "weights": "random", "checkpoint": None, "checkpoint_sha256": None,
        "seed": 0, "bandwidth": 12.0, "cqt": {"fmin": 130.81, "bins_per_octave": 36, "n_bins": 216, "hop_length": 100},
        "cqt_transform": {"name": "fftcqt", "version": 1, "defined_by": "nnAudio CQT1992v2"}}


def test_stored_latents_codes_and_cqt_equal_the_models_own_outputs(encoded):
    ids, audio = render_audio(encoded)
    stored = {k: np.concatenate([npz(p)[k] for p in sorted((encoded / "encode").glob("shard-*.npz"))])
              for k in ("id", "cqt", "encodec", "disc")}
    assert stored["id"].tolist() == ids
    model, _ = load_encodec(checkpoint=None, random_weights=True, seed=0, bandwidth=12.0, device="cpu")
    cqt = CqtEncoder(CqtConfig(), 24000)
    for k in range(N_CLIPS):
        x = torch.from_numpy(audio[k])[None, None, :]
        with torch.inference_mode(), encode_threads():  # the stage's thread count (ENCODE_THREADS)
            latents = model.encoder(x)
            [(codes, scale)] = model.encode(x)
            cqt_k = cqt.encode(audio[k:k + 1])[0]  # the thread count changes the CQT's rounding too
        assert scale is None
        assert torch.equal(torch.from_numpy(stored["encodec"][k]), latents[0])
        assert torch.equal(torch.from_numpy(stored["disc"][k]).long(), codes[0])
        np.testing.assert_array_equal(stored["cqt"][k], cqt_k)


def test_outputs_are_byte_identical_under_dask_and_codes_identical_at_another_batch_size(encoded, tmp_path):
    again = copy_build(encoded, tmp_path / "dask")
    shutil.rmtree(again / "encode")
    cfg = build_config(again, None)
    with open_executor(None, jobs=2, threads_per_job=1, quiet=True) as ex:
        summary = encode(again, cfg, ex)
    assert summary.ok == N_CLIPS
    assert stage_files(again) == stage_files(encoded)

    batched = copy_build(encoded, tmp_path / "batched")
    shutil.rmtree(batched / "encode")
    assert encode_build(batched, **{"encode.batch_size": 3}).ok == N_CLIPS
    for i in (0, 1):
        a, b = npz(encoded / "encode" / f"shard-{i:05d}.npz"), npz(batched / "encode" / f"shard-{i:05d}.npz")
        np.testing.assert_array_equal(a["id"], b["id"])
        np.testing.assert_array_equal(a["disc"], b["disc"])  # codes: exactly
        for f in ("encodec", "cqt"):  # conv kernels differ with the batch size: float rounding only
            np.testing.assert_allclose(b[f], a[f], rtol=1e-5, atol=1e-5 * np.abs(a[f]).max())


def test_rerun_encodes_nothing_and_a_lost_shard_is_redone_alone(encoded, tmp_path):
    out = copy_build(encoded, tmp_path / "build")
    before = stage_files(out)
    summary = encode_build(out)
    assert (summary.ok, summary.reused) == (0, N_CLIPS)
    assert stage_files(out) == before
    (out / "encode" / "shard-00000.npz").unlink()
    summary = encode_build(out)
    assert (summary.ok, summary.reused) == (3, 1)
    assert stage_files(out) == before


def test_a_nan_clip_and_a_wrong_length_shard_are_skipped_while_their_batch_mates_are_encoded(rendered, encoded,
                                                                                              tmp_path):
    out = copy_build(rendered, tmp_path / "build")
    ids, _ = render_audio(out)
    _poison(out, 0, lambda audio: audio.__setitem__((1, slice(1000, 1010)), np.nan))
    _poison(out, 1, lambda audio: audio[:, :-1])
    summary = encode_build(out, **{"encode.batch_size": 3, "encode.formats": ["encodec", "disc"]})
    assert summary.ok == 2
    assert dict(summary.skipped) == {"audio has 10 non-finite samples (NaN/inf)": 1,
                                     "audio has 191999 samples, expected 192000": 1}
    rows = {r["id"]: r for r in _manifest(out)}
    assert [rows[i]["status"] for i in ids] == ["ok", "skipped: audio has 10 non-finite samples (NaN/inf)", "ok",
                                                "skipped: audio has 191999 samples, expected 192000"]
    kept = npz(out / "encode" / "shard-00000.npz")
    assert kept["id"].tolist() == [ids[0], ids[2]] and set(kept) == {"id", "encodec", "disc"}
    clean = npz(encoded / "encode" / "shard-00000.npz")
    np.testing.assert_array_equal(kept["disc"], clean["disc"][[0, 2]])
    assert read_record(out / "encode", 1).file == "" and not (out / "encode" / "shard-00001.npz").exists()


def test_a_failed_render_shard_is_reported_and_encoded_once_render_redid_it(rendered, tmp_path):
    out = copy_build(rendered, tmp_path / "build")
    good = read_record(out / "render", 1)
    failed = type(good)("render", 1, "", "", good.params,
                        [replace(r, status="skipped: task failed: boom") for r in good.rows], failed=True)
    write_record(out / "render", failed)
    summary = encode_build(out, **{"encode.formats": ["disc"]})
    assert summary.ok == 3 and any("render shard-00001 failed" in f for f in summary.failed_shards)
    write_record(out / "render", good)  # what a successful render rerun leaves
    summary = encode_build(out, **{"encode.formats": ["disc"]})
    assert (summary.ok, summary.reused) == (1, 3)
    assert npz(out / "encode" / "shard-00001.npz")["id"].tolist() == [good.rows[0].id]


def test_missing_pretrained_checkpoint_stops_encode_and_run_before_any_work(rendered, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "encodec_24khz-d7cc33bc.th"
    out = copy_build(rendered, tmp_path / "build")
    with pytest.raises(InputError) as e:
        encode_build(out, **{"encode.weights": "pretrained"})
    assert str(hub) in str(e.value) and "\n" not in str(e.value)
    assert not (out / "encode").exists()

    cfg = config_from_dict(json.loads((out / "pipeline.json").read_text()), **{"encode.weights": "pretrained"})
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match="EnCodec checkpoint not found"):
        run_all(cfg, fresh)
    assert not fresh.exists()  # not even render ran


def test_cqt_alone_needs_no_encodec_checkpoint(rendered, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = copy_build(rendered, tmp_path / "build")
    assert encode_build(out, **{"encode.weights": "pretrained", "encode.formats": ["cqt"]}).ok == N_CLIPS
    info = json.loads((out / "encode" / "encoder.json").read_text())
    assert info["formats"] == ["cqt"] and info["weights"] is None
    assert set(npz(out / "encode" / "shard-00000.npz")) == {"id", "cqt"}


def test_a_checkpoint_in_torch_hubs_cache_is_used_with_weights_auto(rendered, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "encodec_24khz-d7cc33bc.th"
    hub.parent.mkdir(parents=True)
    trained = build_random_model(5)  # stands in for the pretrained weights
    torch.save({k: v.detach() for k, v in trained.state_dict().items()}, hub)
    out = copy_build(rendered, tmp_path / "build")
    try:
        assert encode_build(out, **{"encode.weights": "auto", "encode.formats": ["encodec"]}).ok == N_CLIPS
    finally:
        enc_mod.clear_model_cache()
    info = json.loads((out / "encode" / "encoder.json").read_text())
    assert (info["weights"], info["checkpoint"], info["checkpoint_sha256"]) == ("pretrained", str(hub),
                                                                                 sha256_file(hub))
    _, audio = render_audio(out)
    with torch.inference_mode(), encode_threads():
        expected = trained.encoder(torch.from_numpy(audio[:1])[:, None])
    np.testing.assert_array_equal(npz(out / "encode" / "shard-00000.npz")["encodec"][0], expected[0].numpy())
    assert all(r["info"]["weights"] == "pretrained" for r in _manifest(out))


def test_changed_encode_settings_are_refused_in_the_same_build_directory(encoded, tmp_path):
    out = copy_build(encoded, tmp_path / "build")
    for change in ({"seed": 1}, {"encode.formats": ["cqt"]}, {"encode.encodec.bandwidth": 6.0}):
        with pytest.raises(PvtbuildError, match="built with other settings"):
            encode_build(out, **change)


def test_a_build_whose_cqt_another_transform_computed_is_refused_with_one_line(encoded, tmp_path):
    out = copy_build(encoded, tmp_path / "build")
    info_path = out / "encode" / "encoder.json"
    info = json.loads(info_path.read_text())
    for recorded, named in ((None, "nnAudio CQT1992v2 (unversioned)"), (dict(info["cqt_transform"], version=0),
                                                                         "fftcqt v0")):
        info_path.write_text(json.dumps(dict(info, cqt_transform=recorded)))  # what an older pvtbuild wrote
        before = stage_files(out)
        with pytest.raises(PvtbuildError) as e:
            encode_build(out)
        assert f"its CQT was computed by {named}, this pvtbuild computes fftcqt v1" in str(e.value)
        assert "\n" not in str(e.value) and stage_files(out) == before  # nothing mixed in


def test_encode_before_render_is_a_one_line_error(tmp_path):
    with pytest.raises(PvtbuildError, match="no render output; run `pvtbuild render"):
        run_encode(pipeline_config(tmp_path / "none.jsonl"), tmp_path)


def test_cli_encode_end_to_end_and_its_one_line_errors(rendered, tmp_path):
    out = copy_build(rendered, tmp_path / "build")
    runner = CliRunner()
    done = runner.invoke(cli, ["encode", "--out", str(out), "--formats", "disc", "--random-weights",
                               "--batch-size", "4", "--seed", "0", "--scheduler", "sync"])
    assert done.exit_code == 0, done.output
    assert "RANDOM EnCodec weights" in done.stderr and "encode: 4 clips written" in done.stderr
    assert set(npz(out / "encode" / "shard-00000.npz")) == {"id", "disc"}
    assert json.loads((out / "encode" / "encoder.json").read_text())["formats"] == ["disc"]

    for args, message in ((["--encodec-checkpoint", str(tmp_path / "nowhere.th")], "nowhere.th not found"),
                          (["--formats", "cqt,mel"], "encode.formats: unknown format 'mel'"),
                          (["--random-weights", "--encodec-checkpoint", "x.th"], "exclude each other")):
        failed = runner.invoke(cli, ["encode", "--out", str(tmp_path / "other"), "--pipeline",
                                     str(REPO / "pipelines" / "demo.yaml"), "--scheduler", "sync", *args])
        assert failed.exit_code == 2, failed.output
        assert message in failed.stderr and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert not (tmp_path / "other").exists()


def test_encode_threads_fix_the_count_until_the_last_block_leaves():
    before = torch.get_num_threads()
    torch.set_num_threads(ENCODE_THREADS + 1)
    try:
        with encode_threads():
            assert torch.get_num_threads() == ENCODE_THREADS
            with encode_threads():  # a second task of the same worker process
                pass
            assert torch.get_num_threads() == ENCODE_THREADS  # not restored under the first one's feet
        assert torch.get_num_threads() == ENCODE_THREADS + 1
    finally:
        torch.set_num_threads(before)


def test_tasks_ask_for_a_gpu_only_when_encoding_on_cuda_on_a_cluster_that_has_gpus():
    assert task_resources("auto", {"GPU": 2}) == {"GPU": 1}
    assert task_resources("cuda:1", {"GPU": 1}) == {"GPU": 1}
    assert task_resources("cpu", {"GPU": 2}) == {}
    assert task_resources("auto", {}) == {}


def test_an_encode_task_on_a_gpu_takes_enough_render_shards_for_a_batch_and_one_on_a_cpu(tmp_path):
    cfg = pipeline_config(tmp_path, **{"render.clips_per_shard": 8, "encode.batch_size": 0})
    assert shards_per_task(cfg, {"GPU": 1}, local=False) == 4  # CUDA's default batch of 32
    assert shards_per_task(replace_batch(cfg, 20), {"GPU": 1}, local=False) == 3
    assert shards_per_task(cfg, {}, local=False) == 1  # a cluster without GPU workers
    assert shards_per_task(cfg, {}, local=True) == 1  # local, and this process sees no CUDA


def replace_batch(cfg: PipelineConfig, batch: int) -> PipelineConfig:
    return config_from_dict(cfg.to_dict(), **{"encode.batch_size": batch})


def test_the_gpu_worker_gets_every_encode_task_each_a_batch_of_render_shards(encoded, tmp_path):
    """One worker advertises a GPU. It is a dask resource label on a CPU worker (this machine has
    no GPU), so what is tested is the scheduling and grouping, and that grouping only changes
    float rounding: the 2 render shards (3 + 1 clips) go to one task, batch 4."""
    import dask  # noqa: PLC0415  (dask takes ~2 s to import; only this test builds its own cluster)
    from distributed import Client, Nanny, Scheduler, SpecCluster, get_task_stream  # noqa: PLC0415  (as above)

    out = copy_build(encoded, tmp_path / "build")
    shutil.rmtree(out / "encode")
    cfg = build_config(out, None, **{"encode.batch_size": 4})
    workers = {"cpu": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1"}},
               "gpu": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "resources": {"GPU": 1}}}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    with dask.config.set(dask_settings(1)), SpecCluster(workers, scheduler, silence_logs=True) as cluster, \
            Client(cluster) as client:
        gpu = next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "gpu")
        with get_task_stream(client) as stream:
            summary = encode(out, cfg, Executor(client, "cpu + gpu"))

    assert summary.ok == N_CLIPS
    ran = [(t["key"], t["worker"]) for t in stream.data if str(t["key"]).startswith("encode-")]
    assert len(ran) == 1 and ran[0][1] == gpu, ran
    for i in (0, 1):
        a, b = npz(encoded / "encode" / f"shard-{i:05d}.npz"), npz(out / "encode" / f"shard-{i:05d}.npz")
        np.testing.assert_array_equal(a["id"], b["id"])  # one encode shard per render shard, as on a CPU
        np.testing.assert_array_equal(a["disc"], b["disc"])
        for f in ("encodec", "cqt"):
            np.testing.assert_allclose(b[f], a[f], rtol=1e-5, atol=1e-5 * np.abs(a[f]).max())
        assert {r.info["device"] for r in read_record(out / "encode", i).rows} == {"cpu"}


# --- helpers ----------------------------------------------------------------------------


def _poison(out: Path, index: int, change) -> None:
    """Rewrite render shard `index` with its audio changed, and its record's checksum to match."""
    path = out / "render" / f"shard-{index:05d}.npz"
    arrays = npz(path)
    result = change(arrays["audio"])
    arrays["audio"] = arrays["audio"] if result is None else result
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    record = read_record(out / "render", index)
    record.sha256 = sha256_file(path)
    write_record(out / "render", record)


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "encode" / "manifest.jsonl").read_text().splitlines()]


def test_encoding_on_cuda_turns_tf32_and_nondeterministic_algorithms_off():
    """Checked in a child process: the settings are process-wide (a worker's), not for this test run."""
    code = ("import torch\nfrom pvtbuild.compute import deterministic_cuda\ndeterministic_cuda()\n"
            "import os\nb = torch.backends\nprint(b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark,"
            " b.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),"
            " os.environ['CUBLAS_WORKSPACE_CONFIG'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False", "True", "True", ":4096:8"]
