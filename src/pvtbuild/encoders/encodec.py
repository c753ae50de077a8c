"""EnCodec 24 kHz: continuous latents (`encodec` format) and discrete codes (`disc` format).

- latents: [128, 600] float32 for 8 s, the encoder output before the quantizer.
- codes: [16, 600] int16 at 12 kbps (16 codebooks of 1024 entries), values 0..1023.

The 24 kHz model neither splits audio into segments nor normalises its loudness
(`segment=None`, `normalize=False`), so `model.encode` is exactly one encoder pass
followed by the residual quantizer; `EncodecEncoder.encode_both` runs those two
steps itself so both formats come from one encoder pass.

Weights: the pretrained checkpoint `encodec_24khz-d7cc33bc.th` from torch hub's
cache (or a path given), or, only when asked for, the same architecture with
random weights drawn from the seed (for tests and dry runs; its audio is noise).

torchaudio: `encodec` imports it at the top of `encodec/utils.py` for its audio I/O
helpers (`convert_audio`, `save_audio`), which the model never uses; the model
needs only three pure-torch helpers from that file. torchaudio's PyPI wheels are
CUDA builds that fail on CPU-only machines, so pvtbuild does not install it and
`import_encodec` below imports encodec with a stand-in in its place
(`pvtbuild.music.torchaudio_free`, which torchcrepe's import shares).
"""

from __future__ import annotations

import threading
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pvtbuild.engine.manifest import sha256_file
from pvtbuild.errors import InputError
from pvtbuild.music.torchaudio_free import import_without_torchaudio

if TYPE_CHECKING:
    from encodec import EncodecModel

CHECKPOINT_NAME = "encodec_24khz-d7cc33bc.th"
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + CHECKPOINT_NAME
SAMPLE_RATE = 24000
N_CODES = 1024  # entries per codebook
# Random weights: each codebook entry is a random direction of this length. Equal
# lengths make the nearest entry the best-aligned one, so codes spread over 0..1023
# whatever the input level; the value is of the order of the random encoder's
# output per frame (10..40 for clips at RMS 0.03..0.3).
RANDOM_CODEBOOK_RADIUS = 10.0

_CACHE: dict[tuple, tuple[Any, dict[str, Any]]] = {}
_LOCK = threading.Lock()


# --- torchaudio stand-in ----------------------------------------------------------------


def import_encodec() -> types.ModuleType:
    """`import encodec`, with a `TorchaudioStandIn` in place of torchaudio while it loads (see torchaudio_free)."""
    return import_without_torchaudio("encodec")


# --- loading ----------------------------------------------------------------------------


def hub_checkpoint_path() -> Path:
    """Where torch hub keeps the pretrained checkpoint: `${TORCH_HOME:-~/.cache/torch}/hub/checkpoints/`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_NAME


def resolve_checkpoint(checkpoint: str | None) -> Path:
    """The pretrained checkpoint file: `checkpoint` if given, else torch hub's cache; InputError naming it if absent."""
    untrained = "--random-weights for an untrained model (tests, dry runs)"
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise InputError(f"EnCodec checkpoint {path} not found (--encodec-checkpoint / encode.encodec.checkpoint): "
                             f"give the path of {CHECKPOINT_NAME}, or pass {untrained}")
        return path
    path = hub_checkpoint_path()
    if not path.is_file():
        raise InputError(f"EnCodec checkpoint not found: download {CHECKPOINT_URL} to {path} "
                         f"(torch hub's cache, $TORCH_HOME/hub/checkpoints), or pass --encodec-checkpoint PATH, "
                         f"or {untrained}")
    return path


