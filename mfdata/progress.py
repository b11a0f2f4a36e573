"""Progress for long work: bars shown on a terminal (silent in logs and pipes), and ``Echo``,
the one-line printer every long-running function takes (``print``, ``typer.echo``, or silence)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
Echo = Callable[[str], None]


def progress(
    items: Iterable[T], desc: str, unit: str = " items", total: int | None = None
) -> Iterable[T]:
    return tqdm(
        items, desc=desc, unit=unit, total=total, leave=False, mininterval=0.5, disable=None
    )


def silent(message: str) -> None:
    """The :data:`Echo` that prints nothing (ranks above 0, checks that repeat a stage's)."""
