"""Any GPT-2 on the Hugging Face hub: OWNER/NAME[@REVISION] -> a folder gpt2kit loads.

The hub's API lists a revision's files (`/api/models/{repo}/revision/{rev}` -> `sha`, `siblings`).
config.json comes first and must describe a GPT-2 gpt2kit computes exactly, else nothing more is
fetched. Then the weights, in the order formats/ reads them best: model.safetensors, sharded
safetensors, pytorch_model.bin (read with torch.load(weights_only=True)), sharded .bin; and the
tokenizer files the repository has. Files are fetched at the commit the listing named, so a branch
that moves mid-download cannot mix two versions. Each revision has its own folder:
models/hub/OWNER/NAME/REVISION (the revision URL-quoted: `refs/pr/1` is one folder).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shlex
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..config import GPTConfig
from ..errors import UserError
from ..options import DownloadOptions
from ..paths import models_root
from .transfer import (
    COMPLETE,
    RETRIES,
    classify,
    fetch,
    first_retry_delay,
    is_offline,
    make_folder,
    mark_complete,
    open_url,
    read_timeout,
)

log = logging.getLogger("gpt2kit")
HF_URL = "https://huggingface.co"
HUB_DIR = "hub"  # models/hub/OWNER/NAME/REVISION; published models sit beside it as models/124M
# The hub's own rule for names: letters, digits, `-`, `_`, `.`; no `--` or `..`; at most 96 characters.
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)
LISTING_LIMIT = 16 << 20  # bytes; a listing of thousands of files is a few MB


def hub_url() -> str:
    """The hub's base URL: HF_ENDPOINT (a mirror, or the test server), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", HF_URL).rstrip("/")


