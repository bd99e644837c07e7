"""Typed refusals of the saliency layer (messages carry no PHI: shapes, names and numbers only)."""

from __future__ import annotations

__all__ = [
    "InsufficientSamplesError",
    "InvalidTargetError",
    "LayerStatsMismatchError",
    "SaliencyError",
    "UnknownMethodError",
    "UnknownParameterError",
]


class SaliencyError(ValueError):
    """Base class: a saliency request that cannot be served as asked."""


class UnknownMethodError(SaliencyError, KeyError):
    """No method is registered under that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownParameterError(SaliencyError, TypeError):
    """A parameter the method does not define (typos must not be silently ignored)."""


class InvalidTargetError(SaliencyError):
    """A target class that is out of range or does not match the batch size."""


class LayerStatsMismatchError(SaliencyError):
    """IBA layer statistics that do not fit the model's layer (name or shape)."""


class InsufficientSamplesError(SaliencyError):
    """Fewer samples than requested were available to estimate layer statistics."""
