"""The four published GPT-2 models: OpenAI's original TensorFlow files, or the hub's safetensors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import canonical_name
from ..errors import UserError
from ..options import DOWNLOAD_SOURCES, DownloadOptions
from ..paths import models_root
from .repos import auth_headers, download_command, hub_url, offline_advice
from .transfer import COMPLETE, fetch, is_offline, make_folder, mark_complete

log = logging.getLogger("gpt2kit")
OPENAI_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
OPENAI_FILES = [
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
]
HF_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
HF_REPOS = {
    "124M": "openai-community/gpt2",
    "355M": "openai-community/gpt2-medium",
    "774M": "openai-community/gpt2-large",
    "1558M": "openai-community/gpt2-xl",
}
NAMES_HELP = "124M, 355M, 774M or 1558M (aliases 117M, 345M, gpt2, gpt2-medium, gpt2-large, gpt2-xl)"


def ensure_model(name: str, *, offline: bool | None = None) -> Path:
    """The cached folder of published model `name`, downloading it first if it is not here."""
    name = canonical_name(name) or name
    folder = models_root() / name
    if (folder / COMPLETE).is_file():
        return folder
    if is_offline(offline):
        raise UserError(
            f"model {name} is not on this machine and downloads are off (--offline / GPT2KIT_OFFLINE); "
            f"{offline_advice(download_command(name), None)}"
        )
    log.warning("model %s is not on this machine: downloading it first (once) into %s", name, folder)
    return download_published(name, offline=False)


def download_published(
    name: str,
    *,
    source: str = DownloadOptions.source,
    models_dir: str | Path | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> Path:
    """One published model (a canonical name, e.g. 124M) -> its folder. models_dir writes DIR/<name>/."""
    if source not in DOWNLOAD_SOURCES:
        raise UserError(f"source must be {' or '.join(DOWNLOAD_SOURCES)}, got {source!r}")
    folder = (Path(models_dir) / name) if models_dir else models_root() / name
    if (folder / COMPLETE).is_file():
        log.info("%s is already downloaded in %s", name, folder)
        return folder
    if is_offline(offline):
        command = download_command(
            name, models_dir, *(["--source", source] if source != DownloadOptions.source else [])
        )
        raise UserError(
            f"{name} is not in {folder} and downloads are off (--offline / GPT2KIT_OFFLINE); "
            f"{offline_advice(command, offline)}"
        )
    headers = {}
    if source == "openai":
        base = os.environ.get("GPT2KIT_OPENAI_URL", OPENAI_URL).rstrip("/")
        urls = {f: f"{base}/{name}/{f}" for f in OPENAI_FILES}
    else:
        urls = {f: f"{hub_url()}/{HF_REPOS[name]}/resolve/main/{f}" for f in HF_FILES}
        headers = auth_headers()
    make_folder(folder)
    for fname, url in urls.items():
        fetch(url, folder / fname, progress=progress, headers=headers)
    mark_complete(folder, {"source": source})
    return folder
