"""Real HTTP servers on 127.0.0.1 for the download tests, with faults on demand.

`FileServer` serves files from memory with Range support and the checksum headers real servers send
(Azure's Content-MD5, the Hugging Face hub's sha256 ETag, S3's MD5 ETag), and redirects. Faults, per
path, are a queue taken one per request (`faults[path] = ["corrupt"]` once, `["corrupt"] * 9` always):
  cut           send half the body, then drop the connection
  corrupt       flip one byte in the middle of the body
  short_length  Content-Length says 100 bytes fewer than the body it sends
  long_length   Content-Length says 100 bytes more, then the connection closes
  ignore_range  answer a Range request with 200 and the whole file
  wrong_offset  answer a Range request with 206 from byte 0
  stall         send half the body, then go silent (until the server closes, at most 5 s)
`HubMirror` lays two of them out like huggingface.co: the API's listing, `resolve` URLs on the hub,
and LFS files redirected (302, with X-Linked-Etag and X-Linked-Size) to a CDN on another port and
host name (`localhost`), as the real hub redirects to its CDN.
"""

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote


class FileServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.files: dict[str, bytes] = {}
        self.checksum: dict[str, str] = {}  # path -> "md5" (default) | "etag" (sha256) | "s3" (md5 ETag) | "none"
        self.headers: dict[str, dict[str, str]] = {}  # path -> extra headers
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}  # path -> (Location, extra headers)
        self.faults: dict[str, list[str]] = {}
        self.cut_once: set[str] = set()  # send half of these, then drop the connection (once)
        self.missing: set[str] = set()
        self.bad_checksum: set[str] = set()
        self.slow: set[str] = set()
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, every request header)
        self.answers: list[tuple[str, int]] = []  # (path, status)
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range")))
                server.requests.append((self.path, dict(self.headers.items())))
                server.answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _status(self, h, code: int, headers: dict[str, str]) -> None:
        self.answers.append((h.path, code))
        h.send_response(code)
        for k, v in headers.items():
            h.send_header(k, v)

    def answer(self, h) -> None:
        path = h.path
        queue = self.faults.get(path)
        fault = queue.pop(0) if queue else None
        if path in self.redirects:
            location, extra = self.redirects[path]
            self._status(h, 302, {"Location": location, "Content-Length": "0", **extra})
            h.end_headers()
            return
        if path in self.missing or path not in self.files:
            self._status(h, 404, {"Content-Length": "0"})
            h.end_headers()
            return
        data = self.files[path]
        m = re.match(r"bytes=(\d+)-", h.headers.get("Range") or "")
        start = int(m.group(1)) if m and fault != "ignore_range" else 0
        if m and fault != "ignore_range":
            if start >= len(data):
                self._status(h, 416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"})
                h.end_headers()
                return
            if fault == "wrong_offset":
                start = 0
            self._status(h, 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        else:
            self._status(h, 200, {})
        self._checksum_headers(h, path, data)
        self._body(h, path, data[start:], fault)

    def _checksum_headers(self, h, path: str, data: bytes) -> None:
        digest_source = data + (b"x" if path in self.bad_checksum else b"")
        kind = self.checksum.get(path, "md5")
        if kind == "md5":
            h.send_header("Content-MD5", base64.b64encode(hashlib.md5(digest_source).digest()).decode())
        elif kind == "etag":
            h.send_header("ETag", f'"{hashlib.sha256(digest_source).hexdigest()}"')
        elif kind == "s3":
            h.send_header("ETag", f'"{hashlib.md5(digest_source).hexdigest()}"')
        for k, v in self.headers.get(path, {}).items():
            h.send_header(k, v)

    def _body(self, h, path: str, body: bytes, fault: str | None) -> None:
        if fault == "corrupt":
            i = len(body) // 2
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]
        length = {"short_length": len(body) - 100, "long_length": len(body) + 100}.get(fault, len(body))
        h.send_header("Content-Length", str(max(length, 0)))
        h.end_headers()
        if path in self.cut_once or fault in ("cut", "stall"):
            self.cut_once.discard(path)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            if fault == "stall":
                self.closing.wait(5)
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if path in self.slow:
            for i in range(0, len(body), 4096):
                h.wfile.write(body[i : i + 4096])
                time.sleep(0.002)
            return
        h.wfile.write(body)
        if fault in ("short_length", "long_length"):  # the rest of a lie must not pass for the next answer
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class HubMirror:
    """huggingface.co's layout on two local servers: the hub (API, resolve) and its CDN (LFS files)."""

    LFS = (".safetensors", ".bin", ".h5", ".msgpack")

    def __init__(self):
        self.hub = FileServer()
        self.cdn = FileServer(host="localhost")  # another host name and port, as cdn-lfs.huggingface.co is
        self.url = self.hub.url

    def add_repo(self, repo: str, files: dict[str, bytes], revision: str = "main", sha: str | None = None) -> str:
        """Publish `files` as `repo` at `revision`; returns the commit sha the listing names."""
        sha = sha or hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        listing = {
            "id": repo,
            "modelId": repo,
            "sha": sha,
            "private": False,
            "siblings": [{"rfilename": name} for name in sorted(files)],
        }
        self.hub.files[f"/api/models/{repo}/revision/{quote(revision, safe='')}"] = json.dumps(listing).encode()
        self.hub.checksum[f"/api/models/{repo}/revision/{quote(revision, safe='')}"] = "none"
        for name, data in files.items():
            for rev in {revision, sha}:
                self._add_file(f"/{repo}/resolve/{quote(rev, safe='')}/{name}", name, data)
        return sha

    def _add_file(self, path: str, name: str, data: bytes) -> None:
        sha256 = hashlib.sha256(data).hexdigest()
        if not name.endswith(self.LFS):  # a git file: the hub serves it, ETag its git blob id (not a sha256)
            self.hub.files[path] = data
            self.hub.checksum[path] = "none"
            self.hub.headers[path] = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            return
        cdn_path = f"/repos/{sha256[:2]}/{sha256}"
        self.cdn.files[cdn_path] = data
        self.cdn.checksum[cdn_path] = "s3"
        self.hub.redirects[path] = (
            self.cdn.url + cdn_path,
            {"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)), "ETag": f'"{sha256}"'},
        )

    def cdn_path(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        return f"/repos/{sha256[:2]}/{sha256}"

    def close(self):
        self.hub.close()
        self.cdn.close()
