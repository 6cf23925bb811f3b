"""Download one checkpoint from a Hugging Face hub into a weights cache directory, and verify it.

The order matters for a terabyte: resolve the revision to a commit; list the repo's tree (sizes and LFS
sha256 — the hub's own file metadata); keep only what the engine needs; write the manifest; fetch the
small files first and refuse a checkpoint whose index names shards the repo lacks; check free space
against what is still missing; then fetch the shards in parallel, largest first, hashing as bytes arrive;
verify the whole directory; and only then write the completion marker.

Resume is byte-level: each file streams into ``.mimo/partial/<name>.<etag>.part`` through
huggingface_hub's own ``http_get`` with ``resume_size`` (a Range request), and moves into place only when
whole and hashed. A killed pod leaves its ``.part`` files; the next pod reads them back (to rebuild the
running hash) and asks the hub only for the rest. (huggingface_hub 1.33's ``hf_hub_download`` deletes its
partial file on any failure, so it resumes per file only; it is still used for files the hub serves through
Xet storage, whose client has its own chunk-level transfer.)

The token comes from the ``HF_TOKEN`` environment variable (a Secret by reference in the pod) and is
handed to huggingface_hub explicitly; nothing here logs it, and huggingface_hub logs no header values.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import quote

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RevisionNotFoundError
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._headers import build_hf_headers
from huggingface_hub.utils._runtime import is_xet_available
from huggingface_hub.utils.tqdm import disable_progress_bars

from mimo_worker.weights import space
from mimo_worker.weights.errors import (
    InvalidCheckpoint,
    NotEnoughSpace,
    Unauthorized,
    UnsupportedPrecision,
    VerificationFailed,
    WeightsError,
)
from mimo_worker.weights.layout import (
    COMPLETE_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    META_DIR,
    PARTIAL_DIR,
    FileEntry,
    Manifest,
    engine_needs,
    read_json,
    write_json_atomic,
)
from mimo_worker.weights.progress import Progress
from mimo_worker.weights.verify import check_index, config_precision_problem, verify_dir

__all__ = ["DownloadOptions", "DownloadResult", "download", "read_complete", "token_from_env"]

log = logging.getLogger("mimo.weights")

HASHES_FILE = f"{META_DIR}/hashes.json"
LOCK_FILE = f"{META_DIR}/lock"
# Kept free on the volume beyond the checkpoint: the status file, the engine's own small writes, and a
# filesystem that degrades when full.
DEFAULT_RESERVE_BYTES = 1_000_000_000


@dataclass(frozen=True)
class DownloadOptions:
    workers: int = 8  # files in flight at once (each one HTTP stream)
    hashes: bool = True  # check every LFS sha256 the hub gives (computed while the bytes arrive)
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    endpoint: str | None = None  # the hub; None: HF_ENDPOINT at call time, else huggingface.co
    force: bool = False  # ignore a completion marker and check everything with the hub again
    precision: str | None = None  # what the plan sized (spec.model.precision); None: not checked
    # huggingface_hub hands http_get's bytes over in chunks of this size; a chunk not yet handed over when a
    # connection drops or the pod dies is fetched again. Its default, 10 MiB, is also slower on loopback.
    read_chunk_bytes: int = 1024 * 1024
    free_bytes: Callable[[Path], int] = field(default=space.free_bytes)  # the free-space injection point


@dataclass(frozen=True)
class DownloadResult:
    manifest: Manifest
    bytes_fetched: int  # bytes received from the hub by this run
    seconds: float
    already_complete: bool  # the marker was there and the files still matched it: nothing fetched

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_fetched / self.seconds if self.seconds > 0 else 0.0


def token_from_env() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def read_complete(dest: Path) -> dict[str, Any] | None:
    """The completion marker of ``dest``, or None."""
    return read_json(dest / COMPLETE_FILE)


class _Stopped(Exception):
    """Another file failed: stop this transfer (its .part stays for the next run)."""


class _Sink:
    """The file object ``http_get`` writes into: appends to the .part file, hashes and counts every byte."""

    def __init__(self, f: BinaryIO, digest: Any, progress: Progress, stop: threading.Event) -> None:
        self.f = f
        self.digest = digest
        self.progress = progress
        self.stop = stop
        self.written = 0

    def write(self, data: bytes) -> int:
        if self.stop.is_set():
            raise _Stopped()
        self.f.write(data)
        self.f.flush()  # on disk, not in a buffer, when the pod is killed: the next run resumes from here
        if self.digest is not None:
            self.digest.update(data)
        self.written += len(data)
        self.progress.add(len(data))
        return len(data)

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        # http_get seeks back only when a server ignored our Range and restarts from byte 0.
        if (offset, whence) != (0, 0):
            raise OSError(f"unexpected seek to {offset} (whence {whence}) in a resumed download")
        self.progress.add(-self.f.tell())
        self.digest = hashlib.sha256() if self.digest is not None else None
        return self.f.seek(0)

    def truncate(self, size: int | None = None) -> int:
        return self.f.truncate(size)


def _part_path(dest: Path, entry: FileEntry, etag: str) -> Path:
    return dest / PARTIAL_DIR / f"{quote(entry.path, safe='')}.{etag[:16]}.part"


def _hub_error(error: HfHubHTTPError, what: str) -> WeightsError:
    status = error.response.status_code if error.response is not None else 0
    if status in (401, 403) or type(error).__name__ in ("GatedRepoError", "RepositoryNotFoundError"):
        return Unauthorized(
            f"the hub refused access to {what} (HTTP {status}): a private or gated repo needs "
            "a token with access in the Secret spec.model.tokenSecretRef names"
        )
    return WeightsError(f"the hub answered HTTP {status} for {what}")


class _Run:
    """One download: the state the worker threads share."""

    def __init__(
        self, repo: str, revision: str, dest: Path, token: str | None, options: DownloadOptions, progress: Progress
    ) -> None:
        self.repo = repo
        self.revision = revision
        self.dest = dest
        self.token = token
        self.options = options
        self.progress = progress
        self.endpoint = options.endpoint or os.environ.get("HF_ENDPOINT") or None
        self.stop = threading.Event()
        self.fetched = 0
        self._lock = threading.Lock()
        self.hashes: dict[str, str] = {}

    # -- the hub ---------------------------------------------------------------------------------

    def list_files(self) -> Manifest:
        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        try:
            info = api.model_info(self.repo, revision=self.revision)
            commit = info.sha or self.revision
            tree = [
                f for f in api.list_repo_tree(self.repo, revision=commit, recursive=True) if isinstance(f, RepoFile)
            ]
        except RevisionNotFoundError:
            raise InvalidCheckpoint(f"{self.repo} has no revision {self.revision!r}") from None
        except HfHubHTTPError as e:
            raise _hub_error(e, f"{self.repo}@{self.revision}") from None
        files = tuple(
            sorted(
                (
                    FileEntry(f.path, int(f.lfs.size if f.lfs else f.size), f.lfs.sha256 if f.lfs else None)
                    for f in tree
                    if engine_needs(f.path)
                ),
                key=lambda e: e.path,
            )
        )
        skipped = len(tree) - len(files)
        log.info(
            "%s@%s is commit %s: %d files the engine needs (%.3f GB), %d others skipped",
            self.repo,
            self.revision,
            commit,
            len(files),
            sum(f.size for f in files) / 1e9,
            skipped,
        )
        if not any(f.path.endswith(".safetensors") for f in files):
            if any(f.path.endswith(".gguf") for f in tree):
                raise UnsupportedPrecision(
                    f"{self.repo}@{self.revision} is a GGUF-only repository (llama.cpp's quantised format) with no "
                    ".safetensors weights, which SGLang needs to shard a MiMo checkpoint over a gang: point "
                    "spec.model.source.huggingFaceId at the FP8 release (unset it for XiaomiMiMo/<variant>) or at "
                    "a BF16 safetensors copy with spec.model.precision bf16")
            raise InvalidCheckpoint(f"{self.repo}@{self.revision} has no .safetensors weights")
        return Manifest(self.repo, self.revision, commit, files)

    def fetch(self, entry: FileEntry, commit: str) -> None:
        """One file into place, resuming a .part left by an earlier run; hashed when the hub gave a sha256."""
        final = self.dest / entry.path
        url = hf_hub_url(self.repo, entry.path, revision=commit, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token or False, endpoint=self.endpoint, retry_on_errors=True)
        except RemoteEntryNotFoundError:
            raise InvalidCheckpoint(f"{entry.path} is listed in the repo tree but the hub does not serve it") from None
        except HfHubHTTPError as e:
            raise _hub_error(e, entry.path) from None
        if meta.size is not None and meta.size != entry.size:
            raise VerificationFailed(
                f"{entry.path}: the hub's file metadata says {meta.size} bytes, its tree {entry.size}"
            )
        if meta.xet_file_data is not None and is_xet_available():
            self._fetch_with_hub_client(entry, commit)
        else:
            self._fetch_resumable(entry, meta.location, meta.etag or commit, final)
        self.progress.file_done()

    def _fetch_resumable(self, entry: FileEntry, location: str, etag: str, final: Path) -> None:
        part = _part_path(self.dest, entry, etag)
        part.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256() if entry.sha256 and self.options.hashes else None
        resume = part.stat().st_size if part.exists() else 0
        if resume > entry.size:  # not ours to trust: start again
            part.unlink()
            resume = 0
        if resume and digest is not None:
            with part.open("rb") as f:
                while chunk := f.read(16 * 1024 * 1024):
                    digest.update(chunk)
        if resume:
            log.info("%s: resuming at %.3f GB of %.3f GB", entry.path, resume / 1e9, entry.size / 1e9)
        started = time.monotonic()
        headers = build_hf_headers(token=self.token or False)
        with part.open("ab") as f:
            sink = _Sink(f, digest, self.progress, self.stop)
            http_get(
                location,
                cast(BinaryIO, sink),
                resume_size=resume,
                headers=headers,
                expected_size=entry.size,
                displayed_filename=entry.path,
            )
        with self._lock:
            self.fetched += sink.written
        size = part.stat().st_size
        if size != entry.size:
            raise VerificationFailed(f"{entry.path}: received {size} bytes, the hub says {entry.size}")
        if sink.digest is not None:
            got = sink.digest.hexdigest()
            if got != entry.sha256:
                part.unlink()
                raise VerificationFailed(
                    f"{entry.path}: sha256 {got[:12]}… differs from the hub's "
                    f"{str(entry.sha256)[:12]}… (the partial file was removed)"
                )
            self._record_hash(entry.path, got)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        seconds = time.monotonic() - started
        log.debug("%s: %.3f GB in %.1f s", entry.path, sink.written / 1e9, seconds)

    def _fetch_with_hub_client(self, entry: FileEntry, commit: str) -> None:
        hf_hub_download(
            self.repo,
            entry.path,
            revision=commit,
            local_dir=self.dest,
            token=self.token or False,
            endpoint=self.endpoint,
        )
        with self._lock:
            self.fetched += entry.size
        self.progress.add(entry.size)

    def _record_hash(self, path: str, value: str) -> None:
        with self._lock:
            self.hashes[path] = value
            write_json_atomic(self.dest / HASHES_FILE, {"commit": self.progress.commit, "sha256": self.hashes})


def download(
    repo: str,
    revision: str,
    dest: Path,
    *,
    token: str | None = None,
    options: DownloadOptions | None = None,
    progress: Progress | None = None,
) -> DownloadResult:
    """Make ``dest`` a complete, verified copy of what the engine needs from ``repo`` at ``revision``.

    Raises a :class:`~mimo_worker.weights.errors.WeightsError` subclass; everything fetched so far stays
    for the next attempt.
    """
    options = options or DownloadOptions()
    progress = progress or Progress(repo, revision)
    dest.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest / LOCK_FILE, progress):
        return _download(repo, revision, dest, token, options, progress)


@contextlib.contextmanager
def _exclusive(path: Path, progress: Progress) -> Iterator[None]:
    """One download per directory at a time. Two writers would append to the same .part files: a Job retry
    overlapping a pod still terminating on a shared volume, or two namespaces prefetching one checkpoint
    onto one node. The second waits, then finds the marker and is done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if progress.phase != "Waiting":
                    log.info("%s: another download into this directory is running; waiting for it", path.parent)
                    progress.set_phase("Waiting", "another download of this checkpoint into the same directory runs")
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(repo: str, revision: str, dest: Path, token: str | None, options: DownloadOptions,
              progress: Progress) -> DownloadResult:
    started = time.monotonic()
    disable_progress_bars()  # the status file and /metrics are the progress; tqdm bars only fill the log
    # http_get reads this module constant on every call; the worker process is ours alone.
    hf_constants.DOWNLOAD_CHUNK_SIZE = options.read_chunk_bytes

    if not options.force and (done := _still_complete(repo, revision, dest, progress)) is not None:
        # A copy another deployment completed is still refused to one that planned another precision.
        if options.precision is not None and (problem := config_precision_problem(dest, options.precision, repo)):
            raise UnsupportedPrecision(problem)
        return DownloadResult(done, 0, time.monotonic() - started, already_complete=True)
    (dest / COMPLETE_FILE).unlink(missing_ok=True)

    run = _Run(repo, revision, dest, token, options, progress)
    manifest = run.list_files()
    write_json_atomic(dest / MANIFEST_FILE, manifest.to_dict())
    known = read_json(dest / HASHES_FILE) or {}
    if known.get("commit") == manifest.commit:
        run.hashes = {str(k): str(v) for k, v in (known.get("sha256") or {}).items()}

    present = {e.path for e in manifest.files if (dest / e.path).is_file() and (dest / e.path).stat().st_size == e.size}
    partial = sum(p.stat().st_size for p in (dest / PARTIAL_DIR).glob("*.part")) if (dest / PARTIAL_DIR).is_dir() else 0
    present_bytes = sum(e.size for e in manifest.files if e.path in present)
    needed = manifest.total_bytes - present_bytes - partial
    free = options.free_bytes(dest)
    if needed + options.reserve_bytes > free:
        raise NotEnoughSpace(needed, free, options.reserve_bytes, dest)
    progress.start(manifest.commit, manifest.total_bytes, len(manifest.files), present_bytes + partial, len(present))
    log.info(
        "%s: %.3f GB to fetch with %d workers, %.3f GB already here; %.1f GB free",
        dest,
        needed / 1e9,
        options.workers,
        (present_bytes + partial) / 1e9,
        free / 1e9,
    )

    todo = [e for e in manifest.files if e.path not in present]
    small = [e for e in todo if not e.path.endswith(".safetensors")]
    shards = sorted((e for e in todo if e.path.endswith(".safetensors")), key=lambda e: -e.size)
    _run_all(run, small, manifest.commit)
    # Refuse a copy in another precision than planned before fetching a terabyte of it (config.json is small).
    if options.precision is not None and (problem := config_precision_problem(dest, options.precision, repo)):
        raise UnsupportedPrecision(problem)
    # Refuse a broken checkpoint before fetching a terabyte of it.
    index = read_json(dest / INDEX_FILE)
    if index is not None:
        if problems := check_index(index, (e.path for e in manifest.files)):
            raise InvalidCheckpoint("; ".join(problems))
    elif sum(1 for e in manifest.files if e.path.endswith(".safetensors")) > 1:
        raise InvalidCheckpoint(f"{repo}@{revision} has several shards but no {INDEX_FILE}")
    _run_all(run, shards, manifest.commit)

    progress.set_phase("Verifying")
    verification = verify_dir(dest, manifest, hashes=options.hashes, workers=options.workers, known_hashes=run.hashes)
    if not verification.ok:
        raise VerificationFailed(verification.summary())
    seconds = time.monotonic() - started
    write_json_atomic(
        dest / COMPLETE_FILE,
        {
            **manifest.to_dict(),
            "hashesVerified": options.hashes,
            "verifiedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "downloadSeconds": round(seconds, 3),
            "bytesFetched": run.fetched,
        },
    )
    progress.set_phase("Complete", verification.summary())
    log.info(
        "%s@%s complete in %s: %s; %.3f GB fetched in %.1f s (%.1f MB/s)",
        repo,
        revision,
        dest,
        verification.summary(),
        run.fetched / 1e9,
        seconds,
        run.fetched / max(seconds, 1e-9) / 1e6,
    )
    return DownloadResult(manifest, run.fetched, seconds, already_complete=False)


