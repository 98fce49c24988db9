"""JSON round-trips for the config dataclasses (``config.json`` of every run)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C", bound="DictConfig")


class DictConfig:
    """Mixin for dataclasses: ``to_dict`` / ``from_dict``, rejecting unknown keys by name."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable), round-trips through :meth:`from_dict`."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown keys raise an error listing them."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
        return cls(**d)
