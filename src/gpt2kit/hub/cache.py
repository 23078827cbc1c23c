"""The local model cache: what a name means, downloading on first use, listing and removing."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote

from ..config import canonical_name
from ..errors import UserError
from ..formats import FORMATS_HELP, bundled_model, detect_format, local_model, what_is_there
from ..options import DownloadOptions
from ..paths import BUNDLED_DIR, models_root
from .published import NAMES_HELP, download_published, ensure_model
from .repos import HUB_DIR, download_repo, ensure_repo, parse_repo, repo_folder
from .transfer import COMPLETE


def download(
    *names: str,
    source: str | None = None,
    models_dir: str | Path | None = None,
    progress: bool = True,
    revision: str | None = None,
    offline: bool | None = None,
) -> list[Path]:
    """Download models; returns their folders.

    A name is a published model (124M ... 1558M and their aliases; `source` openai, the default, or
    huggingface) or a Hugging Face repository OWNER/NAME[@REV] whose config is a GPT-2 (`revision`
    picks a branch, tag or commit; each is kept in its own folder). models_dir writes DIR/<name>/.
    Offline (or GPT2KIT_OFFLINE=1), a model that is not here already is an error, not a download.
    """
    folders = []
    for raw in names:
        published = canonical_name(raw)
        ref = parse_repo(raw, revision) if not published or revision or "@" in raw else None
        if published and ref is None:
            if revision:
                raise UserError(
                    f"--revision is for hub repositories (OWNER/NAME); {raw} is OpenAI's release, "
                    f"which has none (its hub copy is openai-community/gpt2...)"
                )
            folders.append(
                download_published(
                    published,
                    source=source or DownloadOptions.source,
                    models_dir=models_dir,
                    progress=progress,
                    offline=offline,
                )
            )
        elif ref is not None:
            if source == "openai":
                raise UserError(f"{raw} is a hub repository; --source openai is for the published names ({NAMES_HELP})")
            folders.append(download_repo(ref, models_dir=models_dir, progress=progress, offline=offline))
        else:
            raise UserError(
                f"{raw!r} is not a published GPT-2 model ({NAMES_HELP}) nor a Hugging Face "
                f"repository OWNER/NAME such as distilbert/distilgpt2"
            )
    return folders


def resolve_model_path(name: str | Path | None, *, offline: bool | None = None) -> Path:
    """A model name or path -> the folder to read. None, or the word `bundled`, is the small model bundled
    in the package; a path that exists wins over any name (formats.local_model says why)."""
    if name is None:
        return bundled_model()
    local = local_model(name)
    if local is not None:
        return local
    there = what_is_there(Path(name).expanduser())
    if there:  # a path that runs through a file is a path mistake, never a published name or a repository
        raise UserError(there)
    published = canonical_name(str(name))
    if published:
        return ensure_model(published, offline=offline)
    ref = parse_repo(str(name))
    if ref is not None:
        return ensure_repo(ref, offline=offline)
    raise UserError(
        f"no model folder {str(name)!r}, and it is not a published name (124M, 355M, 774M, 1558M), "
        f"`bundled`, nor a hub repository (OWNER/NAME[@REVISION]). {FORMATS_HELP}"
    )


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _row(name: str, folder: Path) -> dict:
    state = detect_format(folder) if (folder / COMPLETE).is_file() else "incomplete"
    return {"name": name, "format": state, "bytes": _size(folder), "path": str(folder)}


def list_models() -> list[dict]:
    """The bundled model, the published models in the cache, then the hub repositories (one row a revision)."""
    rows = []
    if (BUNDLED_DIR / "config.json").is_file():
        rows.append(
            {
                "name": "bundled (default)",
                "format": "huggingface",
                "bytes": _size(BUNDLED_DIR),
                "path": str(BUNDLED_DIR),
            }
        )
    root = models_root()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and folder.name != HUB_DIR:
            rows.append(_row(folder.name, folder))
    for folder in sorted((root / HUB_DIR).glob("*/*/*")):
        if folder.is_dir():
            owner, name, rev = folder.relative_to(root / HUB_DIR).parts
            rev = unquote(rev)
            rows.append(_row(f"{owner}/{name}" + ("" if rev == DownloadOptions.revision else f"@{rev}"), folder))
    return rows


def remove_model(name: str) -> int:
    """Delete a cached model: a published name, OWNER/NAME (every revision) or OWNER/NAME@REV; bytes freed."""
    ref = parse_repo(name) if not canonical_name(name) else None
    if ref is None:
        folder, parent = models_root() / (canonical_name(name) or name), models_root()
    elif "@" in name:
        folder = repo_folder(ref)
        parent = folder.parent
    else:
        folder = models_root() / HUB_DIR / ref.repo
        parent = folder.parent
    if not folder.is_dir() or folder.resolve().parent != parent.resolve() or folder.name == HUB_DIR:
        raise UserError(f"no model {name!r} in {models_root()}; `gpt2kit models` lists them")
    freed = _size(folder)
    shutil.rmtree(folder)
    for empty in (folder.parent, folder.parent.parent):  # OWNER/NAME and OWNER once their last revision is gone
        if empty != models_root() / HUB_DIR and empty.is_relative_to(models_root() / HUB_DIR):
            try:
                empty.rmdir()
            except OSError:
                break
    return freed
