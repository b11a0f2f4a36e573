"""A real S3 API on 127.0.0.1 for tests and benchmarks: moto's server, behind a small HTTP proxy
that counts the requests it forwards and can delay each one (a slow link).

Clients (s3fs, botocore) talk to the proxy; nothing listens or connects anywhere but 127.0.0.1.
The connection settings travel in the environment, as a user's would (:meth:`LocalS3.env`).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.server import ThreadedMotoServer

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "NO_PROXY": "127.0.0.1",
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "proxy-connection",
    "upgrade",
    "expect",
}


class LocalS3:
    """moto's S3 server and the proxy in front of it, both on 127.0.0.1 (ports the system
    picks). ``requests`` counts (method, path) pairs forwarded; ``latency`` seconds are slept
    before forwarding each request."""

    def __init__(self, latency: float = 0.0) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.latency = latency
        self.requests: Counter = Counter()
        self._lock = threading.Lock()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._proxy: ThreadingHTTPServer | None = None

    def start(self) -> LocalS3:
        self._moto.start()
        backend = self._moto.get_host_and_port()
        self._proxy = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, backend))
        self._proxy.daemon_threads = True
        threading.Thread(target=self._proxy.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
        self._moto.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._proxy.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """What a user sets to reach this server: credentials and the endpoint (botocore reads
        ``AWS_ENDPOINT_URL_S3``)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def count(self, method: str, prefix: str = "") -> int:
        """Requests of ``method`` forwarded so far to paths starting with ``prefix``."""
        with self._lock:
            return sum(
                n for (m, p), n in self.requests.items() if m == method and p.startswith(prefix)
            )

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests[(method, path)] += 1


def _handler(server: LocalS3, backend: tuple[str, int]) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients expect of S3

        def log_message(self, *args) -> None:
            pass

        def _forward(self) -> None:
            server._record(self.command, self.path.split("?")[0])
            if server.latency:
                time.sleep(server.latency)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream = http.client.HTTPConnection(*backend, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            self.send_response_only(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                    self.send_header(key, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Forward
