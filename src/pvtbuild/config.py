"""Pipeline configs: YAML files in `pipelines/` turned into typed, validated objects.

Every number of SPEC.md lives in a pipeline file, not in code. The YAML is
checked once, here, against the dataclasses below: an unknown key, a value of
the wrong type or out of range fails with one line naming the key
(`select.clip_seconds: must be > 0, got -1`), before any work starts. Code
downstream reads only these frozen objects.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Union

from pvtbuild.config_yaml import load_config_yaml
from pvtbuild.errors import ConfigError, brief

MAX_INT = 2**63  # every integer of a config fits int64 (numpy seeds, torch), or is refused at load


@dataclass(frozen=True)
class InstrumentConfig:
    """One instrument class: the GM program it is rendered with and the source programs it takes."""

    name: str
    program: int
    source_programs: tuple[int, int]

    def check(self, key: str) -> None:
        require(0 <= self.program <= 127, f"{key}.program", f"must be a GM program 0..127, got {self.program}")
        lo, hi = self.source_programs
        require(0 <= lo <= hi <= 127, f"{key}.source_programs", f"must be [lo, hi] within 0..127, got {[lo, hi]}")


# Instruments a pipeline may name by name alone; others are spelled out as
# {name, program, source_programs}. GM families: programs 8k..8k+7 (strings: 40..51).
KNOWN_INSTRUMENTS = {
    "piano": InstrumentConfig("piano", 0, (0, 7)),
    "organ": InstrumentConfig("organ", 19, (16, 23)),
    "guitar": InstrumentConfig("guitar", 24, (24, 31)),
    "bass": InstrumentConfig("bass", 32, (32, 39)),
    "violin": InstrumentConfig("violin", 40, (40, 51)),
    "trumpet": InstrumentConfig("trumpet", 56, (56, 63)),
    "saxophone": InstrumentConfig("saxophone", 65, (64, 71)),
    "flute": InstrumentConfig("flute", 73, (72, 79)),
}


def _default_instruments() -> tuple[InstrumentConfig, ...]:
    return tuple(KNOWN_INSTRUMENTS[n] for n in ("piano", "violin", "trumpet"))


@dataclass(frozen=True)
class SelectConfig:
    """Which monophonic 8 s windows of which tracks become clips, and how they are altered."""

    clip_seconds: float = 8.0
    instruments: tuple[InstrumentConfig, ...] = field(default_factory=_default_instruments)
    pitch_min: int = 48  # C3
    pitch_max: int = 72  # C5
    # A note may overlap the next onset by at most this long (s) and still count as
    # monophonic; it is then cut at that onset (real MIDI has such legato overlaps).
    overlap_tolerance: float = 0.05
    # "monophonic": only windows already monophonic; "top_line": keep the highest note.
    polyphony: Literal["monophonic", "top_line"] = "monophonic"
    min_voiced: float = 0.4  # share of frames with a sounding note, else skipped
    min_notes: int = 4
    clips_per_source: int = 8  # at most this many windows per MIDI file (0: all)
    variants: int = 1  # velocity-modulation variants per window
    modulation_depth: float = 0.5  # d in m(t) = d + (1-d)(1/2 + 1/2 sin(2 pi f t + phi))
    freq_min_cycles: float = 0.125  # f_min = freq_min_cycles / T  (report: 1/(8T))
    freq_max_cycles: float = 8.0  # f_max = freq_max_cycles / T   (report: 8/T)
    parse_timeout: float = 30.0  # seconds one MIDI file may take to parse
    parse_memory_mb: int = 3072  # address-space cap of the parsing process
    max_file_mb: float = 8.0  # larger MIDI files are skipped unread

    def check(self, key: str) -> None:
        require(self.clip_seconds > 0, f"{key}.clip_seconds", f"must be > 0, got {self.clip_seconds}")
        require(len(self.instruments) > 0, f"{key}.instruments", "must name at least one instrument")
        names = [i.name for i in self.instruments]
        require(len(set(names)) == len(names), f"{key}.instruments", f"names must be unique, got {names}")
        for n, inst in enumerate(self.instruments):
            inst.check(f"{key}.instruments[{n}]")
        require(0 <= self.pitch_min and self.pitch_min + 12 <= self.pitch_max <= 127, f"{key}.pitch_max",
                 f"the range pitch_min..pitch_max must span at least an octave within 0..127, got {self.pitch_min}..{self.pitch_max}")
        require(self.overlap_tolerance >= 0, f"{key}.overlap_tolerance", f"must be >= 0, got {self.overlap_tolerance}")
        require(0 <= self.min_voiced <= 1, f"{key}.min_voiced", f"must be within [0, 1], got {self.min_voiced}")
        require(self.min_notes >= 1, f"{key}.min_notes", f"must be >= 1, got {self.min_notes}")
        require(self.clips_per_source >= 0, f"{key}.clips_per_source", f"must be >= 0, got {self.clips_per_source}")
        require(self.variants >= 1, f"{key}.variants", f"must be >= 1, got {self.variants}")
        require(0 <= self.modulation_depth <= 1, f"{key}.modulation_depth", f"must be within [0, 1], got {self.modulation_depth}")
        require(0 < self.freq_min_cycles <= self.freq_max_cycles, f"{key}.freq_max_cycles",
                 f"need 0 < freq_min_cycles <= freq_max_cycles, got {self.freq_min_cycles}, {self.freq_max_cycles}")
        require(self.parse_timeout > 0, f"{key}.parse_timeout", f"must be > 0, got {self.parse_timeout}")
        require(self.parse_memory_mb >= 256, f"{key}.parse_memory_mb", f"must be >= 256, got {self.parse_memory_mb}")
        require(self.max_file_mb > 0, f"{key}.max_file_mb", f"must be > 0, got {self.max_file_mb}")


@dataclass(frozen=True)
class RenderConfig:
    """FluidSynth settings. Gain is fixed, never per-clip normalised, so velocity keeps its meaning."""

    sample_rate: int = 24000
    soundfont: str = "generaluser-gs"  # a registry name (soundfonts/registry.yaml) or a .sf2/.sf3 path
    gain: float = 0.5
    reverb: bool = False
    chorus: bool = False
    clip_limit: float = 1.0  # samples beyond +-clip_limit are clipped and counted in the manifest
    clips_per_shard: int = 32
    silence_rms: float = 1e-4  # a clip whose RMS is below this is skipped as near-silence
    # FluidSynth voices per synth (its synth.polyphony). Its default, 256, makes creating a
    # synth (once per clip) cost ~1.6 ms instead of ~0.3 ms. A monophonic line needs few: at
    # most 13 were ever sounding at once (release tails included) over 793 clips of
    # lakh-sample and the edge cases. A clip that fills them all is skipped, never cut.
    voices: int = 64

    def check(self, key: str) -> None:
        require(8000 <= self.sample_rate <= 96000, f"{key}.sample_rate", f"must be within 8000..96000, got {self.sample_rate}")
        require(0 < self.gain <= 10, f"{key}.gain", f"must be within (0, 10], got {self.gain}")
        require(self.clip_limit > 0, f"{key}.clip_limit", f"must be > 0, got {self.clip_limit}")
        require(self.clips_per_shard >= 1, f"{key}.clips_per_shard", f"must be >= 1, got {self.clips_per_shard}")
        require(bool(self.soundfont), f"{key}.soundfont", "must name a SoundFont")
        require(0 <= self.silence_rms < 1, f"{key}.silence_rms", f"must be within [0, 1), got {self.silence_rms}")
        require(1 <= self.voices <= 65535, f"{key}.voices", f"must be within 1..65535, got {self.voices}")


# EnCodec's frame in samples (its encoder strides 2*4*5*8), fixed by the model, not a config value.
ENCODEC_HOP = 320


@dataclass(frozen=True)
class GridConfig:
    """A frame grid controls are computed on: frame k is sampled at t_k = (k + offset) / rate s.

    A grid that `serves` a format follows the clip and that format: its rate,
    frame count and offset are derived at load (see `PipelineConfig`), and any
    of them given by hand must equal the derived value. A free grid (no
    `serves`) gives its rate; frames default to the sampling times within the
    clip, offset to 0.5 (frame k covers [k/rate, (k+1)/rate), sampled at its centre).
    """

    name: str
    rate: float | None = None  # frames per second
    frames: int | None = None
    serves: Literal["encodec", "cqt"] | None = None  # encodec: also disc (same frames)
    offset: float | None = None  # t_k = (k + offset) / rate; 0: frame centres at k/rate (centred CQT)

    def check_given(self, key: str) -> None:
        """The values given by hand, before the derived ones are filled in."""
        require(self.rate is None or self.rate > 0, f"{key}.rate", f"must be > 0, got {self.rate}")
        require(self.frames is None or self.frames >= 1, f"{key}.frames", f"must be >= 1, got {self.frames}")
        require(self.offset is None or 0 <= self.offset < 1, f"{key}.offset", f"must be within [0, 1), got {self.offset}")

    def check(self, key: str) -> None:
        self.check_given(key)
        require(self.rate is not None, f"{key}.rate",
                 "must be given for a grid that serves no format (or say `serves: encodec` / `serves: cqt`)")
        require(self.frames is not None and self.offset is not None, key, "frames and offset were not derived")


def _default_grids() -> tuple[GridConfig, ...]:
    return (GridConfig("75hz", serves="encodec"), GridConfig("240hz", serves="cqt"))


@dataclass(frozen=True)
class ControlsConfig:
    grids: tuple[GridConfig, ...] = field(default_factory=_default_grids)
    bpm_max: float = 300.0  # bpm control = local tempo in quarter notes per minute / bpm_max, clipped to [0, 1]

    def check(self, key: str) -> None:
        require(len(self.grids) > 0, f"{key}.grids", "must list at least one grid")
        names = [g.name for g in self.grids]
        require(len(set(names)) == len(names), f"{key}.grids", f"names must be unique, got {names}")
        for n, g in enumerate(self.grids):
            g.check(f"{key}.grids[{n}]")
        require(self.bpm_max > 0, f"{key}.bpm_max", f"must be > 0, got {self.bpm_max}")

    def grid(self, name: str) -> GridConfig:
        for g in self.grids:
            if g.name == name:
                return g
        raise ConfigError(f"controls.grids: no grid named {name!r} (have {[g.name for g in self.grids]})")


@dataclass(frozen=True)
class CqtConfig:
    fmin: float = 130.81
    bins_per_octave: int = 36
    n_bins: int = 216
    hop_length: int = 100

    def check(self, key: str) -> None:
        require(self.fmin > 0, f"{key}.fmin", f"must be > 0, got {self.fmin}")
        require(self.bins_per_octave >= 1, f"{key}.bins_per_octave", f"must be >= 1, got {self.bins_per_octave}")
        require(self.n_bins >= 1, f"{key}.n_bins", f"must be >= 1, got {self.n_bins}")
        require(self.hop_length >= 1, f"{key}.hop_length", f"must be >= 1, got {self.hop_length}")


@dataclass(frozen=True)
class EncodecConfig:
    bandwidth: float = 12.0  # kbps; 12 -> 16 codebooks
    checkpoint: str | None = None  # a path; default: torch hub's cache

    def check(self, key: str) -> None:
        require(self.bandwidth in (1.5, 3.0, 6.0, 12.0, 24.0), f"{key}.bandwidth",
                 f"must be one of 1.5, 3, 6, 12, 24 kbps, got {self.bandwidth}")


FORMATS = ("audio", "cqt", "encodec", "disc")


@dataclass(frozen=True)
class EncodeConfig:
    formats: tuple[str, ...] = ("cqt", "encodec", "disc")
    device: str = "auto"
    batch_size: int = 0  # 0: chosen per device
    # EnCodec weights: "pretrained" (torch hub cache or encodec.checkpoint; stop if absent),
    # "random" (same architecture untrained: tests, benchmarks), "auto" (pretrained if present).
    weights: Literal["pretrained", "random", "auto"] = "pretrained"
    cqt: CqtConfig = field(default_factory=CqtConfig)
    encodec: EncodecConfig = field(default_factory=EncodecConfig)

    def check(self, key: str) -> None:
        _check_formats(self.formats, f"{key}.formats")
        require(self.batch_size >= 0, f"{key}.batch_size", f"must be >= 0, got {self.batch_size}")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), f"{key}.device",
                 f"must be auto, cpu or cuda[:N], got {self.device!r}")
        self.cqt.check(f"{key}.cqt")
        self.encodec.check(f"{key}.encodec")


def _default_control_grids() -> dict[str, str]:
    return {"audio": "240hz", "cqt": "240hz", "encodec": "75hz", "disc": "75hz"}


@dataclass(frozen=True)
class ShardConfig:
    formats: tuple[str, ...] = ("audio", "cqt", "encodec", "disc")
    valid_share: float = 0.2
    shard_mb: float = 150.0
    # which control grid is stored beside each format
    control_grids: dict[str, str] = field(default_factory=_default_control_grids)

    def check(self, key: str) -> None:
        _check_formats(self.formats, f"{key}.formats")
        require(0 <= self.valid_share < 1, f"{key}.valid_share", f"must be within [0, 1), got {self.valid_share}")
        require(self.shard_mb > 0, f"{key}.shard_mb", f"must be > 0, got {self.shard_mb}")
        for fmt in self.formats:
            require(fmt in self.control_grids, f"{key}.control_grids", f"names no grid for format {fmt!r}")


def _default_release_s() -> dict[str, float]:
    return {"piano": 0.5, "violin": 0.25, "trumpet": 0.15}


@dataclass(frozen=True)
class QaConfig:
    """The qa stage: how the audio is analysed (`pvtbuild.music.analysis`) and when a clip fails, per reason."""

    enabled: bool = True  # `pvtbuild run` runs qa between encode and shard
    drop_failing: bool = False  # shard keeps clips that failed qa out of the dataset
    grid: str = ""  # control grid the audio is judged on ("": the coarsest)
    floor_db: float = -70.0  # analysis: a quieter frame is unvoiced
    range_db: float = 40.0  # analysis: ...and one below the clip's 99th-percentile loudness minus this
    min_harmonicity: float = 0.5  # analysis: template score (nats) of a voiced frame
    onset_threshold: float = 0.25  # analysis: log-flux of an onset
    onset_frames: int = 2  # tolerance: frames each side of a label change left out
    # tolerance: seconds after a note-off when sound is not held against the label, per instrument
    release_s: dict[str, float] = field(default_factory=_default_release_s)
    default_release_s: float = 0.5  # for instruments release_s does not name
    silence_db: float = -60.0  # fail "silence": the clip's loudest frame is below this (dBFS)
    min_noise_harmonicity: float = 0.8  # fail "noise": median harmonicity of held frames below this
    min_chroma_accuracy: float = 0.9  # fail "wrong pitch"
    min_octave_accuracy: float = 0.9  # fail "wrong octave"
    max_missing_notes: int = 0  # fail "missing notes": more held notes than this with no sound
    max_label_beyond_sound: float = 0.1  # fail "label longer than sound": share of held frames silent
    max_sound_beyond_label: float = 0.1  # fail "label shorter than sound": share of unheld frames sounding
    max_label_lag_ms: float = 60.0  # fail "labels shifted": the labels fit the audio best shifted by more
    # ... or the audio switches to the label's next note (median over note changes) more than this before the label
    max_switch_lead_ms: float = 50.0
    # ... or it switches to the label's notes (median over changes and starts) this long or longer after the label
    max_switch_lag_ms: float = 75.0
    min_loudness_spearman: float = -1.0  # fail "loudness": rank correlation with velocity below this (-1: off)
    timbre: bool = True  # compare each clip's harmonic profile with every instrument's, rendered at the stage start
    max_timbre_margin: float = 0.0  # fail "wrong instrument": own profile distance minus the nearest other's above this
    yin_share: float = 0.02  # share of clips cross-checked by a second pitch estimator (YIN, ~10-30 ms a clip)

    def check(self, key: str) -> None:
        require(self.range_db > 0, f"{key}.range_db", f"must be > 0, got {self.range_db}")
        require(self.onset_frames >= 0, f"{key}.onset_frames", f"must be >= 0, got {self.onset_frames}")
        for name, value in self.release_s.items():
            require(value >= 0, f"{key}.release_s.{name}", f"must be >= 0, got {value}")
        require(self.default_release_s >= 0, f"{key}.default_release_s", f"must be >= 0, got {self.default_release_s}")
        for name in ("min_chroma_accuracy", "min_octave_accuracy", "max_label_beyond_sound",
                     "max_sound_beyond_label", "yin_share"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"{key}.{name}", f"must be within [0, 1], got {value}")
        require(self.max_missing_notes >= 0, f"{key}.max_missing_notes", f"must be >= 0, got {self.max_missing_notes}")
        require(-1 <= self.min_loudness_spearman <= 1, f"{key}.min_loudness_spearman",
                 f"must be within [-1, 1], got {self.min_loudness_spearman}")


@dataclass(frozen=True)
class ExecConfig:
    jobs: int = 2
    # None: local dask cluster; "sync": in-process; "tcp://host:port" or "tls://host:port" (certificates
    # from dask config: distributed.comm.tls.*, see docs/cluster.md)
    scheduler: str | None = None
    threads_per_job: int = 0  # torch threads per worker; 0: cores // jobs
    # MIDI files per select task (and select shard): how the work is split, not what comes out
    # (select keys each task by its files' md5s, so a change only regroups them)
    select_files_per_task: int = 16
    # Seconds a scheduler by address may have no worker before the run stops and says so (0: a
    # worker must be there at once); an adaptive cluster that starts workers on demand may set it long.
    wait_for_workers: float = 60.0

    def check(self, key: str) -> None:
        require(self.jobs >= 1, f"{key}.jobs", f"must be >= 1, got {self.jobs}")
        require(self.wait_for_workers >= 0, f"{key}.wait_for_workers", f"must be >= 0, got {self.wait_for_workers:g}")
        require(self.threads_per_job >= 0, f"{key}.threads_per_job", f"must be >= 0, got {self.threads_per_job}")
        require(self.select_files_per_task >= 1, f"{key}.select_files_per_task",
                 f"must be >= 1, got {self.select_files_per_task}")


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "pvt"
    # A folder of MIDI files or a selection manifest (.jsonl); in a pipeline file,
    # relative to that file's folder.
    midi: str = ""
    seed: int = 0
    limit: int = 0  # at most this many source MIDI files (0: all)
    select: SelectConfig = field(default_factory=SelectConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    qa: QaConfig = field(default_factory=QaConfig)
    exec: ExecConfig = field(default_factory=ExecConfig)

    def __post_init__(self) -> None:
        controls = _resolve_grids(self)
        if controls is not None:
            object.__setattr__(self, "controls", controls)

    def check(self, key: str = "") -> None:
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.limit >= 0, "limit", f"must be >= 0, got {self.limit}")
        sections = [f.name for f in dataclasses.fields(self) if dataclasses.is_dataclass(getattr(self, f.name))]
        for name in sorted(sections, key=lambda n: n == "controls"):  # grids are derived from the others: last
            getattr(self, name).check(name)
        for fmt, grid in self.shard.control_grids.items():
            self.controls.grid(grid)  # raises naming the missing grid
        if self.qa.grid:
            self.controls.grid(self.qa.grid)

    @property
    def clip_samples(self) -> int:
        return int(round(self.select.clip_seconds * self.render.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def load_pipeline(path: str | Path, **overrides: Any) -> PipelineConfig:
    """Read and validate a pipeline file; `overrides` are dotted keys (`render.soundfont`) set on top."""
    p = Path(path)
    data = read_config_file(p, "pipeline file")
    if isinstance(data.get("midi"), str) and data["midi"] and not Path(data["midi"]).is_absolute():
        data["midi"] = str((p.parent / data["midi"]).resolve())
    with naming_file(p, [key for key, value in overrides.items() if value is not None]):
        return config_from_dict(data, **overrides)


@contextlib.contextmanager
def naming_file(path: Path, overridden: Iterable[str] = ()) -> Iterator[None]:
    """Prefix a `ConfigError` raised in the block with the config file it is about (`FILE: key: reason`),
    unless it is about a key in `overridden` (a command-line option: the file is not to blame)."""
    try:
        yield
    except ConfigError as e:
        if str(e).startswith(tuple(f"{key}:" for key in overridden)):
            raise
        raise ConfigError(f"{path}: {e}") from None


def read_config_file(p: Path, what: str) -> dict[str, Any]:
    """A YAML config file as a mapping of sections (`name` defaults to the file's stem); one line on any mistake."""
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    data = load_config_yaml(p) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", p.stem)
    return data


def config_from_dict(data: dict[str, Any], **overrides: Any) -> PipelineConfig:
    data = copy.deepcopy(data)  # overrides must not change the caller's dict
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    cfg = build_section(PipelineConfig, data, "")
    cfg.check()
    return cfg


def config_hash(section: Any) -> str:
    """A short stable hash of a config section: part of every manifest row, so a changed config is noticed."""
    blob = json.dumps(to_plain(section), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --- internals --------------------------------------------------------------------------


def _resolve_grids(cfg: PipelineConfig) -> ControlsConfig | None:
    """`controls` with every grid's rate, frames and offset filled in from the clip and the format it serves.

    A grid serves `encodec` (frames of 320 samples: rate sr/320, ceil(N/320)
    frames, sampled at their centres, offset 0.5) or `cqt` (centred frames:
    rate sr/hop, N // hop + 1 frames centred at k*hop/sr, offset 0), N the
    clip's samples. A grid without `serves` that `shard.control_grids` stores
    beside cqt, encodec or disc serves that format (configs listing rate and
    frames by hand, as older ones do). Values given by hand must equal the
    derived ones. Returns None while the clip, sample rate or hop are invalid
    (`check` then names them).
    """
    seconds, sr, hop = cfg.select.clip_seconds, cfg.render.sample_rate, cfg.encode.cqt.hop_length
    if not (seconds > 0 and sr > 0 and hop >= 1):
        return None
    stored: dict[str, dict[str, str]] = {}  # grid name -> {format it serves: shard.control_grids key}
    for fmt, name in cfg.shard.control_grids.items():
        kind = {"cqt": "cqt", "encodec": "encodec", "disc": "encodec"}.get(fmt)
        if kind is not None:
            stored.setdefault(name, {}).setdefault(kind, fmt)
    grids = []
    for n, g in enumerate(cfg.controls.grids):
        key = f"controls.grids[{n}]"
        g.check_given(key)
        kinds = stored.get(g.name, {})
        require(len(kinds) <= 1, "shard.control_grids", f"stores grid {g.name!r} beside both cqt and encodec/disc "
                 f"({', '.join(kinds.values())}), whose frames differ; give each its own grid")
        serves = g.serves
        for kind, fmt in kinds.items():
            require(serves in (None, kind), f"shard.control_grids.{fmt}",
                     f"grid {g.name!r} serves {serves}, not {kind}; name a grid that serves {kind}")
            serves = kind
        grids.append(_derive_grid(g, serves, key, cfg.clip_samples, sr, hop))
    return dataclasses.replace(cfg.controls, grids=tuple(grids))


def _derive_grid(g: GridConfig, serves: str | None, key: str, samples: int, sr: int, hop: int) -> GridConfig:
    seconds = samples / sr
    if serves == "encodec":
        rate, frames, offset = sr / ENCODEC_HOP, -(-samples // ENCODEC_HOP), 0.5
        what = f"EnCodec has {frames} frames of {ENCODEC_HOP} samples"
    elif serves == "cqt":
        rate, frames, offset = sr / hop, samples // hop + 1, 0.0
        what = f"the centred CQT (hop {hop}) has {frames} frames"
    else:
        require(g.rate is not None, f"{key}.rate",
                 "must be given for a grid that serves no format (or say `serves: encodec` / `serves: cqt`)")
        rate, offset = float(g.rate), 0.5 if g.offset is None else g.offset
        frames = int(math.floor(seconds * rate - offset + 1e-9)) + 1  # the times (k + offset)/rate within [0, T]
        what = f"a {rate:g} Hz grid sampled at (k + {offset:g})/{rate:g} s has {frames} frames"
    where = f"for {seconds:g} s clips at {sr} Hz"
    fix = "drop the key: it follows the clip" + (f" and the format the grid serves ({serves})" if serves else "")
    if g.rate is not None and not math.isclose(g.rate, rate, rel_tol=1e-9):
        raise ConfigError(f"{key}.rate: {g.rate:g}, but {what} at {rate:g} Hz {where}; {fix}")
    if g.frames is not None and g.frames != frames:
        raise ConfigError(f"{key}.frames: {g.frames}, but {what} {where}; {fix}")
    if g.offset is not None and not math.isclose(g.offset, offset, abs_tol=1e-9):
        raise ConfigError(f"{key}.offset: {g.offset:g}, but {serves} frame k sits at (k + {offset:g})/{rate:g} s; {fix}")
    return GridConfig(g.name, rate, frames, serves, offset)  # type: ignore[arg-type]


def require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _check_formats(formats: tuple[str, ...], key: str) -> None:
    require(len(formats) > 0, key, "must name at least one format")
    for fmt in formats:
        require(fmt in FORMATS, key, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def build_section(cls: type, data: Any, key: str) -> Any:
    where = key or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise ConfigError(f"{_join(key, unknown[0])}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(hints[name], value, _join(key, name)) for name, value in data.items()}
    for f in dataclasses.fields(cls):
        value = kwargs.get(f.name)
        if isinstance(value, float) and math.isinf(value) and not _infinite_default(f):
            raise ConfigError(f"{_join(key, f.name)}: must be a finite number, got {value}")
    return cls(**kwargs)


def _infinite_default(f: dataclasses.Field) -> bool:
    """Whether a float field may be infinite: only where its default is (EDM's S_max), never elsewhere
    (`clip_seconds: .inf` or `lr: .inf` once passed the range checks and failed late or trained NaN)."""
    return isinstance(f.default, float) and math.isinf(f.default)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp`, or a `ConfigError` naming `key`; messages are formatted only when raised
    (a value may be huge: formatting it on every call once made a YAML bomb hang)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        _expect(isinstance(value, (str, int, float, bool, type(None))) and value in args, key,
                f"one of {', '.join(map(str, args))}", value)
        return value
    if tp is InstrumentConfig and isinstance(value, str):
        if value not in KNOWN_INSTRUMENTS:
            raise ConfigError(f"{key}: unknown instrument {brief(value)} (known: {', '.join(KNOWN_INSTRUMENTS)}; "
                              "or give name, program, source_programs)")
        return KNOWN_INSTRUMENTS[value]
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, key)
    if origin is tuple:
        _expect(isinstance(value, (list, tuple)), key, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        _expect(len(value) == len(args), key, f"a list of {len(args)} items", value)
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        _expect(isinstance(value, dict), key, "a mapping", value)
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        _expect(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        _expect(-MAX_INT <= value < MAX_INT, key, "an integer within +-2^63", value)
        return value
    if tp is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number", value)
        _expect(not math.isnan(value), key, "a number", value)
        return float(value)
    if tp is str:
        _expect(isinstance(value, str), key, "a string", value)
        return value
    raise TypeError(f"config type {tp!r} at {key} is not supported")  # a bug, not a user mistake


def _expect(ok: bool, key: str, what: str, value: Any) -> None:
    """Raise `key: must be WHAT, got VALUE` (VALUE cut short) unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: must be {what}, got {brief(value)}")
