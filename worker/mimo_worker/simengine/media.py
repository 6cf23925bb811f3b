"""Images, audio and video in chat requests: how many prompt tokens they become and what the encoders cost.

OpenAI content parts, as SGLang's chat endpoint takes them: ``{"type": "image_url", "image_url": {"url":
…}}``, ``{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"}}``, ``{"type":
"audio_url", "audio_url": {"url": …}}`` and ``{"type": "video_url", "video_url": {"url": …}}``.

MiMo-V2.5 encodes images and video frames with a 729M-parameter ViT and audio with a 261M-parameter encoder
(the catalog's ``Checkpoint.encoders``, from the card's modalities row). The card gives the encoders' sizes,
not their token rates, so the rates here are the common ones of ViT-based VLMs and Whisper-style audio
encoders, and are assumptions: 14-pixel patches merged 2×2 (one token per 28×28 pixels, the image resized to
at most ``MAX_IMAGE_PIXELS``), audio at 25 tokens per second, video sampled at 2 frames per second at
448×448. A data URL is decoded to find the image's size or the audio's length (WAV); a remote URL cannot be
fetched here, so it is priced at the defaults.

Encoder time = 2 × encoder parameters × patches (or audio frames) FLOPs on the replica's GPUs at the
prefill efficiency; with ``--mm-enable-dp-encoder`` every GPU encodes its share, otherwise one
attention-TP group does all of it (SGLang runs the encoder tensor-parallel within the attention TP).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mimo_operator.catalog import CHECKPOINTS

__all__ = [
    "AUDIO_ENCODER_PARAMS",
    "ENCODER_PARAMS",
    "VISION_ENCODER_PARAMS",
    "MediaError",
    "MediaItem",
    "encoder_seconds",
    "media_of",
]

# Encoder parameters by media kind, from the catalog's MiMo-V2.5 entry (the only multimodal family).
ENCODER_PARAMS: dict[str, int] = {
    kind: encoder.params for encoder in CHECKPOINTS["MiMo-V2.5"].encoders for kind in encoder.modalities
}
VISION_ENCODER_PARAMS = ENCODER_PARAMS["image"]
AUDIO_ENCODER_PARAMS = ENCODER_PARAMS["audio"]
PIXELS_PER_TOKEN = 28 * 28  # assumption: 14-px patches, 2×2 merge
PATCHES_PER_TOKEN = 4
MAX_IMAGE_PIXELS = 1280 * 28 * 28  # assumption: images larger than this are resized down
DEFAULT_IMAGE_SIDE = 1024  # a remote image of unknown size
AUDIO_TOKENS_PER_SECOND = 25  # assumption: 50 Hz encoder frames pooled 2×
AUDIO_FRAMES_PER_TOKEN = 2
DEFAULT_AUDIO_SECONDS = 10.0
VIDEO_FPS = 2.0
VIDEO_FRAME_SIDE = 448
DEFAULT_VIDEO_SECONDS = 10.0
ENCODER_MFU = 0.23  # the performance model's prefill efficiency (perf.PREFILL_MFU)


class MediaError(ValueError):
    """A content part the server cannot read (400)."""


@dataclass(frozen=True)
class MediaItem:
    kind: str  # "image" | "audio" | "video"
    tokens: int  # prompt tokens it becomes
    encoder_units: int  # patches (image, video) or audio frames through its encoder
    key: str  # content hash: equal media give equal prompt pages


def _data_url(url: str) -> bytes | None:
    if not url.startswith("data:"):
        return None
    _, _, payload = url.partition(",")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise MediaError("the data URL is not valid base64") from None


def _image(url: str) -> MediaItem:
    data = _data_url(url)
    width = height = DEFAULT_IMAGE_SIDE
    if data is not None:
        try:
            from PIL import Image  # the worker image has Pillow (SGLang needs it)

            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except ImportError:
            pass
        except Exception:
            raise MediaError("the image could not be decoded") from None
    pixels = min(width * height, MAX_IMAGE_PIXELS)
    tokens = max(1, math.ceil(pixels / PIXELS_PER_TOKEN))
    key = hashlib.sha256(data if data is not None else url.encode()).hexdigest()[:16]
    return MediaItem("image", tokens, tokens * PATCHES_PER_TOKEN, key)


def _audio_seconds(data: bytes, fmt: str) -> float:
    if fmt == "wav":
        try:
            with wave.open(io.BytesIO(data)) as clip:
                frames, rate = int(clip.getnframes()), int(clip.getframerate())
                return frames / max(rate, 1)
        except (wave.Error, EOFError):
            raise MediaError("the audio is not a valid WAV file") from None
    return DEFAULT_AUDIO_SECONDS


def _audio(data: bytes | None, fmt: str, url: str = "") -> MediaItem:
    seconds = DEFAULT_AUDIO_SECONDS if data is None else _audio_seconds(data, fmt)
    tokens = max(1, math.ceil(seconds * AUDIO_TOKENS_PER_SECOND))
    key = hashlib.sha256(data if data is not None else url.encode()).hexdigest()[:16]
    return MediaItem("audio", tokens, tokens * AUDIO_FRAMES_PER_TOKEN, key)


def _video(url: str) -> MediaItem:
    frames = math.ceil(DEFAULT_VIDEO_SECONDS * VIDEO_FPS)
    per_frame = VIDEO_FRAME_SIDE * VIDEO_FRAME_SIDE // PIXELS_PER_TOKEN
    tokens = frames * per_frame // 2  # frames are merged in temporal pairs
    return MediaItem("video", tokens, tokens * PATCHES_PER_TOKEN, hashlib.sha256(url.encode()).hexdigest()[:16])


def media_of(part: dict[str, Any]) -> MediaItem | None:
    """The media item of one content part; None for a text part. Raises MediaError if unreadable."""
    kind = part.get("type")
    if kind in (None, "text"):
        return None
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
        if not isinstance(url, str) or not url:
            raise MediaError("an image_url part needs image_url.url")
        return _image(url)
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise MediaError("an input_audio part needs input_audio.data (base64) and input_audio.format")
        try:
            data = base64.b64decode(audio["data"], validate=False)
        except (binascii.Error, ValueError):
            raise MediaError("input_audio.data is not valid base64") from None
        return _audio(data, str(audio.get("format", "wav")))
    if kind == "audio_url":
        url = (part.get("audio_url") or {}).get("url") if isinstance(part.get("audio_url"), dict) else None
        if not isinstance(url, str) or not url:
            raise MediaError("an audio_url part needs audio_url.url")
        clip = _data_url(url)
        return _audio(clip, "wav" if clip is not None else "", url)
    if kind == "video_url":
        url = (part.get("video_url") or {}).get("url") if isinstance(part.get("video_url"), dict) else None
        if not isinstance(url, str) or not url:
            raise MediaError("a video_url part needs video_url.url")
        return _video(url)
    raise MediaError(f"unknown content part type {kind!r}")


def encoder_seconds(
    items: list[MediaItem],
    *,
    gpus: int,
    flops_per_gpu: float,
    encoder_gpus: int,
    params: Mapping[str, int] = ENCODER_PARAMS,
) -> float:
    """Time the encoders (``params`` by media kind) take for ``items`` on ``encoder_gpus`` of the GPUs."""
    if not items or flops_per_gpu <= 0:
        return 0.0
    flops = sum(2 * params.get(item.kind, 0) * item.encoder_units for item in items)
    return flops / (max(min(encoder_gpus, gpus), 1) * flops_per_gpu * ENCODER_MFU)
