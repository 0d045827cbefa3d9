"""vitinit.io.remote and the registry, against HTTP servers on 127.0.0.1 (never the internet).

The hf:// tests point HF_ENDPOINT at a small fake hub served here (the resolve / revision / tree routes that
hf_hub_download and snapshot_download use), rather than mocking huggingface_hub's functions: that exercises
the real client, its cache layout and our call-time reading of HF_ENDPOINT and HF_HUB_OFFLINE. No test
talks to a dead endpoint through huggingface_hub (it retries with backoff for ~20 s); the dead-endpoint test
uses vitinit's own downloader, which does not retry.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _hostile import silent_server

from vitinit.errors import DownloadError
from vitinit.io import hash_cache, hub_http, registry
from vitinit.io.registry import OFFICIAL_CHECKPOINTS, OfficialCheckpoint
from vitinit.io.remote import parse_hf_uri, resolve_source

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _no_offline_env(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "VITINIT_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path / "vitinit-cache"))  # downloads record hashes there


class _Server:
    """A threaded HTTP server on 127.0.0.1 that records every request; ``routes(path) -> (status, body)``."""

    def __init__(self, routes):
        self.requests: list[tuple[str, str]] = []
        self.routes = routes
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self._serve(send_body=False)

            def do_GET(self):
                self._serve(send_body=True)

            def _serve(self, send_body: bool) -> None:
                server.requests.append((self.command, self.path))
                status, body, headers = server.routes(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        serve = {"poll_interval": 0.05}
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def file_server():
    files = {"/mae_test.pth": PAYLOAD}
    srv = _Server(lambda path: (200, files[path], {}) if path in files else (404, b"not found", {}))
    yield srv
    srv.close()


def _entry(urls, **checks) -> OfficialCheckpoint:
    return OfficialCheckpoint("mae", "vit-b", tuple(urls), "mae_test.pth", documented_in="test", **checks)


# ---------------------------------------------------------------------------------------------------------
# official checkpoints over HTTP
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "checks",
    [
        {"sha256_prefix": hashlib.sha256(PAYLOAD).hexdigest()[:8]},  # DeiT style: prefix in the file name
        {"md5_prefix": hashlib.md5(PAYLOAD).hexdigest()[:6]},  # MAE style: 6 hex digits in the README
        {"sha256_prefix": hashlib.sha256(PAYLOAD).hexdigest(), "size": len(PAYLOAD)},
    ],
)
def test_download_once_verify_and_reuse(tmp_path, monkeypatch, file_server, checks):
    entry = _entry([file_server.url + "/mae_test.pth"], **checks)
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), entry)
    cache = tmp_path / "cache"
    path = resolve_source(None, family="mae", model="vit-b", cache_dir=cache, progress=False)
    assert path == cache / "mae" / "mae_test.pth"
    assert path.read_bytes() == PAYLOAD
    assert len(file_server.requests) == 1
    again = resolve_source(None, family="mae", model="vit-b", cache_dir=cache, progress=False)
    assert again == path and len(file_server.requests) == 1  # reused: no second request
    assert sorted(p.name for p in (cache / "mae").iterdir()) == ["mae_test.pth"]  # no temp files


def test_a_download_records_its_sha256_for_its_first_conversion(tmp_path, monkeypatch, file_server):
    """The digest computed while downloading goes to the hash cache (issue 17 §4): converting the
    download does not read it through sha256 again."""
    entry = _entry([file_server.url + "/mae_test.pth"], sha256_prefix=hashlib.sha256(PAYLOAD).hexdigest()[:8])
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), entry)
    path = resolve_source(None, family="mae", model="vit-b", cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(hash_cache, "sha256_file", lambda *a, **k: pytest.fail("read the download again"))
    assert hash_cache.cached_sha256(path) == hashlib.sha256(PAYLOAD).hexdigest()


def test_cache_dir_from_environment(tmp_path, monkeypatch, file_server):
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), _entry([file_server.url + "/mae_test.pth"]))
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path / "envcache"))
    path = resolve_source(None, family="mae", model="vit-b", progress=False)
    assert path == tmp_path / "envcache" / "mae" / "mae_test.pth" and path.read_bytes() == PAYLOAD


def test_hash_mismatch_leaves_nothing_in_the_cache(tmp_path, monkeypatch, file_server):
    url = file_server.url + "/mae_test.pth"
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), _entry([url], md5_prefix="000000"))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as e:
        resolve_source(None, family="mae", model="vit-b", cache_dir=cache, progress=False)
    msg = str(e.value)
    assert url in msg and "md5" in msg and "pass the file" in msg and "\n" not in msg
    assert not any(p.is_file() for p in cache.rglob("*"))  # neither the file nor a temp file


def test_wrong_size_is_refused(tmp_path, monkeypatch, file_server):
    url = file_server.url + "/mae_test.pth"
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), _entry([url], size=len(PAYLOAD) + 1))
    with pytest.raises(DownloadError, match="bytes"):
        resolve_source(None, family="mae", model="vit-b", cache_dir=tmp_path, progress=False)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_mirror_is_tried_after_a_failing_url(tmp_path, monkeypatch, file_server):
    urls = [file_server.url + "/moved.pth", file_server.url + "/mae_test.pth"]
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), _entry(urls))
    path = resolve_source(None, family="mae", model="vit-b", cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [p for _, p in file_server.requests] == ["/moved.pth", "/mae_test.pth"]


def test_http_error_names_the_url(tmp_path, monkeypatch, file_server):
    url = file_server.url + "/gone.pth"
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), _entry([url]))
    with pytest.raises(DownloadError, match="HTTP 404") as e:
        resolve_source(None, family="mae", model="vit-b", cache_dir=tmp_path, progress=False)
    assert url in str(e.value) and "vitinit convert mae_test.pth --from mae" in str(e.value)


def test_dead_endpoint_fails_at_once(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mae_test.pth"
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), _entry([url]))
    start = time.monotonic()
    with pytest.raises(DownloadError, match="cannot download") as e:
        resolve_source(None, family="mae", model="vit-b", cache_dir=tmp_path, progress=False)
    assert time.monotonic() - start < 5  # no retries, no backoff
    assert url in str(e.value)


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "VITINIT_OFFLINE"])
def test_offline_error_names_url_and_local_file_hint(tmp_path, monkeypatch, file_server, variable):
    url = file_server.url + "/mae_test.pth"
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), _entry([url]))
    monkeypatch.setenv(variable, "1")  # read at call time
    with pytest.raises(DownloadError) as e:
        resolve_source(None, family="mae", model="vit-b", cache_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "offline" in msg and url in msg and "vitinit convert mae_test.pth --from mae" in msg
    assert "\n" not in msg and file_server.requests == []


def test_offline_still_uses_the_cache(tmp_path, monkeypatch, file_server):
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, ("mae", "vit-b"), _entry([file_server.url + "/mae_test.pth"]))
    first = resolve_source(None, family="mae", model="vit-b", cache_dir=tmp_path, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_source(None, family="mae", model="vit-b", cache_dir=tmp_path, progress=False) == first


def test_unreleased_checkpoint_says_so(tmp_path):
    with pytest.raises(DownloadError, match="only ViT-S and ViT-B") as e:
        resolve_source(None, family="mocov3", model="vit-l", cache_dir=tmp_path)
    assert "--from mocov3" in str(e.value)


def test_local_paths_and_random_need_no_download(tmp_path):
    assert resolve_source(str(tmp_path / "x.pth"), family="mae") == tmp_path / "x.pth"
    assert resolve_source(tmp_path / "x.pth", family="auto") == tmp_path / "x.pth"
    assert resolve_source(None, family="random") is None


def test_registry_entries_are_consistent():
    for (family, model), entry in OFFICIAL_CHECKPOINTS.items():
        assert (entry.family, entry.model) == (family, model)
        for url in entry.urls:
            assert url.startswith("https://") and url.split("?")[0].endswith("/" + entry.filename)
        assert (family, model) not in registry.NOT_RELEASED
    # DeiT names carry the first 8 hex digits of the file's sha256 (torch.hub's check_hash convention).
    for key in (("supervised", "vit-b"), ("supervised", "vit-s")):
        entry = OFFICIAL_CHECKPOINTS[key]
        assert entry.filename.rsplit("-", 1)[1].split(".")[0] == entry.sha256_prefix
    assert {m for f, m in OFFICIAL_CHECKPOINTS if f == "mae"} == {"vit-b", "vit-l", "vit-h"}
    assert all(OFFICIAL_CHECKPOINTS[("mae", m)].md5_prefix for m in ("vit-b", "vit-l", "vit-h"))


# ---------------------------------------------------------------------------------------------------------
# hf:// through huggingface_hub, against a fake hub on 127.0.0.1
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub():
    files = {"config.json": b'{"model_type": "vit"}', "model.safetensors": PAYLOAD, "optim.pt": b"x"}
    repos = {"org/vit": files}

    def routes(path: str):
        parts = path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:  # repo info and file tree (snapshot_download)
            files = repos.get("/".join(parts[2:4]))
            if files is None:
                return 404, b"{}", {"X-Error-Code": "RepoNotFound"}
            if len(parts) >= 6 and parts[4] == "tree":
                tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for f, d in files.items()]
                return 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}
            info = {"id": "/".join(parts[2:4]), "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            return 200, json.dumps(info).encode(), {"Content-Type": "application/json"}
        if len(parts) >= 5 and parts[2] == "resolve":  # /{org}/{repo}/resolve/{revision}/{file}
            data = repos.get("/".join(parts[:2]), {}).get("/".join(parts[4:]))
            if data is None:
                return 404, b"", {"X-Error-Code": "EntryNotFound"}
            return 200, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT}
        return 404, b"", {}

    srv = _Server(routes)
    srv.repos = repos
    yield srv
    srv.close()


def _resolve_requests(srv: _Server) -> list[tuple[str, str]]:
    return [r for r in srv.requests if "/resolve/" in r[1] or r[1].startswith("/api/models")]


def test_hf_file_is_downloaded_from_hf_endpoint_and_cached(tmp_path, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)  # set after huggingface_hub's import: read at call time
    path = resolve_source("hf://org/vit/model.safetensors", family="auto", cache_dir=tmp_path)
    assert path.read_bytes() == PAYLOAD and Path(tmp_path / "hf") in path.parents
    assert ("GET", "/org/vit/resolve/main/model.safetensors") in fake_hub.requests
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(fake_hub.requests)
    assert resolve_source("hf://org/vit/model.safetensors", family="auto", cache_dir=tmp_path) == path
    assert len(fake_hub.requests) == before  # offline: served from the hub cache, nothing sent


def test_hf_repository_becomes_a_folder_without_extra_files(tmp_path, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    folder = resolve_source("hf://org/vit", family="auto", cache_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not any("optim.pt" in p for _, p in fake_hub.requests)


def test_hf_missing_file_is_one_line(tmp_path, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    with pytest.raises(DownloadError) as e:
        resolve_source("hf://org/vit/nope.bin", family="auto", cache_dir=tmp_path)
    msg = str(e.value)
    assert "hf://org/vit/nope.bin" in msg and fake_hub.url in msg and "not found" in msg and "\n" not in msg


def test_hf_offline_without_cache(tmp_path, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline and not in the hub cache"):
        resolve_source("hf://org/vit/model.safetensors", family="auto", cache_dir=tmp_path)
    assert _resolve_requests(fake_hub) == []


def test_parse_hf_uri():
    assert parse_hf_uri("hf://org/repo") == ("org/repo", None)
    assert parse_hf_uri("hf://org/repo/sub/dir/w.safetensors") == ("org/repo", "sub/dir/w.safetensors")
    with pytest.raises(DownloadError):
        parse_hf_uri("hf://just-a-name")


# ---------------------------------------------------------------------------------------------------------
# Bounded hub calls (issue 17): a server that never answers, an answer too big
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["hf://org/vit/model.safetensors", "hf://org/vit"], ids=["file", "repo"])
def test_hub_that_never_answers_fails_in_bounded_time_naming_the_host(tmp_path, monkeypatch, uri):
    """Before: ``convert hf://…`` hung forever (huggingface_hub's API calls have no timeout)."""
    monkeypatch.setenv("VITINIT_HUB_TIMEOUT", "0.3")
    monkeypatch.setenv("VITINIT_HUB_ATTEMPTS", "2")
    with silent_server() as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        start = time.monotonic()
        with pytest.raises(DownloadError) as e:
            resolve_source(uri, family="auto", cache_dir=tmp_path)
        took = time.monotonic() - start
    msg = str(e.value)
    assert "127.0.0.1 did not answer within 0.3 s" in msg and "not found" not in msg, msg
    assert took < 15, took


