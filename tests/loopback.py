"""A tiny HTTP server on 127.0.0.1 for download tests: serves bytes from a dict, counts requests, can cut a
response short or refuse it, and stops by itself (after `max_requests`, or `lifetime_s` seconds)."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    def __init__(self, files: dict[str, bytes], max_requests: int = 40, lifetime_s: float = 120.0):
        self.files = dict(files)          # URL path ("/a/b.pdparams") -> body
        self.truncate: set[str] = set()   # paths answered with a full Content-Length but half the body
        self.refuse: dict[str, int] = {}  # path -> HTTP status to answer instead
        self.requests: list[str] = []
        self.max_requests = max_requests
        self.lifetime_s = lifetime_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                if len(server.requests) > server.max_requests:
                    self.send_error(503, "request budget of the test server spent")
                    return
                if self.path in server.refuse:
                    self.send_error(server.refuse[self.path])
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.truncate else body)
                self.close_connection = True

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "LoopbackServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(self.lifetime_s, self.httpd.shutdown)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
