"""Kept only for `gpt2kit info` until the CLI moves to gpt2kit.cpu.status."""
from .cpu.kernels import status  # noqa: F401
