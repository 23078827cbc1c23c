"""Downloads of the published GPT-2 models, and the local model cache.

Files are fetched under a `.part` name, resumed with HTTP Range requests after an interruption,
checked against the size and any checksum the server offers (Content-MD5; the Hugging Face hub's
sha256 ETag), and renamed only then. A model folder gets its `.complete` marker only when every
file is in, so a half-downloaded model is never loaded. urllib honours HTTPS_PROXY by itself.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from .config import canonical_name
from .errors import UserError
from .formats import FORMATS_HELP, detect_format
from .paths import BUNDLED_DIR, home, models_root  # noqa: F401 (home: part of hub's API)

log = logging.getLogger("gpt2kit")
OPENAI_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
HF_URL = "https://huggingface.co"
OPENAI_FILES = ["checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
                "model.ckpt.index", "model.ckpt.meta", "vocab.bpe"]
HF_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
HF_REPOS = {"124M": "openai-community/gpt2", "355M": "openai-community/gpt2-medium",
            "774M": "openai-community/gpt2-large", "1558M": "openai-community/gpt2-xl"}
COMPLETE = ".complete"
RETRIES = 5
CHUNK = 1 << 20


def first_retry_delay() -> float:
    """Seconds before the first retry, doubling each try (GPT2KIT_RETRY_DELAY, read at call time)."""
    return float(os.environ.get("GPT2KIT_RETRY_DELAY", "1.0"))




def is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("GPT2KIT_OFFLINE", "").lower() in ("1", "true", "yes")


def ensure_model(name: str, *, offline: bool | None = None) -> Path:
    """The cached folder of published model `name`, downloading it first if it is not here."""
    name = canonical_name(name) or name
    folder = models_root() / name
    if (folder / COMPLETE).is_file():
        return folder
    if is_offline(offline):
        raise UserError(f"model {name} is not on this machine and downloads are off (--offline / GPT2KIT_OFFLINE); "
                        f"run `gpt2kit download {name}` where there is a network")
    log.warning("model %s is not on this machine: downloading it first (once) into %s", name, folder)
    return download(name)[0]


def download(*names: str, source: str = "openai", models_dir: str | Path | None = None, progress: bool = True) -> list[Path]:
    """Download published models; returns their folders. models_dir writes OpenAI's layout DIR/<name>/."""
    if source not in ("openai", "huggingface"):
        raise UserError(f"source must be openai or huggingface, got {source!r}")
    folders = []
    for raw in names:
        name = canonical_name(raw)
        if name is None:
            raise UserError(f"{raw!r} is not a published GPT-2 model; choose 124M, 355M, 774M or 1558M "
                            f"(aliases 117M, 345M, gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
        folder = (Path(models_dir) / name) if models_dir else models_root() / name
        if (folder / COMPLETE).is_file():
            log.info("%s is already downloaded in %s", name, folder)
            folders.append(folder)
            continue
        if source == "openai":
            base = os.environ.get("GPT2KIT_OPENAI_URL", OPENAI_URL).rstrip("/")
            urls = {f: f"{base}/{name}/{f}" for f in OPENAI_FILES}
        else:
            base = os.environ.get("HF_ENDPOINT", HF_URL).rstrip("/")
            urls = {f: f"{base}/{HF_REPOS[name]}/resolve/main/{f}" for f in HF_FILES}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {folder} ({e.strerror}); set GPT2KIT_HOME or --models-dir to a folder "
                            f"you can write") from None
        for fname, url in urls.items():
            fetch(url, folder / fname, progress=progress)
        (folder / COMPLETE).write_text(json.dumps({"source": source, "time": time.time()}))
        folders.append(folder)
    return folders


