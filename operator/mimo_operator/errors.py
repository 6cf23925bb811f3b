"""The exception tree of mimo-operator, written down once.

- ``MimoError``: every error this project raises on purpose.
  - ``SpecError``: a MiMoDeployment spec is invalid; ``field`` is the dotted path of the offending
    field (``spec.hardware.gpuType``) and the message says what is allowed.
    - ``PlanRefused``: the spec is well-formed but cannot work (weights do not fit, EP does not
      divide the experts, …); the message carries the numbers.
"""

from __future__ import annotations

__all__ = ["MimoError", "PlanRefused", "SpecError"]


class MimoError(Exception):
    """Base of every error mimo-operator raises on purpose."""


class SpecError(MimoError):
    """An invalid MiMoDeployment spec; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PlanRefused(SpecError):
    """A spec that parses but cannot be served; the message carries the numbers."""
