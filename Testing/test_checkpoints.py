"""Checkpoint manager: resolution order, and downloads against a real local HTTP server."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from medsam_server import checkpoints as ck
from medsam_server.engine.model import CheckpointError

LATEST = ck.RELEASES["MedSAM2_latest"]
FILE_PATH = "/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt"
CDN_PATH = "/cdn/blob"


@dataclass
class ServerConfig:
    data: bytes
    etag: str | None  # sent as X-Linked-Etag and ETag, quoted; None sends neither
    drops: int = 0  # how many responses to cut off after drop_after body bytes
    drop_after: int = 0
    ignore_range: bool = False  # answer 200 with the whole file to a Range request
    redirect: bool = False  # HF style: 302 with X-Linked-Etag, CDN answers with an md5 ETag
    requests: list[dict] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        cfg: ServerConfig = self.server.cfg
        cfg.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if cfg.redirect and self.path == FILE_PATH:
            self.send_response(302)
            self.send_header("Location", CDN_PATH)
            if cfg.etag:
                self.send_header("X-Linked-Etag", f'"{cfg.etag}"')
            self.send_header("X-Linked-Size", str(len(cfg.data)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in (FILE_PATH, CDN_PATH):
            self.send_error(404)
            return
        data, start, status = cfg.data, 0, 200
        rng = self.headers.get("Range")
        if rng and not cfg.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        if cfg.redirect:
            self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
        elif cfg.etag:
            self.send_header("X-Linked-Etag", f'"{cfg.etag}"')
            self.send_header("ETag", f'"{cfg.etag}"')
        self.end_headers()
        if cfg.drops > 0:
            cfg.drops -= 1
            self.wfile.write(body[: cfg.drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    data = os.urandom(300_000)
    cfg = ServerConfig(data=data, etag=hashlib.sha256(data).hexdigest())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.cfg = cfg
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    cfg.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield cfg
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(ck.ENV_CHECKPOINT, raising=False)
    # Never let a test touch the real ~/.cache/medsam2.
    monkeypatch.setenv(ck.ENV_CACHE_DIR, str(tmp_path / "default-cache"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- downloads


def test_full_download_writes_sidecar_and_shows_licence_once(server, tmp_path):
    notes: list[str] = []
    calls: list[tuple[int, int | None]] = []
    cache = tmp_path / "cache"
    path = ck.download_release("MedSAM2_latest", cache, base_url=server.base_url,
                               notify=notes.append, progress=lambda d, t: calls.append((d, t)))

    assert path == cache / "MedSAM2_latest.pt"
    assert path.read_bytes() == server.data
    assert not (cache / "MedSAM2_latest.pt.part").exists()
    sidecar = (cache / "MedSAM2_latest.pt.sha256").read_text()
    assert sidecar.split() == [server.etag, "MedSAM2_latest.pt"]
    assert ck.sha256_file(path) == server.etag
    assert calls[-1] == (len(server.data), len(server.data))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(notes) == 1 and "CC-BY-SA-4.0" in notes[0]
    assert (cache / ".licence-shown-MedSAM2_latest").exists()

    ck.download_release("MedSAM2_latest", cache, base_url=server.base_url, notify=notes.append)
    assert len(notes) == 1, "licence shown again for the same cache dir"
    assert len(server.requests) == 2

    # Another cache dir has not seen it yet.
    ck.download_release("MedSAM2_latest", tmp_path / "other", base_url=server.base_url,
                        notify=notes.append)
    assert len(notes) == 2


def test_default_notify_prints_licence_to_stderr(server, tmp_path, capsys):
    ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url)
    captured = capsys.readouterr()
    assert "CC-BY-SA-4.0" in captured.err and "huggingface.co/wanglab/MedSAM2" in captured.err
    assert captured.out == ""


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.drops, server.drop_after = 1, 200_000
    part = tmp_path / "MedSAM2_latest.pt.part"
    with pytest.raises(CheckpointError, match="interrupted") as info:
        ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                            notify=lambda m: None, retries=0)
    assert "resume" in str(info.value)
    assert not (tmp_path / "MedSAM2_latest.pt").exists()
    kept = part.stat().st_size
    assert 0 < kept <= 200_000
    assert part.read_bytes() == server.data[:kept]

    path = ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                               notify=lambda m: None)
    assert path.read_bytes() == server.data
    assert not part.exists()
    assert [r["range"] for r in server.requests] == [None, f"bytes={kept}-"]
    assert (tmp_path / "MedSAM2_latest.pt.sha256").read_text().split()[0] == server.etag


def test_dropped_transfer_is_resumed_automatically(server, tmp_path):
    server.drops, server.drop_after = 2, 100_000
    path = ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                               notify=lambda m: None)
    assert path.read_bytes() == server.data
    ranges = [r["range"] for r in server.requests]
    assert len(ranges) == 3 and ranges[0] is None
    assert all(r and r.startswith("bytes=") for r in ranges[1:])


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    # A stale prefix that does not match the file: appending to it would corrupt it.
    (tmp_path / "MedSAM2_latest.pt.part").write_bytes(b"\0" * 50_000)
    path = ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                               notify=lambda m: None)
    assert server.requests[0]["range"] == "bytes=50000-"
    assert path.read_bytes() == server.data


def test_part_longer_than_file_416_restarts(server, tmp_path):
    (tmp_path / "MedSAM2_latest.pt.part").write_bytes(b"x" * (len(server.data) + 10))
    path = ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                               notify=lambda m: None)
    assert path.read_bytes() == server.data
    assert [r["range"] for r in server.requests] == [f"bytes={len(server.data) + 10}-", None]


def test_hash_mismatch_raises_and_leaves_no_file(server, tmp_path):
    server.etag = hashlib.sha256(b"some other file").hexdigest()
    with pytest.raises(CheckpointError, match="sha256 mismatch") as info:
        ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                            notify=lambda m: None)
    assert server.etag in str(info.value)
    assert not (tmp_path / "MedSAM2_latest.pt").exists()
    assert not (tmp_path / "MedSAM2_latest.pt.part").exists()
    assert not (tmp_path / "MedSAM2_latest.pt.sha256").exists()


def test_unverifiable_download_refused_unless_allowed(server, tmp_path):
    server.etag = None
    notes: list[str] = []
    with pytest.raises(CheckpointError, match="allow_unverified"):
        ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                            notify=notes.append)
    assert not (tmp_path / "MedSAM2_latest.pt").exists()
    assert not (tmp_path / "MedSAM2_latest.pt.part").exists()
    assert notes == []  # refused before any transfer

    path = ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                               notify=notes.append, allow_unverified=True)
    assert path.read_bytes() == server.data
    # The sidecar means "checked against the source": none for an unverified file.
    assert not (tmp_path / "MedSAM2_latest.pt.sha256").exists()


def test_pinned_sha_used_without_etag_and_wins_over_etag(server, tmp_path):
    good = server.etag
    server.etag = None
    pinned = replace(LATEST, sha256=good)
    path = ck.download_release(pinned, tmp_path / "a", base_url=server.base_url,
                               notify=lambda m: None)
    assert path.read_bytes() == server.data

    server.etag = good
    wrong = replace(LATEST, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        ck.download_release(wrong, tmp_path / "b", base_url=server.base_url,
                            notify=lambda m: None)
    assert not (tmp_path / "b" / "MedSAM2_latest.pt").exists()


def test_hf_style_redirect_uses_linked_etag(server, tmp_path):
    server.redirect = True
    path = ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                               notify=lambda m: None)
    assert path.read_bytes() == server.data
    assert [r["path"] for r in server.requests] == [FILE_PATH, CDN_PATH]
    assert (tmp_path / "MedSAM2_latest.pt.sha256").read_text().split()[0] == server.etag


def test_http_error_is_a_checkpoint_error(server, tmp_path):
    with pytest.raises(CheckpointError, match="HTTP 404"):
        ck.download_release("MedSAM2_2411", tmp_path, base_url=server.base_url,
                            notify=lambda m: None)
    assert list(tmp_path.glob("*.pt")) == []


def test_offline_fails_fast_with_manual_instructions(tmp_path):
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        ck.download_release("MedSAM2_latest", tmp_path, base_url=f"http://127.0.0.1:{port}",
                            notify=lambda m: None)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert str(tmp_path / "MedSAM2_latest.pt") in msg
    assert "download" in msg.lower()
    assert f"127.0.0.1:{port}{FILE_PATH}" in msg


def test_resolve_download_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setattr(ck, "HF_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="(?i)download") as info:
        ck.resolve_checkpoint(None, cache_dir=tmp_path, download=True)
    assert time.monotonic() - start < 5
    assert str(tmp_path / "MedSAM2_latest.pt") in str(info.value)


# ---------------------------------------------------------------- resolution


def test_resolve_order_explicit_env_cache(monkeypatch, tmp_path):
    explicit = tmp_path / "mine.pt"
    from_env = tmp_path / "env.pt"
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / "MedSAM2_latest.pt"
    for p in (explicit, from_env, cached):
        p.write_bytes(b"ckpt")
    monkeypatch.setenv(ck.ENV_CHECKPOINT, str(from_env))

    assert ck.resolve_checkpoint(str(explicit), cache_dir=cache) == explicit
    assert ck.resolve_checkpoint(None, cache_dir=cache) == from_env
    monkeypatch.delenv(ck.ENV_CHECKPOINT)
    assert ck.resolve_checkpoint(None, cache_dir=cache) == cached
    other = cache / "MedSAM2_CTLesion.pt"
    other.write_bytes(b"ckpt")
    assert ck.resolve_checkpoint(None, cache_dir=cache, release="MedSAM2_CTLesion") == other


def test_resolve_uses_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(ck.ENV_CACHE_DIR, str(tmp_path))
    (tmp_path / "MedSAM2_latest.pt").write_bytes(b"ckpt")
    assert ck.resolve_checkpoint(None) == tmp_path / "MedSAM2_latest.pt"


def test_missing_explicit_path_is_clear_error(monkeypatch, tmp_path):
    (tmp_path / "MedSAM2_latest.pt").write_bytes(b"ckpt")  # must not be used instead
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="not found") as info:
        ck.resolve_checkpoint(str(missing), cache_dir=tmp_path)
    assert str(missing) in str(info.value)

    monkeypatch.setenv(ck.ENV_CHECKPOINT, str(missing))
    with pytest.raises(CheckpointError, match=ck.ENV_CHECKPOINT) as info:
        ck.resolve_checkpoint(None, cache_dir=tmp_path)
    assert str(missing) in str(info.value)


def test_nothing_found_message_says_where_and_how(tmp_path):
    with pytest.raises(CheckpointError) as info:
        ck.resolve_checkpoint(None, cache_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "MedSAM2_latest.pt") in msg
    assert "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt" in msg
    assert ck.ENV_CHECKPOINT in msg and "--checkpoint" in msg
    assert "\n" not in msg


def test_resolve_downloads_when_asked(monkeypatch, server, tmp_path, capsys):
    monkeypatch.setattr(ck, "HF_BASE_URL", server.base_url)
    seen: list[int] = []
    path = ck.resolve_checkpoint(None, cache_dir=tmp_path, download=True,
                                 progress=lambda d, t: seen.append(d))
    assert path.read_bytes() == server.data
    assert seen[-1] == len(server.data)
    # Second time it comes from the cache: no new request.
    assert ck.resolve_checkpoint(None, cache_dir=tmp_path, download=True) == path
    assert len(server.requests) == 1
    assert "CC-BY-SA-4.0" in capsys.readouterr().err


# ---------------------------------------------------------------- registry, listing


def test_registry_and_unknown_release():
    assert set(ck.RELEASES) == {"MedSAM2_latest", "MedSAM2_2411", "MedSAM2_US_Heart",
                                "MedSAM2_MRI_LiverLesion", "MedSAM2_CTLesion"}
    assert ck.get_release("MedSAM2_US_Heart.pt") is ck.RELEASES["MedSAM2_US_Heart"]
    assert LATEST.url == "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt"
    assert all(r.sha256 is None and r.licence == "CC-BY-SA-4.0" for r in ck.RELEASES.values())
    with pytest.raises(CheckpointError, match="MedSAM2_latest"):
        ck.get_release("MedSAM3")


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * 1024 + 7)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert ck.sha256_file(p, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def test_list_and_format_checkpoints(server, tmp_path):
    ck.download_release("MedSAM2_latest", tmp_path, base_url=server.base_url,
                        notify=lambda m: None)
    (tmp_path / "MedSAM2_CTLesion.pt.part").write_bytes(b"x" * 1234)
    rows = {r["name"]: r for r in ck.list_checkpoints(tmp_path)}
    assert len(rows) == 5
    latest = rows["MedSAM2_latest"]
    assert latest["default"] is True
    assert latest["path"] == str(tmp_path / "MedSAM2_latest.pt")
    assert latest["size"] == len(server.data)
    assert latest["sha256"] == server.etag
    assert latest["url"] == LATEST.url and "CC-BY-SA-4.0" in latest["licence"]
    assert rows["MedSAM2_2411"]["path"] is None and rows["MedSAM2_2411"]["sha256"] is None
    assert rows["MedSAM2_CTLesion"]["partial"] == 1234

    table = ck.format_checkpoint_table(list(rows.values()))
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "SHA256", "LOCATION"]
    latest_line = next(line for line in lines if "MedSAM2_latest" in line)
    assert latest_line.startswith("* ")
    assert server.etag[:12] in latest_line and str(tmp_path) in latest_line
    assert "not downloaded" in next(line for line in lines if "MedSAM2_2411" in line)
    assert "partial" in next(line for line in lines if "MedSAM2_CTLesion" in line)
    assert "Licence: CC-BY-SA-4.0" in table


def test_a_release_name_works_where_a_path_does(monkeypatch, tmp_path):
    """``--checkpoint MedSAM2_US_Heart``: that release from the cache (echo's checkpoint),
    never $MEDSAM2_CHECKPOINT's file; a file of that name in the folder still wins."""
    heart = tmp_path / "MedSAM2_US_Heart.pt"
    heart.write_bytes(b"ckpt")
    monkeypatch.setenv(ck.ENV_CHECKPOINT, str(tmp_path / "latest.pt"))
    (tmp_path / "latest.pt").write_bytes(b"ckpt")
    monkeypatch.chdir(tmp_path / "..")
    assert ck.resolve_checkpoint("MedSAM2_US_Heart", cache_dir=tmp_path) == heart
    assert ck.resolve_checkpoint("MedSAM2_US_Heart.pt", cache_dir=tmp_path) == heart
    with pytest.raises(CheckpointError, match="MedSAM2_CTLesion"):  # not cached: says how
        ck.resolve_checkpoint("MedSAM2_CTLesion", cache_dir=tmp_path)
    monkeypatch.chdir(tmp_path)  # a file named like the release here is a path
    assert ck.resolve_checkpoint("MedSAM2_US_Heart.pt", cache_dir=tmp_path / "none") == \
        Path("MedSAM2_US_Heart.pt")
