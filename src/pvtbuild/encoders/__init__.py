"""Encoders from audio clips to the stored formats (docs/data-contract.md, "encode").

- `cqt`: complex CQT [2, 216, 1921] float32 (nnAudio's CQT1992v2, computed by `fftcqt`), and its inverse.
- `encodec`: EnCodec 24 kHz latents [128, 600] float32 and codes [16, 600] int16, and decoders.
- device choice, batch size and torch threads are in `pvtbuild.compute`, shared with qa and the trainer.

Heavy dependencies (nnAudio, encodec, librosa) load on first use.
"""
