"""Tests of `pvtbuild inspect` (pvtbuild.tools.inspection): summary, verify, plots, WAV export.

One real build per module (3 Lakh sources rendered by FluidSynth, encoded as
CQT + EnCodec with random weights), sharded once per stored format; corrupting
tests work on copies.
"""

from __future__ import annotations

import json
import shutil
import struct
import wave
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner

from pvtbuild.cli import cli
from pvtbuild.dataset import decode_record, iter_records, read_shapes, serialize_example, write_shard
from pvtbuild.dataset.framing import masked_crc32c
from pvtbuild.engine.executor import open_executor
from pvtbuild.errors import InputError
from pvtbuild.stages.shard import shard
from pvtbuild.tools import inspection as insp

FORMATS = ("audio", "cqt", "encodec", "disc")


@pytest.fixture(scope="module")
def built(small_build) -> dict[str, Path]:
    """Build dir plus one dataset per single format and one with all four: name -> dataset dir."""
    out, cfg = small_build
    datasets = {"out": out}
    with open_executor("sync", 1, quiet=True) as ex:
        for name, formats in [("all", FORMATS)] + [(f, (f,)) for f in FORMATS]:
            shard(out, out / f"ds-{name}", cfg, ex, formats)
            datasets[name] = out / f"ds-{name}"
    return datasets


def first_id(dataset: Path) -> str:
    return insp.clip_ids(dataset)[0]


def render_audio(out: Path, clip_id: str) -> np.ndarray:
    for path in sorted((out / "render").glob("shard-*.npz")):
        with np.load(path) as z:
            ids = [str(i) for i in z["id"]]
            if clip_id in ids:
                return z["audio"][ids.index(clip_id)]
    raise AssertionError(clip_id)


def invoke(*args: str):
    return CliRunner().invoke(cli, ["inspect", *map(str, args)])


# --- summary and verify -----------------------------------------------------------------


def test_summary_shows_counts_shapes_instruments_bpm_and_weights(built):
    result = invoke(built["all"])
    assert result.exit_code == 0, result.output
    doc = json.loads((built["all"] / "dataset.json").read_text())
    for split, info in doc["splits"].items():
        if info["count"]:
            assert f"{split}: {info['count']} clips in {len(info['shards'])} shards" in result.output
    assert "cqt float32 [2,216,1921]" in result.output and "disc int16 [16,600]" in result.output
    assert "EnCodec weights: random" in result.output
    assert "BPM histogram" in result.output and "instruments:" in result.output


def test_verify_accepts_a_fresh_dataset(built):
    result = invoke(built["all"], "--verify")
    assert result.exit_code == 0, result.output
    assert "verify: ok" in result.output


