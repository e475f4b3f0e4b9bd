"""Value types shared by every layer (data, models, training, the entry points).

One home, so an image size means the same thing everywhere: ``(height, width)`` in
pixels, the order torch's tensors use (``images.shape[-2:]``). It sits below
``data/`` and ``models/`` so both can name it without importing each other.
"""

from __future__ import annotations

#: an image or input size, ``(height, width)`` in pixels
Size = tuple[int, int]