def test_hub_answer_too_big_is_refused(tmp_path, monkeypatch, fake_hub):
    """Before: a 1 GiB API answer was read whole (2.6 GB of RSS)."""
    monkeypatch.setattr(hub_http, "MAX_API_BODY", 1 << 10)  # the fake hub's file tree is ~300 bytes ...
    big = {"org/vit": {"config.json": b"{}", **{f"f{i}.json": b"{}" for i in range(40)}}}  # ... this, 2 KB
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    fake_hub.repos.update(big)
    with pytest.raises(DownloadError, match=r"127.0.0.1 (announced an answer|sent an answer over)"):
        resolve_source("hf://org/vit", family="auto", cache_dir=tmp_path)


def test_xet_backed_files_download_through_the_bounded_client(tmp_path, monkeypatch, fake_hub):
    """Before: a file the hub stores on Xet went to hf_xet's own (Rust) client, outside the timeouts and
    caps of vitinit.io.hub_http; now huggingface_hub takes its plain HTTP path for it (the hub serves every
    Xet file at /resolve/ too). The fake hub marks its files as Xet-backed, as the real one does."""
    from huggingface_hub.utils import _runtime

    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    routes = fake_hub.routes

    def xet_routes(path: str):
        status, body, headers = routes(path)
        if "/resolve/" in path and status == 200:
            headers = {**headers, "X-Xet-Hash": "a" * 64,
                       "X-Xet-Refresh-Route": "/api/models/org/vit/xet-read-token/" + COMMIT}
        return status, body, headers

    fake_hub.routes = xet_routes
    xet_installed = _runtime.is_package_available("hf_xet")
    path = resolve_source("hf://org/vit/model.safetensors", family="auto", cache_dir=tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert not any("xet-read-token" in p for _, p in fake_hub.requests), fake_hub.requests
    assert _runtime.is_xet_available() == xet_installed  # huggingface_hub's own switch is back afterwards


def test_a_file_redirected_to_a_cdn_is_not_capped_as_an_api_answer(tmp_path, monkeypatch, fake_hub):
    """The real Hub answers ``/resolve/`` for a weights file with a redirect to its CDN (``cdn-lfs…`` or the
    Xet bridge), a path without ``/resolve/``: that body is a file download, not an API answer, and the
    API cap must not stop it (before: any checkpoint over 64 MiB failed to download from the real Hub)."""
    monkeypatch.setattr(hub_http, "MAX_API_BODY", 1 << 10)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    weights = b"\x00" * (64 << 10)  # 64x the cap
    fake_hub.repos["org/vit"]["big.safetensors"] = weights
    routes = fake_hub.routes
    digest = hashlib.sha256(weights).hexdigest()

    def cdn_routes(path: str):
        if path.startswith("/cdn/"):
            return 200, weights, {}
        status, body, headers = routes(path)
        if path.endswith("/resolve/main/big.safetensors") and status == 200:
            cdn = fake_hub.url.replace("127.0.0.1", "localhost")  # another host, as cdn-lfs.hf.co is
            return 302, b"", {**headers, "Location": f"{cdn}/cdn/{digest}",
                              "X-Linked-Size": str(len(weights)), "X-Linked-ETag": f'"{digest}"'}
        return status, body, headers

    fake_hub.routes = cdn_routes
    path = resolve_source("hf://org/vit/big.safetensors", family="auto", cache_dir=tmp_path)
    assert path.read_bytes() == weights
    assert ("GET", f"/cdn/{digest}") in fake_hub.requests
