"""Looking at a built dataset: a summary, clip plots and WAV exports (`pvtbuild inspect`, which is
`inspect_dataset` with an `InspectOptions`).

The summary reads only dataset.json and shapes.txt (the shard stage stores
instrument counts and a BPM histogram there), so it is instant on any size.
`--verify` is `pvtbuild.dataset.verify_dataset`. Plots and WAVs find a clip by
its ``id`` by scanning the shards' records, decoding only the matching one.

Plots show the controls over time, one row each: the instrument matrix (one
line per instrument, dark where it plays), chroma, velocity and the beat
sawtooth, with a time-frequency picture above: the CQT magnitude if the
dataset stores it, else a mel spectrogram of the audio, else the EnCodec
latents or codes as an image.

WAVs are decoded from whichever format is stored, best first: the audio
itself; the CQT through its inverse (encoders/cqt.py); EnCodec latents or codes
through the EnCodec decoder with the weights dataset.json records (random
weights from their seed, or the pretrained checkpoint, which must be present).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pvtbuild.clip import check_clip_id, clip_path
from pvtbuild.dataset import (
    decode_record,
    iter_records,
    list_shards,
    parse_example,
    read_dataset_json,
    read_shapes,
    verify_dataset,
)
from pvtbuild.dataset.layout import SPLITS
from pvtbuild.engine.manifest import atomic_write, check_writable
from pvtbuild.errors import InputError, PvtbuildError
from pvtbuild.stages.qa_output import summary_lines as qa_lines
from pvtbuild.tools.decode import AudioDecoder, write_wav

SPECTRAL = ("cqt", "audio", "encodec", "disc")  # what the top panel of a plot shows, best first
AUDIBLE = ("audio", "cqt", "encodec", "disc")  # what a WAV is decoded from, best first


@dataclass(frozen=True)
class InspectOptions:
    """What `pvtbuild inspect` was asked for: the dataset, and which checks, plots and WAVs to make."""

    dataset: Path
    verify: bool = False  # re-hash every shard and decode every record
    plot_ids: tuple[str, ...] = ()  # clips to plot as ID.png
    plot_random: int = 0  # clips to plot, drawn with `seed`
    wav_ids: tuple[str, ...] = ()  # clips to export as ID.wav
    out_dir: Path = Path(".")  # where plots and WAVs go
    seed: int = 0


def inspect_dataset(opts: InspectOptions) -> Iterator[str]:
    """The lines `pvtbuild inspect` prints, yielded as each piece of work finishes (a summary first, then one
    line per plot and WAV written, then the verify summary), so a long verify never hides what is done.

    Raises:
        PvtbuildError: a bad dataset, clip id or output folder (one line); and, after its lines, a verify
            that found problems.
    """
    yield from summary_lines(opts.dataset)
    plot_ids = opts.plot_ids
    if opts.plot_random or plot_ids or opts.wav_ids:
        check_writable(opts.out_dir, "--out-dir")
    if opts.plot_random:
        plot_ids += tuple(random_clip_ids(opts.dataset, opts.plot_random, opts.seed))
    for clip_id in plot_ids:
        yield f"plot: {plot_clip(opts.dataset, clip_id, clip_path(opts.out_dir, clip_id, '.png'))}"
    for clip_id in opts.wav_ids:
        path, fmt = export_wav(opts.dataset, clip_id, clip_path(opts.out_dir, clip_id, ".wav"))
        yield f"wav: {path} (decoded from {fmt})"
    if opts.verify:
        report = verify_dataset(opts.dataset)
        yield f"verify: {report.summary()}"
        if not report.ok:
            raise PvtbuildError(f"{opts.dataset}: verify found {len(report.problems)} problem(s), listed above")


def summary_lines(dataset: Path) -> list[str]:
    """What a dataset holds: counts and sizes per split, arrays, instruments, tempi, EnCodec weights."""
    doc = read_dataset_json(dataset)
    shapes = read_shapes(dataset)
    lines = [f"{dataset}: {doc.get('format')} v{doc.get('format_version')}, formats "
             f"{', '.join(doc.get('formats', [])) or '?'}, EnCodec weights: {doc.get('weights') or 'n/a'}"]
    for split, info in sorted(doc["splits"].items()):
        size = sum(s["bytes"] for s in info["shards"])
        lines.append(f"  {split}: {info['count']} clips in {len(info['shards'])} shards, {size / 1e6:.1f} MB")
    lines.append("  arrays:")
    lines += [f"    {name} {dtype.name} [{','.join(map(str, shape))}]" for name, (dtype, shape) in shapes.items()]
    stats = doc.get("stats", {})
    for split, s in sorted(stats.items()):
        inst = ", ".join(f"{k} {v}" for k, v in s.get("instruments", {}).items())
        lines.append(f"  {split} instruments: {inst}")
        lines.append(f"  {split} BPM histogram (bin: clips):")
        hist = s.get("bpm_histogram", {})
        top = max(hist.values(), default=1)
        lines += [f"    {int(b):4d} {n:6d} {'#' * max(1, round(30 * n / top))}" for b, n in hist.items()]
    for reason, n in doc.get("skipped", {}).items():
        lines.append(f"  not in the dataset: {n} clips: {reason}")
    if doc.get("qa"):
        dropped = "failing clips dropped" if doc["qa"].get("dropped_failing") else "failing clips kept"
        lines += [f"  {line} ({dropped})" if n == 0 else f"  {line}" for n, line in enumerate(qa_lines(doc["qa"]))]
    return lines


def clip_ids(dataset: Path) -> list[str]:
    """Every clip id of the dataset, split by split, in shard order."""
    return [_record_id(rec, dataset) for _, rec in _records(dataset)]


def _record_id(rec: bytearray, dataset: Path) -> str:
    """A record's clip id, checked (`check_clip_id`): ids become file names (ID.png, ID.wav)."""
    kind, values = parse_example(rec).get("id", ("", []))
    raw = bytes(values[0]).decode("utf-8", "replace") if kind == "bytes" and len(values) == 1 else values
    return check_clip_id(raw, f"{dataset}: a record")


