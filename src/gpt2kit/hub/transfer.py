"""One file over HTTP, resumably, verified, and durable: the part every download shares.

A file is fetched under a `.part` name and resumed with a Range request after an interruption. It is
checked against the size and checksum the servers vouch for, and renamed only then:
- checksums: Content-MD5 or x-ms-blob-content-md5 (OpenAI's Azure storage; the latter is the whole
  blob's MD5 on a Range answer); X-Linked-Etag (the Hugging Face hub's sha256 of an LFS file, sent on
  its redirect to the CDN), or a 64-hex ETag from the first host. A CDN's own ETag (S3's 32-hex MD5 of
  parts) is not a checksum of the file and is ignored.
- sizes: the hub's X-Linked-Size when it names one, else Content-Range's total, else Content-Length.
  A server that sends fewer bytes than it promised is resumed; one whose promise was too long answers
  the resume with 416 and the total, which completes the file.
- a 200 answer to a Range request restarts the file from zero; a 206 for another offset does too.
- a checksum failure deletes the file and fetches it once more from zero; a second failure is an error.
- redirects are followed by hand (at most 10, http and https only) so the hub's headers on the way are
  kept, and Authorization is dropped when a redirect leaves the origin (as `requests` does), so a token
  for the hub never reaches a CDN.
- a stalled server times out (GPT2KIT_DOWNLOAD_TIMEOUT seconds without a byte, default 30) and is retried.
- durability: the file is fsync'd before the rename and its folder after, as SQLite and LevelDB do, so
  after a power loss a renamed file is whole, never empty.
urllib honours HTTPS_PROXY by itself.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("gpt2kit")
RETRIES = 5
CHUNK = 1 << 20
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)
PRIVATE_HEADERS = ("authorization", "cookie")
MIRROR_HINT = "check the name and the mirror (GPT2KIT_OPENAI_URL / HF_ENDPOINT)"


def first_retry_delay() -> float:
    """Seconds before the first retry, doubling each try (GPT2KIT_RETRY_DELAY, read at call time)."""
    return float(os.environ.get("GPT2KIT_RETRY_DELAY", "1.0"))


def read_timeout() -> float:
    """Seconds a server may stay silent before the try counts as broken (GPT2KIT_DOWNLOAD_TIMEOUT)."""
    return float(os.environ.get("GPT2KIT_DOWNLOAD_TIMEOUT", "30"))


def is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("GPT2KIT_OFFLINE", "").lower() in ("1", "true", "yes")


class _Manual(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 3xx comes back as HTTPError; open_url follows it
        return None


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urllib.parse.urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port or {"http": 80, "https": 443}.get(u.scheme)


@dataclass
class Vouched:
    """What the servers on the way said the file is: checksum and size."""

    digest: tuple[str, str] | None = None  # (algorithm, hex)
    size: int | None = None
    seen: list[str] = field(default_factory=list)  # the URLs visited


def _vouch(v: Vouched, headers, first_host: bool) -> None:
    for h in ("Content-MD5", "x-ms-blob-content-md5"):
        if headers.get(h) and v.digest is None:
            try:
                v.digest = ("md5", base64.b64decode(headers[h], validate=True).hex())
            except ValueError:
                pass
    tags = [headers.get("X-Linked-Etag")] + ([headers.get("ETag")] if first_host else [])
    for tag in tags:
        tag = (tag or "").removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", tag) and (v.digest is None or v.digest[0] != "sha256"):
            v.digest = ("sha256", tag)
    if (headers.get("X-Linked-Size") or "").isdigit() and v.size is None:
        v.size = int(headers["X-Linked-Size"])


def open_url(url: str, headers: dict[str, str], timeout: float):
    """urlopen that follows redirects itself: -> (response, what the servers vouched for)."""
    opener = urllib.request.build_opener(_Manual)  # built per call: ProxyHandler reads the environment now
    vouched, origin = Vouched(), _origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        vouched.seen.append(url)
        try:
            resp = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            _vouch(vouched, e.headers, first_host=_origin(url) == origin)
            location = e.headers.get("Location") if e.code in REDIRECTS else None
            if not location:
                e.vouched = vouched  # a 416 still says what the file is
                raise
            e.close()
            url = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise UserError(f"{vouched.seen[0]} redirected to {url}, which is not http(s); refusing it") from None
            if _origin(url) != origin:  # never hand the hub's token to another host
                headers = {k: v for k, v in headers.items() if k.lower() not in PRIVATE_HEADERS}
            continue
        _vouch(vouched, resp.headers, first_host=_origin(url) == origin)
        return resp, vouched
    raise ConnectionError(f"more than {MAX_REDIRECTS} redirects")


def classify(e: BaseException, url: str, part: Path | None = None) -> str:
    """A broken try -> the reason to log before retrying; raises UserError when retrying cannot help."""
    if isinstance(e, urllib.error.HTTPError):
        if e.code in (401, 403, 404, 410):
            raise UserError(
                f"{url} answered {e.code} {e.reason}: {MIRROR_HINT}; a private or gated hub repository needs HF_TOKEN"
            ) from None
        return f"HTTP {e.code}"
    if isinstance(e, http.client.HTTPException):  # e.g. IncompleteRead, BadStatusLine
        return type(e).__name__
    if isinstance(e, OSError):
        where = part or "the model folder"
        if isinstance(e, PermissionError) or e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UserError(
                f"no permission to write {where}; set GPT2KIT_HOME or --models-dir to a folder you can write"
            ) from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise UserError(
                f"no space left on the disk while writing {where}; free some space and run again (the download resumes)"
            ) from None
        return str(getattr(e, "reason", e))
    raise e


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` itself durable (the directory entry is data too)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp: Path, dest: Path) -> None:
    """fsync `tmp`, rename it to `dest`, fsync the folder: whole after a power loss, or not there."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    fsync_folder(dest.parent)


