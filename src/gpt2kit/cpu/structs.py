"""The structs of kernels/decode_step.c, field for field, and the pointer helpers that fill them."""

from __future__ import annotations

import ctypes

import torch


class MatrixStruct(ctypes.Structure):
    _fields_ = [
        ("weight", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("kind", ctypes.c_int64),
    ]


class LayerStruct(ctypes.Structure):
    _fields_ = [
        ("ln_1_w", ctypes.c_void_p),
        ("ln_1_b", ctypes.c_void_p),
        ("c_attn", MatrixStruct),
        ("attn_c_proj", MatrixStruct),
        ("ln_2_w", ctypes.c_void_p),
        ("ln_2_b", ctypes.c_void_p),
        ("c_fc", MatrixStruct),
        ("mlp_c_proj", MatrixStruct),
    ]


class ModelStruct(ctypes.Structure):
    _fields_ = [
        ("n_layer", ctypes.c_int64),
        ("n_embd", ctypes.c_int64),
        ("n_head", ctypes.c_int64),
        ("n_vocab", ctypes.c_int64),
        ("eps", ctypes.c_float),
        ("wte", ctypes.c_void_p),
        ("wpe", ctypes.c_void_p),
        ("ln_f_w", ctypes.c_void_p),
        ("ln_f_b", ctypes.c_void_p),
        ("head", MatrixStruct),
        ("h", ctypes.POINTER(LayerStruct)),
    ]


def address(t: torch.Tensor | None) -> int | None:
    """A tensor's data pointer for ctypes, NULL for None."""
    return None if t is None else t.data_ptr()


def fp32_address(t: torch.Tensor) -> int:
    """The data pointer of a contiguous fp32 CPU tensor; anything else is a bug, caught before C reads it."""
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(
            f"the C kernels need contiguous fp32 CPU tensors, got {t.dtype} {tuple(t.shape)} on {t.device}"
        )
    return t.data_ptr()
