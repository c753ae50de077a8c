"""Tests of pvtbuild.dataset: the TFRecord writer, shapes.txt, both readers and verify.

Everything runs on real files through real TensorFlow and PyTorch. A small
dataset (every supported dtype, pipeline-like names, 3 train shards + 1 valid)
is written once per module; tests that corrupt it work on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf  # noqa: E402  (a dependency: its absence must fail, not skip)
import torch
from tensorflow.core.example import example_pb2

from pvtbuild.dataset import (
    array_shapes,
    decode_record,
    iter_records,
    list_shards,
    meta_schema,
    parse_example,
    read_dataset_json,
    read_shapes,
    serialize_example,
    shard_info,
    shard_name,
    verify_dataset,
    write_dataset_json,
    write_shapes,
    write_shard,
)
from pvtbuild.dataset.example import text_bytes
from pvtbuild.dataset.framing import crc32c, masked_crc32c
from pvtbuild.dataset.tf_reader import make_dataset  # noqa: E402
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.errors import InputError

SMALL_SHAPES = {  # pipeline names at reduced length, plus one array of every other dtype
    "audio": ("float32", (1, 2400)),
    "cqt": ("float32", (2, 24, 50)),
    "encodec": ("float32", (128, 60)),
    "disc": ("int16", (16, 60)),
    "velocity_75hz": ("float32", (60,)),
    "instrument_75hz": ("float32", (3, 60)),
    "x_f16": ("float16", (7,)),
    "x_f64": ("float64", (3, 2)),
    "x_i8": ("int8", (5,)),
    "x_i32": ("int32", (2, 3)),
    "x_i64": ("int64", (4,)),
    "x_u8": ("uint8", (9,)),
    "x_u16": ("uint16", (2, 2)),
    "x_bool": ("bool", (6,)),
}
TRAIN_SHARDS, PER_SHARD, VALID = 3, 5, 4


def _arrays(seed: int, shapes: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, shape) in shapes.items():
        dt = np.dtype(dtype)
        if dt.kind == "f":
            out[name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            out[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            info = np.iinfo(dt)
            out[name] = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    return out


def _meta(i: int) -> dict:
    return {"id": f"clip{i:03d}", "source_md5": f"{i:032x}", "instrument": "violin", "program": 40,
            "start": 12.5 + i, "transpose": -12, "mod_freq": 0.25, "mod_phase": 1.5}


def _write_dataset(root: Path, shapes: dict, splits: dict[str, list[list[int]]]) -> dict:
    """Write a dataset whose records are _arrays(i)/_meta(i); returns id -> (arrays, meta)."""
    records = {}
    infos = {}
    for split, shards in splits.items():
        infos[split] = []
        for k, idx in enumerate(shards):
            items = [(_arrays(i, shapes), _meta(i)) for i in idx]
            records.update({m["id"]: (a, m) for a, m in items})
            path = root / split / shard_name(split, k, len(shards))
            examples = (serialize_example(a, m, shapes=read_shapes_like(shapes)) for a, m in items)
            infos[split].append(write_shard(path, examples))
    write_shapes(root / "shapes.txt", shapes)
    write_dataset_json(root / "dataset.json", infos, {"config": {"name": "test"}}, meta_schema(_meta(0)))
    return records


def read_shapes_like(shapes: dict) -> dict:
    return {n: (np.dtype(d), tuple(s)) for n, (d, s) in shapes.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "dataset"
    train = [list(range(k * PER_SHARD, (k + 1) * PER_SHARD)) for k in range(TRAIN_SHARDS)]
    valid = [list(range(100, 100 + VALID))]
    records = _write_dataset(root, SMALL_SHAPES, {"train": train, "valid": valid})
    return root, records


def _assert_same(got: dict, want: dict, names) -> None:
    for name in names:
        g = got[name].numpy() if hasattr(got[name], "numpy") else np.asarray(got[name])
        assert g.dtype == want[name].dtype and g.shape == want[name].shape, name
        assert g.tobytes() == want[name].tobytes(), f"{name} differs"


# --- writer ----------------------------------------------------------------------------


def test_crc32c_matches_reference_values_and_the_bytewise_loop():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    rng = np.random.default_rng(1)
    for n in (1, 7, 4096, 10_007):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        reg = 0xFFFFFFFF
        for b in data:
            reg ^= b
            for _ in range(8):
                reg = (reg >> 1) ^ (0x82F63B78 if reg & 1 else 0)
        assert crc32c(data) == crc32c(bytearray(data)) == crc32c(memoryview(data)) == reg ^ 0xFFFFFFFF, n
    # masked CRC as TFRecord defines it
    c = crc32c(b"abc")
    assert masked_crc32c(b"abc") == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_write_shard_bytes_equal_tensorflow_tfrecordwriter(tmp_path):
    records = [serialize_example(_arrays(i, SMALL_SHAPES), _meta(i)) for i in range(3)] + [b"", b"x" * 5000]
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as w:
        for r in records:
            w.write(r)
    info = write_shard(tmp_path / "ours.tfrecord", records)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    assert (info.records, info.bytes) == (5, (tmp_path / "ours.tfrecord").stat().st_size)
    assert shard_info(tmp_path / "ours.tfrecord") == info
    assert [bytes(r) for r in iter_records(tmp_path / "ours.tfrecord", verify_crc=True)] == records
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_serialize_example_is_deterministic_and_parses_as_a_protobuf_example(tmp_path):
    arrays, meta = _arrays(7, SMALL_SHAPES), _meta(7)
    a = serialize_example(arrays, meta)
    b = serialize_example(dict(reversed(list(arrays.items()))), dict(reversed(list(meta.items()))))
    assert a == b
    ref = example_pb2.Example()
    for name, arr in arrays.items():
        ref.features.feature[name].bytes_list.value.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    for name, v in meta.items():
        f = ref.features.feature[name]
        (f.bytes_list.value.append(v.encode()) if isinstance(v, str)
         else f.int64_list.value.append(v) if isinstance(v, int) else f.float_list.value.append(v))
    assert example_pb2.Example.FromString(a) == ref
    # and our decoder reads protobuf's own serialization
    back = decode_record(ref.SerializeToString(), read_shapes_like(SMALL_SHAPES), [*SMALL_SHAPES, *meta])
    _assert_same(back, arrays, SMALL_SHAPES)
    assert {k: back[k] for k in meta} == {**meta, "start": np.float32(meta["start"]).item()}
    # same records twice -> byte-identical shards
    recs = [serialize_example(_arrays(i, SMALL_SHAPES), _meta(i)) for i in range(4)]
    s1 = write_shard(tmp_path / "a.tfrecord", recs)
    s2 = write_shard(tmp_path / "b.tfrecord", (serialize_example(_arrays(i, SMALL_SHAPES), _meta(i)) for i in range(4)))
    assert s1.sha256 == s2.sha256


def test_serialize_example_rejects_arrays_not_matching_shapes_txt():
    shapes = read_shapes_like(SMALL_SHAPES)
    arrays = _arrays(0, SMALL_SHAPES)
    with pytest.raises(ValueError, match="disc"):
        serialize_example({**arrays, "disc": arrays["disc"].astype(np.int32)}, {}, shapes=shapes)
    with pytest.raises(ValueError, match="missing"):
        serialize_example({k: v for k, v in arrays.items() if k != "cqt"}, {}, shapes=shapes)
    with pytest.raises(ValueError, match="both"):
        serialize_example(arrays, {"cqt": 1})
    with pytest.raises(TypeError):
        serialize_example({}, {"bad": [1, 2]})


def test_big_endian_arrays_are_stored_little_endian():
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    rec = serialize_example({"x": x}, {})
    assert bytes(parse_example(rec)["x"][1][0]) == x.astype("<f4").tobytes()


def test_shapes_txt_round_trip_and_readable_errors(tmp_path):
    write_shapes(tmp_path / "shapes.txt", SMALL_SHAPES)
    text = (tmp_path / "shapes.txt").read_text()
    assert "cqt float32 2,24,50\n" in text and "velocity_75hz float32 60\n" in text
    assert read_shapes(tmp_path / "shapes.txt") == read_shapes_like(SMALL_SHAPES)
    assert read_shapes(tmp_path) == read_shapes_like(SMALL_SHAPES)
    assert array_shapes(_arrays(0, SMALL_SHAPES)) == read_shapes_like(SMALL_SHAPES)
    (tmp_path / "shapes.txt").write_text("# comment\ncqt float32 2,24,50\ndisc int16\n")
    with pytest.raises(InputError, match=r"shapes.txt:3"):
        read_shapes(tmp_path / "shapes.txt")
    with pytest.raises(InputError, match="not found"):
        read_shapes(tmp_path / "nope.txt")


def test_dataset_json_lists_counts_and_relative_shard_files(small):
    root, _ = small
    doc = read_dataset_json(root)
    assert doc["format"] == "pvtbuild-tfrecord" and doc["config"] == {"name": "test"}
    assert doc["splits"]["train"]["count"] == TRAIN_SHARDS * PER_SHARD
    assert doc["splits"]["valid"]["shards"][0]["file"] == "valid/valid-00000-of-00001.tfrecord"
    assert doc["meta"]["program"] == "int" and doc["meta"]["id"] == "string" and doc["meta"]["start"] == "float"
    with pytest.raises(ValueError, match="reserved"):
        write_dataset_json(root / "x.json", {}, {"splits": 1})


# --- readers -----------------------------------------------------------------------------


def test_tf_reader_returns_every_array_bit_exact_batched_and_not(small):
    root, records = small
    seen = set()
    for batch in make_dataset(root, "train", names=[*SMALL_SHAPES, "id", "program"], batch_size=4):
        assert batch["cqt"].shape[1:] == (2, 24, 50)
        for j, rid in enumerate(batch["id"].numpy()):
            rid = rid.decode()
            seen.add(rid)
            _assert_same({k: v[j] for k, v in batch.items() if k in SMALL_SHAPES}, records[rid][0], SMALL_SHAPES)
            assert int(batch["program"][j]) == 40
    assert len(seen) == TRAIN_SHARDS * PER_SHARD
    single = next(iter(make_dataset(root, "valid", batch_size=None)))
    assert single["encodec"].shape == (128, 60) and single["x_bool"].dtype == tf.bool
    with pytest.raises(InputError, match="no array or metadata named"):
        make_dataset(root, "train", names=["nope"])


def test_torch_reader_returns_every_array_bit_exact_with_metadata(small):
    root, records = small
    ds = TFRecordIterableDataset(root, "train", names=[*SMALL_SHAPES, "id", "start", "transpose"], verify_crc=True)
    items = list(ds)
    assert len(items) == TRAIN_SHARDS * PER_SHARD
    for item in items:
        arrays, meta = records[item["id"]]
        assert all(isinstance(item[n], torch.Tensor) for n in SMALL_SHAPES)
        _assert_same(item, arrays, SMALL_SHAPES)
        assert item["transpose"] == -12 and item["start"] == pytest.approx(meta["start"])
    with pytest.raises(InputError, match="no array or metadata named"):
        TFRecordIterableDataset(root, "train", names=["encodec", "nope"])


def test_tf_and_torch_readers_agree_bit_exact_on_a_full_size_record(tmp_path):
    full = {"cqt": ("float32", (2, 216, 1921)), "audio": ("float32", (1, 192000)),
            "disc": ("int16", (16, 600)), "velocity_240hz": ("float32", (1921,))}
    records = _write_dataset(tmp_path, full, {"train": [[1, 2]]})
    via_tf = {r["id"].numpy().decode(): r
              for r in make_dataset(tmp_path, "train", names=[*full, "id"], batch_size=None)}
    via_torch = {r["id"]: r for r in TFRecordIterableDataset(tmp_path, "train", names=[*full, "id"])}
    assert via_tf.keys() == via_torch.keys() == records.keys()
    for rid, (arrays, _) in records.items():
        _assert_same(via_tf[rid], arrays, full)
        _assert_same(via_torch[rid], arrays, full)


def test_plain_tf_data_reads_a_pvtbuild_shard_knowing_only_shapes_txt(small):
    root, records = small
    # what a trainer outside pvtbuild writes, with shapes.txt in hand and nothing else
    shapes = {}
    for line in (root / "shapes.txt").read_text().splitlines():
        name, dtype, dims = line.split()
        shapes[name] = (tf.dtypes.as_dtype(dtype), [int(d) for d in dims.split(",")])
    features = {name: tf.io.FixedLenFeature([], tf.string) for name in shapes}

    def parse(record):
        x = tf.io.parse_single_example(record, features)
        return {name: tf.reshape(tf.io.decode_raw(x[name], dt), shape) for name, (dt, shape) in shapes.items()}

    files = sorted(str(p) for p in (root / "valid").glob("*.tfrecord"))
    got = list(tf.data.TFRecordDataset(files).map(parse))
    assert len(got) == VALID
    for i, ex in enumerate(got):
        _assert_same(ex, records[f"clip{100 + i:03d}"][0], SMALL_SHAPES)


def test_torch_reader_splits_files_across_two_dataloader_workers_without_duplicates_or_loss(small):
    root, _ = small
    ds = TFRecordIterableDataset(root, "train", names=["id"], shuffle_seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    ids = [item["id"] for item in loader]
    assert len(ids) == len(set(ids)) == TRAIN_SHARDS * PER_SHARD
    # ranks x workers: every file exactly once
    files = []
    for rank in range(2):
        rds = TFRecordIterableDataset(root, "train", shuffle_seed=5, rank=rank, world_size=2)
        files += [f for w in range(2) for f in rds.files_for(w, 2)]
    assert sorted(files) == list_shards(root, "train")
    with pytest.raises(InputError, match="shard files for 4 ranks"):
        TFRecordIterableDataset(root, "train", rank=0, world_size=4)


def test_tf_reader_shards_files_across_workers_without_duplicates_or_loss(small):
    root, _ = small
    ids = []
    for index in range(3):
        ds = make_dataset(root, "train", names=["id"], batch_size=None, num_shards=3, shard_index=index)
        ids += [x["id"].numpy().decode() for x in ds]
    assert len(ids) == len(set(ids)) == TRAIN_SHARDS * PER_SHARD
    with pytest.raises(InputError, match="shard files for 4 workers"):
        make_dataset(root, "train", num_shards=4)


def test_seeded_shuffle_is_reproducible_and_changes_with_seed_and_epoch(small):
    root, _ = small

    def torch_order(seed, epoch=0):
        ds = TFRecordIterableDataset(root, "train", names=["id"], shuffle_seed=seed, shuffle_buffer=8)
        ds.set_epoch(epoch)
        return [x["id"] for x in ds]

    def tf_order(seed):
        ds = make_dataset(root, "train", names=["id"], batch_size=None, shuffle_seed=seed, shuffle_buffer=8)
        return [x["id"].numpy().decode() for x in ds]

    plain = [x["id"] for x in TFRecordIterableDataset(root, "train", names=["id"])]
    assert plain == sorted(plain)
    assert torch_order(1) == torch_order(1) != plain
    assert torch_order(1, epoch=1) != torch_order(1) and sorted(torch_order(1, epoch=1)) == plain
    assert torch_order(2) != torch_order(1)
    assert tf_order(1) == tf_order(1) != plain and sorted(tf_order(1)) == plain
    assert tf_order(2) != tf_order(1)


# --- verify --------------------------------------------------------------------------------


@pytest.fixture
def copy(small, tmp_path):
    root, _ = small
    dst = tmp_path / "dataset"
    shutil.copytree(root, dst)
    return dst


def test_verify_passes_a_good_dataset(small):
    root, _ = small
    report = verify_dataset(root)
    assert report.ok, report.problems
    assert (report.shards, report.records) == (TRAIN_SHARDS + 1, TRAIN_SHARDS * PER_SHARD + VALID)


def test_verify_catches_a_flipped_byte(copy):
    path = copy / "train" / shard_name("train", 1, TRAIN_SHARDS)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(data)
    report = verify_dataset(copy)
    assert not report.ok
    assert any("CRC mismatch" in p for p in report.problems) and any("sha256" in p for p in report.problems)
    with pytest.raises(InputError, match="CRC mismatch"):
        list(iter_records(path, verify_crc=True))


def _one_line_input_error(read) -> str:
    with pytest.raises(InputError) as err:
        read()
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("byte", [7, 0, 8])  # the length's high byte, its low byte, its CRC
def test_torch_reader_a_flipped_length_byte_is_one_input_error_naming_the_file_and_offset(copy, byte):
    path = copy / "train" / shard_name("train", 1, TRAIN_SHARDS)
    data = bytearray(path.read_bytes())
    second = 16 + int.from_bytes(data[:8], "little")  # the second record's header
    data[second + byte] ^= 0x80
    path.write_bytes(data)
    ds = TFRecordIterableDataset(copy, "train", verify_crc=False)  # lengths are checked even so
    message = _one_line_input_error(lambda: list(ds))
    assert message.startswith(f"{path}: length CRC mismatch") and f"at byte {second}" in message


def test_torch_reader_checks_data_crcs_by_default(copy):
    path = copy / "train" / shard_name("train", 0, TRAIN_SHARDS)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside an array: decoding alone would not notice
    path.write_bytes(data)
    message = _one_line_input_error(lambda: list(TFRecordIterableDataset(copy, "train")))
    assert message.startswith(f"{path}: data CRC mismatch")
    assert len(list(TFRecordIterableDataset(copy, "train", verify_crc=False))) == TRAIN_SHARDS * PER_SHARD


def test_a_length_past_the_end_of_the_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "one.tfrecord"
    write_shard(path, [b"x" * 1000])
    path.write_bytes(path.read_bytes()[:500])  # the header is intact, its record is not all there
    message = _one_line_input_error(lambda: list(iter_records(path)))
    assert message == f"{path}: truncated record at byte 0 (wants 1000 bytes, 484 left in the file)"


def test_verify_catches_a_truncated_shard(copy):
    path = copy / "train" / shard_name("train", 2, TRAIN_SHARDS)
    path.write_bytes(path.read_bytes()[:-100])
    report = verify_dataset(copy)
    assert any("truncated" in p for p in report.problems), report.problems
    with pytest.raises(InputError, match="truncated"):
        list(iter_records(path))


def test_verify_catches_missing_and_extra_shards(copy):
    (copy / "valid" / shard_name("valid", 0, 1)).unlink()
    shutil.copy(copy / "train" / shard_name("train", 0, TRAIN_SHARDS), copy / "train" / "train-00009-of-00010.tfrecord")
    problems = verify_dataset(copy).problems
    assert any("missing shard" in p for p in problems) and any("extra shard" in p for p in problems)


def test_verify_catches_a_record_that_does_not_match_shapes_txt(copy):
    write_shapes(copy / "shapes.txt", {**SMALL_SHAPES, "disc": ("int16", (16, 61))})
    doc = json.loads((copy / "dataset.json").read_text())
    del doc["shapes_sha256"]  # as datasets written before it was recorded: each record is still checked
    (copy / "dataset.json").write_text(json.dumps(doc))
    problems = verify_dataset(copy).problems
    assert any("'disc'" in p and "needs" in p for p in problems), problems


def test_verify_catches_non_finite_floats(tmp_path):
    arrays = {"x": np.array([1.0, np.nan], np.float32)}
    info = write_shard(tmp_path / "train" / shard_name("train", 0, 1), [serialize_example(arrays, {})])
    write_shapes(tmp_path / "shapes.txt", array_shapes(arrays))
    write_dataset_json(tmp_path / "dataset.json", {"train": [info]}, {})
    assert any("non-finite" in p for p in verify_dataset(tmp_path).problems)


def test_any_metadata_string_is_stored_without_error_and_a_file_name_keeps_its_own_bytes():
    assert text_bytes("café.mid") == "café.mid".encode()  # valid text: its UTF-8, as before
    assert text_bytes(os.fsdecode(b"caf\xe9.mid")) == b"caf\xe9.mid"  # os.fsencode's bytes
    assert text_bytes("\ud800") == b"\xed\xa0\x80"  # a hand-made lone surrogate: no error either
    record = serialize_example({"x": np.zeros(2, np.float32)}, {"source": os.fsdecode(b"\xff.mid")})
    assert bytes(parse_example(record)["source"][1][0]) == b"\xff.mid"


# --- hostile datasets: every fault is one line naming the file, never a crash ------------------------


def _huge_length(path: Path) -> None:
    """Give the shard's first record a length of 2**62 bytes whose header CRC is valid."""
    data = bytearray(path.read_bytes())
    length = struct.pack("<Q", 2**62)
    data[:12] = length + struct.pack("<I", masked_crc32c(length))
    path.write_bytes(data)