def auth_headers() -> dict[str, str]:
    """HF_TOKEN for private and gated repositories; transfer.open_url never sends it to another host."""
    token = os.environ.get("HF_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class RepoRef:
    repo: str  # OWNER/NAME
    revision: str = DownloadOptions.revision

    @property
    def display(self) -> str:
        return self.repo if self.revision == DownloadOptions.revision else f"{self.repo}@{self.revision}"


def offline_advice(command: str, offline: bool | None) -> str:
    """What to run when a model is missing and downloads are off: `command` with downloads on.
    `offline` is the caller's flag (True: --offline); GPT2KIT_OFFLINE=1 in the environment turns them off too."""
    turn_on = (["without --offline"] if offline else []) + (["with GPT2KIT_OFFLINE unset"] if is_offline(None) else [])
    return f"run `{command}`{' ' + ' and '.join(turn_on) if turn_on else ''}, where there is a network"


def download_command(name: str, models_dir: str | Path | None = None, *extra: str) -> str:
    """The `gpt2kit download` command line that fetches `name` (into `models_dir`, when one was given)."""
    words = ["gpt2kit", "download", name, *extra] + (["--models-dir", str(models_dir)] if models_dir else [])
    return " ".join(shlex.quote(w) for w in words)


def parse_repo(name: str, revision: str | None = None) -> RepoRef | None:
    """'OWNER/NAME' or 'OWNER/NAME@REV' -> RepoRef; None when `name` is not shaped like a hub repository."""
    repo, at, rev = str(name).partition("@")
    if not REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo:
        return None
    if at and revision and rev != revision:
        raise UserError(f"{name} names revision {rev!r} and --revision says {revision!r}; give one")
    rev = revision or rev or DownloadOptions.revision
    if not rev.isprintable() or rev.strip() != rev or len(rev) > 255:
        raise UserError(f"revision {rev!r} is not a branch, tag or commit name")
    return RepoRef(repo, rev)


def repo_folder(ref: RepoRef, models_dir: str | Path | None = None) -> Path:
    if models_dir:  # DIR/OWNER/NAME, beside OpenAI's DIR/124M layout; another revision gets NAME@REV
        owner, name = ref.repo.split("/")
        return (
            Path(models_dir)
            / owner
            / (name if ref.revision == DownloadOptions.revision else f"{name}@{quote(ref.revision, safe='')}")
        )
    return models_root() / HUB_DIR / ref.repo / quote(ref.revision, safe="")


def list_files(ref: RepoRef) -> tuple[str, list[str]]:
    """(the commit, the file names) of a revision, from the hub's API."""
    url = f"{hub_url()}/api/models/{ref.repo}/revision/{quote(ref.revision, safe='')}"
    delay, error = first_retry_delay(), ""
    for attempt in range(1, RETRIES + 1):
        try:
            resp, _ = open_url(
                url, {"User-Agent": "gpt2kit", "Accept": "application/json", **auth_headers()}, read_timeout()
            )
            with resp:
                body = resp.read(LISTING_LIMIT + 1)
                length = resp.headers.get("Content-Length") or ""
            if length.isdigit() and len(body) < int(length):  # read() does not raise when the connection drops
                raise ConnectionError(f"the listing broke off after {len(body)} of {length} bytes")
            return _parse_listing(ref, url, body)
        except urllib.error.HTTPError as e:
            if e.code in (401, 403, 404):  # the hub answers 401 for a repository that does not exist, too
                raise UserError(
                    f"{ref.display}: no such folder here, and {hub_url()} has no such repository or "
                    f"revision (HTTP {e.code}); check the name, or set HF_TOKEN for a private or gated "
                    f"one"
                ) from None
            error = classify(e, url)
        except (http.client.HTTPException, OSError) as e:
            error = classify(e, url)
        if attempt < RETRIES:
            log.warning(
                "listing %s failed (%s); retrying in %.1f s (%d/%d)", ref.display, error, delay, attempt, RETRIES - 1
            )
            time.sleep(delay)
            delay = min(delay * 2, 30)
    raise UserError(f"could not list {ref.display} at {url} after {RETRIES} tries ({error}); run the command again")


def _parse_listing(ref: RepoRef, url: str, body: bytes) -> tuple[str, list[str]]:
    try:
        if len(body) > LISTING_LIMIT:
            raise ValueError(f"over {LISTING_LIMIT >> 20} MB")
        info = json.loads(body)
        files = [s["rfilename"] for s in info["siblings"]]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{url} did not answer a model listing ({e}); does HF_ENDPOINT point at a Hugging Face hub?"
        ) from None
    sha = info.get("sha")
    return (sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{40}", sha) else ref.revision), files


def check_gpt2(ref: RepoRef, config_path: Path) -> None:
    """One clear line unless config.json describes a GPT-2 whose outputs gpt2kit reproduces."""
    try:
        cfg = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{ref.display} is not a GPT-2: its config.json is not JSON") from None
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if kind != "gpt2":
        raise UserError(
            f"{ref.display} is not a GPT-2: its config.json says model_type {kind!r}; gpt2kit runs "
            f'GPT-2 models (model_type "gpt2") only'
        )
    try:
        GPTConfig.from_hf_config(cfg)
    except UserError as e:
        raise UserError(f"{ref.display}: {e}") from None
    except (KeyError, TypeError) as e:
        raise UserError(
            f"{ref.display}: its config.json lacks or mistypes {e}; it is not a usable GPT-2 config"
        ) from None


def choose_weights(ref: RepoRef, files: list[str], folder: Path, get) -> list[str]:
    """The weight files to fetch, best first; an index is fetched here to learn its shards."""
    for name in WEIGHTS:
        if name not in files:
            continue
        if not name.endswith(".index.json"):
            return [name]
        get(name)
        try:
            shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{ref.display}: {name} is not a valid weight index ({e})") from None
        bad = [s for s in shards if s not in files or not re.fullmatch(r"[A-Za-z0-9._-]+", s)]
        if bad:
            raise UserError(f"{ref.display}: {name} names shard {bad[0]!r}, which the repository does not hold")
        return shards
    others = [f for f in files if f.endswith((".h5", ".msgpack", ".onnx", ".ckpt.index", ".gguf", ".bin", ".pt"))]
    raise UserError(
        f"{ref.display} has no weights gpt2kit reads (model.safetensors, sharded safetensors or "
        f"pytorch_model.bin); it holds {', '.join(sorted(others)[:5]) or 'no weight files'}"
    )


def download_repo(
    ref: RepoRef, *, models_dir: str | Path | None = None, progress: bool = True, offline: bool | None = None
) -> Path:
    """Fetch a GPT-2 repository's revision -> its folder (complete, or an error and nothing loadable)."""
    folder = repo_folder(ref, models_dir)
    if (folder / COMPLETE).is_file():
        log.info("%s is already downloaded in %s", ref.display, folder)
        return folder
    if is_offline(offline):
        raise UserError(
            f"{ref.display} is not in {folder} and downloads are off (--offline / GPT2KIT_OFFLINE); "
            f"{offline_advice(download_command(ref.display, models_dir), offline)}"
        )
    commit, files = list_files(ref)
    if "config.json" not in files:
        raise UserError(f"{ref.display} is not a GPT-2: it has no config.json (not a Transformers model repository)")
    make_folder(folder)

    def get(name: str) -> Path:
        url = f"{hub_url()}/{ref.repo}/resolve/{quote(commit, safe='')}/{quote(name)}"
        return fetch(url, folder / name, progress=progress, headers=auth_headers())

    get("config.json")
    try:
        check_gpt2(ref, folder / "config.json")
        weights = choose_weights(ref, files, folder, get)
    except UserError:  # a repository gpt2kit cannot run leaves nothing behind to list as incomplete
        _discard(folder)
        raise
    for name in weights + [t for t in TOKENIZER_FILES if t in files]:
        get(name)
    if not {"vocab.json", "merges.txt"} <= set(files):
        log.warning("%s carries no vocab.json and merges.txt: gpt2kit will use GPT-2's own vocabulary", ref.display)
    mark_complete(folder, {"source": "hub", "repo": ref.repo, "revision": ref.revision, "commit": commit})
    return folder


def _discard(folder: Path) -> None:
    """Undo what a refused download wrote: its config.json, then the folders it made if they are empty."""
    (folder / "config.json").unlink(missing_ok=True)
    for p in (folder, folder.parent, folder.parent.parent):
        try:
            p.rmdir()
        except OSError:
            return


def ensure_repo(ref: RepoRef, *, offline: bool | None = None) -> Path:
    """The cached folder of a hub repository's revision, downloading it first if it is not here."""
    folder = repo_folder(ref)
    if (folder / COMPLETE).is_file():
        return folder
    if is_offline(offline):
        raise UserError(
            f"{ref.display} is not on this machine and downloads are off (--offline / GPT2KIT_OFFLINE); "
            f"{offline_advice(download_command(ref.display), None)}"
        )
    log.warning("%s is not on this machine: downloading it first (once) into %s", ref.display, folder)
    return download_repo(ref, offline=False)