def _run_all(run: _Run, entries: list[FileEntry], commit: str) -> None:
    if not entries:
        return
    with ThreadPoolExecutor(max_workers=max(1, run.options.workers), thread_name_prefix="fetch") as pool:
        futures: list[Future[None]] = [pool.submit(run.fetch, e, commit) for e in entries]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            run.stop.set()  # in-flight transfers stop at their next chunk; their .part files stay
            for f in futures:
                f.cancel()
            error = failed.exception()
            assert error is not None
            raise error


def _still_complete(repo: str, revision: str, dest: Path, progress: Progress) -> Manifest | None:
    """The manifest when ``dest`` holds a marker for this checkpoint and its files still match (sizes and
    shard headers; hashes were checked when the marker was written): no hub traffic at all."""
    marker = read_complete(dest)
    data = read_json(dest / MANIFEST_FILE)
    if marker is None or data is None:
        return None
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None
    if not manifest.matches(repo, revision) or marker.get("commit") != manifest.commit:
        return None
    verification = verify_dir(dest, manifest, hashes=False)
    if not verification.ok:
        log.warning("%s: the completion marker is there but %s; downloading again", dest, verification.summary())
        return None
    progress.start(
        manifest.commit, manifest.total_bytes, len(manifest.files), manifest.total_bytes, len(manifest.files)
    )
    progress.set_phase("Complete", f"already complete: {verification.summary()}")
    log.info("%s@%s already complete in %s (%s)", repo, revision, dest, verification.summary())
    return manifest