def test_verify_reports_a_huge_length_with_a_valid_crc_as_truncated_without_allocating_it(copy):
    path = copy / "train" / shard_name("train", 0, TRAIN_SHARDS)
    _huge_length(path)
    report = verify_dataset(copy)  # once a MemoryError: verify allocated before comparing with the file size
    assert any(p.startswith(f"train/{path.name}: record 0 (byte 0): truncated shard: record wants {2**62} bytes")
               for p in report.problems), report.problems


@pytest.mark.parametrize("old, new", [("x_i32 int32 2,3", "x_i32 int32 3,2"),
                                      ("encodec float32 128,60", "encodec int32 128,60")])
def test_a_shapes_txt_swapped_for_one_of_the_same_size_is_refused_by_verify_and_both_readers(copy, old, new):
    text = (copy / "shapes.txt").read_text()
    (copy / "shapes.txt").write_text(text.replace(old, new))  # same bytes per array: every record still decodes
    report = verify_dataset(copy)
    assert [p for p in report.problems if "shapes_sha256" in p] and not report.ok
    for read in (lambda: TFRecordIterableDataset(copy, "train"), lambda: make_dataset(copy, "train")):
        message = _one_line_input_error(read)
        assert message.startswith(f"{copy / 'shapes.txt'}: its sha256 is not the one dataset.json records")


