"""`vitinit publish` against a real HTTP server on 127.0.0.1 speaking the Hub endpoints huggingface_hub uses.

Why a server rather than a fake ``HfApi``: it exercises the real client (create_repo, validate-yaml,
preupload, LFS batch + PUT, the NDJSON commit) and lets us check what went over the wire, including that the
token only ever travels in the Authorization header. The full upload runs in a subprocess because
huggingface_hub reads ``HF_HUB_DISABLE_XET`` at import (without it the upload would take the Xet path, which
needs a CAS server).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _hostile import silent_server
from safetensors.torch import save_file

from vitinit.errors import CheckpointFormatError, ConfigError
from vitinit.hub.card import LICENSES, read_vitdet_info
from vitinit.hub.publish import PublishError, publish
from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig

TOKEN = "hf_TestSecretToken0123456789abcdef"
SOURCE_SHA = "5e" * 32


class FakeHub(BaseHTTPRequestHandler):
    """Just enough of the Hub: repos/create, validate-yaml, preupload, LFS batch/upload, commit."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        hub = self.server.hub
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        hub["requests"].append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                "body": body})
        base = f"http://127.0.0.1:{self.server.server_port}"
        path = self.path.split("?")[0]
        if self.command == "PUT" and path.startswith("/lfs-upload/"):
            hub["lfs"][path.rsplit("/", 1)[1]] = body
            return self._reply(200)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._reply(401, {"error": "Invalid credentials in Authorization header"})
        if path == "/api/repos/create":
            req = json.loads(body)
            hub["created"].append(req)
            return self._reply(200, {"url": f"{base}/{req['organization']}/{req['name']}"})
        if path == "/api/validate-yaml":
            hub["validated"].append(json.loads(body)["content"])
            return self._reply(200, {"errors": [], "warnings": []})
        if path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                 "shouldIgnore": False} for f in files]})
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            return self._reply(200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"{base}/lfs-upload/{o['oid']}"}}} for o in objects]})
        if path.endswith("/commit/main"):
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    hub["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "lfsFile":
                    hub["files"][item["value"]["path"]] = hub["lfs"][item["value"]["oid"]]
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply(200, {"commitUrl": f"{base}/{repo}/commit/{'c' * 40}", "commitOid": "c" * 40})
        return self._reply(404, {"error": f"not mocked: {self.command} {path}"})

    do_GET = do_POST = do_PUT = _handle


@pytest.fixture()
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.hub = {"requests": [], "created": [], "validated": [], "files": {}, "lfs": {}}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def hf_env(hub, monkeypatch, tmp_path):
    """The in-process environment: our endpoint, a token, and an empty HF home (no login cache)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    return hub


LOCAL_SOURCE = "/home/someone/ckpts/mae_pretrain_vit_base.pth"


def write_vitdet(
    path: Path, family: str = "mae", source: str = LOCAL_SOURCE, fmt: str = "vitinit.vitdet"
) -> Path:
    """A tiny converted backbone with the metadata `vitinit convert --to vitdet` writes."""
    cfg = ViTBackboneConfig(embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=64, window_size=2,
                            global_block_indexes=(1, 3))
    state = {k: v.contiguous() for k, v in DetectionViT(cfg).state_dict().items()}
    provenance = {
        "family": family, "format": f"{family}/encoder", "source": source, "sha256": SOURCE_SHA,
        "dropped": {"cls_token": "the detector has no cls token"}, "notes": [],
        "normalization": {"abs_pos": "bicubic 14x14 -> 4x4, cls slot dropped", "rel_pos": "zero-initialized"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={
        "format": fmt, "format_version": "1", "vitinit_version": "0.1.0", "backbone_config": cfg.to_json(),
        "provenance": json.dumps(provenance), "source_sha256": SOURCE_SHA,
    })
    return path


def test_dry_run_lists_files_and_card_without_network(tmp_path, hf_env, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token
    weights = write_vitdet(tmp_path / "out" / "mae_b.safetensors")
    result = publish(tmp_path / "out", "me/mae-vitdet", dry_run=True)
    assert [f.path_in_repo for f in result.files] == ["model.safetensors", "config.json", "README.md"]
    assert result.files[0].size == weights.stat().st_size
    card = result.card
    assert card.startswith("---\n") and "license: cc-by-nc-4.0" in card and "- mae" in card
    assert SOURCE_SHA in card and "mae_pretrain_vit_base.pth" in card
    assert "/home/someone" not in card  # a local path is published by file name only
    assert "bicubic 14x14 -> 4x4, cls slot dropped" in card and "zero-initialized" in card
    assert "0.1.0" in card and "read_vitdet" in card and "--to detectron2" in card
    assert read_vitdet_info(weights).sha256 in card
    assert result.config["backbone_config"]["embed_dim"] == 32
    assert result.config["conversion"]["normalization"]["rel_pos"] == "zero-initialized"
    assert hf_env.hub["requests"] == []


@pytest.mark.parametrize(("family", "license_id"), [(f, lic) for f, (lic, _) in LICENSES.items()])
def test_card_license_follows_source(tmp_path, family, license_id):
    weights = write_vitdet(tmp_path / "w.safetensors", family=family)
    card = publish(weights, "me/x", dry_run=True).card
    assert f"license: {license_id}\n" in card


def test_base_model_from_hf_source(tmp_path):
    weights = write_vitdet(tmp_path / "w.safetensors", family="beit", source="hf://microsoft/beit-x/model.bin")
    assert "base_model: microsoft/beit-x\n" in publish(weights, "me/x", dry_run=True).card


@pytest.mark.parametrize("repo_id", ["no-slash", "a/b/c", "org/bad name", "org/-bad", "org/" + "x" * 120])
def test_invalid_repo_name_fails_before_network(tmp_path, hf_env, repo_id):
    weights = write_vitdet(tmp_path / "w.safetensors")
    with pytest.raises(ConfigError):
        publish(weights, repo_id)
    assert hf_env.hub["requests"] == []


def test_bad_inputs_fail_before_network(tmp_path, hf_env, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFormatError, match="no converted weights"):
        publish(tmp_path / "empty", "me/x")
    not_ours = write_vitdet(tmp_path / "other" / "w.safetensors", fmt="something.else")
    with pytest.raises(CheckpointFormatError, match="not a converted vitinit backbone"):
        publish(not_ours, "me/x")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointFormatError, match="not a readable"):
        publish(tmp_path / "junk.safetensors", "me/x")

    weights = write_vitdet(tmp_path / "ok" / "w.safetensors")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match="no Hugging Face token"):
        publish(weights, "me/x")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE"):
        publish(weights, "me/x")
    assert hf_env.hub["requests"] == []


def test_rejected_token_is_one_line_and_masked(tmp_path, hf_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_WrongToken")
    with pytest.raises(PublishError) as err:
        publish(write_vitdet(tmp_path / "w.safetensors"), "me/x")
    assert "\n" not in str(err.value) and "hf_WrongToken" not in str(err.value)
    assert hf_env.hub["requests"][0]["path"] == "/api/repos/create"


def test_hub_that_never_answers_fails_in_bounded_time(tmp_path, hf_env, monkeypatch):
    """Before: ``publish`` to a server that accepts and never answers hung forever."""
    monkeypatch.setenv("VITINIT_HUB_TIMEOUT", "0.3")
    monkeypatch.setenv("VITINIT_HUB_ATTEMPTS", "2")
    weights = write_vitdet(tmp_path / "w.safetensors")
    with silent_server() as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        start = time.monotonic()
        with pytest.raises(PublishError, match="127.0.0.1 did not answer within 0.3 s") as err:
            publish(weights, "me/x")
        assert time.monotonic() - start < 20
    assert TOKEN not in str(err.value) and "\n" not in str(err.value)


def _run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitinit_cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_publish_uploads_over_http(tmp_path, hub):
    weights = write_vitdet(tmp_path / "out" / "mae_b.safetensors")
    home = tmp_path / "hf_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}", HF_TOKEN=TOKEN, HF_HOME=str(home),
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1", COLUMNS="200")

    done = _run_cli(["publish", str(tmp_path / "out"), "--repo", "me/mae-vitdet", "--private"], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "published" in done.stdout and "me/mae-vitdet" in done.stdout

    state = hub.hub
    [created] = state["created"]
    assert (created["organization"], created["name"]) == ("me", "mae-vitdet")
    assert created["visibility"] == "private"
    files = state["files"]
    assert set(files) == {"model.safetensors", "config.json", "README.md"}
    assert files["model.safetensors"] == weights.read_bytes()  # went through the LFS upload, byte for byte
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads(files["config.json"])["weights"]["sha256"] == sha256
    assert files["README.md"].decode().startswith("---\n")
    assert state["validated"] and "license: cc-by-nc-4.0" in state["validated"][0]

    # The token travelled only in Authorization headers: not in any body, output or written file.
    secret = TOKEN.encode()
    for req in state["requests"]:
        assert secret not in req["body"]
        assert all(TOKEN not in v for k, v in req["headers"].items() if k.lower() != "authorization")
    assert TOKEN not in done.stdout + done.stderr
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert secret not in path.read_bytes(), path



def test_cli_dry_run_and_bad_input(tmp_path, hf_env):
    from typer.testing import CliRunner
    from vitinit_cli.main import app

    write_vitdet(tmp_path / "out" / "w.safetensors")
    cli = CliRunner()
    res = cli.invoke(app, ["publish", str(tmp_path / "out"), "--repo", "me/mae-vitdet", "--dry-run"])
    assert res.exit_code == 0, res.output
    shown = ("model.safetensors", "config.json", "README.md", "license: cc-by-nc-4.0", "nothing was uploaded")
    for text in shown:
        assert text in res.output
    assert TOKEN not in res.output

    for args in (["--repo", "not valid"], ["--repo", "me/x", "--dry-run", "--private"]):
        target = str(tmp_path / "out") if "not valid" in args else str(tmp_path)
        res = cli.invoke(app, ["publish", target, *args])
        assert res.exit_code == 1, res.output
        assert res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1
    assert hf_env.hub["requests"] == []


def test_gated_source_license_is_named_in_card_and_publish(tmp_path):
    """DINOv3's weights are gated behind Meta's DINOv3 License: the card's metadata names it, its text and
    `vitinit publish` say so."""
    weights = write_vitdet(tmp_path / "w.safetensors", family="dinov3")
    result = publish(weights, "me/x", dry_run=True)
    assert "license: other\n" in result.card and "license_name: dinov3-license" in result.card
    assert "Gated source weights" in result.card and "DINOv3 License" in result.notice
