"""The conditional U-Net of Manté 2024 (§3.4, Fig. 3.7): ``F(x_in, noise_level, controls)``.

It knows nothing of EDM, DDPM or IADB: a formalism hands it the noisy input, one float per
example saying how noisy it is (``ln(sigma)/4``, a timestep, ``1000 alpha``: the embedding does
not care), and the batch's `Controls`; it returns a tensor shaped like the data (continuous
formats) or logits ``[B, C, K, *rest]`` (discrete codes ``[B, C, *rest]``, class axis 2: the output
convolution's ``[B, C * K, T]`` viewed, no transposed copy).

Layout, following Ronneberger et al. 2015 as Manté 2024 does:

- ``L = len(channel_mults)`` levels. The encoder has one `Block` per level (two convolutions
  with the noise-level modulation between them; GroupNorm with one group; SiLU), and max-pools
  time (and frequency, for 2D data) by 2 between levels.
- The decoder has one `Block` per level too: a middle block at the deepest level, then per
  shallower level a nearest-neighbour upsampling, the concatenated skip connection, and a block.
  Its widths are ``channels * up_channel_mults`` (UNetExpand, Manté 2024 §3.4.3: wider than the encoder's
  for discrete codes, so the 1x1 `OutConv` does not jump from 16 to 16 x 1024 channels).
- Local controls ``[B, C_local, T]`` go through a branch shaped like the encoder with
  ``control_channels`` channels at every level (time halved per level); its features are
  concatenated to each encoder block's input. 2D data broadcast them over frequency.
- Global controls ``[B, C_global]`` go through a chain of MLP blocks ending in a sigmoid (each
  one's output the next one's input, Manté 2024 §3.4.2); the last output joins the noise embedding in the
  vector every block's scale/shift (FiLM) is computed from.

Sizes not divisible by ``2**(L-1)`` (1921 CQT frames, 216 bins) are zero-padded on the right
and the output cropped back.

Time may have any length (channels and CQT bins may not): every layer is a convolution, a
pooling or an upsampling in time, so a network trained on random crops (`data.crop_seconds`)
samples whole clips. That assumes what a convolution assumes: that a frame depends on its
neighbours alone, within the receptive field (each 3-tap convolution at level i widens it by
``2**(i+1)`` frames), never on where it sits in the clip; and that the one-group GroupNorm statistics
of a crop are those of a whole clip, which holds for crops long enough to hold a few notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvtbuild.config import require
from pvtbuild.errors import ConfigError
from pvtbuild.train.guidance import NULL_VALUE, Controls
from pvtbuild.train.spec import DataSpec


@dataclass(frozen=True)
class UNetConfig:
    """The backbone's shape; the YAML ``model:`` section of a training config."""

    channels: int = 32  # base width: level i of the encoder has channels * channel_mults[i]
    channel_mults: tuple[int, ...] = (1, 2, 4)  # one per level; time (and frequency) halved per level
    up_channel_mults: tuple[int, ...] | None = None  # decoder's, one per level (UNetExpand); None: the encoder's
    control_channels: int = 128  # width of the local-control branch at every level (Manté 2024: 128)
    global_mlp: tuple[int, ...] = ()  # hidden sizes of the chained global-control MLP blocks (FiLM)
    code_embed_dim: int = 32  # per-codebook embedding width of discrete inputs
    noise_embed_dim: int = 64  # sinusoidal embedding of the noise level; its MLP is 4x wider
    # 2-D data: learned per-bin channels (of the bin and the local controls) joined to the input
    freq_embed_channels: int = 0
    dropout: float = 0.0  # inside every block, after the modulation

    def check(self, key: str) -> None:
        # bounded so that a typo (channels: 51200) is one line here, not an allocator traceback at build
        require(1 <= self.channels <= 4096, f"{key}.channels", f"must be within 1..4096, got {self.channels}")
        require(len(self.channel_mults) >= 1 and all(m >= 1 for m in self.channel_mults), f"{key}.channel_mults",
                 f"must be a non-empty list of integers >= 1, got {list(self.channel_mults)}")
        if self.up_channel_mults is not None:
            require(len(self.up_channel_mults) == len(self.channel_mults)
                    and all(m >= 1 for m in self.up_channel_mults),
                     f"{key}.up_channel_mults", f"must have one integer >= 1 per level ({len(self.channel_mults)}), "
                     f"got {list(self.up_channel_mults)}")
        require(1 <= self.control_channels <= 4096, f"{key}.control_channels",
                 f"must be within 1..4096, got {self.control_channels}")
        require(all(h >= 1 for h in self.global_mlp), f"{key}.global_mlp",
                 f"must be a list of integers >= 1, got {list(self.global_mlp)}")
        require(self.code_embed_dim >= 1, f"{key}.code_embed_dim", f"must be >= 1, got {self.code_embed_dim}")
        require(self.noise_embed_dim >= 2 and self.noise_embed_dim % 2 == 0, f"{key}.noise_embed_dim",
                 f"must be an even integer >= 2, got {self.noise_embed_dim}")
        require(self.freq_embed_channels >= 0, f"{key}.freq_embed_channels",
                 f"must be >= 0, got {self.freq_embed_channels}")
        require(0 <= self.dropout < 1, f"{key}.dropout", f"must be within [0, 1), got {self.dropout}")

    @property
    def down_widths(self) -> tuple[int, ...]:
        return tuple(self.channels * m for m in self.channel_mults)

    @property
    def up_widths(self) -> tuple[int, ...]:
        return tuple(self.channels * m for m in (self.up_channel_mults or self.channel_mults))


