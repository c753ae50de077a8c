"""The sections of a pipeline file (`select`, `render`, `controls`, `encode`, `shard`, `qa`, `exec`): one
frozen dataclass each, its defaults and its range checks (`check(key)`, one line naming the key).

Every number of the data contract (docs/data-contract.md) lives in a pipeline file, not in code;
`pvtbuild.config.pipeline_config` puts the sections together and `pvtbuild.config.loader` builds them
from YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pvtbuild.config.loader import require
from pvtbuild.errors import ConfigError, brief


@dataclass(frozen=True)
class InstrumentConfig:
    """One instrument class: the GM program it is rendered with and the source programs it takes."""

    name: str
    program: int
    source_programs: tuple[int, int]

    @classmethod
    def from_name(cls, name: str, key: str) -> InstrumentConfig:
        """A known instrument by name (`KNOWN_INSTRUMENTS`): how the loader takes `instruments: [piano, violin]`."""
        if name not in KNOWN_INSTRUMENTS:
            raise ConfigError(f"{key}: unknown instrument {brief(name)} (known: {', '.join(KNOWN_INSTRUMENTS)}; "
                              "or give name, program, source_programs)")
        return KNOWN_INSTRUMENTS[name]

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
    freq_min_cycles: float = 0.125  # f_min = freq_min_cycles / T: 1/(8T), an eighth of a swell per clip
    freq_max_cycles: float = 8.0  # f_max = freq_max_cycles / T: 8/T, eight swells per clip
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
                 "the range pitch_min..pitch_max must span at least an octave within 0..127, "
                 f"got {self.pitch_min}..{self.pitch_max}")
        require(self.overlap_tolerance >= 0, f"{key}.overlap_tolerance", f"must be >= 0, got {self.overlap_tolerance}")
        require(0 <= self.min_voiced <= 1, f"{key}.min_voiced", f"must be within [0, 1], got {self.min_voiced}")
        require(self.min_notes >= 1, f"{key}.min_notes", f"must be >= 1, got {self.min_notes}")
        require(self.clips_per_source >= 0, f"{key}.clips_per_source", f"must be >= 0, got {self.clips_per_source}")
        require(self.variants >= 1, f"{key}.variants", f"must be >= 1, got {self.variants}")
        require(0 <= self.modulation_depth <= 1, f"{key}.modulation_depth",
                f"must be within [0, 1], got {self.modulation_depth}")
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
        require(8000 <= self.sample_rate <= 96000, f"{key}.sample_rate",
                f"must be within 8000..96000, got {self.sample_rate}")
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
        require(self.offset is None or 0 <= self.offset < 1, f"{key}.offset",
                f"must be within [0, 1), got {self.offset}")

    def check(self, key: str) -> None:
        self.check_given(key)
        require(self.rate is not None, f"{key}.rate",
                 "must be given for a grid that serves no format (or say `serves: encodec` / `serves: cqt`)")
        require(self.frames is not None and self.offset is not None, key, "frames and offset were not derived")


def _default_grids() -> tuple[GridConfig, ...]:
    return (GridConfig("75hz", serves="encodec"), GridConfig("240hz", serves="cqt"))


@dataclass(frozen=True)
class ControlsConfig:
    """The frame grids controls are computed on, and the scale of the `bpm` control."""

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
        """The grid named `name`; a `ConfigError` naming the grids there are otherwise."""
        for g in self.grids:
            if g.name == name:
                return g
        raise ConfigError(f"controls.grids: no grid named {name!r} (have {[g.name for g in self.grids]})")


@dataclass(frozen=True)
class CqtConfig:
    """The constant-Q transform of the `cqt` format (geometric bins from `fmin`, `hop_length` samples apart)."""

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
    """The EnCodec model of the `encodec` and `disc` formats."""

    bandwidth: float = 12.0  # kbps; 12 -> 16 codebooks
    checkpoint: str | None = None  # a path; default: torch hub's cache

    def check(self, key: str) -> None:
        require(self.bandwidth in (1.5, 3.0, 6.0, 12.0, 24.0), f"{key}.bandwidth",
                 f"must be one of 1.5, 3, 6, 12, 24 kbps, got {self.bandwidth}")


FORMATS = ("audio", "cqt", "encodec", "disc")


@dataclass(frozen=True)
class EncodeConfig:
    """The encode stage: which formats are computed from the audio, on which device."""

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


def _check_formats(formats: tuple[str, ...], key: str) -> None:
    require(len(formats) > 0, key, "must name at least one format")
    for fmt in formats:
        require(fmt in FORMATS, key, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def _default_control_grids() -> dict[str, str]:
    return {"audio": "240hz", "cqt": "240hz", "encodec": "75hz", "disc": "75hz"}


@dataclass(frozen=True)
class ShardConfig:
    """The shard stage: which formats go into the dataset, the valid split and the shard size."""

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
    """How the stages run: worker count, the dask scheduler, threads, task size."""

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
