"""Tests of the render stage (render.py) on real Lakh MIDI through real FluidSynth: what the shards
hold, audio that agrees with its controls, class programs, clips per family, byte-identical
outputs with one or two dask workers, seeds, and resume after a rerun or a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from paths import LAKH, REPO
from pvtbuild.clip import ClipSpec
from pvtbuild.config import PipelineConfig, load_pipeline
from pvtbuild.engine.manifest import sha256_bytes, sha256_file
from pvtbuild.music.controls import CONTROL_NAMES
from pvtbuild.music.midi import clip_notes, load_midi
from pvtbuild.music.synth import render_notes
from pvtbuild.pipeline import run_render
from pvtbuild.stages.render_settings import render_soundfont
from pvtbuild.stages.select import notes_files

EXAMPLES = REPO / "examples" / "midi"
DEMO_MANIFEST = REPO / "manifests" / "demo.jsonl"
N_LAKH = 40  # files of lakh-sample rendered here: ~115 clips, a few seconds


def config(midi: Path, pipeline: Path = REPO / "pipelines" / "pvt.yaml", **overrides) -> PipelineConfig:
    return load_pipeline(pipeline, midi=str(midi), **{"exec.scheduler": "sync", **overrides})


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def shards(out: Path) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(p)) for p in sorted((out / "render").glob("shard-*.npz"))]


def tree(folder: Path) -> dict[str, bytes]:
    """Every visible file under `folder` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def lakh(tmp_path_factory) -> tuple[Path, PipelineConfig]:
    """The first N_LAKH files of lakh-sample selected and rendered in-process at the pvt.yaml defaults."""
    out = tmp_path_factory.mktemp("lakh")
    cfg = config(LAKH, limit=N_LAKH)
    run_render(cfg, out)
    return out, cfg


# --- what a render holds ----------------------------------------------------------------


def test_shards_hold_audio_and_every_control_on_every_grid_as_documented(lakh):
    out, cfg = lakh
    manifest = {r["id"]: r for r in rows(out / "render" / "manifest.jsonl")}
    n = 0
    for data in shards(out):
        names = {"id", "audio"} | {f"{c}_{g.name}" for c in CONTROL_NAMES for g in cfg.controls.grids}
        assert set(data) == names
        k = len(data["id"])
        assert data["audio"].shape == (k, cfg.clip_samples) == (k, 192000) and data["audio"].dtype == np.float32
        assert np.isfinite(data["audio"]).all() and np.abs(data["audio"]).max() <= cfg.render.clip_limit
        for g in cfg.controls.grids:
            assert data[f"instrument_{g.name}"].shape == (k, 3, g.frames)
            assert data[f"velocity_{g.name}"].shape == (k, g.frames) and data[f"velocity_{g.name}"].dtype == np.float32
        for cid, audio in zip(data["id"], data["audio"]):
            assert manifest[str(cid)]["outputs"]["audio"] == sha256_bytes(audio.tobytes())
        n += k
    assert n == sum(r["status"] == "ok" for r in manifest.values()) > 0
    for record in sorted((out / "render").glob("shard-*.json")):
        rec = json.loads(record.read_text())
        assert rec["sha256"] == sha256_file(out / "render" / rec["file"])


def test_lakh_sample_yields_a_minimum_of_clips_per_family(lakh):
    out, _ = lakh
    ok = [r for r in rows(out / "render" / "manifest.jsonl") if r["status"] == "ok"]
    counts = Counter(r["inputs"]["instrument"] for r in ok)
    # Measured on these 40 files at the pvt.yaml defaults: piano 51, trumpet 34, violin 27.
    assert counts["piano"] >= 40 and counts["trumpet"] >= 25 and counts["violin"] >= 20, counts


# How long after a note-off its release may ring (GeneralUser GS), and how far below the
# note's level it must then be. Measured worst cases at these delays: piano 5 %, violin 2.5 %, trumpet 0.4 %.
RELEASE_S = {"piano": 0.4, "violin": 0.2, "trumpet": 0.2}
TAIL_RATIO = 0.1
ATTACK_S = 0.025  # a note's first frames may still be rising (strings), or be the previous note's release
SOUND_RMS = 1e-4  # -80 dBFS; voiced frames measured >= 4e-4