def test_a_shapes_txt_that_is_not_utf8_is_one_line(copy):
    (copy / "shapes.txt").write_bytes(b"audio float32 1,\xff\n")
    assert "not UTF-8 text (byte 16" in _one_line_input_error(lambda: read_shapes(copy / "shapes.txt"))


def _edit(doc: dict, key: str, value) -> dict:
    """`doc` with the dotted `key` set to `value` (None: deleted)."""
    *parents, leaf = key.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return doc


@pytest.mark.parametrize("key, value, message", [
    ("", [], "the document: must be a JSON object, got []"),
    ("format_version", "1", "format_version: must be an integer, got '1'"),
    ("splits.train", 5, "splits.train: must be a mapping with an integer count and a list of shards, got 5"),
    ("splits.train.shards.0.records", None, "splits.train.shards[0]: must be {file, records, bytes, sha256}"),
    ("control_grids", 7, "control_grids: must be a mapping of names to strings, got 7"),
    ("splits.train.shards.0.file", "../../outside.tfrecord",
     "splits.train.shards[0]: file '../../outside.tfrecord' lies outside"),
    ("splits.train.shards.0.file", "/etc/passwd", "splits.train.shards[0]: file '/etc/passwd' is not a relative path"),
])
def test_a_malformed_dataset_json_is_one_line_naming_the_key_in_readers_and_verify(copy, key, value, message):
    path = copy / "dataset.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(value if not key else _edit(doc, key, value)))
    assert _one_line_input_error(lambda: read_dataset_json(copy)).startswith(f"{path}: {message}")
    assert _one_line_input_error(lambda: TFRecordIterableDataset(copy, "train")).startswith(f"{path}: {message}")
    report = verify_dataset(copy)  # never raises for a bad dataset
    assert report.problems[0].startswith(f"{path}: {message}") and report.records == 0


