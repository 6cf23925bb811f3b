"""Reading a gang's launch plan as its pods carry it (``labels.ANNOTATION_LAUNCH_PLAN``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from mimo_operator import labels as L


def launch_plan_document(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The launch plan of the one gang among ``objects`` (its objects, or its pods): every pod carries the
    same document, which is checked."""
    documents = {o["metadata"]["annotations"][L.ANNOTATION_LAUNCH_PLAN] for o in objects if o["kind"] == "Pod"}
    assert len(documents) == 1, f"the gang's pods carry {len(documents)} launch plans"
    document: dict[str, Any] = json.loads(documents.pop())
    return document
