"""``python -m mimo_worker.weights``: what the operator's download, prefetch and cleanup pods run.

    download --repo ID --revision REV --dest DIR [--status-file F] [--status-address IP --status-port P]
    verify   --dest DIR [--hashes] [--status-file F]
    clean    --dest DIR

Exit codes: 0 done; 1 a failure worth retrying (network, hub); 2 bad usage; 3 not enough space;
4 not a loadable checkpoint; 5 the hub refused the token; 6 the files do not verify; 7 the weights are not
in the precision the plan sized (``--precision``)
(``mimo_worker.weights.errors.EXIT_REASONS``). The reason is also written to the termination message,
where Kubernetes shows it in the pod's status. The hub token is read from ``HF_TOKEN`` only.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from mimo_worker.weights.download import DownloadOptions, download, token_from_env
from mimo_worker.weights.errors import UnsupportedPrecision, VerificationFailed, WeightsError
from mimo_worker.weights.layout import MANIFEST_FILE, META_DIR, STATUS_FILE, Manifest, read_json
from mimo_worker.weights.progress import Progress, StatusServer
from mimo_worker.weights.verify import config_precision_problem, verify_dir

log = logging.getLogger("mimo.weights")

# Where Kubernetes looks for a container's termination message (terminationMessagePath's default).
TERMINATION_LOG = "/dev/termination-log"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mimo_worker.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch what the engine needs, verify it, write the completion marker")
    d.add_argument("--repo", required=True, help="Hugging Face repo id, e.g. XiaomiMiMo/MiMo-V2.5-Pro")
    d.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    d.add_argument("--dest", required=True, type=Path, help="the cache directory of this checkpoint")
    d.add_argument("--workers", type=int, default=8, help="files in flight at once (default: 8)")
    d.add_argument("--no-hashes", dest="hashes", action="store_false",
                   help="skip the sha256 check of LFS files (sizes and shard headers are still checked)")
    d.add_argument("--reserve-gb", type=float, default=1.0, help="GB to keep free on the volume (default: 1)")
    d.add_argument("--force", action="store_true", help="ignore a completion marker and ask the hub again")
    v = sub.add_parser("verify", help="check a cache directory against its manifest and index")
    v.add_argument("--dest", required=True, type=Path)
    v.add_argument("--hashes", action="store_true", help="also recompute every sha256 (reads every byte)")
    v.add_argument("--workers", type=int, default=4)
    for p in (d, v):
        p.add_argument("--precision", choices=("fp8", "bf16"), default=None,
                       help="the precision the plan sized (spec.model.precision); another one in config.json fails")
        p.add_argument("--status-file", type=Path, default=None,
                       help=f"progress JSON (default: DEST/{STATUS_FILE})")
        p.add_argument("--status-address", default=None,
                       help="serve GET /status and /metrics on this address (the pod IP)")
        p.add_argument("--status-port", type=int, default=8000)
        p.add_argument("--termination-log", default=TERMINATION_LOG, help=argparse.SUPPRESS)
    c = sub.add_parser("clean", help="remove a cache directory (only one this tool wrote)")
    c.add_argument("--dest", required=True, type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # One INFO line per HTTP request would bury the log of a 200-shard download; failures still show.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if args.command == "clean":
        return _clean(args.dest)
    status_file = args.status_file or args.dest / STATUS_FILE
    if args.command == "download":
        progress = Progress(args.repo, args.revision)
    else:
        manifest_data = read_json(args.dest / MANIFEST_FILE) or {}
        progress = Progress(str(manifest_data.get("repo", "")), str(manifest_data.get("revision", "")))
    try:
        with StatusServer(progress, status_file, args.status_address, args.status_port):
            try:
                if args.command == "download":
                    options = DownloadOptions(workers=args.workers, hashes=args.hashes,
                                              reserve_bytes=int(args.reserve_gb * 1e9), force=args.force,
                                              precision=args.precision)
                    result = download(args.repo, args.revision, args.dest, token=token_from_env(), options=options,
                                      progress=progress)
                    what = "already complete" if result.already_complete else (
                        f"{result.bytes_fetched / 1e9:.3f} GB in {result.seconds:.1f} s "
                        f"({result.bytes_per_second / 1e6:.1f} MB/s)")
                    print(f"complete: {args.repo}@{args.revision} in {args.dest}: {what}", flush=True)
                else:
                    _verify(args.dest, args.hashes, args.workers, progress, args.precision)
            except WeightsError as e:
                progress.set_phase("Failed", f"{e.reason}: {e}")
                raise
    except WeightsError as e:
        log.error("%s: %s", e.reason, e)
        _terminate(args.termination_log, f"{e.reason}: {e}")
        return e.exit_code
    except OSError as e:  # the network, the volume: worth a retry by the Job
        log.error("failed: %s", e)
        _terminate(args.termination_log, f"DownloadFailed: {e}")
        return 1
    return 0


def _verify(dest: Path, hashes: bool, workers: int, progress: Progress, precision: str | None = None) -> None:
    data = read_json(dest / MANIFEST_FILE)
    if data is None:
        raise VerificationFailed(f"{dest} has no {MANIFEST_FILE}: nothing was downloaded there")
    manifest = Manifest.from_dict(data)
    progress.start(manifest.commit, manifest.total_bytes, len(manifest.files), 0, 0)
    progress.set_phase("Verifying")
    if precision is not None and (problem := config_precision_problem(dest, precision, manifest.repo)):
        raise UnsupportedPrecision(problem)
    result = verify_dir(dest, manifest, hashes=hashes, workers=workers, on_bytes=progress.add, precision=precision)
    if not result.ok:
        raise VerificationFailed(result.summary())
    progress.set_phase("Complete", result.summary())
    print(f"verified: {dest}: {result.summary()}" + (f", {result.hashed} hashed" if hashes else ""), flush=True)


def _clean(dest: Path) -> int:
    if not dest.exists():
        print(f"clean: {dest} does not exist", flush=True)
        return 0
    if not (dest / META_DIR).is_dir() and any(dest.iterdir()):
        # Never remove a directory this tool did not write: a mistyped path must not erase data.
        log.error("refusing to remove %s: it has no %s directory, so it is not a weights cache", dest, META_DIR)
        return 2
    shutil.rmtree(dest)
    print(f"clean: removed {dest}", flush=True)
    return 0


def _terminate(path: str, message: str) -> None:
    if not Path(path).exists():
        return  # not in a pod: Kubernetes mounts the file; creating it elsewhere (/dev as root) would litter
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(message[:4000])  # Kubernetes keeps at most 4096 bytes
    except OSError:
        pass  # the exit code and the log still carry the reason


if __name__ == "__main__":
    sys.exit(main())
