"""Downloads against a local HTTP server: cache, resume after a cut, checksum, errors."""

import hashlib
import http.server
import os
import re
import threading

import pytest

from fastulm.data import DataError
from fastulm.data.download import cached_name, fetch, known_sha256

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """Serves PAYLOAD at any path, with Range support; ``cut`` truncates the next N bodies."""

    def __init__(self):
        self.requests: list[dict] = []
        self.cut = 0
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(dict(self.headers))
                if self.path.startswith("/missing"):
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
                    )
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut:
                    server.cut -= 1
                    body = body[: len(body) // 3]
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def test_download_once_then_cached(server, tmp_path):
    url = server.url + "/data/reviews.tar.gz"
    path = fetch(url, cache_dir=tmp_path, sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert path.name == cached_name(url) and path.name.endswith("-reviews.tar.gz")
    assert len(server.requests) == 1
    server.stop()  # the second call must not touch the network
    assert fetch(url, cache_dir=tmp_path, sha256=SHA, progress=False) == path
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_truncated_download_resumes_with_range(server, tmp_path):
    server.cut = 2  # the first two responses stop a third of the way through
    path = fetch(server.url + "/a.tar.gz", cache_dir=tmp_path, sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    ranges = [r.get("Range") for r in server.requests]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])
    assert len(ranges) == 3


def test_interrupted_earlier_run_is_continued(server, tmp_path):
    url = server.url + "/b.tar.gz"
    part = tmp_path / "downloads" / (cached_name(url) + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])
    path = fetch(url, cache_dir=tmp_path, sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[0]["Range"] == "bytes=1000-"
    assert not part.exists()


def test_server_without_range_support_restarts(server, tmp_path):
    server.honour_range = False
    url = server.url + "/c.tar.gz"
    part = tmp_path / "downloads" / (cached_name(url) + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not stay in front")
    assert fetch(url, cache_dir=tmp_path, sha256=SHA, progress=False).read_bytes() == PAYLOAD


def test_checksum_mismatch_fails_and_keeps_nothing(server, tmp_path):
    url = server.url + "/d.tar.gz"
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch(url, cache_dir=tmp_path, sha256="0" * 64, progress=False)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_http_error_is_one_clear_error(server, tmp_path):
    with pytest.raises(DataError, match=re.escape("missing.tar.gz: HTTP 404")):
        fetch(server.url + "/missing.tar.gz", cache_dir=tmp_path, progress=False)


def test_unreachable_server(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        fetch("http://127.0.0.1:9/x.tar.gz", cache_dir=tmp_path, progress=False, retries=1)


def test_cached_name_keeps_the_file_suffix():
    a = cached_name("https://host/data/texts.csv?download=1")
    b = cached_name("https://host/data/texts.csv")
    assert a.endswith("-texts.csv") and b.endswith("-texts.csv") and a != b


def test_official_archive_checksum_is_known():
    sha = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
    url = "ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
    assert known_sha256("https://" + url) == sha
    assert known_sha256("http://" + url) == sha
    assert known_sha256("https://example.com/other.tar.gz") is None


def test_url_source_end_to_end(server, tmp_path, tiny_imdb):
    """SRC as a URL: downloaded into the cache, then read like the local archive."""
    from imdb_fakes import make_tar

    from fastulm.data.sources import open_source

    root, expected = tiny_imdb
    archive = make_tar(root, tmp_path / "a.tar.gz")
    global PAYLOAD
    saved, PAYLOAD = PAYLOAD, archive.read_bytes()
    try:
        source = open_source(server.url + "/aclImdb_v1.tar.gz", cache_dir=tmp_path / "cache")
        got = {(r.split, r.id): (r.text, r.label) for r in source.records()}
    finally:
        PAYLOAD = saved
    assert got == expected
    assert source.path == server.url + "/aclImdb_v1.tar.gz"