def write_text_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    durable_replace(tmp, path)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class _Restart(Exception):
    """The partial file is of no use (wrong checksum, another offset, a changed file): start from zero."""


@dataclass
class _Download:
    url: str
    dest: Path
    headers: dict[str, str]
    progress: bool
    expected: tuple[str, str] | None = None  # (algorithm, hex), kept across tries: a 416 or a 206 may not say
    refetched: bool = False

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    def have(self) -> int:
        return self.part.stat().st_size if self.part.is_file() else 0

    def attempt(self) -> None:
        """One request; returns with `dest` complete, or raises: _Restart, or an error worth a retry."""
        have = self.have()
        headers = {**self.headers, **({"Range": f"bytes={have}-"} if have else {})}
        try:
            resp, vouched = open_url(self.url, headers, read_timeout())
        except urllib.error.HTTPError as e:
            if e.code != 416 or not have:
                raise
            # Our part is as long as the file, or longer: a server whose Content-Length was too long ends here.
            self._vouched(getattr(e, "vouched", Vouched()), have)
            m = re.search(r"/(\d+)$", e.headers.get("Content-Range", ""))
            e.close()
            total = getattr(e, "vouched", Vouched()).size or (int(m.group(1)) if m else None)
            if total != have:
                raise _Restart(f"the server has no bytes after {have} (416)") from None
            return self._finish(have)
        with resp:
            self._vouched(vouched, have)
            have, total = self._offset(resp, have)
            total = vouched.size or total  # the hub's X-Linked-Size over what the CDN's headers claim
            _stream(resp, self.part, have, total, self.dest.name, self.progress)
        self._finish(total)

    def _vouched(self, vouched: Vouched, have: int) -> None:
        if vouched.digest and self.expected and vouched.digest != self.expected and have:
            raise _Restart("the file changed on the server since the part was fetched")
        self.expected = vouched.digest or self.expected

    def _offset(self, resp, have: int) -> tuple[int, int | None]:
        """Where this answer's bytes start in the file, and the file's size if the answer says."""
        if resp.status == 206:
            m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != have:  # appending would splice the file at the wrong place
                raise _Restart(f"asked for bytes from {have}, got {resp.headers.get('Content-Range')!r}")
            return have, int(m.group(2)) if m.group(2).isdigit() else None
        if have:
            log.info("%s: the server ignored the Range request and sent the whole file; starting over", self.dest.name)
        length = resp.headers.get("Content-Length") or ""
        return 0, int(length) if length.isdigit() else None

    def _finish(self, total: int | None) -> None:
        size = self.have()
        if total is not None and size < total:
            raise ConnectionError(f"got {size} of {total} bytes")  # resumed by the next try
        if total is not None and size > total:
            raise _Restart(f"got {size} bytes, more than the {total} promised")
        if self.expected and _digest(self.part, self.expected[0]) != self.expected[1]:
            if self.refetched:
                self.part.unlink()
                raise UserError(
                    f"{self.url} failed its {self.expected[0]} check twice (the server or the network "
                    f"corrupts it); it was deleted: try again later or from another mirror"
                )
            self.refetched = True
            raise _Restart(f"it failed its {self.expected[0]} check (corrupted on the way)")
        durable_replace(self.part, self.dest)


def fetch(
    url: str, dest: Path, *, progress: bool = True, retries: int = RETRIES, headers: dict[str, str] | None = None
) -> Path:
    """Download `url` to `dest` resumably and verified; `dest` appears only when complete and synced."""
    if dest.is_file():
        return dest
    job = _Download(url, dest, {"User-Agent": "gpt2kit", **(headers or {})}, progress)
    delay, error = first_retry_delay(), ""
    for attempt in range(1, retries + 1):
        try:
            job.attempt()
            return dest
        except _Restart as e:  # at once, with no pause: nothing is wrong with the connection
            error = str(e)
            log.warning("download of %s: %s; fetching it again from the start", dest.name, error)
            job.part.unlink(missing_ok=True)
            continue
        except (http.client.HTTPException, OSError) as e:
            error = classify(e, url, job.part)
        if attempt < retries:
            log.warning(
                "download of %s broke off (%s); retrying in %.1f s (%d/%d)",
                dest.name,
                error,
                delay,
                attempt,
                retries - 1,
            )
            time.sleep(delay)
            delay = min(delay * 2, 30)
    raise UserError(f"could not download {url} after {retries} tries ({error}); run the same command again to resume")


def _stream(resp, part: Path, have: int, total: int | None, label: str, progress: bool) -> None:
    bar = None
    if progress and (total is None or total - have >= CHUNK):  # a bar for a config.json is only noise
        from tqdm import tqdm

        bar = tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label, dynamic_ncols=True
        )
    try:
        with open(part, "ab" if have else "wb") as f:
            while True:
                block = resp.read1(CHUNK)  # what has arrived: read() would wait for 1 MB and lose it on a timeout
                if not block:
                    break
                f.write(block)
                if bar:
                    bar.update(len(block))
    finally:
        if bar:
            bar.close()


COMPLETE = ".complete"  # a model folder's marker, written last: a folder without it is never loaded


def mark_complete(folder: Path, info: dict) -> None:
    import json

    write_text_durably(folder / COMPLETE, json.dumps({**info, "time": time.time()}))


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create {folder} ({e.strerror}); set GPT2KIT_HOME or --models-dir to a folder you can write"
        ) from None
