"""A fake Hugging Face hub on 127.0.0.1 serving a tiny generated checkpoint, with injectable faults.

It answers exactly what huggingface_hub 1.33's (the worker's pin) ``HfApi.model_info``, ``HfApi.list_repo_tree``,
``get_hf_file_metadata`` and ``http_get`` / ``hf_hub_download`` call (read from that version's source):

- ``GET /api/models/{repo}/revision/{rev}`` → ``{"id", "sha", "siblings"}`` (rev: a branch or the commit);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true`` → file and directory entries with ``size``,
  ``oid`` (git blob sha1) and, for LFS files, ``lfs: {oid: sha256, size, pointerSize}``; paginated with a
  ``Link: <…>; rel="next"`` header when ``page_size`` is set;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` → ``X-Repo-Commit``, ``ETag`` (the blob sha1, or the
  sha256 for LFS files, also in ``X-Linked-Etag``), ``X-Linked-Size``, ``Content-Length``,
  ``Accept-Ranges``; ``Range: bytes=N-`` gets ``206`` with ``Content-Range``.

Point a client at it with ``HF_ENDPOINT=hub.url`` (or ``endpoint=``). Faults, set on :attr:`faults`:
``require_token`` (401 without ``Authorization: Bearer <it>``), ``drop_after`` (path → (offset, times): close
the connection once the file's byte ``offset`` is sent, ``times`` times), ``stall_after`` (path → offset: send
up to ``offset``, hang until :meth:`release_stalls`, then send the rest), ``truncate`` (path → n: serve only n
bytes of a file the tree and HEAD call longer), ``omit`` (paths absent from the repo although the index names them),
``corrupt`` (paths served with one byte flipped). :attr:`bytes_sent` counts body bytes per path.

``python -m tests.helpers.fakehub --measure --size-mb 2048`` measures the real download over loopback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "AWQ_QUANTIZATION",
    "FP8_QUANTIZATION",
    "GPTQ_QUANTIZATION",
    "Checkpoint",
    "FakeHub",
    "Faults",
    "gguf_only_checkpoint",
    "safetensors_bytes",
    "tiny_checkpoint",
]

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_CHUNK = 1024 * 1024


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A safetensors file: 8-byte little-endian header length, JSON header, then the tensors' bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + b"".join(d for _, _, d in tensors.values())


@dataclass
class Checkpoint:
    """Files of a generated repo on disk; ``lfs`` names the files stored through LFS (with a sha256)."""

    root: Path
    files: dict[str, int] = field(default_factory=dict)  # path → size
    lfs: set[str] = field(default_factory=set)

    def add(self, path: str, data: bytes, lfs: bool = False) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.files[path] = len(data)
        if lfs:
            self.lfs.add(path)

    def add_large_shard(self, path: str, size: int, tensor: str) -> None:
        """A well-formed shard of about ``size`` bytes holding one tensor, written in chunks (throughput runs)."""
        rows = max(1, size // 4096)
        header = {"__metadata__": {"format": "pt"},
                  tensor: {"dtype": "F32", "shape": [rows, 1024], "data_offsets": [0, rows * 4096]}}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        block = bytes(range(256)) * (_CHUNK // 256)
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            left = rows * 4096
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
        self.files[path] = target.stat().st_size
        self.lfs.add(path)

    def shards(self) -> list[str]:
        return sorted(p for p in self.files if p.endswith(".safetensors") and "/" not in p)

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with (self.root / path).open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def blob_sha1(self, path: str) -> str:
        data = self._pointer(path) if path in self.lfs else (self.root / path).read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id

    def _pointer(self, path: str) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256(path)}\n"
                f"size {self.files[path]}\n").encode()

    def needed(self) -> list[str]:
        """What the engine needs of this repo (the generator knows which files are the junk)."""
        return sorted(p for p in self.files if not _JUNK.search(p))


_JUNK = re.compile(r"(^original/|^onnx/|\.bin$|\.pth$|\.gguf$|\.onnx$|^README\.md$|^\.gitattributes$|\.png$)")


# config.json's quantization_config of the FP8 release (block-wise E4M3, as on the model card).
FP8_QUANTIZATION = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                    "weight_block_size": [128, 128]}
AWQ_QUANTIZATION = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True}
GPTQ_QUANTIZATION = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}


def tiny_checkpoint(root: Path, shards: int = 3, rows: int = 64,
                    quantization: dict[str, Any] | None = FP8_QUANTIZATION) -> Checkpoint:
    """A MiMo-shaped repo in miniature: sharded safetensors + index, configs, tokenizer, chat template,
    remote code — and the files a download must skip (PyTorch .bin, original/ .pth, GGUF, ONNX, images).
    ``quantization``: config.json's quantization_config (the FP8 release's by default; None: a BF16 copy)."""
    ckpt = Checkpoint(root)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for j in range(2):
            tensor = f"model.layers.{i}.mlp.experts.{j}.weight"
            data = bytes((i * 31 + j * 7 + k) % 256 for k in range(rows * 16 * 2))
            tensors[tensor] = ("BF16", [rows, 16], data)
            weight_map[tensor] = name
            total += len(data)
        ckpt.add(name, safetensors_bytes(tensors), lfs=True)
    ckpt.add("model.safetensors.index.json",
             json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode())
    config: dict[str, Any] = {"architectures": ["MiMoV2ForCausalLM"], "model_type": "mimo_v2",
                              "auto_map": {"AutoConfig": "configuration_mimo.MiMoConfig"},
                              "num_hidden_layers": shards, "torch_dtype": "bfloat16"}
    if quantization is not None:
        config["quantization_config"] = quantization
    ckpt.add("config.json", json.dumps(config).encode())
    ckpt.add("generation_config.json", b'{"temperature": 0.6}')
    ckpt.add("tokenizer.json", json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}}).encode(),
             lfs=True)
    ckpt.add("tokenizer_config.json", b'{"model_max_length": 1048576}')
    ckpt.add("chat_template.jinja", b"{% for m in messages %}{{ m.content }}{% endfor %}")
    ckpt.add("configuration_mimo.py", b"class MiMoConfig: pass\n")
    ckpt.add("modeling_mimo.py", b"class MiMoV2ForCausalLM: pass\n")
    # Never needed by the engine:
    ckpt.add("README.md", b"# tiny MiMo\n")
    ckpt.add(".gitattributes", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    ckpt.add("pytorch_model.bin", b"\x80" * 4096, lfs=True)
    ckpt.add("original/consolidated.00.pth", b"\x00" * 4096, lfs=True)
    ckpt.add("model-q4.gguf", b"GGUF" * 1024, lfs=True)
    ckpt.add("onnx/model.onnx", b"\x08" * 2048, lfs=True)
    ckpt.add("figures/benchmark.png", b"\x89PNG" * 256, lfs=True)
    return ckpt


def gguf_only_checkpoint(root: Path) -> Checkpoint:
    """A repo of GGUF files only (llama.cpp's quantised copies), as community re-quantisations publish them."""
    ckpt = Checkpoint(root)
    ckpt.add("README.md", b"# tiny MiMo GGUF\n")
    ckpt.add("config.json", b'{"model_type": "mimo_v2"}')
    for quant in ("Q4_K_M", "Q8_0"):
        ckpt.add(f"MiMo-V2.5-{quant}.gguf", b"GGUF" + quant.encode() * 512, lfs=True)
    return ckpt


@dataclass
class Faults:
    require_token: str | None = None
    drop_after: dict[str, tuple[int, int]] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    truncate: dict[str, int] = field(default_factory=dict)
    omit: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)


