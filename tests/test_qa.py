"""qa: clean renders pass, deliberately broken clips fail with the right reason (real FluidSynth, GeneralUser GS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pvtbuild.clip import ClipNotes
from pvtbuild.config import PipelineConfig, load_pipeline
from pvtbuild.controls import compute_controls
from pvtbuild.pipeline import run_qa, run_render, run_shard
from pvtbuild.qa import QaJob, failure_reasons, judge_clip, qa_grid, timbre_references
from pvtbuild.render import render_soundfont
from pvtbuild.synth import render_notes
from paths import LAKH

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = {"piano": 0, "violin": 40, "trumpet": 56}


@pytest.fixture(scope="module")
def cfg() -> PipelineConfig:
    return load_pipeline(REPO / "pipelines" / "pvt.yaml", **{"exec.scheduler": "sync"})


@pytest.fixture(scope="module")
def timbre(cfg):
    return timbre_references(cfg)


def melody(shift: float = 0.0, transpose: int = 0, drop: tuple[int, ...] = ()) -> ClipNotes:
    """Twelve 0.4 s notes with 0.25 s gaps over C3..C5, velocities 60..120."""
    pitches = np.array([48, 52, 55, 60, 64, 67, 72, 69, 65, 62, 57, 53], dtype=np.int16) + transpose
    onsets = 0.2 + 0.65 * np.arange(len(pitches)) + shift
    keep = np.array([i not in drop for i in range(len(pitches))])
    vel = np.linspace(60, 120, len(pitches)).astype(np.int16)
    return ClipNotes(onsets[keep], onsets[keep] + 0.4, pitches[keep], vel[keep], np.arange(0, 9, 0.5), 8.0)


def judge(cfg: PipelineConfig, instrument: str, audio_notes: ClipNotes, label_notes: ClipNotes | None = None,
          program: int | None = None, post=None, timbre=None) -> list[str]:
    """Render `audio_notes` (with `program`), label it with `label_notes`, return the qa reasons."""
    audio, _ = render_notes(audio_notes, PROGRAMS[instrument] if program is None else program,
                            render_soundfont(cfg), cfg.render, cfg.clip_samples)
    if post is not None:
        audio = post(audio)
    grid = qa_grid(cfg)
    names = [i.name for i in cfg.select.instruments]
    controls = compute_controls(label_notes or audio_notes, names.index(instrument), len(names), grid,
                                cfg.controls.bpm_max)
    job = QaJob(cfg.qa, grid, cfg.render.sample_rate, "", "", timbre)
    scores, _ = judge_clip(audio, controls, instrument, job)
    return failure_reasons(scores, cfg.qa)


@pytest.mark.parametrize("instrument", ["piano", "violin", "trumpet"])
def test_qa_passes_a_clean_render_of_each_instrument(cfg, timbre, instrument):
    assert judge(cfg, instrument, melody(), timbre=timbre) == []


@pytest.mark.parametrize("instrument", ["piano", "violin", "trumpet"])
def test_qa_names_a_semitone_transposition_wrong_pitch(cfg, instrument):
    assert "wrong pitch" in judge(cfg, instrument, melody(transpose=1), melody())


@pytest.mark.parametrize("instrument", ["piano", "violin", "trumpet"])
def test_qa_names_an_octave_transposition_wrong_octave(cfg, instrument):
    assert "wrong octave" in judge(cfg, instrument, melody(transpose=12), melody())


def test_qa_names_dropped_notes_missing_notes(cfg):
    assert "missing notes" in judge(cfg, "violin", melody(drop=(3, 7)), melody())


def test_qa_names_added_white_noise_noise(cfg):
    rng = np.random.default_rng(0)

    def noisy(a: np.ndarray) -> np.ndarray:
        return (a + rng.normal(0, 3 * float(np.sqrt(np.mean(a ** 2))), a.shape)).astype(np.float32)

    assert "noise" in judge(cfg, "trumpet", melody(), post=noisy)


def test_qa_names_a_silent_clip_silence(cfg):
    assert judge(cfg, "piano", melody(), post=np.zeros_like) == ["silence"]


@pytest.mark.parametrize("shift", [-0.12, 0.12])
def test_qa_names_labels_shifted_in_time_labels_shifted(cfg, shift):
    assert "labels shifted" in judge(cfg, "trumpet", melody(), melody(shift=shift))


def test_qa_catches_a_clip_rendered_with_the_wrong_program(cfg):
    # without the timbre check, only indirectly: the piano's release tails sound far beyond a trumpet's
    reasons = judge(cfg, "trumpet", melody(), program=0)
    assert "label shorter than sound" in reasons


@pytest.mark.parametrize("instrument, program", [("trumpet", 0), ("piano", 56), ("violin", 56), ("piano", 40)])
def test_qa_names_a_line_rendered_with_another_program_wrong_instrument(cfg, timbre, instrument, program):
    assert "wrong instrument" in judge(cfg, instrument, melody(), program=program, timbre=timbre)


def test_qa_stage_on_lakh_renders_meets_the_agreement_targets_and_drops_failing_clips(tmp_path, cfg):
    c = load_pipeline(REPO / "pipelines" / "pvt.yaml", midi=str(LAKH), limit=6,
                      **{"exec.scheduler": "sync", "shard.formats": ["audio"], "encode.formats": ["cqt"]})
    run_render(c, tmp_path)
    summary = run_qa(c, tmp_path)[0]
    assert summary.total_ok + sum(summary.skipped.values()) > 0
    rows = [json.loads(line) for line in (tmp_path / "qa" / "manifest.jsonl").read_text().splitlines()]
    voiced = np.mean([r["info"]["voiced_agreement"] for r in rows])
    chroma = np.mean([r["info"]["chroma_accuracy"] for r in rows if r["info"]["chroma_accuracy"] is not None])
    assert voiced >= 0.97 and chroma >= 0.99, (voiced, chroma)
    report = json.loads((tmp_path / "qa" / "summary.json").read_text())
    assert report["clips"] == len(rows)
    dropped = load_pipeline(REPO / "pipelines" / "pvt.yaml", midi=str(LAKH), limit=6,
                            **{"exec.scheduler": "sync", "shard.formats": ["audio"], "encode.formats": ["cqt"],
                               "qa.drop_failing": True})
    run_shard(dropped, tmp_path)
    doc = json.loads((tmp_path / "dataset" / "dataset.json").read_text())
    assert doc["qa"]["clips"] == len(rows) and doc["qa"]["dropped_failing"] is True
    stored = sum(s["count"] for s in doc["splits"].values())
    assert stored == report["passed"]


@pytest.mark.parametrize("instrument", ["violin", "trumpet"])
def test_the_yin_cross_check_agrees_with_the_template_on_a_clean_render(cfg, instrument):
    from dataclasses import replace

    audio, _ = render_notes(melody(), PROGRAMS[instrument], render_soundfont(cfg), cfg.render, cfg.clip_samples)
    grid = qa_grid(cfg)
    names = [i.name for i in cfg.select.instruments]
    controls = compute_controls(melody(), names.index(instrument), len(names), grid, cfg.controls.bpm_max)
    job = QaJob(replace(cfg.qa, yin_share=1.0), grid, cfg.render.sample_rate, "", "")
    _, extra = judge_clip(audio, controls, instrument, job, clip_id="any")
    assert extra["yin_agreement"] >= 0.9
