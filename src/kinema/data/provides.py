"""What a dataset gives a conditional run, asked of its class before anything is decoded."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Provides"]


@dataclass(frozen=True)
class Provides:
    """`num_classes` (0: no labels) and `captions` of a dataset as configured; `where` names it in error messages."""

    num_classes: int = 0
    captions: bool = False
    where: str = ""