class FakeHub:
    """One repo (``repo``) at one commit; start with ``with FakeHub(ckpt) as hub:`` or :meth:`start`."""

    def __init__(self, checkpoint: Checkpoint, repo: str = "XiaomiMiMo/MiMo-V2.5-Tiny", branch: str = "main",
                 commit: str = COMMIT, page_size: int | None = None) -> None:
        self.checkpoint = checkpoint
        self.repo = repo
        self.branch = branch
        self.commit = commit
        self.page_size = page_size
        self.faults = Faults()
        self.bytes_sent: Counter[str] = Counter()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.auth_seen: list[str] = []  # Authorization headers received (to check the token is sent)
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._sha256 = {p: checkpoint.sha256(p) for p in checkpoint.lfs}
        self._sha1 = {p: checkpoint.blob_sha1(p) for p in checkpoint.files}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakehub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def release_stalls(self) -> None:
        self.faults.stall_after.clear()
        self._release.set()

    def file_requests(self, method: str = "GET") -> Counter[str]:
        with self._lock:
            return Counter(p for m, p, _ in self.requests if m == method)

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_sent.clear()
            self.requests.clear()
            self.auth_seen.clear()

    # -- the repo as the hub describes it ---------------------------------------------------------

    def _listed(self) -> list[str]:
        return sorted(p for p in self.checkpoint.files if p not in self.faults.omit)

    def _tree(self, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path in self._listed():
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            if "/" in rest:
                top = (prefix + "/" if prefix else "") + rest.split("/")[0]
                dirs.add(top)
                if not recursive:
                    continue
            entry: dict[str, Any] = {"type": "file", "path": path, "size": self.checkpoint.files[path],
                                     "oid": self._sha1[path]}
            if path in self.checkpoint.lfs:
                entry["size"] = len(self.checkpoint._pointer(path))
                entry["lfs"] = {"oid": self._sha256[path], "size": self.checkpoint.files[path], "pointerSize":
                                entry["size"]}
            entries.append(entry)
        entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}  # noqa: S324
                    for d in sorted(dirs)]
        return entries

    # -- HTTP -------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            def _error(self, status: int, code: str, message: str) -> None:
                self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message,
                                                        "X-Repo-Commit": hub.commit})

            def _serve(self, head: bool) -> None:
                url = urlsplit(self.path)
                path = unquote(url.path)
                with hub._lock:
                    hub.requests.append((self.command, path, self.headers.get("Range")))
                    hub.auth_seen.append(self.headers.get("Authorization") or "")
                want = hub.faults.require_token
                if want is not None and self.headers.get("Authorization") != f"Bearer {want}":
                    self._error(401, "GatedRepo", "Invalid credentials in Authorization header")
                    return
                repo = hub.repo
                api = f"/api/models/{repo}/"
                if path.startswith(api + "revision/"):
                    self._model_info(path[len(api + "revision/"):])
                elif path.startswith(api + "tree/"):
                    self._tree(path[len(api + "tree/"):], parse_qs(url.query))
                elif path.startswith(f"/{repo}/resolve/"):
                    rev, _, file = path[len(f"/{repo}/resolve/"):].partition("/")
                    self._file(rev, file, head)
                else:
                    self._error(404, "RepoNotFound", f"no route {path}")

            def _revision_ok(self, rev: str) -> bool:
                if rev in (hub.branch, hub.commit):
                    return True
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return False

            def _model_info(self, rev: str) -> None:
                if self._revision_ok(rev):
                    self._json(200, {"id": hub.repo, "modelId": hub.repo, "sha": hub.commit, "private": False,
                                     "siblings": [{"rfilename": p} for p in hub._listed()]})

            def _tree(self, rest: str, query: dict[str, list[str]]) -> None:
                rev, _, prefix = rest.partition("/")
                if not self._revision_ok(rev):
                    return
                recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
                entries = hub._tree(prefix, recursive)
                headers = {}
                if hub.page_size:
                    cursor = int((query.get("cursor") or ["0"])[0])
                    page = entries[cursor:cursor + hub.page_size]
                    if cursor + hub.page_size < len(entries):
                        nxt = (f"{hub.url}/api/models/{hub.repo}/tree/{rest}?recursive={str(recursive).lower()}"
                               f"&expand=false&cursor={cursor + hub.page_size}")
                        headers["Link"] = f'<{nxt}>; rel="next"'
                    entries = page
                self._json(200, entries, headers)

            def _file(self, rev: str, file: str, head: bool) -> None:
                if not self._revision_ok(rev):
                    return
                ckpt, faults = hub.checkpoint, hub.faults
                if file not in ckpt.files or file in faults.omit:
                    self._error(404, "EntryNotFound", f"{file} does not exist at {rev}")
                    return
                size = ckpt.files[file]
                lfs = file in ckpt.lfs
                etag = hub._sha256[file] if lfs else hub._sha1[file]
                served = faults.truncate.get(file, size)
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and not head:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                    if not m:
                        self._error(416, "BadRange", rng)
                        return
                    start = int(m.group(1))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                end = min(size, served)  # exclusive
                length = max(0, end - start)
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{etag}"')
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(size))
                if head:
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    return
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self._body(file, start, end)

            def _body(self, file: str, start: int, end: int) -> None:
                faults = hub.faults
                drop = faults.drop_after.get(file)
                stall = faults.stall_after.get(file)
                if drop is None and stall is None and file not in faults.corrupt:
                    # No fault on this file: zero-copy from the page cache, as a real CDN would be quick.
                    self.wfile.flush()
                    with (hub.checkpoint.root / file).open("rb") as f:
                        try:
                            sent = self.connection.sendfile(f, start, end - start)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                    with hub._lock:
                        hub.bytes_sent[file] += sent
                    return
                with (hub.checkpoint.root / file).open("rb") as f:
                    f.seek(start)
                    pos = start
                    while pos < end:
                        limit = end
                        if drop is not None and drop[1] > 0 and pos <= drop[0] < end:
                            limit = drop[0]
                        if stall is not None and pos <= stall < end:
                            limit = min(limit, stall)
                        if pos == limit:
                            if stall is not None and pos == stall:
                                if file in faults.stall_after:
                                    hub._release.wait(60)  # then carry on, as a network that recovers
                                    if _peer_gone(self.connection):
                                        return  # the client was killed meanwhile: nothing more is sent
                                stall = None
                                continue
                            if drop is not None:
                                with hub._lock:
                                    faults.drop_after[file] = (drop[0], drop[1] - 1)
                                self.close_connection = True
                                self.connection.shutdown(socket.SHUT_RDWR)
                                return
                        chunk = f.read(min(_CHUNK, limit - pos))
                        if not chunk:
                            break
                        if file in faults.corrupt and pos == 0:
                            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                        try:
                            self.wfile.write(chunk)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        with hub._lock:
                            hub.bytes_sent[file] += len(chunk)
                        pos += len(chunk)

        return Handler


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the client closed the connection (a killed process' sockets are closed by its kernel); a
    chunk written to it now would still count as sent before the write fails."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _measure(size_mb: int, shards: int, workers: int) -> None:
    """Start a hub with ``shards`` shards totalling ``size_mb`` MB and time the real CLI downloading them."""
    work = Path(tempfile.mkdtemp(prefix="fakehub-measure-"))
    try:
        ckpt = tiny_checkpoint(work / "repo", shards=shards)
        weight_map = {}
        for i, name in enumerate(ckpt.shards()):
            ckpt.add_large_shard(name, size_mb * 1024 * 1024 // shards, f"big.{i}.weight")
            weight_map[f"big.{i}.weight"] = name
        ckpt.add("model.safetensors.index.json", json.dumps({"metadata": {}, "weight_map": weight_map}).encode())
        total = sum(ckpt.files[p] for p in ckpt.needed())
        with FakeHub(ckpt) as hub:
            dest = work / "dest"
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "mimo_worker.weights", "download", "--repo", hub.repo,
                            "--revision", "main", "--dest", str(dest), "--workers", str(workers)],
                           check=True, env={"HF_ENDPOINT": hub.url, "PATH": "/usr/bin:/bin",
                                            "HF_HUB_DISABLE_TELEMETRY": "1"})
            seconds = time.monotonic() - started
        print(f"downloaded {total / 1e9:.3f} GB ({shards} shards, {workers} workers, sha256 checked) over "
              f"loopback in {seconds:.2f} s: {total / seconds / 1e6:.0f} MB/s (process start and verify included)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the fake hub; --measure times a real download through it")
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8)
    opts = parser.parse_args()
    if opts.measure:
        _measure(opts.size_mb, opts.shards, opts.workers)
    else:
        with tempfile.TemporaryDirectory() as tmp, FakeHub(tiny_checkpoint(Path(tmp))) as hub:
            print(f"HF_ENDPOINT={hub.url}  repo {hub.repo}; Ctrl-C stops", flush=True)
            threading.Event().wait()
