"""Device choice and thread control, shared by the encoders, the qa analysis and the trainer.

GPU support is deliberately small: `auto` takes CUDA when torch sees it, and
nothing else here differs between devices except the default batch size and
`deterministic_cuda`. The thread count of the encoders is fixed (`ENCODE_THREADS`),
because it changes their float results.

What still differs between devices: CPU and CUDA round differently (latents and CQT
differ in the last bits; EnCodec codes almost never), so each encode row records the
device that computed it. On CUDA, with TF32 off and deterministic algorithms, a rerun
on the same GPU model, torch and batch gives the same bytes; another GPU model or
batch size may not (cuDNN picks its convolution algorithms per shape and GPU).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from pvtbuild.errors import ConfigError

# Measured on a 2-core CPU (torch 2.13, 8 s clips at 24 kHz, 2 threads): the EnCodec
# encoder costs 0.28 s per clip at batch 1 but 0.5 s per clip at batch 2 or 4, so on
# CPU a batch of one is fastest. On a GPU a batch amortises kernel launches.
CPU_BATCH_SIZE = 1
CUDA_BATCH_SIZE = 32

# The encode stage runs its models with this many intra-op threads, whatever the
# executor's PVTBUILD_THREADS. oneDNN's convolutions sum in an order that depends on
# the thread count: measured with torch 2.13 on a 2-core EPYC, EnCodec latents at 1
# thread differ from those at 2..16 threads by ~2e-6, and 32 threads differ again
# (codes did not change; the frequency-domain CQT's complex products also round
# differently at thread-chunk edges). A fixed count is what keeps the stage's
# outputs byte-identical whatever --jobs. Parallelism comes from the workers
# (`--jobs`, one per core), as for render, whose FluidSynth is single-threaded anyway.
ENCODE_THREADS = 1


def pick_device(spec: str = "auto", key: str = "encode.device") -> torch.device:
    """Turn a device option (`auto`, `cpu`, `cuda`, `cuda:N`) into a torch device.

    Args:
        spec: `auto` picks CUDA when torch sees a GPU, else the CPU.
        key: the config key or option the errors name.

    Raises:
        ConfigError: CUDA asked for but absent, or an unknown spec.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = spec.partition(":")[2]
        if index and not index.isdigit():
            raise ConfigError(f"{key}: {spec!r} is not cuda:N with N a GPU index")
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {spec} asked for, but torch sees no CUDA GPU (use auto or cpu)")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {spec} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
        return torch.device(spec)
    raise ConfigError(f"{key}: must be auto, cpu or cuda[:N], got {spec!r}")


def deterministic_cuda() -> None:
    """Make CUDA results repeatable in this process: full fp32 matmuls and convolutions
    (no TF32, whose 10-bit mantissa changes latents far beyond rounding), no cuDNN
    autotuning, and torch's deterministic algorithms where it has them (a warning where not).

    Process-wide, and to be called before the first CUDA kernel (cuBLAS reads its
    workspace setting when it starts); pick_device's callers that run on CUDA do.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def default_batch_size(device: torch.device) -> int:
    """Clips per encoder call when `encode.batch_size` is 0: 1 on CPU, 32 on CUDA."""
    return CUDA_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


_THREADS_LOCK = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextmanager
def encode_threads() -> Iterator[None]:
    """Run the block with ENCODE_THREADS torch intra-op threads, then restore the count.

    torch's count is per process: the first block to enter sets it and the last to
    leave restores it, so tasks running side by side in one worker never see it change.
    """
    global _threads_users, _threads_before
    with _THREADS_LOCK:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
            set_threads(ENCODE_THREADS)
        _threads_users += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_before)


def set_threads(n: int) -> None:
    """Use `n` intra-op threads for torch in this process (one worker of several shares the cores)."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
