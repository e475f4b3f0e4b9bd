"""What to do with an image that cannot be read: ``data.source.on_bad_image=skip|raise``.

``skip`` (default): the run goes on. Files whose header cannot be read are
dropped when the folder is scanned (so a class with no usable image is reported
up front); files that fail later (truncated data) are replaced in their batch
by the next readable sample, so every batch keeps its shape. Every skipped
path is appended to ``<run>/bad_images.txt`` — one line per file, written with
``O_APPEND`` so data-loader worker processes can share it — the first few are
printed once per process, and the count is logged as ``data/bad_images``.
``raise``: stop at the first bad file, naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from resflex.errors import ConfigError, DataError, first_line

log = logging.getLogger("resflex")
POLICIES = ("skip", "raise")


class BadImageError(DataError):
    """An image file that cannot be decoded (empty, truncated, not an image)."""

    def __init__(self, path: str | Path, cause: BaseException | str | None = None) -> None:
        if cause is None:
            # rebuilt in the main process from a loader worker's report: torch (ExceptionWrapper.reraise)
            # calls the class with one text, the worker's traceback, and without this form fell back to
            # a RuntimeError with that traceback (on_bad_image=raise with loader workers: exit 1)
            text, marker = str(path), f"{type(self).__name__}: "
            original = [line.split(marker, 1)[1] for line in text.splitlines() if marker in line]
            super().__init__(original[-1] if original else text)
            self.path = ""
            return
        detail = first_line(cause)
        super().__init__(
            f"cannot read image {path}: {detail}",
            hint="fix or remove the file, or set data.source.on_bad_image=skip",
        )
        self.path = str(path)


def check_policy(mode: object) -> str:
    """``data.source.on_bad_image``, one of :data:`POLICIES`, or a one-line :class:`ConfigError`."""
    if mode not in POLICIES:
        raise ConfigError(
            f"data.source.on_bad_image must be one of {', '.join(POLICIES)}, got {mode!r}",
            hint="skip (leave unreadable files out, listed in bad_images.txt) or raise (stop at one)",
        )
    return str(mode)


class BadImagePolicy:
    """Applies ``skip``/``raise`` and keeps the record of skipped files."""

    def __init__(self, mode: str = "skip", log_file: str | Path | None = None, max_printed: int = 5) -> None:
        self.mode = check_policy(mode)
        self.log_file = Path(log_file) if log_file else None
        self.max_printed = max_printed
        self._seen: set[str] = set()

    def handle(self, error: BadImageError) -> None:
        """Raise (``raise``) or record and return (``skip``)."""
        if self.mode == "raise":
            raise error
        if error.path in self._seen:
            return
        self._seen.add(error.path)
        if len(self._seen) <= self.max_printed:
            log.warning("%s; skipped (data.source.on_bad_image=skip)", error.message)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, (error.path + "\n").encode())
            finally:
                os.close(fd)

    def skipped(self) -> list[str]:
        """All paths skipped so far by any process (read back from the shared file)."""
        if self.log_file is not None and self.log_file.is_file():
            return sorted(set(self.log_file.read_text().split()))
        return sorted(self._seen)
