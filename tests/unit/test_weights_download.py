"""The weights download end to end: the real huggingface_hub client against the fake hub on loopback."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mimo_worker.weights import (
    COMPLETE_FILE,
    STATUS_FILE,
    DownloadOptions,
    InvalidCheckpoint,
    NotEnoughSpace,
    Unauthorized,
    VerificationFailed,
    download,
    engine_needs,
)
from mimo_worker.weights.download import _Run
from mimo_worker.weights.layout import PARTIAL_DIR, Manifest, read_json
from mimo_worker.weights.progress import Progress, StatusServer
from mimo_worker.weights.verify import verify_dir
from tests.conftest import REPO, wait_for
from tests.helpers.fakehub import Checkpoint, FakeHub, tiny_checkpoint

MiB = 1024 * 1024


@pytest.fixture
def ckpt(tmp_path: Path) -> Checkpoint:
    return tiny_checkpoint(tmp_path / "repo")


@pytest.fixture
def hub(ckpt: Checkpoint) -> Iterator[FakeHub]:
    with FakeHub(ckpt, page_size=5) as running:  # paginated tree listing, as the real hub's Link header
        yield running


def options(hub: FakeHub, **kw: object) -> DownloadOptions:
    return DownloadOptions(endpoint=hub.url, reserve_bytes=0, **kw)  # type: ignore[arg-type]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mimo_worker.weights", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={"PATH": os.environ["PATH"], **(env or {})}, check=False)


def shard_sizes(ckpt: Checkpoint) -> dict[str, int]:
    return {s: ckpt.files[s] for s in ckpt.shards()}


# -------------------------------------------------------------------------------- selection


@pytest.mark.parametrize(("path", "needed"), [
    ("model-00001-of-00003.safetensors", True),
    ("model.safetensors.index.json", True),
    ("config.json", True),
    ("generation_config.json", True),
    ("tokenizer.json", True),
    ("tokenizer.model", True),
    ("tokenizer_config.json", True),
    ("chat_template.jinja", True),
    ("modeling_mimo.py", True),
    ("audio_tokenizer/model.safetensors", True),
    ("pytorch_model.bin", False),
    ("pytorch_model.bin.index.json", False),
    ("original/model.safetensors", False),
    ("original/consolidated.00.pth", False),
    ("model-q4.gguf", False),
    ("onnx/model.onnx", False),
    ("README.md", False),
    (".gitattributes", False),
    ("figures/benchmark.png", False),
])
def test_only_the_files_the_engine_reads_are_fetched(path: str, needed: bool) -> None:
    assert engine_needs(path) is needed


# -------------------------------------------------------------------------------- first download


def test_a_first_download_fetches_each_needed_file_once_and_writes_the_marker_last(
        hub: FakeHub, ckpt: Checkpoint, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "weights" / "tiny"
    progress = Progress(hub.repo, "main")
    with StatusServer(progress, dest / STATUS_FILE):
        result = download(hub.repo, "main", dest, options=options(hub), progress=progress)

    needed = ckpt.needed()
    assert sorted(f.path for f in result.manifest.files) == needed
    assert result.manifest.commit == hub.commit
    assert result.bytes_fetched == sum(ckpt.files[p] for p in needed)
    # Every needed file arrived whole, byte for byte, exactly once; nothing else was asked for.
    for path in needed:
        assert (dest / path).read_bytes() == (ckpt.root / path).read_bytes(), path
        assert hub.bytes_sent[path] == ckpt.files[path], path
    fetched = set(hub.file_requests("GET")) - {p for p in hub.file_requests("GET") if "/resolve/" not in p}
    assert {p.rsplit("/resolve/", 1)[1].split("/", 1)[1] for p in fetched} == set(needed)
    assert not any("pytorch_model.bin" in p or "original/" in p or ".gguf" in p for _, p, _ in hub.requests)
    marker = read_json(dest / COMPLETE_FILE)
    assert marker is not None
    assert marker["commit"] == hub.commit
    assert marker["hashesVerified"] is True
    status = read_json(dest / STATUS_FILE)
    assert status is not None
    assert status["phase"] == "Complete"
    assert status["bytesDone"] == status["bytesTotal"] == result.manifest.total_bytes
    assert not list((dest / PARTIAL_DIR).glob("*"))


def test_a_complete_cache_is_not_downloaded_again_and_the_hub_is_not_even_asked(
        hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "w"
    download(hub.repo, "main", dest, options=options(hub))
    hub.reset_counters()
    again = download(hub.repo, "main", dest, options=options(hub))
    assert again.already_complete
    assert again.bytes_fetched == 0
    assert hub.requests == []


def test_the_hub_client_path_used_for_xet_files_also_works_against_the_fake_hub(
        hub: FakeHub, ckpt: Checkpoint, tmp_path: Path) -> None:
    # Files the hub serves through Xet go through hf_hub_download; the fake hub must answer it as well.
    run = _Run(hub.repo, "main", tmp_path / "x", None, options(hub), Progress(hub.repo, "main"))
    shard = ckpt.shards()[0]
    run._fetch_with_hub_client(next(e for e in run.list_files().files if e.path == shard), hub.commit)
    assert (tmp_path / "x" / shard).read_bytes() == (ckpt.root / shard).read_bytes()


# -------------------------------------------------------------------------------- resume


@pytest.fixture
def big_ckpt(tmp_path: Path) -> Checkpoint:
    """Shards larger than huggingface_hub's 10 MiB read chunk, so an interrupted one has bytes on disk."""
    ckpt = tiny_checkpoint(tmp_path / "repo", shards=2)
    weight_map = {}
    for i, name in enumerate(ckpt.shards()):
        ckpt.add_large_shard(name, 24 * MiB, f"big.{i}.weight")
        weight_map[f"big.{i}.weight"] = name
    ckpt.add("model.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode())
    return ckpt


def test_a_dropped_connection_resumes_from_the_last_chunk_on_disk(big_ckpt: Checkpoint, tmp_path: Path) -> None:
    with FakeHub(big_ckpt) as hub:
        shard = big_ckpt.shards()[1]
        hub.faults.drop_after[shard] = (15 * MiB + MiB // 2, 1)  # mid-chunk: half a MiB still in the client
        download(hub.repo, "main", tmp_path / "w", options=options(hub))
        ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith(shard)]
        assert ranges == [None, f"bytes={15 * MiB}-"]
        # What was on disk is not fetched again; only the unwritten part of one 1 MiB read chunk is.
        assert hub.bytes_sent[shard] == big_ckpt.files[shard] + MiB // 2
        assert (tmp_path / "w" / shard).read_bytes() == (big_ckpt.root / shard).read_bytes()


def test_a_killed_download_resumes_without_fetching_the_bytes_it_already_has(
        big_ckpt: Checkpoint, tmp_path: Path) -> None:
    dest = tmp_path / "w"
    with FakeHub(big_ckpt) as hub:
        stalled, other = big_ckpt.shards()
        hub.faults.stall_after[stalled] = 20 * MiB  # 20 whole 1 MiB read chunks reach the disk, then the hub hangs
        proc = subprocess.Popen([sys.executable, "-m", "mimo_worker.weights", "download", "--repo", hub.repo,
                                 "--dest", str(dest), "--reserve-gb", "0"], cwd=REPO,
                                env={"PATH": os.environ["PATH"], "HF_ENDPOINT": hub.url},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            parts = dest / PARTIAL_DIR

            def on_disk() -> int:
                return sum(p.stat().st_size for p in parts.glob(f"*{stalled}*.part")) if parts.is_dir() else 0

            wait_for(lambda: on_disk() == 20 * MiB and (dest / other).exists(), 60, what="the stall at 20 MiB")
        finally:
            proc.send_signal(signal.SIGKILL)  # the pod is killed mid-file
            proc.wait(10)
        assert not (dest / COMPLETE_FILE).exists()
        hub.release_stalls()
        hub.reset_counters()

        done = cli("download", "--repo", hub.repo, "--dest", str(dest), "--reserve-gb", "0",
                   env={"HF_ENDPOINT": hub.url})
        assert done.returncode == 0, done.stderr
        size = big_ckpt.files[stalled]
        assert hub.bytes_sent[stalled] == size - 20 * MiB  # only the rest
        assert [r for m, p, r in hub.requests if m == "GET" and p.endswith(stalled)] == [f"bytes={20 * MiB}-"]
        assert hub.bytes_sent[other] == 0  # the finished shard is not fetched again
        assert (dest / stalled).read_bytes() == (big_ckpt.root / stalled).read_bytes()
        assert (dest / COMPLETE_FILE).exists()


# -------------------------------------------------------------------------------- refusals


def test_a_volume_too_small_is_refused_with_the_numbers_before_any_shard(hub: FakeHub, ckpt: Checkpoint,
                                                                          tmp_path: Path) -> None:
    total = sum(ckpt.files[p] for p in ckpt.needed())
    with pytest.raises(NotEnoughSpace) as refused:
        download(hub.repo, "main", tmp_path / "w", options=options(hub, free_bytes=lambda _p: total - 1))
    message = str(refused.value)
    assert f"{total:,} bytes" in message
    assert f"{total - 1:,} bytes" in message
    assert "GB" in message
    assert not any(m == "GET" and "/resolve/" in p for m, p, _ in hub.requests)
    # Exactly enough is enough.
    download(hub.repo, "main", tmp_path / "w", options=options(hub, free_bytes=lambda _p: total))


def test_the_command_refuses_a_small_volume_with_exit_code_3(hub: FakeHub, tmp_path: Path) -> None:
    done = cli("download", "--repo", hub.repo, "--dest", str(tmp_path / "w"),
               env={"HF_ENDPOINT": hub.url, "MIMO_WEIGHTS_FAKE_FREE_BYTES": "1000000"})
    assert done.returncode == 3
    assert "NotEnoughSpace" in done.stderr
    assert "1,000,000 bytes" in done.stderr
    status = read_json(tmp_path / "w" / STATUS_FILE)
    assert status is not None
    assert status["phase"] == "Failed"
    assert "NotEnoughSpace" in status["message"]


def test_a_shard_the_index_names_but_the_repo_lacks_is_refused_before_fetching_shards(
        hub: FakeHub, ckpt: Checkpoint, tmp_path: Path) -> None:
    missing = ckpt.shards()[2]
    hub.faults.omit.add(missing)
    with pytest.raises(InvalidCheckpoint, match=missing):
        download(hub.repo, "main", tmp_path / "w", options=options(hub))
    assert not any(p.endswith(".safetensors") for m, p, _ in hub.requests if m == "GET")
    assert not (tmp_path / "w" / COMPLETE_FILE).exists()


def test_a_shard_the_hub_truncates_is_never_accepted(hub: FakeHub, ckpt: Checkpoint, tmp_path: Path) -> None:
    shard = ckpt.shards()[0]
    hub.faults.truncate[shard] = ckpt.files[shard] // 3
    dest = tmp_path / "w"
    with pytest.raises(OSError, match="Consistency check failed"):
        download(hub.repo, "main", dest, options=options(hub))
    assert not (dest / COMPLETE_FILE).exists()
    assert not (dest / shard).exists()
    manifest = Manifest.from_dict(read_json(dest / ".mimo/manifest.json") or {})
    assert f"{shard} is missing" in verify_dir(dest, manifest).problems


def test_a_shard_with_the_wrong_sha256_is_rejected(hub: FakeHub, ckpt: Checkpoint, tmp_path: Path) -> None:
    shard = ckpt.shards()[1]
    hub.faults.corrupt.add(shard)
    with pytest.raises(VerificationFailed, match="sha256"):
        download(hub.repo, "main", tmp_path / "w", options=options(hub))
    assert not (tmp_path / "w" / COMPLETE_FILE).exists()
    assert not list((tmp_path / "w" / PARTIAL_DIR).glob(f"{shard}*"))  # a corrupt partial is not kept for resume


def test_verify_finds_a_truncated_and_a_missing_shard_and_download_repairs_only_those(
        hub: FakeHub, ckpt: Checkpoint, tmp_path: Path) -> None:
    dest = tmp_path / "w"
    download(hub.repo, "main", dest, options=options(hub))
    assert cli("verify", "--dest", str(dest), "--hashes").returncode == 0
    truncated, deleted, intact = ckpt.shards()
    with (dest / truncated).open("r+b") as f:
        f.truncate(ckpt.files[truncated] - 100)
    (dest / deleted).unlink()

    checked = cli("verify", "--dest", str(dest))
    assert checked.returncode == 6
    assert f"{deleted} is missing" in checked.stderr
    assert f"{truncated} has" in checked.stderr

    hub.reset_counters()
    download(hub.repo, "main", dest, options=options(hub))
    assert hub.bytes_sent[deleted] == ckpt.files[deleted]
    assert hub.bytes_sent[intact] == 0
    assert cli("verify", "--dest", str(dest), "--hashes").returncode == 0


def test_verify_with_hashes_finds_a_flipped_byte_that_sizes_miss(hub: FakeHub, ckpt: Checkpoint,
                                                                 tmp_path: Path) -> None:
    dest = tmp_path / "w"
    download(hub.repo, "main", dest, options=options(hub))
    shard = ckpt.shards()[0]
    data = bytearray((dest / shard).read_bytes())
    data[-1] ^= 0xFF
    (dest / shard).write_bytes(bytes(data))
    assert cli("verify", "--dest", str(dest)).returncode == 0  # sizes and headers still agree
    hashed = cli("verify", "--dest", str(dest), "--hashes")
    assert hashed.returncode == 6
    assert f"{shard}: sha256 differs" in hashed.stderr


# -------------------------------------------------------------------------------- the token


TOKEN = "hf_fakeTOKENvalue0123456789abcdefXYZ"


@pytest.fixture
def debug_logs() -> Iterator[list[str]]:
    """Every log record of every library involved, at DEBUG, formatted with its arguments."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))
            lines.append(repr(record.args))

    handler = Keep(level=logging.DEBUG)
    names = ["", "mimo", "huggingface_hub", "httpx2", "httpcore2", "httpx", "httpcore", "urllib3", "filelock"]
    saved = {}
    for name in names:
        log = logging.getLogger(name)
        saved[name] = (log.level, log.propagate)
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        log.propagate = False
    try:
        yield lines
    finally:
        for name in names:
            log = logging.getLogger(name)
            log.removeHandler(handler)
            log.setLevel(saved[name][0])
            log.propagate = saved[name][1]


def test_the_token_reaches_the_hub_and_never_a_log_or_a_file(hub: FakeHub, tmp_path: Path,
                                                             debug_logs: list[str]) -> None:
    hub.faults.require_token = TOKEN
    dest = tmp_path / "w"
    with pytest.raises(Unauthorized):
        download(hub.repo, "main", dest, options=options(hub))  # no token: refused, with a reason
    shard = hub.checkpoint.shards()[0]
    hub.faults.drop_after[shard] = (100, 1)  # a retry logs a warning with the URL: still no token
    download(hub.repo, "main", dest, token=TOKEN, options=options(hub))

    assert f"Bearer {TOKEN}" in hub.auth_seen  # the test would be empty if the token were never used
    assert any("HTTP Request" in line for line in debug_logs)  # httpx2 did log at DEBUG/INFO
    assert not [line for line in debug_logs if TOKEN in line]
    for path in dest.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_the_command_reads_the_token_from_the_environment_and_never_prints_it(hub: FakeHub, tmp_path: Path) -> None:
    hub.faults.require_token = TOKEN
    refused = cli("download", "--repo", hub.repo, "--dest", str(tmp_path / "w"), env={"HF_ENDPOINT": hub.url})
    assert refused.returncode == 5
    assert "Unauthorized" in refused.stderr
    done = cli("download", "--repo", hub.repo, "--dest", str(tmp_path / "w"),
               env={"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_DEBUG": "1"})
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr + refused.stdout + refused.stderr


# -------------------------------------------------------------------------------- progress


def test_progress_is_served_as_json_and_prometheus_while_the_download_runs(big_ckpt: Checkpoint,
                                                                           tmp_path: Path) -> None:
    from mimo_operator.localcluster.processes import free_port

    port = free_port()
    dest = tmp_path / "w"
    with FakeHub(big_ckpt) as hub:
        hub.faults.stall_after[big_ckpt.shards()[0]] = 10 * MiB
        proc = subprocess.Popen([sys.executable, "-m", "mimo_worker.weights", "download", "--repo", hub.repo,
                                 "--dest", str(dest), "--status-address", "127.0.0.1", "--status-port", str(port)],
                                cwd=REPO, env={"PATH": os.environ["PATH"], "HF_ENDPOINT": hub.url},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def status() -> dict[str, object] | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
                        doc: dict[str, object] = json.load(r)
                except OSError:
                    return None
                return doc if doc.get("phase") == "Downloading" and int(str(doc["bytesDone"])) >= 10 * MiB else None

            doc = wait_for(status, 60, what="progress over HTTP")
            total = sum(big_ckpt.files[p] for p in big_ckpt.needed())
            assert doc["bytesTotal"] == total
            assert doc["filesTotal"] == len(big_ckpt.needed())
            assert doc["commit"] == hub.commit
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                metrics = r.read().decode()
            samples = {s.name: s for family in text_string_to_metric_families(metrics) for s in family.samples}
            assert samples["mimo_weights_bytes_total"].value == total
            assert samples["mimo_weights_bytes_total"].labels == {"repo": hub.repo, "revision": "main"}
            assert samples["mimo_weights_bytes_done"].value >= 10 * MiB
            assert samples["mimo_weights_complete"].value == 0
            on_file = read_json(dest / STATUS_FILE)
            assert on_file is not None
            assert on_file["bytesTotal"] == total
            hub.release_stalls()
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_rate_and_eta_follow_the_last_seconds() -> None:
    now = [0.0]
    progress = Progress("r", "main", clock=lambda: now[0])
    progress.start("c", bytes_total=1000, files_total=2, bytes_present=100, files_present=0)
    first = progress.snapshot()
    assert first["etaSeconds"] is None  # no rate yet
    for _ in range(5):
        now[0] += 1.0
        progress.add(50)
        doc = progress.snapshot()
    assert doc["bytesPerSecond"] == 50.0
    assert doc["etaSeconds"] == pytest.approx((1000 - 350) / 50)
    now[0] += 20.0  # a stall: the window forgets the old bytes
    assert progress.snapshot()["bytesPerSecond"] < 50 / 4


def test_wait_until_complete_returns_when_the_marker_appears(tmp_path: Path) -> None:
    from mimo_worker.weights import wait_until_complete

    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds
        if clock[0] >= 30:
            (tmp_path / ".mimo").mkdir(exist_ok=True)
            (tmp_path / COMPLETE_FILE).write_text("{}")

    assert wait_until_complete(tmp_path, timeout=60, clock=lambda: clock[0], sleep=sleep)
    assert 30 <= clock[0] < 40
    assert not wait_until_complete(tmp_path / "never", timeout=20, clock=lambda: clock[0], sleep=sleep)


def test_clean_removes_only_a_weights_cache(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "w"
    download(hub.repo, "main", dest, options=options(hub))
    other = tmp_path / "not-a-cache"
    other.mkdir()
    (other / "precious").write_text("x")
    assert cli("clean", "--dest", str(other)).returncode == 2
    assert (other / "precious").exists()
    assert cli("clean", "--dest", str(dest)).returncode == 0
    assert not dest.exists()


def test_two_downloads_into_one_directory_take_turns_and_fetch_once(big_ckpt: Checkpoint, tmp_path: Path) -> None:
    # What two prefetch pods on one node (or a Job retry beside a terminating pod) would do.
    from concurrent.futures import ThreadPoolExecutor

    dest = tmp_path / "w"
    with FakeHub(big_ckpt) as hub, ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: download(hub.repo, "main", dest, options=options(hub)), range(2)))
        assert sorted(r.already_complete for r in results) == [False, True]
        for path in big_ckpt.needed():
            assert hub.bytes_sent[path] == big_ckpt.files[path], path