def find_clip(dataset: Path, clip_id: str) -> dict[str, Any]:
    """Every array and metadata value of one clip (plus its ``split``)."""
    shapes = read_shapes(dataset)
    meta = list(read_dataset_json(dataset).get("meta", {}))
    for split, rec in _records(dataset):
        if bytes(parse_example(rec)["id"][1][0]) == clip_id.encode():
            return dict(decode_record(rec, shapes, list(shapes) + meta), split=split)
    raise InputError(f"{dataset}: no clip with id {clip_id!r} (see `pvtbuild inspect {dataset}` for what it holds)")


def random_clip_ids(dataset: Path, n: int, seed: int = 0) -> list[str]:
    """`n` clip ids drawn without replacement, the same for the same seed."""
    ids = clip_ids(dataset)
    pick = np.random.default_rng(seed).choice(len(ids), size=min(n, len(ids)), replace=False)
    return [ids[i] for i in sorted(pick)]


def plot_clip(dataset: Path, clip_id: str, path: Path) -> Path:
    """A PNG of one clip: its controls over time, one row each, with a time-frequency picture above."""
    doc = read_dataset_json(dataset)
    clip = find_clip(dataset, clip_id)
    grid, rate, offset = _control_grid(doc, clip)
    title = (f"{clip_id} ({clip['split']}): {clip.get('instrument', '?')}, program {clip.get('program', '?')}, "
             f"{clip.get('bpm', 0):.0f} BPM, from {clip.get('source', '?')} at {clip.get('start', 0):.1f} s")
    return draw_clip(path, clip, doc, grid, rate, offset, title)


def draw_clip(path: Path, clip: dict[str, Any], doc: dict[str, Any], grid: str, rate: float, offset: float,
              title: str) -> Path:
    """Draw a clip's arrays (one of cqt / audio / encodec / disc for the top panel; `{control}_{grid}`
    for instrument, chroma, velocity, beat) as a PNG; control values of -1 (not given) are left blank."""
    import matplotlib  # noqa: PLC0415  (matplotlib takes ~1 s to import; only plots need it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after use("Agg"): no display needed)

    names = [i["name"] if isinstance(i, dict) else str(i) for i in doc["config"]["select"]["instruments"]]
    fig, axes = plt.subplots(5, 1, figsize=(10, 9), sharex=True,
                             gridspec_kw={"height_ratios": [3, 0.8, 1, 1, 1]}, constrained_layout=True)
    duration = doc["config"]["select"]["clip_seconds"]
    _spectral_panel(axes[0], clip, doc, duration)
    inst = np.asarray(clip[f"instrument_{grid}"], dtype=np.float32)
    frames = inst.shape[-1]
    t = (np.arange(frames) + offset) / rate  # each frame's sampling time (controls.py)
    axes[1].imshow(np.ma.masked_less(inst, 0), aspect="auto", origin="upper", cmap="Greys", vmin=0, vmax=1,
                   interpolation="nearest",
                   extent=((offset - 0.5) / rate, (frames + offset - 0.5) / rate, len(names) - 0.5, -0.5))
    axes[1].set_yticks(range(len(names)), names)
    axes[1].set_ylabel("instrument" + (" (not given)" if (inst < 0).all() else ""))
    rows = ((axes[2], "chroma", "chroma\n(pitch class / 11)"), (axes[3], "velocity", "velocity\n(/127)"),
            (axes[4], "beat", "beat phase"))
    for ax, name, label in rows:
        values = np.asarray(clip[f"{name}_{grid}"], dtype=np.float32)
        ax.plot(t, np.where(values < 0, np.nan, values), lw=1.2, drawstyle="default" if name == "beat" else "steps-mid")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(label + ("\n(not given)" if (values < 0).all() else ""))
        ax.grid(alpha=0.3)
    axes[4].set_xlabel(f"time (s); controls at {grid}")
    axes[4].set_xlim(0, duration)
    fig.suptitle(title)
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path


