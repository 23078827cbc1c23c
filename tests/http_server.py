"""A real HTTP server on 127.0.0.1 for the download tests, with faults on demand.

It serves files from memory with Range support and the checksum headers real servers send
(Azure's Content-MD5, the Hugging Face hub's sha256 ETag), and can cut a connection halfway,
answer 404, send a wrong checksum, or trickle bytes slowly.
"""
import base64
import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.checksum: dict[str, str] = {}  # path -> "md5" | "etag"
        self.cut_once: set[str] = set()  # send half of these, then drop the connection (once)
        self.missing: set[str] = set()
        self.bad_checksum: set[str] = set()
        self.slow: set[str] = set()
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path
                server.log.append((path, self.headers.get("Range")))
                if path in server.missing or path not in server.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files[path]
                start = 0
                m = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                digest_source = data + (b"x" if path in server.bad_checksum else b"")
                kind = server.checksum.get(path, "md5")
                if kind == "md5":
                    self.send_header("Content-MD5", base64.b64encode(hashlib.md5(digest_source).digest()).decode())
                elif kind == "etag":
                    self.send_header("ETag", f'"{hashlib.sha256(digest_source).hexdigest()}"')
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.cut_once:
                    server.cut_once.discard(path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if path in server.slow:
                    for i in range(0, len(body), 4096):
                        self.wfile.write(body[i:i + 4096])
                        time.sleep(0.002)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
