"""VGGish embeddings for FAD (Kilgour et al. 2019), as Manté 2024 measured it, when the weights are here.

The network is torchvggish's port of Google's VGGish (state-dict keys `features.*`,
`embeddings.*`, file `vggish-10086976.pth`); pvtbuild never downloads it. Looked for at
`--vggish PATH`, else in torch hub's cache (`$TORCH_HOME/hub/checkpoints/`). As in the
FAD reference code, the embedding is the last 128-d layer *before* torchvggish's final
ReLU and without the PCA/quantisation post-processing.

Front end (Google's `vggish_input`, re-implemented in numpy): audio resampled to 16 kHz
(librosa's resampler where Google's uses resampy), magnitude STFT of 25 ms periodic-Hann
windows every 10 ms (512-point FFT), 64 HTK-mel bands 125-7500 Hz built in the mel domain,
log(mel + 0.01), cut into non-overlapping 0.96 s examples of 96 x 64. Each example is one
frame of the Fréchet distance: the frames of all clips are pooled (`train.frechet`), as
Kilgour et al. computed FAD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pvtbuild.errors import InputError

WEIGHTS_NAME = "vggish-10086976.pth"
SAMPLE_RATE = 16000
_WINDOW, _HOP, _FFT, _MELS, _EXAMPLE = 400, 160, 512, 64, 96


class VGGish(nn.Module):
    """VGG on [B, 1, 96, 64] log-mel examples -> [B, 128] embeddings (no final ReLU, no PCA)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Linear(4096, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TF's channels-last flattening order
        return self.embeddings(x)

    @torch.no_grad()
    def embed_frames(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """[frames, 128] float64: every 0.96 s example of every clip (`audio` [n, S]), clip after clip."""
        out = [np.zeros((0, 128))]
        for clip in np.asarray(audio, dtype=np.float32).reshape(len(audio), -1):
            examples = torch.from_numpy(log_mel_examples(clip, sample_rate))[:, None]
            out.append(self(examples).double().numpy())
        return np.concatenate(out)


def find_vggish_weights(path: Path | None = None) -> Path | None:
    """`path` (which must exist), else torch hub's cached copy, else None."""
    if path is not None:
        if not Path(path).is_file():
            raise InputError(f"{path}: VGGish weights not found (--vggish)")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME
    return cached if cached.is_file() else None


def load_vggish(path: Path) -> VGGish:
    model = VGGish()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("pproc")}, strict=False)
        missing = [k for k in model.state_dict() if k not in state]
    except Exception as e:
        raise InputError(f"{path}: not torchvggish's VGGish weights "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if missing:
        raise InputError(f"{path}: not torchvggish's VGGish weights (no {missing[0]})")
    return model.eval()


def log_mel_examples(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """[k, 96, 64] float32 log-mel examples of a mono clip, as Google's `vggish_input.waveform_to_examples`."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        import librosa  # noqa: PLC0415  (librosa takes seconds to import; only audio off 16 kHz needs it)

        x = librosa.resample(x, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    if len(x) < _WINDOW:
        x = np.pad(x, (0, _WINDOW - len(x)))
    n = 1 + (len(x) - _WINDOW) // _HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, _WINDOW)[::_HOP][:n]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_WINDOW) / _WINDOW)  # periodic Hann
    mag = np.abs(np.fft.rfft(frames * window, _FFT))
    mel = np.log(mag @ _mel_matrix() + 0.01)
    k = max(1, 1 + (len(mel) - _EXAMPLE) // _EXAMPLE)
    if len(mel) < _EXAMPLE:
        mel = np.pad(mel, ((0, _EXAMPLE - len(mel)), (0, 0)), constant_values=np.log(0.01))
    return np.stack([mel[i * _EXAMPLE:(i + 1) * _EXAMPLE] for i in range(k)]).astype(np.float32)


def _mel_matrix() -> np.ndarray:
    """[257, 64] HTK-mel triangles defined in the mel domain, DC bin zeroed (Google's mel_features)."""
    def mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    bins = mel(np.linspace(0.0, SAMPLE_RATE / 2, _FFT // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), _MELS + 2)
    w = np.empty((len(bins), _MELS))
    for i in range(_MELS):
        lo, mid, hi = edges[i:i + 3]
        w[:, i] = np.maximum(0.0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
    w[0] = 0.0
    return w


__all__ = ["VGGish", "find_vggish_weights", "load_vggish", "log_mel_examples", "WEIGHTS_NAME"]