def test_verify_catches_a_flipped_byte_and_exits_non_zero(built, tmp_path):
    ds = shutil.copytree(built["audio"], tmp_path / "ds")
    shard_file = sorted(ds.glob("*/*.tfrecord"))[0]
    blob = bytearray(shard_file.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    shard_file.write_bytes(bytes(blob))
    result = invoke(ds, "--verify")
    assert result.exit_code != 0
    assert f"{shard_file.parent.name}/{shard_file.name}: sha256" in result.output
    assert "CRC mismatch" in result.output
    assert result.output.strip().splitlines()[-1].startswith("pvtbuild: error:")


def test_verify_catches_a_truncated_shard_and_exits_non_zero(built, tmp_path):
    ds = shutil.copytree(built["audio"], tmp_path / "ds")
    shard_file = sorted(ds.glob("*/*.tfrecord"))[-1]
    blob = shard_file.read_bytes()
    shard_file.write_bytes(blob[: len(blob) - 1000])
    result = invoke(ds, "--verify")
    assert result.exit_code != 0
    assert "truncated" in result.output and shard_file.name in result.output


# --- plots ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["all", "audio", "encodec"])
def test_plot_writes_a_png_that_decodes_and_is_not_blank(built, name, tmp_path):
    clip_id = first_id(built[name])
    result = invoke(built[name], "--plot", clip_id, "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    img = matplotlib.image.imread(tmp_path / f"{clip_id}.png")
    assert img.shape[0] > 500 and img.shape[1] > 500
    assert img[..., :3].std() > 0.05  # a picture, not an empty canvas


def test_plot_random_draws_the_same_clips_for_the_same_seed(built, tmp_path):
    ids = insp.random_clip_ids(built["audio"], 2, seed=3)
    assert ids == insp.random_clip_ids(built["audio"], 2, seed=3) and len(set(ids)) == 2
    result = invoke(built["audio"], "--plot-random", 2, "--seed", 3, "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(ids)


def test_plot_of_an_unknown_id_is_a_one_line_error(built, tmp_path):
    result = invoke(built["audio"], "--plot", "no-such-clip", "--out-dir", tmp_path)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("pvtbuild: error:") and "no-such-clip" in result.output
    with pytest.raises(InputError):
        insp.find_clip(built["audio"], "no-such-clip")


# --- WAV export -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_wav_is_decoded_from_each_stored_format_with_the_clip_length_and_rate(built, fmt, tmp_path):
    clip_id = first_id(built[fmt])
    result = invoke(built[fmt], "--wav", clip_id, "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"decoded from {fmt}" in result.output
    with wave.open(str(tmp_path / f"{clip_id}.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 24000, 192000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert np.abs(pcm).max() > 0
    if fmt == "audio":
        want = (np.clip(render_audio(built["out"], clip_id), -1, 1) * 32767).round().astype(np.int16)
        assert np.array_equal(pcm, want)
    if fmt == "cqt":  # the inverse CQT resembles the rendered clip
        ref = render_audio(built["out"], clip_id)
        got = pcm / 32767
        assert np.corrcoef(got, ref)[0, 1] > 0.8


# --- hostile datasets ---------------------------------------------------------------------


def rewrite_ids(ds: Path, new_id: str) -> None:
    """Give every record of `ds` the id `new_id`, keeping dataset.json's sizes and sha256s true
    (a hostile dataset that passes every checksum)."""
    shapes = read_shapes(ds)
    doc = json.loads((ds / "dataset.json").read_text())
    for info in doc["splits"].values():
        for entry in info["shards"]:
            path = ds / entry["file"]
            clips = [decode_record(rec, shapes, list(shapes) + list(doc["meta"])) for rec in iter_records(path)]
            records = [serialize_example({n: c[n] for n in shapes}, {**{m: c[m] for m in doc["meta"]}, "id": new_id})
                       for c in clips]
            written = write_shard(path, records)
            entry.update(bytes=written.bytes, sha256=written.sha256)
    (ds / "dataset.json").write_text(json.dumps(doc))


def test_a_dataset_whose_clip_id_is_a_path_writes_nothing_outside_the_out_dir(built, tmp_path):
    ds = shutil.copytree(built["audio"], tmp_path / "ds")
    rewrite_ids(ds, "../../escaped")
    out_dir = tmp_path / "a" / "b" / "out"
    result = invoke(ds, "--plot-random", 3, "--out-dir", out_dir)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("pvtbuild: error:") and "clip id" in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("escaped*"))


def test_a_clip_id_given_on_the_command_line_cannot_name_a_path(built, tmp_path):
    for option in ("--plot", "--wav"):
        result = invoke(built["audio"], option, "../escaped", "--out-dir", tmp_path / "out")
        assert result.exit_code == 2 and "clip id '../escaped'" in result.output
    assert not list(tmp_path.rglob("escaped*"))


@pytest.mark.parametrize("edit, message", [
    (lambda doc: [doc], "dataset.json: the document: must be a JSON object"),
    (lambda doc: {**doc, "format_version": "1"}, "dataset.json: format_version: must be an integer"),
    (lambda doc: {**doc, "splits": {"train": 5}}, "dataset.json: splits.train: must be a mapping"),
    (lambda doc: {**doc, "control_grids": 7}, "dataset.json: control_grids: must be a mapping"),
])
def test_inspect_of_a_malformed_dataset_json_is_one_line_naming_the_key(built, tmp_path, edit, message):
    ds = shutil.copytree(built["audio"], tmp_path / "ds")
    (ds / "dataset.json").write_text(json.dumps(edit(json.loads((ds / "dataset.json").read_text()))))
    result = invoke(ds, "--verify")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and message in result.output


def test_inspect_verify_of_a_huge_length_with_a_valid_crc_is_a_problem_not_a_memory_error(built, tmp_path):
    ds = shutil.copytree(built["audio"], tmp_path / "ds")
    shard_file = sorted(ds.glob("*/*.tfrecord"))[0]
    data = bytearray(shard_file.read_bytes())
    data[:12] = struct.pack("<Q", 2**62) + struct.pack("<I", masked_crc32c(struct.pack("<Q", 2**62)))
    shard_file.write_bytes(bytes(data))
    result = invoke(ds, "--verify")
    assert result.exit_code == 2 and "truncated shard: record wants" in result.output
    assert result.output.strip().splitlines()[-1].startswith("pvtbuild: error:") and "Traceback" not in result.output