# --- fuzz: damaged shards never crash, hang or over-allocate a reader -------------------------------

FUZZ_SHAPES = {"audio": ("float32", (1, 64)), "disc": ("int16", (4, 8)), "velocity_75hz": ("float32", (8,))}


def _mutations(blob: bytes, rng: np.random.Generator, n: int) -> list[tuple[str, bytes]]:
    """`n` damaged copies of a shard: byte flips, truncations, and length fields set to random values whose
    header CRC is valid (so only the length itself can stop a reader)."""
    starts, pos = [], 0
    while pos < len(blob):
        starts.append(pos)
        pos += 16 + struct.unpack_from("<Q", blob, pos)[0]
    out = []
    for k in range(n):
        data = bytearray(blob)
        kind = ("flip", "truncate", "length")[k % 3]
        if kind == "flip":
            for at in rng.integers(0, len(data), rng.integers(1, 4)):
                data[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == "truncate":
            data = data[:int(rng.integers(0, len(data)))]
        else:
            at = starts[int(rng.integers(0, len(starts)))]
            lengths = [int(rng.integers(0, 2**16)), int(rng.integers(0, 2**63)), 2**64 - 1]
            length = struct.pack("<Q", lengths[int(rng.integers(0, 3))])
            data[at:at + 12] = length + struct.pack("<I", masked_crc32c(length))
        out.append((kind, bytes(data)))
    return out


def test_fuzzed_shards_give_the_right_records_or_one_line_errors_in_both_readers_and_verify(tmp_path):
    """300 seeded damages of a small real shard: the torch reader returns the records written (a prefix, when
    a cut falls between records) or one InputError line; verify never raises and fails every damaged file;
    tf.data (every 10th case) returns them, or raises the framing check's InputError or its own CRC error
    (tf.errors.OpError). A reader that allocated for a length field would fail here with a MemoryError
    (lengths reach 2**64 - 1); tf.data given case 20 unchecked crashed the test process."""
    root = tmp_path / "ds"
    _write_dataset(root, FUZZ_SHAPES, {"train": [[0, 1, 2]]})
    shard = root / "train" / shard_name("train", 0, 1)
    blob = shard.read_bytes()
    want = [(_meta(i)["id"], _arrays(i, FUZZ_SHAPES)) for i in range(3)]
    for case, (kind, data) in enumerate(_mutations(blob, np.random.default_rng(21), 300)):
        shard.write_bytes(data)
        try:
            got = list(TFRecordIterableDataset(root, "train", names=["id", *FUZZ_SHAPES]))
        except InputError as e:
            assert "\n" not in str(e) and str(shard) in str(e), (case, kind, str(e))
        else:
            assert len(got) <= 3 and (len(got) == 3 or kind == "truncate"), (case, kind, len(got))
            for g, (clip_id, arrays) in zip(got, want):
                assert g["id"] == clip_id and all(np.array_equal(g[n].numpy(), arrays[n]) for n in FUZZ_SHAPES)
        report = verify_dataset(root)
        assert report.ok == (data == blob) and all("\n" not in p for p in report.problems), (case, kind)
        if case % 10 == 0:
            try:
                got_tf = list(make_dataset(root, "train", names=["audio"], batch_size=None))
            except InputError as e:  # its framing check, before tf.data sees the file (once: a segfault)
                assert "\n" not in str(e) and str(shard) in str(e), (case, kind, str(e))
                continue
            except tf.errors.OpError:  # tf.data's own CRC check
                continue
            assert all(np.array_equal(g["audio"].numpy(), a["audio"]) for g, (_, a) in zip(got_tf, want))
