"""Tests of pvtbuild.stages.shard: build directory -> TFRecord dataset, on real renders of Lakh files.

Two builds per module, both rendered by real FluidSynth: `small` (3 sources, 6
clips, also encoded as CQT + EnCodec latents + codes with random EnCodec
weights) for the format round trips, and `wide` (24 Lakh files, 14 with
clips, render only) for splits, determinism and resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf  # noqa: E402  (a dependency: its absence must fail, not skip)
from click.testing import CliRunner

from conftest import make_config
from paths import LAKH
from pvtbuild.cli import cli
from pvtbuild.config import PipelineConfig
from pvtbuild.dataset import read_dataset_json, verify_dataset
from pvtbuild.dataset.tf_reader import make_dataset  # noqa: E402
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.engine.executor import open_executor
from pvtbuild.errors import ConfigError, PvtbuildError
from pvtbuild.music.soundfonts import soundfont_sha256
from pvtbuild.pipeline import run_all, run_render
from pvtbuild.stages.render_settings import render_soundfont
from pvtbuild.stages.shard import BOOKKEEPING, assign_splits, split_of
from pvtbuild.stages.shard import shard as shard_stage

FORMATS = ("audio", "cqt", "encodec", "disc")


def run_shard_stage(out: Path, dataset: Path, cfg: PipelineConfig, formats=None, scheduler="sync", jobs=1):
    with open_executor(scheduler, jobs, quiet=True) as ex:
        return shard_stage(out, dataset, cfg, ex, formats)


@pytest.fixture(scope="module")
def small(small_build) -> tuple[Path, PipelineConfig]:
    return small_build


def copy_build(out: Path, build: Path) -> Path:
    """A copy of a build's render and encode folders, to damage without touching the shared build."""
    for name in ("render", "encode"):
        shutil.copytree(out / name, build / name)
    return build


@pytest.fixture(scope="module")
def small_all(small) -> Path:
    out, cfg = small
    run_shard_stage(out, out / "dataset", cfg, FORMATS)
    return out / "dataset"


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Path, PipelineConfig]:
    out = tmp_path_factory.mktemp("wide")
    cfg = make_config(LAKH, limit=24, valid_share=0.5, shard_mb=1.0)
    assert run_render(cfg, out)[-1].total_ok >= 20
    return out, cfg