def load_encodec(*, checkpoint: str | None, random_weights: bool, seed: int, bandwidth: float,
                 device: torch.device | str) -> tuple[EncodecModel, dict[str, Any]]:
    """The EnCodec 24 kHz model in eval mode at `bandwidth`, cached per process.

    Args:
        checkpoint: a state-dict file; None: torch hub's cache (`hub_checkpoint_path()`).
        random_weights: build the untrained architecture from `seed` instead (`checkpoint` is then ignored).
        seed: for random weights only.
        bandwidth: kbps, one of 1.5, 3, 6, 12, 24 (12 -> 16 codebooks).
        device: where the model lives.

    Returns:
        (model, info) with info = {"weights": "pretrained"|"random", "checkpoint": path or None,
        "sha256": of the checkpoint file or None, "bandwidth": bandwidth}.

    Raises:
        InputError: no checkpoint file and no random weights asked for, or an unusable file.
    """
    device = torch.device(device)
    path = None if random_weights else resolve_checkpoint(checkpoint)
    key = ("random", seed) if random_weights else ("pretrained", str(path))
    key += (float(bandwidth), str(device))
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached[0], dict(cached[1])

    if random_weights:
        model = build_random_model(seed)
        info = {"weights": "random", "checkpoint": None, "sha256": None}
    else:
        model, sha = _load_pretrained(path)
        info = {"weights": "pretrained", "checkpoint": str(path), "sha256": sha}
    info["bandwidth"] = float(bandwidth)
    model.set_target_bandwidth(float(bandwidth))
    model = model.to(device).eval()
    with _LOCK:
        cached = _CACHE.setdefault(key, (model, info))  # another thread may have won the race
    return cached[0], dict(cached[1])


def clear_model_cache() -> None:
    """Forget the models loaded in this process."""
    with _LOCK:
        _CACHE.clear()


