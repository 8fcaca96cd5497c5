"""The images the measurements send: distinct CIFAR-10 JPEGs, and endless distinct variants of a few."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from models import data as datasets


class Images:
    """Distinct CIFAR-10 JPEGs handed out phase by phase (never the same bytes twice)."""

    def __init__(self, source: Path, count: int) -> None:
        samples = datasets.limit_per_class(datasets.list_samples(source), count // 10 + 1, seed=11)
        seen, self.items = set(), []
        for _, b in datasets.read_samples(source, samples):
            if b not in seen:
                seen.add(b)
                self.items.append(b)
        self.pos = 0

    def take(self, n: int) -> list[bytes]:
        if self.pos + n > len(self.items):
            raise RuntimeError(f"benchmark ran out of distinct images ({len(self.items)})")
        out = self.items[self.pos:self.pos + n]
        self.pos += n
        return out


class DistinctImages:
    """An endless sequence of distinct JPEGs: base image ``i % n`` with comment ``i`` inserted
    after the start-of-image marker (valid JPEG, same pixels, new sha256)."""

    def __init__(self, base: list[bytes], tag: str) -> None:
        self.base, self.tag = base, tag.encode()

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, i: int) -> bytes:
        data = self.base[i % len(self.base)]
        comment = self.tag + b"-" + str(i).encode()
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