def stage_inputs(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """clip id -> every array the render and encode stages wrote for it (from their .npz files)."""
    clips: dict[str, dict[str, np.ndarray]] = {}
    for stage in ("render", "encode"):
        for path in sorted((out / stage).glob("shard-*.npz")):
            with np.load(path) as z:
                for n, cid in enumerate(z["id"]):
                    clips.setdefault(str(cid), {}).update({k: z[k][n] for k in z.files if k != "id"})
    return clips


def expected_arrays(inputs: dict[str, np.ndarray], names) -> dict[str, np.ndarray]:
    return {n: inputs["audio"][None] if n == "audio" else inputs[n] for n in names}


def assert_bit_exact(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert got.tobytes() == want.tobytes(), what


def dataset_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and BOOKKEEPING not in p.parts}


# --- formats ----------------------------------------------------------------------------


def test_every_format_and_its_controls_round_trip_bit_exact_through_the_torch_reader(small, small_all):
    out, _ = small
    inputs = stage_inputs(out)
    names = [line.split()[0] for line in (small_all / "shapes.txt").read_text().splitlines()]
    assert {"audio", "cqt", "encodec", "disc", "velocity_75hz", "instrument_240hz", "beat_75hz"} <= set(names)
    seen = set()
    for split in ("train", "valid"):
        if not read_dataset_json(small_all)["splits"][split]["count"]:
            continue
        for rec in TFRecordIterableDataset(small_all, split, names=names + ["id"]):
            want = expected_arrays(inputs[rec["id"]], names)
            for name in names:
                assert_bit_exact(rec[name].numpy(), want[name], f"{rec['id']} {name}")
            seen.add(rec["id"])
    assert seen == set(inputs)


def test_every_format_round_trips_bit_exact_through_tf_data(small, small_all):
    out, _ = small
    inputs = stage_inputs(out)
    seen = set()
    for split in ("train", "valid"):
        if not read_dataset_json(small_all)["splits"][split]["count"]:
            continue
        names = ["audio", "cqt", "encodec", "disc", "velocity_75hz", "chroma_240hz", "instrument_75hz", "id"]
        for rec in make_dataset(small_all, split, names=names, batch_size=None):
            cid = rec["id"].numpy().decode()
            want = expected_arrays(inputs[cid], names[:-1])
            for name in names[:-1]:
                assert_bit_exact(rec[name].numpy(), want[name], f"{cid} {name}")
            seen.add(cid)
    assert seen == set(inputs)


def test_plain_tf_data_decodes_a_shard_with_only_shapes_txt(small, small_all):
    """What the report's trainer did: TFRecordDataset + parse_single_example + decode_raw, nothing of pvtbuild."""
    out, _ = small
    inputs = stage_inputs(out)
    shapes = {}
    for line in (small_all / "shapes.txt").read_text().splitlines():
        name, dtype, dims = line.split()
        shapes[name] = (tf.as_dtype(dtype), [int(d) for d in dims.split(",")])
    features = {n: tf.io.FixedLenFeature([], tf.string) for n in shapes} | {"id": tf.io.FixedLenFeature([], tf.string)}
    shard = sorted((small_all / "train").glob("*.tfrecord"))[0]
    n = 0
    for serialized in tf.data.TFRecordDataset(str(shard)):
        x = tf.io.parse_single_example(serialized, features)
        want = expected_arrays(inputs[x["id"].numpy().decode()], shapes)
        for name, (dtype, shape) in shapes.items():
            got = tf.reshape(tf.io.decode_raw(x[name], dtype), shape).numpy()
            assert_bit_exact(got, want[name], name)
        n += 1
    assert n >= 1


def test_dataset_json_records_config_versions_soundfont_weights_and_counts(small, small_all):
    out, cfg = small
    doc = read_dataset_json(small_all)
    assert doc["soundfont"]["sha256"] == soundfont_sha256(render_soundfont(cfg))
    assert doc["weights"] == "random" and doc["encoder"]["seed"] == 0
    assert doc["formats"] == list(FORMATS)
    assert doc["config"]["shard"]["valid_share"] == cfg.shard.valid_share and "exec" not in doc["config"]
    assert {"numpy", "torch", "pvtbuild"} <= set(doc["versions"])
    n = len(stage_inputs(out))
    assert doc["splits"]["train"]["count"] + doc["splits"]["valid"]["count"] == n
    assert sum(sum(s["instruments"].values()) for s in doc["stats"].values()) == n
    assert {"id", "source_md5", "instrument", "program", "start", "mod_freq", "bpm"} <= set(doc["meta"])
    for split, info in doc["splits"].items():
        for entry in info["shards"]:
            assert hashlib.sha256((small_all / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert verify_dataset(small_all).ok


def test_metadata_names_the_source_and_selection_of_each_clip(small, small_all):
    out, _ = small
    rows = {r["id"]: r["inputs"] for line in (out / "render" / "manifest.jsonl").read_text().splitlines()
            for r in [json.loads(line)]}
    meta = ["id", "source_md5", "instrument", "program", "transpose", "variant"]
    for rec in TFRecordIterableDataset(small_all, "train", names=meta):
        for key in meta[1:]:
            assert rec[key] == rows[rec["id"]][key]


def test_a_clip_skipped_by_encode_is_left_out_and_counted(small, tmp_path):
    out, cfg = small
    build = copy_build(out, tmp_path / "build")
    record = build / "encode" / "shard-00000.json"
    doc = json.loads(record.read_text())
    victim = doc["rows"][0]["id"]
    doc["rows"][0]["status"] = "skipped: encoder failed: test"
    record.write_text(json.dumps(doc))
    summary = run_shard_stage(build, build / "dataset", cfg, ("audio", "disc"))
    assert summary.skipped["encoder failed: test"] == 1
    ids = [r["id"] for split in ("train", "valid")
           for r in TFRecordIterableDataset(build / "dataset", split, names=["id"])]
    assert victim not in ids and len(ids) == len(stage_inputs(out)) - 1
    assert read_dataset_json(build / "dataset")["skipped"]["encoder failed: test"] == 1


def test_asking_for_a_format_not_encoded_says_which_encode_command_to_run(wide, tmp_path):
    out, cfg = wide
    with pytest.raises(PvtbuildError, match=r"pvtbuild encode --out .* --formats cqt` first"):
        run_shard_stage(out, tmp_path / "ds", cfg, ("audio", "cqt"))
    assert not (tmp_path / "ds").exists()


def test_a_format_missing_from_an_encoded_build_names_the_encode_command_for_all_formats(small, tmp_path):
    out, cfg = small
    build = copy_build(out, tmp_path / "build")
    encoder = build / "encode" / "encoder.json"
    encoder.write_text(json.dumps(dict(json.loads(encoder.read_text()), formats=["encodec", "disc"])))
    with pytest.raises(PvtbuildError, match=r"holds no cqt \(has encodec,disc\); delete that folder and run "
                                            r"`pvtbuild encode --out .* --formats encodec,disc,cqt`"):
        run_shard_stage(build, tmp_path / "ds", cfg, ("cqt",))


def test_run_all_stops_before_any_work_when_shard_wants_a_format_encode_skips(tmp_path):
    cfg = make_config(LAKH, limit=1)
    cfg = replace(cfg, encode=replace(cfg.encode, formats=("cqt",)))
    with pytest.raises(ConfigError, match="shard.formats: asks for encodec, disc"):
        run_all(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- splits -----------------------------------------------------------------------------


def test_no_source_has_clips_in_both_splits_on_real_lakh_files(wide, tmp_path):
    out, cfg = wide
    ds = tmp_path / "ds"
    run_shard_stage(out, ds, cfg, ("audio",))
    md5s = {split: [r["source_md5"] for r in TFRecordIterableDataset(ds, split, names=["source_md5"])]
            for split in ("train", "valid")}
    assert md5s["train"] and md5s["valid"]
    assert not set(md5s["train"]) & set(md5s["valid"])
    assert len(set(md5s["train"]) | set(md5s["valid"])) >= 10
    assert any(md5s["train"].count(m) > 1 for m in md5s["train"])  # sources with several clips stay together
    assert all(split_of(m, cfg.shard.valid_share) == s for s, ms in md5s.items() for m in ms)  # 14 sources: no rescue


def test_a_small_build_gets_one_source_in_each_split():
    md5s = [hashlib.md5(str(i).encode()).hexdigest() for i in range(8)]  # all train at 0.2 (pinned below)
    assert {split_of(m, 0.2) for m in md5s} == {"train"}
    splits = assign_splits(md5s, 0.2)
    assert list(splits.values()).count("valid") == 1
    assert splits == assign_splits(reversed(md5s), 0.2)  # whatever the order they come in
    assert assign_splits(md5s[:1], 0.2) == {md5s[0]: "train"}
    assert set(assign_splits(md5s, 0.0).values()) == {"train"}


def test_split_of_is_a_stable_hash_near_the_valid_share():
    md5s = [hashlib.md5(str(i).encode()).hexdigest() for i in range(4000)]
    share = sum(split_of(m, 0.2) == "valid" for m in md5s) / len(md5s)
    assert 0.18 < share < 0.22
    assert all(split_of(m, 0.0) == "train" for m in md5s[:100])
    # pinned: a changed hash would move sources across the splits of datasets built before
    assert "".join(split_of(m, 0.2)[0] for m in md5s[:20]) == "ttttttttvtttttttvttv"


# --- determinism and resume -------------------------------------------------------------


def test_dataset_is_byte_identical_with_one_or_two_dask_workers(wide, tmp_path):
    out, cfg = wide
    run_shard_stage(out, tmp_path / "sync", cfg, ("audio",))
    run_shard_stage(out, tmp_path / "dask", cfg, ("audio",), scheduler=None, jobs=2)
    one, two = dataset_files(tmp_path / "sync"), dataset_files(tmp_path / "dask")
    assert len([f for f in one if f.endswith(".tfrecord")]) >= 4
    assert one.keys() == two.keys()
    assert all(one[f] == two[f] for f in one)


@pytest.mark.parametrize("stage", ["render", "encode"])
def test_a_flipped_byte_in_a_render_or_encode_shard_stops_shard_with_one_line_naming_the_file(small, tmp_path, stage):
    out, cfg = small
    build = copy_build(out, tmp_path / "build")
    shutil.copy(out / "pipeline.json", build / "pipeline.json")
    victim = build / stage / "shard-00000.npz"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # inside the largest array: the .npz still opens
    victim.write_bytes(bytes(blob))
    with pytest.raises(PvtbuildError) as err:
        run_shard_stage(build, build / "dataset", cfg, ("audio", "disc"))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{victim}: damaged") and f"pvtbuild {stage}" in message
    assert not (build / "dataset" / "dataset.json").exists() and not list(build.glob("dataset/*/*.tfrecord"))
    result = CliRunner().invoke(cli, ["shard", "--out", str(build), "--formats", "audio,disc", "--scheduler", "sync"])
    assert result.exit_code != 0 and result.output.strip().count("\n") == 0 and str(victim) in result.output


def test_rerun_rewrites_nothing_and_redoes_only_a_damaged_shard(wide, tmp_path):
    out, cfg = wide
    ds = tmp_path / "ds"
    first = run_shard_stage(out, ds, cfg, ("audio",))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ds.rglob("*.tfrecord")}
    again = run_shard_stage(out, ds, cfg, ("audio",))
    assert again.ok == 0 and again.reused == first.ok
    assert {p: p.stat().st_mtime_ns for p in before} == {p: m for p, (m, _) in before.items()}
    victim = sorted(before)[1]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    assert not verify_dataset(ds).ok
    fixed = run_shard_stage(out, ds, cfg, ("audio",))
    assert 0 < fixed.ok < first.ok and fixed.ok + fixed.reused == first.ok
    assert victim.read_bytes() == before[victim][1]
    assert verify_dataset(ds).ok


def test_a_dataset_folder_is_never_mixed_from_two_settings(wide, tmp_path):
    out, cfg = wide
    run_shard_stage(out, tmp_path / "ds", cfg, ("audio",))
    other = replace(cfg, shard=replace(cfg.shard, valid_share=0.3))
    with pytest.raises(PvtbuildError, match="holds a dataset built with other settings"):
        run_shard_stage(out, tmp_path / "ds", other, ("audio",))
    assert verify_dataset(tmp_path / "ds").ok


# --- CLI --------------------------------------------------------------------------------


def test_cli_shard_writes_the_dataset_into_out_dataset_by_default(small, tmp_path):
    out, _ = small
    shutil.copytree(out / "render", tmp_path / "render")
    shutil.copy(out / "pipeline.json", tmp_path / "pipeline.json")
    result = CliRunner().invoke(cli, ["shard", "--out", str(tmp_path), "--formats", "audio", "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    assert f"shard: {len(stage_inputs(out))} clips written" in result.output
    assert verify_dataset(tmp_path / "dataset").ok


def test_cli_shard_before_render_is_a_one_line_error(tmp_path):
    demo = Path(__file__).resolve().parents[2] / "pipelines" / "demo.yaml"
    result = CliRunner().invoke(cli, ["shard", "--out", str(tmp_path), "--pipeline", str(demo),
                                      "--scheduler", "sync"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "pvtbuild render" in result.output


def test_a_midi_file_whose_name_is_not_utf8_shards_with_its_neighbours_and_keeps_its_name(tmp_path):
    """`source` once went through str.encode("utf-8"), which fails on such a name: the whole shard
    failed on every rerun and no dataset.json was written."""
    midi = tmp_path / "midi"
    midi.mkdir()
    bad = os.fsdecode(b"caf\xe9-latin1.mid")  # a Latin-1 name, as old archives have
    shutil.copy(LAKH / "00fe58e0b555088db366097cc15634e0.mid", midi / bad)  # copies: select resolves links
    shutil.copy(LAKH / "024bdf7815ae8b97ac8cac959cce3c5f.mid", midi / "plain.mid")
    out = tmp_path / "out"
    cfg = make_config(midi)
    assert run_render(cfg, out)[-1].total_ok >= 2
    summary = run_shard_stage(out, out / "dataset", cfg, ("audio",))
    assert not summary.failed_shards
    report = verify_dataset(out / "dataset")
    assert report.ok, report.problems
    splits = [s for s, info in read_dataset_json(out / "dataset")["splits"].items() if info["count"]]
    stored = {bytes(ex["source"].numpy()).rsplit(b"/", 1)[-1]
              for s in splits for ex in make_dataset(out / "dataset", s, ["source"], batch_size=None)}
    assert stored == {b"caf\xe9-latin1.mid", b"plain.mid"}  # the file system's own bytes, losslessly
    shown = {ex["source"].rsplit("/", 1)[-1] for s in splits
             for ex in TFRecordIterableDataset(out / "dataset", s, ["source"])}
    assert shown == {"caf\ufffd-latin1.mid", "plain.mid"}
