"""Input-resolution schedules: answer "which (h, w) for this training step?".

A schedule is a pure function of (epoch, step) — plus its own seed where it is
random — so every DDP rank and every resumed run picks the same size for the
same step. ``eval_size`` is the size validation runs at by default.
"""

from __future__ import annotations

from collections.abc import Sequence

from resflex.errors import ConfigError

Size = tuple[int, int]


def parse_size(value: int | Sequence[int], key: str = "resolution.size") -> Size:
    """``64`` -> (64, 64); ``[48, 80]`` -> (48, 80) as (height, width). Rejects non-positive sizes."""
    if isinstance(value, bool):
        value = None  # type: ignore[assignment]
    if isinstance(value, int):
        h = w = value
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        h, w = value
    else:
        raise ConfigError(f"{key} must be an int or [height, width], got {value!r}", hint=f"e.g. {key}=64")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ConfigError(f"{key} must be positive integers, got {value!r}", hint=f"e.g. {key}=64")
    return int(h), int(w)


class ResolutionSchedule:
    """Base class: subclasses implement :meth:`size_at`."""

    def size_at(self, epoch: int, step: int) -> Size:
        raise NotImplementedError

    @property
    def eval_size(self) -> Size:
        raise NotImplementedError

    def sizes(self) -> list[Size]:
        """Every size this schedule can return (for warm-up, memory checks and logging)."""
        return [self.eval_size]


class FixedResolution(ResolutionSchedule):
    """One size for every step."""

    def __init__(self, size: int | Sequence[int] = 64, eval_size: int | Sequence[int] | None = None):
        self.size = parse_size(size)
        self._eval_size = (
            parse_size(eval_size, "resolution.eval_size") if eval_size is not None else self.size
        )

    def size_at(self, epoch: int, step: int) -> Size:
        return self.size

    @property
    def eval_size(self) -> Size:
        return self._eval_size

    def sizes(self) -> list[Size]:
        return sorted({self.size, self._eval_size})

    def __repr__(self) -> str:
        return f"FixedResolution(size={self.size}, eval_size={self._eval_size})"
