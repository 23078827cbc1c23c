"""Write a GPT-2 as an ONNX decoder with past key/values, with PyTorch's own exporter (torch.export + onnxscript).

The inputs and outputs are laid out as Hugging Face Optimum exports GPT-2 for transformers.js and onnxruntime:

    input_ids                   int64 (batch, sequence)
    attention_mask              int64 (batch, past + sequence)       1 = a real token, 0 = left padding
    position_ids                int64 (batch, sequence)
    past_key_values.{i}.key     float32 (batch, n_head, past, head_size), and .value; past = 0 on the first call
    ->  logits                  float32 (batch, sequence, n_vocab)
        present.{i}.key         float32 (batch, n_head, past + sequence, head_size), and .value

so a runtime prefills a prompt with empty pasts, then feeds each new token with the presents it got back.
`int8=True` then stores the matrices as int8 with onnxruntime's weight-only quantizer (MatMulNBits, 8 bits).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import GPT
from .source import Source

OPSET = 18
# ONNX's protobuf holds at most 2 GiB; past that the weights go to OUT.onnx.data beside it
EXTERNAL_DATA_BYTES = 1 << 30


class DecoderWithPast(nn.Module):
    """GPT's forward over explicit past tensors, with GPT's own modules: the reference model stays plain."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past_key_values: tuple[torch.Tensor, ...]):
        m = self.model
        B, T = input_ids.shape
        C, nh = m.config.n_embd, m.config.n_head
        S = attention_mask.shape[1]  # past + T
        x = m.wte(input_ids) + m.wpe(position_ids)  # (B, T, C)
        # Query t sits at position S - T + t; it sees key j iff j <= that and j is not padding. A padding
        # query also sees itself, so no row of the softmax is empty (NaN).
        q_at = torch.arange(T, device=x.device) + (S - T)
        k_at = torch.arange(S, device=x.device)
        causal = k_at[None, :] <= q_at[:, None]  # (T, S)
        itself = k_at[None, :] == q_at[:, None]  # (T, S)
        allowed = causal[None] & ((attention_mask[:, None, :] > 0) | itself[None])  # (B, T, S)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~allowed, torch.finfo(x.dtype).min).unsqueeze(1)  # (B, 1, T, S)
        presents = []
        for i, block in enumerate(m.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=2)
            q = q.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
            k = torch.cat([past_key_values[2 * i], k.view(B, T, nh, C // nh).transpose(1, 2)], dim=2)  # (B, nh, S, hs)
            v = torch.cat([past_key_values[2 * i + 1], v.view(B, T, nh, C // nh).transpose(1, 2)], dim=2)
            presents += [k, v]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nh, T, hs)
            x = x + block.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + block.mlp(block.ln_2(x))
        logits = F.linear(m.ln_f(x), m.wte.weight)  # (B, T, n_vocab); the head is tied to wte, as in GPT-2
        return (logits, *presents)


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    pasts = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    presents = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *pasts], ["logits", *presents]


def _example(model: GPT) -> tuple:
    """Sizes all different and above 1, so the exporter keeps every axis symbolic."""
    c = model.config
    B, T, P = 2, 3, 5
    past = tuple(torch.zeros(B, c.n_head, P, c.n_embd // c.n_head) for _ in range(2 * c.n_layer))
    return (
        torch.zeros(B, T, dtype=torch.long),
        torch.ones(B, P + T, dtype=torch.long),
        torch.arange(P, P + T).repeat(B, 1),
        past,
    )


def _export_fp32(model: GPT, path: Path) -> None:
    dyn = torch.export.Dim.DYNAMIC
    inputs, outputs = io_names(model.config.n_layer)
    shapes = (
        {0: dyn, 1: dyn},
        {0: dyn, 1: dyn},
        {0: dyn, 1: dyn},
        tuple({0: dyn, 2: dyn} for _ in range(2 * model.config.n_layer)),
    )
    big = model.num_params() * 4 > EXTERNAL_DATA_BYTES
    torch.onnx.export(
        DecoderWithPast(model).eval(),
        _example(model),
        str(path),
        dynamo=True,
        opset_version=OPSET,
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes=shapes,
        external_data=big,
        optimize=True,
        verbose=False,
    )
    _name_axes(path)


def _name_axes(path: Path) -> None:
    """Give the exporter's axis symbols (s3, s70, "s70 + s85") Optimum's names (batch_size, sequence_length,
    past_sequence_length, total_sequence_length), so runtimes and readers see which axis is which.

    The exporter gives every past tensor its own symbol for the same length; all of them become one name."""
    import onnx

    model = onnx.load(path, load_external_data=False)  # the proto only; the weights stay where they are
    graph = model.graph
    inputs = {v.name: v.type.tensor_type.shape.dim for v in graph.input}
    names = {
        inputs["input_ids"][0].dim_param: "batch_size",
        inputs["input_ids"][1].dim_param: "sequence_length",
        inputs["attention_mask"][1].dim_param: "total_sequence_length",
    }
    names.update(
        {
            dims[2].dim_param: "past_sequence_length"
            for name, dims in inputs.items()
            if name.startswith("past_key_values.")
        }
    )
    symbol = re.compile(r"\bs\d+\b")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = symbol.sub(lambda m: names.get(m.group(), m.group()), dim.dim_param)
    onnx.save(model, path)


def _quantize_int8(src: Path, dst: Path) -> None:
    """int8 weights in blocks of 32 with one scale each (onnxruntime's MatMulNBits), activations kept float32.

    Weight-only, because onnxruntime's dynamic quantization (quantize_dynamic, int8 activations too) picks
    fp32's top token at only 97.95% of 2,000 held-out positions of the bundled model (98.7% with the
    embeddings and the head left fp32); weight-only int8 at 99.95%.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    big = src.stat().st_size > EXTERNAL_DATA_BYTES or src.with_name(src.name + ".data").exists()
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(src), bits=8, block_size=32, is_symmetric=True, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), big)


def write_onnx(source: Source, out: Path, *, int8: bool = False) -> Path:
    """Write `source` to `out` (and `out`.data beside it for models over 1 GiB); the files appear whole or not at all."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        fp32 = Path(tmp) / ("fp32" if int8 else "") / out.name
        fp32.parent.mkdir(exist_ok=True)
        with torch.no_grad():
            _export_fp32(source.model, fp32)
        final = fp32
        if int8:
            final = Path(tmp) / out.name
            _quantize_int8(fp32, final)
        data = final.with_name(final.name + ".data")
        if data.exists():
            os.replace(data, out.with_name(out.name + ".data"))
        os.replace(final, out)  # last: a half-written export never has its .onnx in place
    return out