def clip_audio(dataset: Path, clip_id: str) -> tuple[np.ndarray, int, str]:
    """(mono float32 audio, sample rate, the format it was decoded from) of one clip."""
    decoder = AudioDecoder.for_dataset(dataset)
    clip = find_clip(dataset, clip_id)
    fmt = next((f for f in AUDIBLE if f in clip), None)
    if fmt is None:
        raise InputError(f"{dataset}: stores none of {', '.join(AUDIBLE)}, so there is no audio to export")
    return decoder.decode(fmt, clip[fmt][None])[0], decoder.sample_rate, fmt


def export_wav(dataset: Path, clip_id: str, path: Path) -> tuple[Path, str]:
    """Write one clip's audio as 16-bit PCM WAV; returns the path and the format it was decoded from."""
    audio, rate, fmt = clip_audio(dataset, clip_id)
    return write_wav(Path(path), audio, rate), fmt


# --- internals --------------------------------------------------------------------------


def _records(dataset: Path) -> Iterator[tuple[str, bytearray]]:
    doc = read_dataset_json(dataset)
    for split in [s for s in SPLITS if doc["splits"].get(s, {}).get("count")]:
        for path in list_shards(dataset, split):
            for rec in iter_records(path):
                yield split, rec


def _control_grid(doc: dict[str, Any], clip: dict[str, Any]) -> tuple[str, float, float]:
    """The grid whose controls the plot shows (the top panel's format's), its frame rate and sampling offset."""
    grids = {g["name"]: (float(g["rate"]), 0.5 if g.get("offset") is None else float(g["offset"]))
             for g in doc["config"]["controls"]["grids"]}  # datasets built before grids had an offset: 0.5
    wanted = [doc.get("control_grids", {}).get(f) for f in SPECTRAL if f in clip]
    for name in wanted + sorted(grids):
        if name and f"velocity_{name}" in clip:
            return (name, *grids[name])
    raise InputError("the dataset stores no controls to plot")


def _spectral_panel(ax: Any, clip: dict[str, Any], doc: dict[str, Any], duration: float) -> None:
    rate = int(doc.get("sample_rate") or doc["config"]["render"]["sample_rate"])
    extent = (0, duration)
    if "cqt" in clip:
        cqt = clip["cqt"]
        mag = 20 * np.log10(np.hypot(cqt[0], cqt[1]) + 1e-6)
        cfg = doc["config"]["encode"]["cqt"]
        top = cfg["fmin"] * 2 ** ((cfg["n_bins"] - 1) / cfg["bins_per_octave"])
        _image(ax, mag, extent, (0, cqt.shape[1]), "CQT magnitude (dB)", "CQT bin")
        ax.set_ylabel(f"CQT bin\n({cfg['fmin']:.0f}-{top:.0f} Hz)")
    elif "audio" in clip:
        import librosa  # noqa: PLC0415  (librosa takes seconds to import; only an audio-only plot needs it)

        mel = librosa.feature.melspectrogram(y=clip["audio"].reshape(-1), sr=rate, n_fft=2048, hop_length=240,
                                             n_mels=128, fmax=rate / 2)
        _image(ax, librosa.power_to_db(mel, ref=1.0, top_db=80), extent, (0, mel.shape[0]),
               "mel spectrogram (dB)", "mel band")
    elif "encodec" in clip:
        _image(ax, clip["encodec"], extent, (0, clip["encodec"].shape[0]), "EnCodec latents", "channel")
    else:
        _image(ax, clip["disc"].astype(np.float32), extent, (0, clip["disc"].shape[0]), "EnCodec codes", "codebook")


def _image(ax: Any, data: np.ndarray, xs: tuple[float, float], ys: tuple[float, float], title: str,
           ylabel: str) -> None:
    ax.imshow(data, aspect="auto", origin="lower", cmap="magma", extent=(*xs, *ys), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