def frame_rms(audio: np.ndarray, hop: int, offset: float) -> np.ndarray:
    """RMS of frames of `hop` samples, frame k centred on the grid's sampling time (k + offset) * hop."""
    shift = int(round((0.5 - offset) * hop))  # frame k starts at sample k * hop - shift (zeros before the clip)
    audio = np.concatenate([np.zeros(shift, dtype=audio.dtype), audio])
    n = len(audio) // hop
    return np.sqrt(np.mean(np.square(audio[: n * hop].reshape(n, hop), dtype=np.float64), axis=1))


def test_audio_is_silent_where_voiced_is_0_and_sounds_where_it_is_1(lakh):
    out, cfg = lakh
    grid = cfg.controls.grid("240hz")
    hop = int(cfg.render.sample_rate / grid.rate)  # 100 samples: frame k is centred on sample 100k (CQT grid)
    instrument = {r["id"]: r["inputs"]["instrument"] for r in rows(out / "render" / "manifest.jsonl")}
    checked_silent = 0
    for data in shards(out):
        for cid, audio, voiced, pitch, velocity in zip(data["id"], data["audio"], data["voiced_240hz"],
                                                       data["pitch_240hz"], data["velocity_240hz"]):
            rms = frame_rms(audio, hop, grid.offset)
            on = voiced[: len(rms)] > 0
            note = pitch[: len(rms)] * 1000 + velocity[: len(rms)]  # changes where a new note starts
            starts = np.flatnonzero(on & np.r_[True, note[1:] != note[:-1]])
            attack = np.zeros(len(rms), dtype=bool)
            for k in starts:
                attack[k: k + int(np.ceil(ATTACK_S * grid.rate))] = True
            assert rms[on & ~attack].min() > SOUND_RMS, cid
            # Each voiced run's level; frames after its release time, up to the next run, are near silence.
            edges = np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0]))
            run_starts, run_ends = edges[::2], edges[1::2]
            release = int(RELEASE_S[instrument[str(cid)]] * grid.rate)
            for s, e in zip(run_starts, run_ends):
                level = np.sqrt(np.mean(rms[s:e] ** 2))
                stop = next((n for n in run_starts if n > e), len(rms))
                tail = rms[e + release: stop]
                if len(tail):
                    assert tail.max() < TAIL_RATIO * level, (cid, s, e)
                    checked_silent += len(tail)
    assert checked_silent > 10_000  # the silence check did look at many frames


def test_each_clip_is_rendered_with_its_class_program_not_its_source_program(lakh):
    out, cfg = lakh
    program = {i.name: i.program for i in cfg.select.instruments}
    rendered = [r for r in rows(out / "render" / "manifest.jsonl") if r["status"] == "ok"]
    assert all(r["inputs"]["program"] == program[r["inputs"]["instrument"]] for r in rendered)
    selection = {c["clip_id"]: c for c in rows(out / "select" / "selection.jsonl")}
    audio = {str(cid): a for data in shards(out) for cid, a in zip(data["id"], data["audio"])}
    differing = [r for r in rendered if r["inputs"]["source_program"] != r["inputs"]["program"]]
    picked = {r["inputs"]["instrument"]: r for r in differing}  # one clip per family
    assert len(picked) >= 2
    for r in picked.values():
        spec = ClipSpec.from_dict(dict(selection[r["id"]], source=str(LAKH / r["inputs"]["source"])))
        notes = clip_notes(load_midi(spec.source, cfg.select), spec, cfg.select)
        as_class, _ = render_notes(notes, spec.program, render_soundfont(cfg), cfg.render, cfg.clip_samples)
        as_source, _ = render_notes(notes, spec.source_program, render_soundfont(cfg), cfg.render, cfg.clip_samples)
        assert np.array_equal(audio[r["id"]], as_class)
        assert not np.array_equal(audio[r["id"]], as_source)


# --- reproducible -----------------------------------------------------------------------


def test_outputs_are_byte_identical_with_one_in_process_job_and_two_dask_workers(lakh, tmp_path):
    out, _ = lakh
    run_render(config(LAKH, limit=N_LAKH, **{"exec.scheduler": None, "exec.jobs": 2}), tmp_path)
    for stage in ("select", "render"):
        one, two = tree(out / stage), tree(tmp_path / stage)
        assert one.keys() == two.keys()
        assert [name for name in one if one[name] != two[name]] == []


