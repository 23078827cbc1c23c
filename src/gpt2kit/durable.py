"""Durable saves: the one home for writing a file (or a folder) so that it is whole or absent.

A rename alone survives a killed process but not a machine that loses power: ext4, XFS and btrfs
may commit the rename before the file's data, so after a crash the new name can point at an empty
file. SQLite and LevelDB avoid that the same way done here: write under a temporary name in the
same folder, fsync the file, rename it over the old one, then fsync the folder so the rename
itself is on disk. A folder (a checkpoint) gets every file in it fsynced, then the folder.

`user_error_for` turns "the disk is full / read-only" into a UserError, which PyTorch and safetensors
otherwise report as an opaque RuntimeError or SafetensorError. A command's text output (`open_text_output`)
is replaced the same way, unless it names a stream or a device, which are written where they are.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from pathlib import Path
from typing import IO, Iterator, TextIO

from .errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file-size limit (ulimit -f) was reached
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by name (Linux and macOS allow fsync on a read-only descriptor)."""
    is_dir = Path(path).is_dir()
    if is_dir and os.name == "nt":  # Windows cannot open a folder, and NTFS journals renames itself
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then the folders themselves (deepest first)."""
    folders = []
    for root, _, files in os.walk(folder):
        folders.append(Path(root))
        for name in files:
            fsync_path(Path(root) / name)
    for d in reversed(folders):
        fsync_path(d)


def replace(tmp: Path, dest: Path) -> None:
    """Move a finished `tmp` (file or folder, in dest's folder) onto `dest`, durably."""
    tmp, dest = Path(tmp), Path(dest)
    if tmp.is_dir():
        fsync_tree(tmp)
    else:
        fsync_path(tmp)
    os.replace(tmp, dest)
    fsync_path(dest.parent)  # the rename itself: without this it may not survive a power cut


def temp_name(dest: Path) -> Path:
    """A temporary name beside `dest` that no other process picks and no reader mistakes for `dest`."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_open(dest: Path, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside `dest`; on a clean exit it replaces `dest` durably, on an error it goes."""
    dest = Path(dest)
    tmp = temp_name(dest)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_path(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_open(dest, "wb") as f:
        f.write(data)


def write_text(dest: Path, text: str, encoding: str = "utf-8") -> None:
    write_bytes(dest, text.encode(encoding))


def os_error(e: BaseException) -> int | None:
    """The errno behind `e`: its own, a chained OSError's (torch.save wraps them), or one named in the
    message (safetensors' Rust errors say "(os error 28)")."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.errno
        m = re.search(r"\(os error (\d+)\)", str(e))
        if m:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return None


def user_error_for(e: BaseException, path: Path) -> UserError | None:
    """A clear UserError when `e` means the disk is full or not writable while writing `path`, else None."""
    code = os_error(e)
    if code in NO_SPACE:
        return UserError(
            f"no space left while writing {path} ({os.strerror(code)}); free some space "
            f"(or raise the file-size limit) and run the command again"
        )
    if code in READ_ONLY:
        return UserError(f"cannot write {path} ({os.strerror(code)}); choose a folder you can write")
    return None


def check_writable(folder: Path) -> None:
    """Prove that `folder` can be written (or created), before any work starts, without leaving anything.

    The probe is a real write in `folder`, or in its nearest existing parent when it does not exist
    yet: os.access says yes to root on a chmod 0555 folder, and only a write meets a read-only mount."""
    folder = Path(folder).absolute()
    target = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if not target.is_dir():
        raise UserError(f"cannot create {folder}: {target} is a file, not a folder; choose another folder")
    e = _write_probe(target)
    if e is not None:
        raise user_error_for(e, folder) or UserError(
            f"cannot write in {folder} ({e.strerror}); choose a folder you can write"
        ) from None


def _write_probe(folder: Path) -> OSError | None:
    """None when an empty file can be made (and removed) in the existing `folder`, else why not."""
    probe = folder / f".write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return e
    return None


def check_output(path: Path, *, folder: bool, make_parents: bool = False) -> Path:
    """Check, before any work starts, that `path` can be written as a new output; returns it (expanded).

    A file output (`folder=False`) must not exist: nothing the user had is replaced without being asked.
    A folder output may be an empty folder (it is replaced by the finished one). Its parent must be a
    folder this process can write; with `make_parents`, missing parents are fine where the nearest
    existing one is writable (the command creates them). Checking up front turns what would be a
    NotADirectoryError or FileNotFoundError after minutes of work into one line before any."""
    path = Path(path).expanduser()
    if path.is_symlink() or path.exists():
        _check_existing(path, folder)
    parent = path.absolute().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), parent)
    if not existing.is_dir():
        raise UserError(f"cannot write {path}: {existing} is a file, not a folder; choose another output path")
    if existing != parent and not make_parents:
        raise UserError(f"cannot write {path}: the folder {parent} does not exist; create it first or write elsewhere")
    e = _write_probe(existing)  # a real write: os.access says yes to root, and on /proc or a read-only mount
    if e is not None:
        raise user_error_for(e, path) or UserError(
            f"cannot write {path}: {existing} does not take new files ({e.strerror}); choose another output path"
        ) from None
    return path


def _check_existing(path: Path, folder: bool) -> None:
    """UserError unless `path`, which exists, is an output this command may take: an empty folder for a folder."""
    if not folder:
        what = "a folder" if path.is_dir() else "a file"
        raise UserError(
            f"{path} already exists ({what}) and would be replaced; choose another output path, or delete it first"
        )
    if not path.is_dir():
        raise UserError(f"{path} already exists and is not a folder; choose a new folder")
    try:
        empty = not any(path.iterdir())
    except OSError as e:
        raise UserError(f"cannot read the folder {path} ({e.strerror}); choose a new folder") from None
    if not empty:
        raise UserError(f"{path} exists and is not empty; choose a new folder (or delete it first)")


def require_space(folder: Path, needed: int) -> None:
    """UserError before writing `needed` bytes into `folder` when the disk clearly lacks them."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(
            f"{folder} has {free / 2**20:,.0f} MiB free but the save needs about "
            f"{needed / 2**20:,.0f} MiB; free some space and run the command again"
        )


# --- a command's text output: the terminal, a stream or device written in place, or a file replaced at the end ---


def check_text_output(path: Path) -> None:
    """`path` can take a command's text (--output): checked before any work starts, creating nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--output {path} is a folder; name a file (or pass --output-dir for a file per sample)")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {path} (it is read-only); choose another --output or make it writable")
    if not writes_in_place(path):
        check_writable(Path(os.path.realpath(path)).parent)  # where open_text_output's temporary file will go


def writes_in_place(path: Path) -> bool:
    """Written where it is, not replaced by a new file: a device or a pipe (/dev/full, a FIFO); anything named
    under /dev or /proc (/dev/stdout can lead to the file a shell redirected into, and replacing that would
    lose what `>>` kept); a writable file in a folder that takes no new files (a single-file bind mount)."""
    path = Path(path)
    if not path.exists():
        return False
    if names_a_stream(path) or not path.is_file():
        return True
    return os.access(path, os.W_OK) and not os.access(Path(os.path.realpath(path)).parent, os.W_OK | os.X_OK)


def names_a_stream(path: Path) -> bool:
    """/dev/stdout, /proc/self/fd/N and the like: a stream the shell set up, appended to, never truncated."""
    return str(Path(path).absolute()).startswith(("/dev/", "/proc/"))


@contextlib.contextmanager
def open_text_output(path: Path | None) -> Iterator[TextIO]:
    """Where a command's text goes: standard output for None; else `path`, written under a temporary name that
    replaces it only on a clean exit, so a failed or interrupted run leaves what was there."""
    if path is None:
        yield sys.stdout
        return
    path = Path(path)
    if writes_in_place(path):
        # "a" for a stream: /dev/stdout may lead to a file `>>` opened, and "w" would truncate what it kept
        with open(path, "a" if names_a_stream(path) else "w", encoding="utf-8") as f:
            yield f
        return
    target = Path(os.path.realpath(path))  # through a symlink: the link stays, its target gets the text
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(target, "w", encoding="utf-8") as f:
        yield f


def output_folder(folder: Path) -> Path:
    """`folder`, created if missing; an existing one is kept as it is (new files take free names in it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_name(folder: Path, stem: str, suffix: str = ".txt") -> Path:
    """`folder/stem+suffix`, or the first of `stem-1`, `stem-2`, ... not taken: nothing there is replaced."""
    path = Path(folder) / f"{stem}{suffix}"
    k = 1
    while path.exists():
        path = Path(folder) / f"{stem}-{k}{suffix}"
        k += 1
    return path
