"""Find, download and verify MedSAM2 checkpoint files.

Resolution order (``resolve_checkpoint``): an explicit path (``--checkpoint``), then the
``MEDSAM2_CHECKPOINT`` environment variable, then the release file in the cache directory
(``MEDSAM2_CACHE_DIR``, default ``~/.cache/medsam2``), then a download if asked for.

Verification: we do not know the sha256 of the released files (they could not be fetched
where this was written), so ``Release.sha256`` is ``None`` for all of them. In that case a
download is checked against the content hash Hugging Face sends for LFS files: the
``X-Linked-Etag`` header (on the huggingface.co response, before the redirect to the CDN)
and, failing that, an ``ETag``, each ``"<sha256 hex>"``. With neither a pinned sha256 nor a
64-hex etag we refuse unless ``allow_unverified=True``. A verified download leaves
``<file>.sha256`` (``sha256sum`` format) next to the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import requests

ENV_CHECKPOINT = "MEDSAM2_CHECKPOINT"
ENV_CACHE_DIR = "MEDSAM2_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/medsam2")
DEFAULT_RELEASE = "MedSAM2_latest"
# Looked up at call time so tests (and mirrors) can swap the host.
HF_BASE_URL = "https://huggingface.co"
# Short connect timeout so an offline machine fails in seconds, not minutes; the read
# timeout is per socket read, so a slow but live transfer is not cut off.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
HASH_CHUNK_BYTES = 1 << 20
# Small network reads: urllib3 drops the bytes of a read that ends in a broken connection,
# so this bounds what an interrupted transfer loses before the resume.
NET_CHUNK_BYTES = 64 << 10

LICENCE = "CC-BY-SA-4.0"
LICENCE_URL = "https://huggingface.co/wanglab/MedSAM2"

ProgressFn = Callable[[int, int | None], None]
NotifyFn = Callable[[str], None]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")



class CheckpointError(ValueError):
    """A checkpoint that cannot be found, fetched or used (one clear message)."""


class DeviceError(ValueError):
    """A device or thread setting this machine cannot honour."""


@dataclass(frozen=True)
class Release:
    """One published checkpoint file."""

    name: str
    repo_id: str
    filename: str
    size_bytes: int | None = None
    sha256: str | None = None  # None: verify against the server's LFS etag instead
    licence: str = LICENCE
    licence_url: str = LICENCE_URL

    @property
    def url(self) -> str:
        return self.url_for()

    def url_for(self, base_url: str | None = None) -> str:
        base = (base_url or HF_BASE_URL).rstrip("/")
        return f"{base}/{self.repo_id}/resolve/main/{self.filename}"


def _wanglab(filename: str) -> Release:
    return Release(name=filename.removesuffix(".pt"), repo_id="wanglab/MedSAM2",
                   filename=filename)


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        _wanglab("MedSAM2_latest.pt"),
        _wanglab("MedSAM2_2411.pt"),
        _wanglab("MedSAM2_US_Heart.pt"),
        _wanglab("MedSAM2_MRI_LiverLesion.pt"),
        _wanglab("MedSAM2_CTLesion.pt"),
    )
}


def get_release(release: str | Release) -> Release:
    """Look a release up by name or file name (``MedSAM2_latest`` or ``MedSAM2_latest.pt``)."""
    if isinstance(release, Release):
        return release
    key = release.removesuffix(".pt")
    if key not in RELEASES:
        raise CheckpointError(
            f"unknown MedSAM2 release {release!r}; known releases: {', '.join(RELEASES)}"
        )
    return RELEASES[key]


def default_cache_dir() -> Path:
    """``$MEDSAM2_CACHE_DIR`` or ``~/.cache/medsam2``."""
    return Path(os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR).expanduser()


def _cache(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def sha256_file(path: str | os.PathLike, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are ~150 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    try:
        token = _sidecar(path).read_text().split()[0].lower()
    except (OSError, IndexError):
        return None
    return token if _HEX64.match(token) else None


def _missing_message(rel: Release, cache: Path) -> str:
    target = cache / rel.filename
    return (
        f"No MedSAM2 checkpoint found. Download {rel.filename} from {rel.url} and save it "
        f"as {target} (the cache directory; set {ENV_CACHE_DIR} to use another). "
        f"Alternatively set {ENV_CHECKPOINT} to the path of a checkpoint file, or pass "
        f"--checkpoint /path/to/{rel.filename}. The weights are licensed {rel.licence} "
        f"({rel.licence_url})."
    )


def resolve_checkpoint(
    explicit: str | os.PathLike | None,
    *,
    cache_dir: str | os.PathLike | None = None,
    release: str | Release = DEFAULT_RELEASE,
    download: bool = False,
    progress: ProgressFn | None = None,
    _env: bool = True,
) -> Path:
    """Return the checkpoint path to use: explicit > $MEDSAM2_CHECKPOINT > cache > download.

    ``explicit`` is a path, or a release name (``--checkpoint MedSAM2_US_Heart``) when no
    file of that name exists: that release from the cache, or downloaded with ``download``.
    An explicit or environment path that does not exist is an error rather than a fall
    through, so a typo is not silently replaced by some other file.
    """
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.exists() and str(explicit).removesuffix(".pt") in RELEASES:
            return resolve_checkpoint(None, cache_dir=cache_dir, release=str(explicit),
                                      download=download, progress=progress, _env=False)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path} (given with --checkpoint)")
        return path
    env = os.environ.get(ENV_CHECKPOINT) if _env else None
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint not found: {path} (from the {ENV_CHECKPOINT} environment variable)"
            )
        return path
    rel = get_release(release)
    cache = _cache(cache_dir)
    cached = cache / rel.filename
    if cached.is_file():
        return cached
    if download:
        return download_release(rel, cache, progress=progress)
    raise CheckpointError(_missing_message(rel, cache))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _licence_notice(rel: Release) -> str:
    return (
        f"Downloading {rel.filename} from {rel.repo_id}. These MedSAM2 weights are "
        f"licensed {rel.licence} ({rel.licence_url}); by using them you accept its terms, "
        "including attribution and share-alike."
    )


def _show_licence_once(rel: Release, cache: Path, notify: NotifyFn) -> None:
    marker = cache / f".licence-shown-{rel.name}"
    if marker.exists():
        return
    notify(_licence_notice(rel))
    marker.write_text(f"{rel.licence} {rel.licence_url}\n")


def _expected_sha(rel: Release, responses: Iterable[requests.Response]) -> str | None:
    """Pinned sha256, else the first 64-hex X-Linked-Etag, else the first 64-hex ETag.

    X-Linked-Etag sits on huggingface.co's redirect response (in ``resp.history``); the
    CDN's own ETag may be an md5, hence the hex-length check.
    """
    if rel.sha256:
        return rel.sha256.lower()
    responses = list(responses)
    for header in ("X-Linked-Etag", "ETag"):
        for resp in responses:
            value = resp.headers.get(header, "").strip()
            value = value.removeprefix("W/").strip('"').lower()
            if _HEX64.match(value):
                return value
    return None


def _total_size(resp: requests.Response, offset: int, rel: Release) -> int | None:
    if resp.status_code == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length")
    if length and length.isdigit():
        return int(length) + (offset if resp.status_code == 206 else 0)
    for r in resp.history:  # HF puts the LFS size on the redirect
        linked = r.headers.get("X-Linked-Size", "")
        if linked.isdigit():
            return int(linked)
    return rel.size_bytes


def _range_start(resp: requests.Response) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def download_release(
    release: str | Release = DEFAULT_RELEASE,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    progress: ProgressFn | None = None,
    timeout: float | tuple[float, float] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
    allow_unverified: bool = False,
    notify: NotifyFn = _stderr,
    retries: int = 2,
) -> Path:
    """Download a release into ``cache_dir`` and return the final path.

    Bytes go to ``<file>.part``; an existing ``.part`` is resumed with a Range request and
    a transfer that drops is resumed up to ``retries`` times. The sha256 covers the whole
    file, is checked before the atomic rename, and a mismatch deletes the ``.part``.
    Always fetches; ``resolve_checkpoint`` is what prefers an already cached file.
    """
    rel = get_release(release)
    cache = _cache(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / rel.filename
    part = final.with_name(final.name + ".part")
    url = rel.url_for(base_url)

    attempts = 0
    while True:
        try:
            digest, expected = _transfer(rel, url, final, part, progress=progress,
                                         timeout=timeout, allow_unverified=allow_unverified,
                                         notify=notify, cache=cache)
            break
        except _Interrupted as exc:
            attempts += 1
            if attempts > retries:
                raise CheckpointError(
                    f"download of {url} was interrupted after {exc.done} bytes ({exc.reason}); "
                    f"the partial file {part} is kept, run the download again to resume it, "
                    f"or download the file by hand to {final}"
                ) from exc.__cause__

    if expected is None:
        # allow_unverified: no sidecar, since .sha256 means "checked against the source".
        part.replace(final)
        return final
    if digest != expected:
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"sha256 mismatch for {url}: expected {expected}, got {digest}; the partial "
            f"download was deleted, run the download again (or fetch it by hand to {final})"
        )
    part.replace(final)
    _sidecar(final).write_text(f"{digest}  {final.name}\n")
    return final


class _Interrupted(Exception):
    def __init__(self, done: int, reason: str) -> None:
        super().__init__(reason)
        self.done = done
        self.reason = reason


def _transfer(
    rel: Release,
    url: str,
    final: Path,
    part: Path,
    *,
    progress: ProgressFn | None,
    timeout: float | tuple[float, float],
    allow_unverified: bool,
    notify: NotifyFn,
    cache: Path,
) -> tuple[str, str | None]:
    """One HTTP request; returns (sha256 of the whole .part, expected sha256 or None)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise CheckpointError(
            f"cannot reach {url} ({type(exc).__name__}); are you offline? Download the file "
            f"by hand from {url} and save it as {final}, or set {ENV_CHECKPOINT} / pass "
            "--checkpoint with its path"
        ) from exc
    with resp:
        if resp.status_code == 416 and offset:
            # The .part is no prefix of the current file (complete or stale): start over.
            part.unlink()
            return _transfer(rel, url, final, part, progress=progress, timeout=timeout,
                             allow_unverified=allow_unverified, notify=notify, cache=cache)
        if resp.status_code not in (200, 206):
            raise CheckpointError(
                f"download of {url} failed: HTTP {resp.status_code} {resp.reason}; download "
                f"the file by hand and save it as {final}"
            )
        expected = _expected_sha(rel, [*resp.history, resp])
        if expected is None and not allow_unverified:
            raise CheckpointError(
                f"cannot verify {url}: no pinned sha256 for {rel.name} and the server sent "
                "no sha256 ETag/X-Linked-Etag. Pass allow_unverified=True to accept it "
                f"anyway, or download it by hand to {final}"
            )
        # A 200 answer to a Range request (or a 206 from elsewhere) is the whole file.
        if resp.status_code != 206 or _range_start(resp) != offset:
            offset = 0
        total = _total_size(resp, offset, rel)
        _show_licence_once(rel, cache, notify)

        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as fh:  # hash the resumed prefix too
                while chunk := fh.read(HASH_CHUNK_BYTES):
                    digest.update(chunk)
        done = offset
        with open(part, "ab" if offset else "wb") as out:
            try:
                for chunk in resp.iter_content(NET_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            except requests.RequestException as exc:
                # Dropped connection / read timeout; disk errors (OSError) propagate,
                # since resuming does not fix them.
                out.flush()
                raise _Interrupted(done, type(exc).__name__) from exc
        if total is not None and done < total:
            raise _Interrupted(done, f"got {done} of {total} bytes")
    return digest.hexdigest(), expected


def list_checkpoints(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per known release with its cache state, for ``medsam-server checkpoints``."""
    cache = _cache(cache_dir)
    rows = []
    for rel in RELEASES.values():
        path = cache / rel.filename
        part = path.with_name(path.name + ".part")
        cached = path.is_file()
        rows.append({
            "name": rel.name,
            "filename": rel.filename,
            "default": rel.name == DEFAULT_RELEASE,
            "url": rel.url,
            "licence": f"{rel.licence} ({rel.licence_url})",
            "path": str(path) if cached else None,
            "size": path.stat().st_size if cached else rel.size_bytes,
            "sha256": _read_sidecar(path) if cached else None,
            "partial": part.stat().st_size if part.is_file() else None,
        })
    return rows


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"  # unreachable


def format_checkpoint_table(rows: list[dict]) -> str:
    """Plain-text table of ``list_checkpoints`` rows; ``*`` marks the default release."""
    table = [("NAME", "SIZE", "SHA256", "LOCATION")]
    for row in rows:
        name = ("* " if row.get("default") else "  ") + row["name"]
        if row.get("path"):
            location = row["path"]
            size = _human(row.get("size"))
        elif row.get("partial"):
            location = f"partial ({_human(row['partial'])}), resume from {row['url']}"
            size = "-"
        else:
            location = f"not downloaded: {row['url']}"
            size = "-"
        sha = (row.get("sha256") or "-")[:12]
        table.append((name, size, sha, location))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in table
    ]
    licences = sorted({row["licence"] for row in rows if row.get("licence")})
    lines.append("* = default release")
    lines.extend(f"Licence: {lic}" for lic in licences)
    return "\n".join(lines)
