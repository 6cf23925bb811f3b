"""What a weights cache directory holds, and which of a checkpoint's files the engine needs.

One directory per cached checkpoint (``<cache root>/weights/<cache key>``, named by the operator) is both
SGLang's ``--model-path`` and the download's working directory::

    <dest>/config.json, tokenizer.json, model-00001-of-000NN.safetensors, …   the checkpoint, as in the repo
    <dest>/.mimo/manifest.json    what the hub said the files are (sizes, sha256): written before the download
    <dest>/.mimo/partial/*.part   files being transferred (byte-level resume reads them back)
    <dest>/.mimo/status.json      progress, rewritten every second while a download or a verify runs
    <dest>/.mimo/complete.json    the completion marker: written only after every file was verified

SGLang globs ``*.safetensors`` at the top of the directory, so nothing under ``.mimo/`` is ever loaded.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "COMPLETE_FILE",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "META_DIR",
    "PARTIAL_DIR",
    "STATUS_FILE",
    "FileEntry",
    "Manifest",
    "engine_needs",
    "read_json",
    "write_json_atomic",
]

META_DIR = ".mimo"
MANIFEST_FILE = f"{META_DIR}/manifest.json"
COMPLETE_FILE = f"{META_DIR}/complete.json"
STATUS_FILE = f"{META_DIR}/status.json"
PARTIAL_DIR = f"{META_DIR}/partial"
INDEX_FILE = "model.safetensors.index.json"
MANIFEST_VERSION = 1

# What SGLang (and the transformers code it calls with --trust-remote-code) reads from a model directory:
# the safetensors shards and their index, the configs, the tokenizer in any of its formats, the chat
# template, and the repo's own Python modules (remote code).
_NEEDED = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*config.json",  # config, generation_config, tokenizer_config, preprocessor/processor configs
    "tokenizer.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "chat_template.json",
    "*.jinja",
    "*.py",
)
# Other formats of the same weights, exports for other runtimes, and repo furniture: never needed, and
# for some checkpoints as large as the weights themselves.
_NOT_NEEDED_DIRS = frozenset({"original", "onnx", "openvino", "gguf", "coreml", "flax", "tf", "mlx", "metal", ".git"})
_NOT_NEEDED = (
    "*.bin",
    "*.pth",
    "*.pt",
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "*.msgpack",
    "*.h5",
    "*.ckpt",
    "*.tflite",
    "*.ot",
    "*.nemo",
)


def engine_needs(path: str) -> bool:
    """Whether the engine needs this repo file (a '/'-separated path inside the repo)."""
    parts = PurePosixPath(path).parts
    if not parts or any(p in _NOT_NEEDED_DIRS or p.startswith(".") for p in parts[:-1]):
        return False
    name = parts[-1]
    if name.startswith(".") or any(fnmatch.fnmatchcase(name, p) for p in _NOT_NEEDED):
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in _NEEDED)


@dataclass(frozen=True)
class FileEntry:
    """One file of the checkpoint as the hub describes it."""

    path: str
    size: int
    sha256: str | None = None  # the LFS object id, where the hub gives one


@dataclass(frozen=True)
class Manifest:
    """The files one download must produce, fixed before any byte is fetched."""

    repo: str
    revision: str
    commit: str
    files: tuple[FileEntry, ...]
    version: int = MANIFEST_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "totalBytes": self.total_bytes,
            "files": [asdict(f) for f in self.files],
            **dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r} is not {MANIFEST_VERSION}")
        files = tuple(FileEntry(str(f["path"]), int(f["size"]), f.get("sha256")) for f in data["files"])
        return cls(repo=str(data["repo"]), revision=str(data["revision"]), commit=str(data["commit"]), files=files)

    def matches(self, repo: str, revision: str) -> bool:
        return self.repo == repo and revision in (self.revision, self.commit)


def write_json_atomic(path: Path, data: Mapping[str, Any] | Iterable[Any]) -> None:
    """Write JSON so that a reader (another pod on a shared volume) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (a torn write never is)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