def build_random_model(seed: int) -> EncodecModel:
    """The 24 kHz architecture with weights drawn from `seed` only (global RNG state untouched).

    torch's default init makes this encoder nearly input-blind (biases dominate, so
    latents barely depend on the audio and codes take a handful of values), so conv
    weights are redrawn He-normal with zero biases; the LSTMs keep torch's default
    init. With pretrained=False the codebooks are all zeros (every code 0): each
    entry becomes a random direction of length RANDOM_CODEBOOK_RADIUS, marked inited.
    """
    model = _new_model(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                _he_init_(module, gen)
        for layer in model.quantizer.vq.layers:
            book = layer._codebook
            embed = torch.randn(book.embed.shape, generator=gen)
            embed = embed / embed.norm(dim=1, keepdim=True) * RANDOM_CODEBOOK_RADIUS
            book.embed.copy_(embed)
            book.embed_avg.copy_(embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
    return model.eval()


# --- encoding ---------------------------------------------------------------------------


class EncodecEncoder:
    """Latents and codes of batches of 24 kHz mono clips with one loaded model.

    Args:
        model: from `load_encodec`.
        info: its info dict, kept for manifests.
    """

    def __init__(self, model: EncodecModel, info: dict[str, Any] | None = None):
        if model.sample_rate != SAMPLE_RATE or model.segment is not None or model.normalize:
            raise ValueError("EncodecEncoder needs the 24 kHz model (no segments, no normalisation)")
        if model.bandwidth is None:
            raise ValueError("set the model's target bandwidth first (load_encodec does)")
        self.model = model
        self.info = dict(info or {})
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, *, checkpoint: str | None, random_weights: bool, seed: int, bandwidth: float,
             device: torch.device | str) -> EncodecEncoder:
        """`load_encodec` and wrap the model."""
        model, info = load_encodec(checkpoint=checkpoint, random_weights=random_weights, seed=seed,
                                   bandwidth=bandwidth, device=device)
        return cls(model, info)

    @property
    def n_codebooks(self) -> int:
        return self.model.quantizer.get_num_quantizers_for_bandwidth(self.model.frame_rate, self.model.bandwidth)

    def latents(self, batch: np.ndarray) -> np.ndarray:
        """[B, N] float32 audio -> [B, 128, ceil(N / 320)] float32 encoder output (before the quantizer)."""
        with torch.inference_mode():
            return _to_numpy(self._encoder(batch), np.float32)

    def codes(self, batch: np.ndarray) -> np.ndarray:
        """[B, N] float32 audio -> [B, K, ceil(N / 320)] int16 codes (K = 16 at 12 kbps), as `model.encode`."""
        with torch.inference_mode():
            return _to_numpy(self._quantize(self._encoder(batch)), np.int16)

    def encode_both(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(latents, codes) of the batch from a single encoder pass."""
        with torch.inference_mode():
            emb = self._encoder(batch)
            return _to_numpy(emb, np.float32), _to_numpy(self._quantize(emb), np.int16)

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Audio from latents ([B, 128, T] -> [B, 320 T] float32; [128, T] -> [320 T]), bypassing the quantizer."""
        emb, single = _batched(np.asarray(latents, dtype=np.float32), 3)
        with torch.inference_mode():
            audio = self.model.decoder(torch.from_numpy(emb).to(self.device))
            return _unbatch(_to_numpy(audio[:, 0], np.float32), single)

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Audio from codes ([B, K, T] -> [B, 320 T] float32; [K, T] -> [320 T])."""
        codes, single = _batched(np.asarray(codes), 3)
        if codes.size and (codes.min() < 0 or codes.max() >= N_CODES):
            raise ValueError(f"codes must be within 0..{N_CODES - 1}, got {codes.min()}..{codes.max()}")
        with torch.inference_mode():
            frame = torch.from_numpy(codes.astype(np.int64)).to(self.device)
            audio = self.model.decode([(frame, None)])
            return _unbatch(_to_numpy(audio[:, 0], np.float32), single)

    def _encoder(self, batch: np.ndarray) -> torch.Tensor:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 2:
            raise ValueError(f"expected a batch of mono clips [B, N], got shape {list(batch.shape)}")
        x = torch.from_numpy(batch).to(self.device)[:, None, :]  # [B, 1, N]
        return self.model.encoder(x)

    def _quantize(self, emb: torch.Tensor) -> torch.Tensor:
        # what EncodecModel._encode_frame does after its encoder pass
        codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.model.bandwidth)
        return codes.transpose(0, 1)  # [K, B, T] -> [B, K, T]


# --- internals --------------------------------------------------------------------------


def _new_model(seed: int) -> EncodecModel:
    """The untrained 24 kHz architecture, its default init drawn from `seed` without touching the global RNG."""
    encodec = import_encodec()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # encodec uses torch.nn.utils.weight_norm, deprecated in favour of parametrizations
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        torch.manual_seed(seed)
        return encodec.EncodecModel.encodec_model_24khz(pretrained=False)


def _load_pretrained(path: Path) -> tuple[EncodecModel, str]:
    sha = sha256_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated download, not a torch file, not weights only
        raise InputError(f"EnCodec checkpoint {path}: not a readable torch state dict "
                         f"({type(e).__name__}: {_one_line(e)})") from None
    model = _new_model(0)  # its initial weights are all replaced
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise InputError(f"EnCodec checkpoint {path}: not the 24 kHz EnCodec model's weights "
                         f"({_one_line(e)})") from None
    return model.eval(), sha


def _one_line(e: Exception, limit: int = 240) -> str:
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _he_init_(conv: torch.nn.Module, gen: torch.Generator) -> None:
    """He-normal weights (fan-in per output sample), zero bias; weight norm's g set so weight == v."""
    weight = conv.weight_v if hasattr(conv, "weight_v") else conv.weight
    kernel = weight.shape[2]
    if isinstance(conv, torch.nn.ConvTranspose1d):  # weight [in, out, k]; each output sees in * k / stride taps
        fan_in = max(1, weight.shape[0] * kernel // conv.stride[0])
    else:  # weight [out, in, k]
        fan_in = weight.shape[1] * kernel
    weight.copy_(torch.randn(weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    if hasattr(conv, "weight_g"):
        conv.weight_g.copy_(torch.norm_except_dim(weight, 2, 0))
    if conv.bias is not None:
        conv.bias.zero_()


def _to_numpy(t: torch.Tensor, dtype: type) -> np.ndarray:
    return t.to("cpu").numpy().astype(dtype, copy=False)


def _batched(a: np.ndarray, ndim: int) -> tuple[np.ndarray, bool]:
    if a.ndim == ndim - 1:
        return a[None], True
    if a.ndim != ndim:
        raise ValueError(f"expected {ndim - 1} or {ndim} dimensions, got shape {list(a.shape)}")
    return a, False


def _unbatch(a: np.ndarray, single: bool) -> np.ndarray:
    return a[0] if single else a
