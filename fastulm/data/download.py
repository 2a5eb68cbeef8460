"""Fetch a dataset by URL into a cache folder: once, resumably, checksum-verified."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from fastulm.checksums import file_sha256
from fastulm.data import DataError

#: Published checksums. The official IMDB archive's sha256 is the one TensorFlow Datasets
#: records (tensorflow_datasets/url_checksums/imdb_reviews.txt, 84,125,825 bytes).
KNOWN_SHA256 = {
    "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz": "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
}
_CHUNK = 1 << 20


def known_sha256(url: str) -> str | None:
    return KNOWN_SHA256.get(re.sub(r"^http://", "https://", url))


def download_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$FASTULM_CACHE``, else ``~/.cache/fastulm``; downloads go in it."""
    if path is None:
        path = os.environ.get("FASTULM_CACHE") or Path.home() / ".cache" / "fastulm"
    return Path(path) / "downloads"


def cached_name(url: str) -> str:
    """A file name unique to the URL that still shows its last part."""
    last = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", last) or "download"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def fetch(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    retries: int = 5,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """The local copy of ``url``, downloading it first if needed.

    The download goes to ``<name>.part`` and continues from where it stopped (an HTTP
    Range request) after a dropped connection or an interrupted run. The finished file is
    checked against ``sha256`` (or the known value for the URL) before it is renamed into
    place; a mismatch deletes it and fails.
    """
    folder = download_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / cached_name(url)
    expected = (sha256 or known_sha256(url) or "").lower() or None
    if target.exists():
        if expected is None or file_sha256(target) == expected:
            return target
        target.unlink()  # a stale or damaged copy: fetch again
    part = target.with_name(target.name + ".part")
    for attempt in range(retries + 1):
        try:
            if _download(url, part, progress, timeout):
                break
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code < 500 and err.code != 416:
                raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None
            if attempt == retries:
                reason = getattr(err, "reason", None) or err
                raise DataError(f"{url}: download failed ({reason})") from None
    else:
        raise DataError(f"{url}: download incomplete after {retries + 1} attempts")
    if expected is not None:
        got = file_sha256(part)
        if got != expected:
            part.unlink()
            raise DataError(f"{url}: sha256 mismatch (expected {expected}, got {got})")
    os.replace(part, target)
    return target


def _download(url: str, part: Path, progress: bool, timeout: float) -> bool:
    """One request, appending to ``part``; True when the file is complete."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fastulm"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send, or a changed file: start over
            part.unlink()
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range: take the whole body again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"downloading {url.rsplit('/', 1)[-1]}",
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        return False
    if total is not None and size > total:
        part.unlink()
        raise ValueError(f"got {size} bytes, expected {total}")
    return True
