"""The k largest logits of each row, for top-k sampling: kernels/topk.c's one pass where a model's steps run on
the kernels, torch.topk elsewhere. Both give the same (values, ids) whenever the k-th and the next logit differ,
which is when sampling.draw_top_k keeps what they give."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .kernels import Kernels
from .runner import CpuGPT

TopK = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def for_model(model: torch.nn.Module) -> TopK | None:
    """What top-k sampling of `model`'s logits calls: the C pass where its steps run on the kernels, else None
    (torch.topk)."""
    if isinstance(model, CpuGPT) and model.step is not None:
        return functools.partial(kernel_topk, model.step.kernels)
    return None


def kernel_topk(kernels: Kernels, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(logits, k, dim=-1) of fp32 CPU logits (B, V): values largest first, of equal ones the lower
    ids first. Rows with a NaN or +inf go to torch.topk, whose order the finite-logits check after it expects."""
    if (
        logits.dim() != 2
        or logits.dtype != torch.float32
        or logits.device.type != "cpu"
        or not 0 < k <= logits.shape[1]
    ):
        return torch.topk(logits, k, dim=-1)
    x = logits.contiguous()
    B, V = x.shape
    values, ids = torch.empty(B, k), torch.empty(B, k, dtype=torch.int64)
    failed = kernels.lib.gpt2kit_topk(x.data_ptr(), B, V, k, values.data_ptr(), ids.data_ptr(), torch.get_num_threads())
    return torch.topk(logits, k, dim=-1) if failed != 0 else (values, ids)