def _expected_digest(headers) -> tuple[str, str] | None:
    """(algorithm, hex digest) the server vouches for, if any."""
    md5 = headers.get("Content-MD5")
    if md5:
        try:
            return "md5", base64.b64decode(md5).hex()
        except ValueError:
            pass
    for h in ("X-Linked-ETag", "ETag"):
        tag = (headers.get(h) or "").strip('W/"')
        if re.fullmatch(r"[0-9a-f]{64}", tag):
            return "sha256", tag
    return None


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, *, progress: bool = True, retries: int = RETRIES) -> Path:
    """Download `url` to `dest` resumably and verified; `dest` appears only when complete."""
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    delay = first_retry_delay()
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.is_file() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "gpt2kit", **({"Range": f"bytes={have}-"} if have else {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                if have and resp.status != 206:
                    have = 0  # the server ignored the Range: start over
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                if resp.status == 206:
                    m = re.search(r"/(\d+)$", resp.headers.get("Content-Range", ""))
                    total = int(m.group(1)) if m else total
                digest = _expected_digest(resp.headers)
                _stream(resp, part, have, total, dest.name, progress)
            size = part.stat().st_size
            if total is not None and size != total:
                raise ConnectionError(f"got {size} of {total} bytes")
            if digest and _digest(part, digest[0]) != digest[1]:
                part.unlink()
                raise UserError(f"{url} failed its {digest[0]} check (the download is corrupted); it was deleted: run the command again")
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # our partial file is already whole, or bigger than the file
                part.unlink()
                continue
            if e.code in (401, 403, 404):
                raise UserError(f"{url} answered {e.code} {e.reason}: check the model name and the mirror "
                                f"(GPT2KIT_OPENAI_URL / HF_ENDPOINT)") from None
            error = f"HTTP {e.code}"
        except http.client.HTTPException as e:  # e.g. IncompleteRead when the connection drops
            error = type(e).__name__
        except OSError as e:
            if isinstance(e, PermissionError) or e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise UserError(f"no permission to write {part}; set GPT2KIT_HOME or --models-dir to a folder "
                                f"you can write") from None
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise UserError(f"no space left on the disk while writing {part}; free some space and run again "
                                f"(the download resumes)") from None
            error = str(getattr(e, "reason", e))
        if attempt < retries:
            log.warning("download of %s broke off (%s); retrying in %.0f s (%d/%d)", dest.name, error, delay, attempt, retries - 1)
            time.sleep(delay)
            delay = min(delay * 2, 30)
    raise UserError(f"could not download {url} after {retries} tries ({error}); run the same command again to resume")


def _stream(resp, part: Path, have: int, total: int | None, label: str, progress: bool) -> None:
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label, dynamic_ncols=True)
    try:
        with open(part, "ab" if have else "wb") as f:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                if bar:
                    bar.update(len(block))
    finally:
        if bar:
            bar.close()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_models() -> list[dict]:
    """The bundled model and everything in the cache."""
    rows = []
    if (BUNDLED_DIR / "config.json").is_file():
        rows.append({"name": "bundled (default)", "format": "huggingface", "bytes": _size(BUNDLED_DIR), "path": str(BUNDLED_DIR)})
    root = models_root()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir():
            state = detect_format(folder) if (folder / COMPLETE).is_file() else "incomplete"
            rows.append({"name": folder.name, "format": state, "bytes": _size(folder), "path": str(folder)})
    return rows


def remove_model(name: str) -> int:
    folder = models_root() / (canonical_name(name) or name)
    if not folder.is_dir() or folder.resolve().parent != models_root().resolve():
        raise UserError(f"no model {name!r} in {models_root()}; `gpt2kit models` lists them")
    freed = _size(folder)
    shutil.rmtree(folder)
    return freed


def resolve_model_path(name: str | Path | None, *, offline: bool | None = None) -> Path:
    """A model name or path -> the folder to read. None is the small model bundled in the package."""
    if name is None:
        if not (BUNDLED_DIR / "config.json").is_file():
            raise UserError("this installation has no bundled model; pass --model PATH or a published name like 124M")
        return BUNDLED_DIR
    path = Path(name).expanduser()
    if path.exists():
        return path
    published = canonical_name(str(name))
    if published:
        return ensure_model(published, offline=offline)
    raise UserError(f"no model folder {str(name)!r}, and it is not a published name (124M, 355M, 774M, 1558M). {FORMATS_HELP}")
