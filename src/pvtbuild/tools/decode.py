"""Audio back from any stored format, with the encoder a dataset records (inspect, sample, evaluate).

One decoder per dataset: `AudioDecoder.for_dataset(dataset)` reads `dataset.json`
and turns arrays of each format into 24 kHz mono audio of exactly the clip's length:

| format    | array                  | decoded by                                               |
| --------- | ---------------------- | -------------------------------------------------------- |
| `audio`   | [B, 1, N] or [B, N]    | itself                                                   |
| `cqt`     | [B, 2, F, T]           | `encode.cqt.inverse` with the dataset's CQT parameters   |
| `encodec` | [B, 128, T] latents    | EnCodec's decoder (the quantizer bypassed)               |
| `disc`    | [B, K, T] codes        | EnCodec's quantizer (codes -> embeddings) + decoder      |

EnCodec's weights are those `dataset.json` records: random weights from their
seed (the audio is noise; `weights_label` says so loudly), or the pretrained
checkpoint, which must be on this machine and have the recorded sha256.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pvtbuild.config import CqtConfig
from pvtbuild.dataset import read_dataset_json
from pvtbuild.engine.manifest import atomic_write
from pvtbuild.errors import InputError

DECODABLE = ("audio", "cqt", "encodec", "disc")


@dataclass
class AudioDecoder:
    """Decodes a dataset's formats to audio; EnCodec is loaded on first use."""

    dataset: Path
    doc: dict[str, Any]
    device: str = "cpu"
    _codec: Any = field(default=None, repr=False)

    @classmethod
    def for_dataset(cls, dataset: Path, device: str = "cpu") -> "AudioDecoder":
        return cls(Path(dataset), read_dataset_json(dataset), str(device))

    @property
    def sample_rate(self) -> int:
        return int(self.doc.get("sample_rate") or self.doc["config"]["render"]["sample_rate"])

    @property
    def clip_samples(self) -> int:
        return int(round(float(self.doc["config"]["select"]["clip_seconds"]) * self.sample_rate))

    @property
    def weights_label(self) -> str:
        """What made the EnCodec formats, in words; random weights are said loudly."""
        enc = self.doc.get("encoder") or {}
        if enc.get("weights") == "random":
            return (f"EnCodec with RANDOM weights (seed {enc.get('seed', 0)}): decoded audio is noise-like, "
                    f"good for testing the pipeline, not for listening")
        if enc.get("weights") == "pretrained":
            return f"pretrained EnCodec 24 kHz (sha256 {str(enc.get('checkpoint_sha256'))[:12]}...)"
        return "no EnCodec weights recorded"

    def label(self, fmt: str) -> str:
        """What turns `fmt` arrays into audio, in words (sample.json, evaluate): a CQT model's audio comes from
        the CQT inverse whatever EnCodec weights the dataset records."""
        if fmt == "audio":
            return "none: the stored audio"
        if fmt == "cqt":
            c = self.cqt_config()
            return (f"the CQT inverse (encode.cqt.inverse: {c.n_bins} bins, {c.bins_per_octave} per octave from "
                    f"{c.fmin:g} Hz, hop {c.hop_length})")
        return self.weights_label

    def cqt_config(self) -> Any:
        """The `CqtConfig` the dataset's CQT was made with."""
        return CqtConfig(**(self.doc.get("encoder") or {}).get("cqt", self.doc["config"]["encode"]["cqt"]))

    def decode(self, fmt: str, batch: np.ndarray) -> np.ndarray:
        """[B, N] float32 audio (N = the clip's samples) from a batch of one format's arrays."""
        if fmt not in DECODABLE:
            raise InputError(f"{self.dataset}: cannot decode format {fmt!r} to audio "
                             f"(decodable: {', '.join(DECODABLE)})")
        batch = np.asarray(batch)
        n = self.clip_samples
        if fmt == "audio":
            audio = batch.reshape(batch.shape[0], -1).astype(np.float32)
        elif fmt == "cqt":
            from pvtbuild.encoders.cqt import inverse  # noqa: PLC0415  (imports torch, ~1.5 s: only the CQT needs it)

            audio = inverse(batch, self.sample_rate, self.cqt_config(), n, device=self.device)
        elif fmt == "encodec":
            audio = self.codec.decode_latents(batch.astype(np.float32))
        else:
            audio = self.codec.decode_codes(batch)
        audio = np.asarray(audio, dtype=np.float32).reshape(batch.shape[0], -1)
        if audio.shape[1] != n:  # EnCodec returns 320 * T samples: the clip, or up to 319 more
            audio = np.pad(audio[:, :n], ((0, 0), (0, max(0, n - audio.shape[1]))))
        return audio

    @property
    def codec(self) -> Any:
        if self._codec is None:
            self._codec = _encodec_decoder(self.dataset, self.doc, self.device)
        return self._codec


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Mono audio as 16-bit PCM WAV (clipped to [-1, 1]), written atomically."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767).round().astype("<i2")
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        with wave.open(fh, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(float32 mono audio in [-1, 1], sample rate) of a 16-bit PCM WAV as `write_wav` writes."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise InputError(f"{path}: not a 16-bit mono WAV")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / 32767, w.getframerate()


def _encodec_decoder(dataset: Path, doc: dict[str, Any], device: str) -> Any:
    from pvtbuild.encoders.encodec import EncodecEncoder  # noqa: PLC0415  (imports torch: only EnCodec formats need it)

    enc = doc.get("encoder") or {}
    if enc.get("weights") not in ("random", "pretrained"):
        raise InputError(f"{dataset}/dataset.json: does not say which EnCodec weights made the data")
    checkpoint = enc.get("checkpoint")
    if checkpoint and not Path(checkpoint).is_file():
        checkpoint = None  # built elsewhere: look in this machine's torch hub cache
    codec = EncodecEncoder.load(checkpoint=checkpoint, random_weights=enc["weights"] == "random",
                                seed=int(enc.get("seed", 0)), bandwidth=float(enc.get("bandwidth", 12.0)),
                                device=device)
    if enc["weights"] == "pretrained" and codec.info.get("sha256") != enc.get("checkpoint_sha256"):
        raise InputError(f"EnCodec checkpoint {codec.info.get('checkpoint')}: not the one that made {dataset} "
                         f"(sha256 {str(codec.info.get('sha256'))[:12]}... "
                         f"vs {str(enc.get('checkpoint_sha256'))[:12]}...)")
    return codec


__all__ = ["AudioDecoder", "DECODABLE", "write_wav", "read_wav"]
