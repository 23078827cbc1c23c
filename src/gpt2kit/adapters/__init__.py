"""Adapters on a frozen GPT-2: LoRA layers (lora.py) and PEFT's on-disk format (peft.py).

    lora.py    LoraSpec, Adapter, LoraLinear, freeze_base, apply_adapter, merge_into
    peft.py    read_adapter / write_adapter: adapter_config.json + adapter_model.safetensors
    merge.py   merge(base, adapter, out): a plain model folder with the update added in
    names.py   the matrices LoRA adapts and the --lora-targets names (no PyTorch: TrainOptions checks them)

Training with an adapter lives in training/ (TrainOptions.lora_rank and friends); running one,
merged in memory at load is `gpt2kit.load(..., adapter=DIR)`.
"""
