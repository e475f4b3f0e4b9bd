"""Pretrained weights without a network: the Hugging Face hub's local cache at once, not after a minute.

Why this module exists: with no network, ``huggingface_hub`` retries every request before it
falls back to its cache, so ``backbone.pretrained=true`` offline took 47 s of retry warnings to
fail (measured on the dev machine, no DNS) even when the weights were never going to come. A
TCP connect to the hub's endpoint answers the same question in milliseconds; when it fails, the
call runs in the hub's own offline mode (``HF_HUB_OFFLINE``), which serves cached weights and
fails at once on missing ones. The hub library has no "probe first" switch of its own.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

log = logging.getLogger("resflex")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's endpoint (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection;
    False at once in the hub's offline mode."""
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without the hub library: nothing to probe
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def hub_offline() -> Iterator[None]:
    """The hub library in offline mode for the duration: cached files only, no request, no retry."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextmanager
def hub_or_cache(what: str) -> Iterator[bool]:
    """Run a download of ``what`` online when the hub answers, else from the local cache (one info
    line says so); yields whether the hub was reachable."""
    if hub_reachable():
        yield True
        return
    log.info("%s: the Hugging Face hub is not reachable: the local cache only", what)
    with hub_offline():
        yield False