def test_notes_stored_by_select_and_notes_parsed_again_from_a_manifest_render_the_same_bytes(lakh, tmp_path):
    out, cfg = lakh
    selection = out / "select" / "selection.jsonl"
    assert set(notes_files(out, cfg)) == {c["clip_id"] for c in rows(selection)}  # render used stored notes
    run_render(config(selection, limit=N_LAKH), tmp_path)  # no select stage here: every file is parsed
    assert notes_files(tmp_path, cfg) == {}
    assert tree(out / "render") == tree(tmp_path / "render")


def test_another_seed_draws_other_modulation_for_the_same_windows(tmp_path):
    seeds = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        run_render(config(EXAMPLES, REPO / "pipelines" / "demo.yaml", seed=seed), out)
        audio = {str(c): a for d in shards(out) for c, a in zip(d["id"], d["audio"])}
        velocity = {str(c): v for d in shards(out) for c, v in zip(d["id"], d["velocity_75hz"])}
        seeds[seed] = {(r["inputs"]["source_md5"], r["inputs"]["track"], r["inputs"]["start"]):
                       (r["inputs"]["mod_freq"], velocity[r["id"]], audio[r["id"]])
                       for r in rows(out / "render" / "manifest.jsonl") if r["status"] == "ok"}
    same_windows = seeds[0].keys() & seeds[1].keys()
    assert len(same_windows) >= 5
    for w in same_windows:
        (f0, v0, a0), (f1, v1, a1) = seeds[0][w], seeds[1][w]
        assert f0 != f1 and not np.array_equal(v0, v1) and not np.array_equal(a0, a1)


# --- resumable ---------------------------------------------------------------------------


def test_the_near_silence_threshold_is_render_silence_rms_from_the_config(tmp_path):
    cfg = config(DEMO_MANIFEST, REPO / "pipelines" / "demo.yaml", limit=1, **{"render.silence_rms": 0.9})
    summary = run_render(cfg, tmp_path)[-1]
    assert summary.total_ok == 0 and sum(summary.skipped.values()) > 0
    assert all(r.startswith("rendered near-silence (RMS < render.silence_rms = 0.9)") for r in summary.skipped)


def test_a_rerun_of_a_finished_render_renders_nothing_and_leaves_shards_untouched(tmp_path):
    cfg = config(DEMO_MANIFEST, REPO / "pipelines" / "demo.yaml")
    first = run_render(cfg, tmp_path)[-1]
    files = sorted((tmp_path / "render").glob("shard-*"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    again = run_render(cfg, tmp_path)[-1]
    assert first.ok == len(rows(DEMO_MANIFEST)) and first.reused == 0
    assert again.ok == 0 and again.reused == first.ok and not again.skipped
    assert f"render: 0 clips written, {first.ok} already done, 0 skipped" in again.lines()[0]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == before


def test_a_render_killed_midway_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path):
    pipeline = tmp_path / "one-clip-shards.yaml"
    pipeline.write_text("render:\n  clips_per_shard: 1\n")  # 21 shards: the kill lands between two
    n_clips = len(rows(DEMO_MANIFEST))
    killed = tmp_path / "killed"
    cmd = [str(Path(sys.executable).parent / "pvtbuild"), "render", "--pipeline", str(pipeline),
           "--midi", str(DEMO_MANIFEST),
           "--out", str(killed), "--scheduler", "sync"]
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            while not (killed / "render" / "shard-00000.json").exists() and proc.poll() is None:
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log").read_text()
    done = len(list((killed / "render").glob("shard-*.json")))
    assert 1 <= done < n_clips  # killed midway
    assert not (killed / "render" / "manifest.jsonl").exists()
    (killed / "render" / ".shard-00099.npz.x1y2.tmp").write_bytes(b"half")  # as a kill mid-write leaves it

    resumed = run_render(config(DEMO_MANIFEST, pipeline), killed)[-1]
    assert not list((killed / "render").glob(".*.tmp"))
    assert resumed.reused == done and resumed.ok == n_clips - done
    ids = [r["id"] for r in rows(killed / "render" / "manifest.jsonl")]
    assert sorted(ids) == sorted(c["clip_id"] for c in rows(DEMO_MANIFEST))  # none missing, none twice

    whole = tmp_path / "whole"
    run_render(config(DEMO_MANIFEST, pipeline), whole)
    assert tree(killed / "render") == tree(whole / "render")
