"""pvtbuild: datasets and trainers for controllable music diffusion models."""

__version__ = "0.1.0"