def count_parameters(module: nn.Module) -> int:
    """Learnable parameters (works on the meta device: only shapes are read)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of the noise level (frequencies 1 .. 1e-4, as DDPM's and EDM's
    positional embeddings), then a 2-layer MLP. Sinusoids make both ``ln(sigma)/4`` in [-2, 2]
    and timesteps in [0, 1000] distinguishable without knowing which one comes."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, noise_level: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(1e4) * torch.arange(half, device=noise_level.device, dtype=torch.float32) / half)
        angles = noise_level.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class GlobalBranch(nn.Module):
    """Global controls through chained MLP blocks, each ``Linear, SiLU, Linear, Sigmoid`` (Manté
    2024 §3.4.2: the sigmoid makes each output an activation mechanism for channels); the last block's
    output feeds every U-Net block's FiLM."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        blocks, prev = [], in_dim
        for h in hidden:
            blocks.append(nn.Sequential(nn.Linear(prev, h), nn.SiLU(), nn.Linear(h, h), nn.Sigmoid()))
            prev = h
        self.blocks = nn.Sequential(*blocks)

    def forward(self, glob: Tensor) -> Tensor:
        return self.blocks(glob)


class FrequencyEmbedding(nn.Module):
    """Learned features of each frequency bin and of the local controls there, ``[B, K, F, T]``.

    A CQT bin is a pitch: a network that must put a note's harmonics at the bins its chroma control
    names has to know which bin it is at. Convolutions are shift-equivariant along frequency and the
    controls are broadcast over it, so without this only the zero padding near the edges says where a
    feature sits. Here feature k at bin f and frame t is ``b[k, f] + sum_c W[k, c, f] control[c, t]``:
    a table per bin (like a transformer's learned positions) plus a 1x1 projection of the raw local
    controls whose weights differ per bin. "Chroma k lights the bins of pitch class k and their
    harmonics" is then linear in the one-hot chroma, where the broadcast controls make it an AND the
    convolutions must discover. It assumes a fixed frequency axis, which a format's data always has
    (random crops cut time only).
    """

    def __init__(self, channels: int, bins: int, control_channels: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(channels, bins))
        self.weight = nn.Parameter(torch.randn(channels, control_channels, bins) / math.sqrt(control_channels)) \
            if control_channels else None

    def forward(self, controls: Tensor | None, batch: int, length: int) -> Tensor:
        """`controls`: the raw local controls ``[B, C_local, T]`` (None for a model without them)."""
        out = self.table[None, :, :, None].expand(batch, -1, -1, length)
        if self.weight is None or controls is None:
            return out
        return out + torch.einsum("kcf,bct->bkft", self.weight, controls.float())


