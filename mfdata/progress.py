"""Progress bars for long work: shown on a terminal, silent in logs and pipes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    items: Iterable[T], desc: str, unit: str = " items", total: int | None = None
) -> Iterable[T]:
    return tqdm(
        items, desc=desc, unit=unit, total=total, leave=False, mininterval=0.5, disable=None
    )
