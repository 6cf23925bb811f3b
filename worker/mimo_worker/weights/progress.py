"""Progress of a download or a verify: one small JSON status file, Prometheus metrics, and an HTTP view.

The status file (``<dest>/.mimo/status.json`` unless ``--status-file`` says otherwise) is for a person with
a shell on the volume. The operator reads the same document over HTTP from the pod's IP
(``GET /status``), the way it reads a gang head's drain state: the download pod then needs no API access
and no service-account token. ``GET /metrics`` serves the same numbers for Prometheus.

Fields (camelCase, as in the MiMoDeployment status): ``phase`` (Listing, Downloading, Verifying,
Complete, Failed), ``repo``, ``revision``, ``commit``, ``bytesTotal``, ``bytesDone``, ``bytesPerSecond``
(over the last ``RATE_WINDOW_SECONDS``), ``etaSeconds`` (null while the rate is unknown), ``filesTotal``,
``filesDone``, ``message``, ``updatedAt`` (RFC 3339).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge

from mimo_worker.weights.layout import write_json_atomic

__all__ = ["RATE_WINDOW_SECONDS", "Progress", "StatusServer"]

log = logging.getLogger("mimo.weights")

# The rate is the bytes of the last 10 s: long enough to smooth over one file finishing, short enough that
# the ETA follows a change of bandwidth within a reconcile or two.
RATE_WINDOW_SECONDS = 10.0


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Progress:
    """Thread-safe counters of one run; download threads call :meth:`add` for every chunk written."""

    def __init__(self, repo: str, revision: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.repo = repo
        self.revision = revision
        self.commit = ""
        self.phase = "Listing"
        self.message = ""
        self.bytes_total = 0
        self.bytes_done = 0
        self.files_total = 0
        self.files_done = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self.registry = CollectorRegistry()
        labels = ["repo", "revision"]
        self._g_total = Gauge(
            "mimo_weights_bytes_total", "Bytes of the files the engine needs", labels, registry=self.registry
        )
        self._g_done = Gauge(
            "mimo_weights_bytes_done", "Bytes present and complete or in transfer", labels, registry=self.registry
        )
        self._g_rate = Gauge(
            "mimo_weights_bytes_per_second",
            f"Transfer rate over the last {RATE_WINDOW_SECONDS:g} s",
            labels,
            registry=self.registry,
        )
        self._g_eta = Gauge(
            "mimo_weights_eta_seconds", "Seconds left at the current rate (-1: unknown)", labels, registry=self.registry
        )
        self._g_files = Gauge("mimo_weights_files_done", "Files complete", labels, registry=self.registry)
        self._g_complete = Gauge(
            "mimo_weights_complete",
            "1 once every file is verified and the marker written",
            labels,
            registry=self.registry,
        )

    # -- updates from the download ------------------------------------------------------------------

    def start(self, commit: str, bytes_total: int, files_total: int, bytes_present: int, files_present: int) -> None:
        with self._lock:
            self.commit = commit
            self.bytes_total = bytes_total
            self.files_total = files_total
            self.bytes_done = bytes_present
            self.files_done = files_present
            self.phase = "Downloading"
            self._samples.clear()
            self._samples.append((self._clock(), self.bytes_done))

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def set_phase(self, phase: str, message: str = "") -> None:
        with self._lock:
            self.phase = phase
            self.message = message

    # -- reading -----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The status document; also records a rate sample, so call it about once a second."""
        with self._lock:
            now = self._clock()
            self._samples.append((now, self.bytes_done))
            while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
                self._samples.popleft()
            (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
            rate = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
            left = max(0, self.bytes_total - self.bytes_done)
            eta: float | None = 0.0 if left == 0 else (left / rate if rate > 0 else None)
            doc = {
                "phase": self.phase,
                "repo": self.repo,
                "revision": self.revision,
                "commit": self.commit,
                "bytesTotal": self.bytes_total,
                "bytesDone": self.bytes_done,
                "bytesPerSecond": round(rate, 1),
                "etaSeconds": None if eta is None else round(eta, 1),
                "filesTotal": self.files_total,
                "filesDone": self.files_done,
                "message": self.message,
                "updatedAt": _now_iso(),
            }
            total, done, files, complete = self.bytes_total, self.bytes_done, self.files_done, self.phase == "Complete"
        labels = (self.repo, self.revision)
        self._g_total.labels(*labels).set(total)
        self._g_done.labels(*labels).set(done)
        self._g_rate.labels(*labels).set(rate)
        self._g_eta.labels(*labels).set(-1 if eta is None else eta)
        self._g_files.labels(*labels).set(files)
        self._g_complete.labels(*labels).set(1 if complete else 0)
        return doc


class StatusServer:
    """Writes the status file every ``interval`` seconds and, with an address, serves /status and /metrics."""

    def __init__(
        self,
        progress: Progress,
        status_file: Path | None,
        address: str | None = None,
        port: int = 0,
        interval: float = 1.0,
    ) -> None:
        self.progress = progress
        self.status_file = status_file
        self.interval = interval
        self._stop = threading.Event()
        self._latest: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="weights-status", daemon=True)
        self._http: ThreadingHTTPServer | None = None
        if address is not None:
            try:
                self._http = ThreadingHTTPServer((address, port), self._handler())
                self._http.daemon_threads = True
            except OSError as e:
                # The download matters more than its progress report: carry on with the status file only.
                log.warning("cannot serve progress on %s:%d (%s); the status file still has it", address, port, e)

    @property
    def port(self) -> int | None:
        return None if self._http is None else int(self._http.server_address[1])

    def __enter__(self) -> StatusServer:
        self.publish()
        self._thread.start()
        if self._http is not None:
            threading.Thread(target=self._http.serve_forever, name="weights-http", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.publish()  # the final phase (Complete or Failed) is always written
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def publish(self) -> dict[str, Any]:
        doc = self.progress.snapshot()
        self._latest = doc
        if self.status_file is not None:
            # A full or read-only volume must not stop the download itself; the space check reports it.
            with contextlib.suppress(OSError):
                write_json_atomic(self.status_file, doc)
        return doc

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/status":
                    body = json.dumps(server._latest or server.progress.snapshot()).encode()
                    content_type = "application/json"
                elif self.path.split("?")[0] == "/metrics":
                    body = prometheus_client.generate_latest(server.progress.registry)
                    content_type = prometheus_client.CONTENT_TYPE_LATEST
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the operator polls every few seconds; access lines would drown the download's log

        return Handler