class Block(nn.Module):
    """Ronneberger's double convolution with a noise-level modulation between the two:
    conv, GroupNorm(1), ``h * (1 + scale) + shift``, SiLU, dropout, conv, GroupNorm(1), SiLU.
    Without `cond_dim` (the control branch, which does not depend on the noise) no modulation."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, cond_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv1 = conv(in_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(1, out_ch)
        self.mod = nn.Linear(cond_dim, 2 * out_ch) if cond_dim else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(1, out_ch)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.norm1(self.conv1(x))
        if self.mod is not None:
            assert cond is not None
            scale, shift = self.mod(F.silu(cond)).unsqueeze(-1).chunk(2, dim=1)
            if h.dim() == 4:
                scale, shift = scale.unsqueeze(-1), shift.unsqueeze(-1)
            h = h * (1 + scale) + shift
        h = self.dropout(F.silu(h))
        return F.silu(self.norm2(self.conv2(h)))


class UNet(nn.Module):
    """The conditional denoiser backbone; build it with `build_unet`."""

    def __init__(self, cfg: UNetConfig, spec: DataSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        # (C,) data (toys) are treated as a length-1 sequence.
        self.dims = 2 if len(spec.shape) == 3 else 1
        down, up = cfg.down_widths, cfg.up_widths
        self.levels = len(down)
        channels = spec.shape[0]
        self.num_classes = spec.num_classes

        if spec.discrete:
            # One table of C * K rows with per-codebook offsets = one embedding per codebook.
            self.embed = nn.Embedding(channels * spec.num_classes, cfg.code_embed_dim)
            self.register_buffer("code_offsets", torch.arange(channels) * spec.num_classes, persistent=False)
            in_ch, out_ch = channels * cfg.code_embed_dim, channels * spec.num_classes
        else:
            self.embed = None
            in_ch, out_ch = channels, channels

        # Learned per-bin features: convolutions are blind to where on the frequency axis they are,
        # and broadcast controls carry no frequency either, so without these only the zero padding at
        # the edges tells a bin's pitch (FrequencyEmbedding).
        self.freq_embed = FrequencyEmbedding(cfg.freq_embed_channels, spec.shape[1], spec.local_channels) \
            if self.dims == 2 and cfg.freq_embed_channels else None
        if self.freq_embed is not None:
            in_ch += cfg.freq_embed_channels

        cond_dim = 4 * cfg.noise_embed_dim
        self.noise_embed = NoiseEmbedding(cfg.noise_embed_dim, cond_dim)
        self.glob = GlobalBranch(spec.global_channels, cfg.global_mlp) if spec.global_channels else None
        if self.glob is not None:
            cond_dim += cfg.global_mlp[-1]

        cc = cfg.control_channels if spec.local_channels else 0
        self.control = nn.ModuleList(
            [Block(1, spec.local_channels if i == 0 else cc, cc) for i in range(self.levels)]) if cc else None

        self.down = nn.ModuleList()
        prev = in_ch
        for w in down:
            self.down.append(Block(self.dims, prev + cc, w, cond_dim, cfg.dropout))
            prev = w
        # Decoder, deepest level first: the middle block, then upsample + skip + block per level.
        self.up = nn.ModuleList([Block(self.dims, down[-1], up[-1], cond_dim, cfg.dropout)])
        for i in reversed(range(self.levels - 1)):
            self.up.append(Block(self.dims, up[i + 1] + down[i], up[i], cond_dim, cfg.dropout))
        self.out = (nn.Conv1d if self.dims == 1 else nn.Conv2d)(up[0], out_ch, 1)  # OutConv

    def forward(self, x: Tensor, noise_level: Tensor, controls: Controls) -> Tensor:
        """`x`: ``[B, *shape]`` floats (int64 classes for discrete data); `noise_level`: ``[B]``.
        Returns ``[B, *shape]`` (continuous) or logits ``[B, C, K, *rest]`` (discrete)."""
        spec = self.spec
        self._check_shape(tuple(x.shape[1:]))
        flat = len(spec.shape) == 1
        if flat:
            x = x.unsqueeze(-1)
        batch, length = x.shape[0], x.shape[-1]

        if self.embed is not None:  # [B, C, T] classes -> [B, C * E, T]
            e = self.embed(x.long() + self.code_offsets.view(1, -1, 1))  # [B, C, T, E]
            h = e.permute(0, 1, 3, 2).reshape(batch, -1, length)
        else:
            h = x
        raw_local = self._local_input(controls, batch, length, x.device)
        if self.freq_embed is not None:
            h = torch.cat([h, self.freq_embed(raw_local, batch, length).to(h.dtype)], dim=1)
        # Pad every spatial axis to a multiple of 2 ** (L - 1), crop at the end.
        mult = 2 ** (self.levels - 1)
        sizes = h.shape[2:]
        pads = [(-s) % mult for s in sizes]
        if any(pads):
            h = F.pad(h, [p for pad in reversed(pads) for p in (0, pad)])
        if self.dims == 2:
            h = h.contiguous(memory_format=torch.channels_last)

        cond = self.noise_embed(noise_level)
        if self.glob is not None:
            glob = controls.glob
            if glob is None:
                glob = torch.full((batch, spec.global_channels), NULL_VALUE, device=x.device)
            cond = torch.cat([cond, self.glob(glob.float())], dim=1)
        elif controls.glob is not None:
            raise ValueError("backbone: global controls given to a model built without them")

        local = self._local_features(raw_local, pads[-1])

        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.max_pool1d(h, 2) if self.dims == 1 else F.max_pool2d(h, 2)
            if local is not None:
                c = local[i]
                if self.dims == 2:  # controls have no frequency axis: broadcast over this level's F
                    c = c.unsqueeze(2).expand(-1, -1, h.shape[2], -1)
                h = torch.cat([h, c.to(h.dtype)], dim=1)
            h = block(h, cond)
            skips.append(h)

        h = self.up[0](skips.pop(), cond)
        for block in self.up[1:]:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
        out = self.out(h)

        out = out[(..., *[slice(0, s) for s in sizes])]  # crop the padding
        if self.embed is not None:  # [B, C * K, T] -> [B, C, K, T], a view
            out = out.reshape(batch, spec.shape[0], self.num_classes, length)
        return out.squeeze(-1) if flat else out

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        """Examples must be shaped like the data's, except in time (the last axis of [C, T] and [C, F, T]):
        the network is convolutional there, so a model trained on crops samples whole clips."""
        want = self.spec.shape
        fixed = want[:-1] if len(want) >= 2 else want
        if shape[:len(fixed)] != fixed or len(shape) != len(want):
            shown = [*fixed, "T"] if len(want) >= 2 else list(want)
            raise ValueError(f"backbone: expected examples shaped {shown}, got {list(shape)}")

    def _local_input(self, controls: Controls, batch: int, length: int, device: torch.device) -> Tensor | None:
        """The local controls ``[B, C_local, T]`` (all null for an unconditional call), checked; None when
        the model reads none."""
        if self.control is None:
            if controls.local is not None:
                raise ValueError("backbone: local controls given to a model built without them")
            return None
        c = controls.local
        if c is None:  # an unconditional call: every control at the null value
            c = torch.full((batch, self.spec.local_channels, length), NULL_VALUE, device=device)
        if tuple(c.shape[1:]) != (self.spec.local_channels, length):
            raise ValueError(f"backbone: expected local controls shaped {[self.spec.local_channels, length]} "
                             f"(the data's time grid), got {list(c.shape[1:])}")
        return c

    def _local_features(self, c: Tensor | None, pad: int) -> list[Tensor] | None:
        """The control branch's features at every level, ``[B, control_channels, T / 2**i]``."""
        if c is None:
            return None
        c = F.pad(c.float(), (0, pad))
        feats = []
        for i, block in enumerate(self.control):
            if i > 0:
                c = F.max_pool1d(c, 2)
            c = block(c)
            feats.append(c)
        return feats


def build_unet(cfg: UNetConfig, spec: DataSpec, key: str = "model") -> UNet:
    """The backbone for data of `spec` (1D convolutions for [C, T], 2D for [C, F, T]).

    2D networks are stored channels-last (and `forward` feeds them channels-last activations):
    convolutions with few channels on a large [F, T] grid run about 1.4x faster on CPU, and
    cuDNN's bf16 kernels prefer it too. Raises `ConfigError` naming the key when the config cannot
    serve the data."""
    cfg.check(key)
    require(1 <= len(spec.shape) <= 3, key,
            f"a U-Net models [C], [C, T] or [C, F, T] data, got shape {list(spec.shape)}")
    if cfg.freq_embed_channels and len(spec.shape) != 3:
        raise ConfigError(f"{key}.freq_embed_channels: only 2-D data (cqt [C, F, T]) has a frequency axis; "
                          f"this data is shaped {list(spec.shape)}")
    if spec.global_channels and not cfg.global_mlp:
        raise ConfigError(f"{key}.global_mlp: the data carry {spec.global_channels} global control channels; "
                          "give the hidden sizes of the MLP blocks that read them")
    net = UNet(cfg, spec)
    return net.to(memory_format=torch.channels_last) if net.dims == 2 else net
