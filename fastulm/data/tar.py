"""A streaming reader of tar archives (plain, gzip, bzip2 or xz), never extracting.

Members are read in order from one pass over the decompressed bytes; links, devices and
folders are skipped, never followed, so no member name can write anywhere.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path

from fastulm.data import DataError

try:  # ISA-L's inflate: about 3x faster than zlib's, a third of reading the IMDB archive
    from isal import isal_zlib as inflate
except ImportError:  # optional: zlib gives the same bytes
    inflate = zlib

BLOCK = 512


def archive_format(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(BLOCK + 8)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if head[:2] == b"\x1f\x8b":
        return "gz"
    if head[:3] == b"BZh":
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def chunks(
    path: Path, fmt: str, size: int = 1 << 20, read: list[int] | None = None
) -> Iterator[bytes]:
    """Decompressed bytes of the archive, in chunks; concatenated members are followed.
    ``read[0]`` follows how many bytes of the file have been read (for progress)."""
    read = [0] if read is None else read
    with open(path, "rb") as f:

        def take() -> bytes:
            data = f.read(size)
            read[0] += len(data)
            return data

        if fmt == "tar":
            yield from iter(take, b"")
            return
        new = {
            "gz": lambda: inflate.decompressobj(31),
            "bz2": bz2.BZ2Decompressor,
            "xz": lzma.LZMADecompressor,
        }[fmt]
        dec = None
        for chunk in iter(take, b""):
            while chunk:
                if dec is None:
                    dec = new()
                out = dec.decompress(chunk)
                if out:
                    yield out
                if dec.eof:
                    chunk, dec = dec.unused_data, None
                else:
                    chunk = b""
        if dec is not None:
            raise DataError(f"{path}: truncated archive (the compressed stream ends early)")


class Stream:
    """Sequential reads over decompressed chunks (a read is one slice of the buffer)."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks = chunks
        self._buf = b""
        self._pos = 0
        self.offset = 0

    def read(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < n:
            parts = [buf[pos:]]
            have = len(parts[0])
            while have < n:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                parts.append(chunk)
                have += len(chunk)
            buf, pos = b"".join(parts), 0
        out = buf[pos : pos + n]
        self._buf, self._pos = buf, pos + len(out)
        self.offset += len(out)
        return out

    def skip(self, n: int) -> None:
        if len(self._buf) - self._pos >= n:  # the usual case: no copy
            self._pos += n
            self.offset += n
        else:
            self.read(n)


def _octal(field_: bytes) -> int:
    if field_[:1] and field_[0] & 0x80:  # GNU base-256 for big numbers
        return int.from_bytes(field_[1:], "big")
    digits = field_.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def iter_tar(path: Path, read: list[int] | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file in a tar archive, streamed without extracting.

    A small reader of the ustar/GNU/pax formats: Python's tarfile spends ~30 us per member
    parsing headers (3 s for IMDB's 100k members); this reads the same fields in ~2 us.
    Links, devices and folders are skipped, never followed.
    """
    fmt = archive_format(path)
    stream = Stream(chunks(path, fmt, read=read))
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        start = stream.offset
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            if start == 0:
                raise DataError(f"{path}: empty archive")
            raise DataError(f"{path}: truncated tar archive (at byte {start})")
        if header.count(0) == BLOCK:
            return
        # The checksum costs 4 us a header; the magic alone catches a misaligned stream, and
        # compressed archives carry their own CRC. Headers without the magic are checked.
        if (header[257:262] != b"ustar" or start == 0) and not is_tar_header(header):
            raise DataError(f"{path}: damaged tar archive (bad header at byte {start})")
        try:
            size = _octal(header[124:136])
        except ValueError:
            raise DataError(f"{path}: damaged tar archive (bad size at byte {start})") from None
        kind = header[156:157]
        if "size" in pax:
            size = int(pax["size"])
        data = stream.read(size)
        if len(data) < size:
            raise DataError(f"{path}: truncated tar archive (member at byte {start})")
        stream.skip(-size % BLOCK)  # the padding to the next block
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind in (b"x", b"X"):
            pax = _pax(data)
            continue
        if kind in (b"g", b"K"):
            continue
        if long_name is not None:
            name = long_name
        elif "path" in pax:
            name = pax["path"]
        else:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:263] == b"ustar\x00":  # POSIX: a prefix field extends the name
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        long_name, pax = None, {}
        if kind in (b"0", b"\0", b"7"):
            yield name, data


def is_tar_header(block: bytes) -> bool:
    try:
        checksum = _octal(block[148:156])
    except ValueError:
        return False
    return len(block) == BLOCK and checksum == sum(block) - sum(block[148:156]) + 256
