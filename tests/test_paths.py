"""Fetching a package file from the configured index without pip resolving anything."""

import hashlib

import pytest

from depthcut.paths import FetchError, fetch_file, pip_indexes


def _index(tmp_path, payload: bytes, digest: str):
    """A PEP 503 ``file://`` index with one project holding one file."""
    project = tmp_path / "index" / "demo"
    project.mkdir(parents=True)
    (project / "demo-1.0.tar.gz").write_bytes(payload)
    href = f"demo-1.0.tar.gz#sha256={digest}"
    (project / "index.html").write_text(f'<html><body><a href="{href}">demo-1.0</a></body></html>')
    return (tmp_path / "index").as_uri()


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    def make(payload: bytes, digest: str | None = None):
        url = _index(tmp_path, payload, digest or hashlib.sha256(payload).hexdigest())
        monkeypatch.setenv("PIP_INDEX_URL", url)
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
        monkeypatch.setenv("DEPTHCUT_CACHE", str(tmp_path / "cache"))
        return tmp_path / "cache" / "data"

    return make


def test_fetch_reads_the_configured_index_and_checks_the_hash(local_index):
    cache = local_index(b"real bytes")
    assert pip_indexes()[0].startswith("file:")
    path = fetch_file("demo", "demo-1.0.tar.gz")
    assert path == cache / "demo-1.0.tar.gz" and path.read_bytes() == b"real bytes"


def test_a_wrong_hash_leaves_no_file(local_index):
    cache = local_index(b"tampered", digest="0" * 64)
    with pytest.raises(FetchError, match="sha256 .* differs from the index's 0000"):
        fetch_file("demo", "demo-1.0.tar.gz")
    assert list(cache.iterdir()) == []


def test_a_missing_file_names_the_index(local_index):
    local_index(b"x")
    with pytest.raises(FetchError, match=r"demo-2.0.tar.gz: not found on file:.*no demo-2.0"):
        fetch_file("demo", "demo-2.0.tar.gz")
