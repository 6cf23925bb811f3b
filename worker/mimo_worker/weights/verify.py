"""Is a weights directory complete and intact? Checked against the manifest and the checkpoint's index.

A directory passes when:

1. every file of the manifest (what the hub listed) is present with the size the hub gave;
2. every shard the checkpoint's ``model.safetensors.index.json`` maps a tensor to is in the manifest and
   present (an index that names a shard the repo does not have is a broken checkpoint, refused);
3. every shard is a well-formed safetensors file: its header parses, its data section is exactly as long
   as the header says, and it holds every tensor the index maps to it;
4. with ``hashes``, every file with an LFS sha256 hashes to it (the download itself hashes while writing,
   so it needs no second pass);
5. with ``precision``, the checkpoint's ``config.json`` (its ``quantization_config``, else ``torch_dtype``) says
   the weights are in the precision the plan sized (:func:`precision_problem`).

Problems are collected, not raised one at a time, so a person sees every missing shard at once.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimo_worker.weights.layout import INDEX_FILE, FileEntry, Manifest

__all__ = [
    "CONFIG_FILE",
    "HASH_CHUNK",
    "Verification",
    "check_index",
    "checkpoint_precision",
    "config_precision_problem",
    "precision_problem",
    "sha256_of",
    "verify_dir",
]

CONFIG_FILE = "config.json"
# quantization_config.quant_method values as people know them; the operator plans fp8 and bf16 only.
_QUANT_NAMES = {"awq": "AWQ", "gptq": "GPTQ", "gguf": "GGUF", "bitsandbytes": "bitsandbytes", "fp8": "FP8",
                "compressed-tensors": "compressed-tensors", "mxfp4": "MXFP4", "modelopt": "ModelOpt (FP4/FP8)",
                "awq_marlin": "AWQ", "gptq_marlin": "GPTQ", "marlin": "Marlin", "hqq": "HQQ", "eetq": "EETQ"}
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float": "fp32", "half": "fp16"}

HASH_CHUNK = 16 * 1024 * 1024
# A safetensors header larger than this is not a header (the format's own reader uses the same bound).
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0
    hashed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, limit: int = 5) -> str:
        if self.ok:
            return f"{self.files_checked} files, {self.bytes_checked / 1e9:.3f} GB verified"
        more = f" (and {len(self.problems) - limit} more)" if len(self.problems) > limit else ""
        return "; ".join(self.problems[:limit]) + more


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_index(index: Mapping[str, Any], available: Iterable[str]) -> list[str]:
    """Problems of an index against the files the repo has: shards it names that are not there."""
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        return [f"{INDEX_FILE} has no weight_map"]
    have = set(available)
    missing = sorted({str(s) for s in weight_map.values()} - have)
    return [f"{INDEX_FILE} maps tensors to {s}, which the checkpoint does not have" for s in missing]


def checkpoint_precision(config: Mapping[str, Any]) -> str:
    """The weights' precision as a checkpoint's config.json says: ``fp8``, ``bf16``, ``fp16``, ``fp32``, a
    quantisation method in lower case (``awq``, ``gptq``, …), or ``unknown``."""
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping):
        method = str(quant.get("quant_method") or quant.get("quantization") or "unknown").lower()
        return "fp8" if method == "fp8" else method
    dtype = config.get("torch_dtype") or config.get("dtype")
    return _DTYPES.get(str(dtype).removeprefix("torch."), "unknown") if dtype else "bf16"


def precision_problem(config: Mapping[str, Any], planned: str, repo: str) -> str | None:
    """Why a checkpoint with this config.json cannot be served as planned (``spec.model.precision``), saying
    what would work; None when it can. A config without quantisation or dtype is taken as 16-bit."""
    found = checkpoint_precision(config)
    if found == planned or (planned == "bf16" and found == "fp16") or found == "unknown":
        return None
    name = _QUANT_NAMES.get(found, found.upper())
    if found in ("bf16", "fp16", "fp32"):
        fix = ("set spec.model.precision: bf16 (twice the GPU memory of FP8)" if found != "fp32" else
               "use a BF16 or FP8 copy: the operator plans 2 or 1 bytes per parameter")
        return (f"{repo} holds unquantised {name} weights (config.json has no quantization_config), but "
                f"spec.model.precision is {planned}: {fix}, or point spec.model.source.huggingFaceId at the "
                "FP8 release")
    if found == "fp8":
        return (f"{repo} holds FP8 weights (config.json quantization_config.quant_method fp8), but "
                f"spec.model.precision is {planned}: set spec.model.precision: fp8")
    return (f"{repo} is a {name} checkpoint (config.json quantization_config.quant_method {found}); the plan sized "
            f"{planned.upper()} weights ({'1 byte' if planned == 'fp8' else '2 bytes'} per parameter) and the "
            "operator plans only the FP8 release and BF16 copies: point spec.model.source.huggingFaceId at the "
            "FP8 release (unset it for XiaomiMiMo/<variant>) or at a BF16 copy with spec.model.precision bf16")


def config_precision_problem(dest: Path, planned: str, repo: str) -> str | None:
    """:func:`precision_problem` of ``dest``'s config.json; None when it has none (nothing to tell by)."""
    try:
        config = json.loads((dest / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return precision_problem(config, planned, repo) if isinstance(config, dict) else None


def _shard_tensors(path: Path) -> tuple[set[str] | None, str | None]:
    """(tensor names, problem) of one safetensors file, reading only its header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None, f"{path.name}: {size} bytes is too short for a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            return None, f"{path.name}: header length {length} does not fit in {size} bytes"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return None, f"{path.name}: the safetensors header is not JSON"
    if not isinstance(header, dict):
        return None, f"{path.name}: the safetensors header is not an object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, IndexError, TypeError, ValueError):
            return None, f"{path.name}: tensor {name} has no data_offsets"
    if 8 + length + end != size:
        return None, f"{path.name}: header says {8 + length + end} bytes, the file has {size} (truncated?)"
    return {n for n in header if n != "__metadata__"}, None


def verify_dir(
    dest: Path,
    manifest: Manifest,
    *,
    hashes: bool = False,
    workers: int = 4,
    known_hashes: Mapping[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    precision: str | None = None,
) -> Verification:
    """Check ``dest`` against ``manifest`` (see the module docstring). ``known_hashes``: sha256 already
    computed while downloading, by path, so those files need no second read even with ``hashes``.
    ``precision``: what the plan assumed (``fp8`` or ``bf16``); a mismatch is a problem too."""
    result = Verification()
    if precision is not None and (problem := config_precision_problem(dest, precision, manifest.repo)):
        result.problems.append(problem)
    entries = {f.path: f for f in manifest.files}
    present: dict[str, FileEntry] = {}
    for entry in manifest.files:
        path = dest / entry.path
        if not path.is_file():
            result.problems.append(f"{entry.path} is missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            result.problems.append(f"{entry.path} has {size} bytes, the hub says {entry.size} (truncated?)")
            continue
        present[entry.path] = entry
        result.files_checked += 1
        result.bytes_checked += size

    shards = sorted(p for p in entries if p.endswith(".safetensors"))
    if not shards:
        result.problems.append("the checkpoint has no .safetensors file")
    index_path = dest / INDEX_FILE
    expected: dict[str, set[str]] = {}
    if INDEX_FILE in entries and index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result.problems.append(f"{INDEX_FILE} is not JSON")
            index = {}
        if isinstance(index, dict):
            result.problems += check_index(index, entries)
            for tensor, shard in (index.get("weight_map") or {}).items():
                expected.setdefault(str(shard), set()).add(str(tensor))
    elif len(shards) > 1:
        result.problems.append(f"{len(shards)} shards but no {INDEX_FILE}")
    for shard in shards:
        if shard not in present:
            continue
        tensors, problem = _shard_tensors(dest / shard)
        if problem:
            result.problems.append(problem)
        elif tensors is not None and (lost := expected.get(shard, set()) - tensors):
            result.problems.append(f"{shard} lacks {len(lost)} tensors the index maps to it, e.g. {min(lost)}")

    if hashes:
        known = dict(known_hashes or {})
        todo = [e for e in present.values() if e.sha256 and known.get(e.path) is None]

        def digest(entry: FileEntry) -> tuple[FileEntry, str]:
            value = sha256_of(dest / entry.path)
            if on_bytes is not None:
                on_bytes(entry.size)
            return entry, value

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sha256") as pool:
            computed = dict((e.path, h) for e, h in pool.map(digest, sorted(todo, key=lambda e: -e.size)))
        known.update(computed)
        result.hashed = len(computed)
        for entry in present.values():
            if entry.sha256 and known.get(entry.path) not in (None, entry.sha256):
                result.problems.append(f"{entry.path}: sha256 differs from the hub's")
    return result
