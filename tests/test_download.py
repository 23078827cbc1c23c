"""Downloads against a real HTTP server on 127.0.0.1 (never the network): both layouts, resume, faults."""

import numpy as np
import pytest
import torch
from conftest import FIXTURES, run_cli
from http_server import FileServer

import gpt2kit
from gpt2kit import hub
from gpt2kit.errors import UserError
from gpt2kit.tokenizer import ASSETS


@pytest.fixture
def server(hf_tiny):
    s = FileServer()
    for f in hub.OPENAI_FILES:
        s.files[f"/gpt-2/models/124M/{f}"] = (FIXTURES / "openai_tiny" / f).read_bytes()
    for f, src in (
        ("config.json", hf_tiny / "config.json"),
        ("model.safetensors", hf_tiny / "model.safetensors"),
        ("vocab.json", ASSETS / "encoder.json"),
        ("merges.txt", ASSETS / "vocab.bpe"),
    ):
        s.files[f"/openai-community/gpt2/resolve/main/{f}"] = src.read_bytes()
        s.checksum[f"/openai-community/gpt2/resolve/main/{f}"] = "etag"
    yield s
    s.close()


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    e = {
        "GPT2KIT_HOME": str(tmp_path / "home"),
        "GPT2KIT_OPENAI_URL": server.url + "/gpt-2/models",
        "HF_ENDPOINT": server.url,
        "GPT2KIT_OFFLINE": "0",
        "GPT2KIT_RETRY_DELAY": "0.05",
    }
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    return e


def expected_logits(lm):
    e = np.load(FIXTURES / "openai_tiny" / "expected.npz")
    with torch.no_grad():
        out = lm.model(torch.from_numpy(e["ids"].astype(np.int64))[None])[0].numpy()
    return np.abs(out - e["logits"]).max()


def test_download_openai_layout_then_load_by_name(env, server):
    r = run_cli("download", "117M", env=env)  # the old name of 124M
    assert r.returncode == 0, r.stderr
    folder = hub.models_root() / "124M"
    assert (folder / hub.COMPLETE).is_file() and not list(folder.glob("*.part"))
    lm = gpt2kit.load("124M", device="cpu", dtype="float32", offline=True)
    assert expected_logits(lm) < 1e-4
    listed = run_cli("models", env=env)
    assert "124M" in listed.stdout and "openai-tf" in listed.stdout
    r = run_cli("models", "rm", "124M", env=env)
    assert r.returncode == 0 and not folder.exists()


def test_download_from_huggingface_checks_the_sha256_etag(env, server, lm_tiny):
    r = run_cli("download", "gpt2", "--source", "huggingface", env=env)
    assert r.returncode == 0, r.stderr
    lm = gpt2kit.load("124M", device="cpu", dtype="float32", offline=True)
    idx = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        assert (lm.model(idx) - lm_tiny.model(idx)).abs().max() < 1e-5


def test_a_cut_connection_resumes_with_range(env, server):
    path = "/gpt-2/models/124M/model.ckpt.data-00000-of-00001"
    server.cut_once.add(path)
    hub.download("124M", progress=False)
    ranges = [rng for p, rng in server.log if p == path]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert expected_logits(gpt2kit.load("124M", device="cpu", dtype="float32", offline=True)) < 1e-4


def test_a_partial_file_from_an_earlier_run_resumes(env, server):
    folder = hub.models_root() / "124M"
    folder.mkdir(parents=True)
    data = server.files["/gpt-2/models/124M/model.ckpt.data-00000-of-00001"]
    (folder / "model.ckpt.data-00000-of-00001.part").write_bytes(data[:1000])
    hub.download("124M", progress=False)
    assert ("/gpt-2/models/124M/model.ckpt.data-00000-of-00001", "bytes=1000-") in server.log
    assert (folder / "model.ckpt.data-00000-of-00001").read_bytes() == data


def test_404_is_a_clear_error_and_nothing_half_done_loads(env, server):
    server.missing.add("/gpt-2/models/124M/model.ckpt.index")
    r = run_cli("download", "124M", env=env)
    assert r.returncode == 2 and "404" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("generate", "hi", "--model", "124M", "--offline", env=env)
    assert r.returncode == 2 and "gpt2kit download 124M" in r.stderr


def test_wrong_checksum_is_refused_and_deleted(env, server):
    server.bad_checksum.add("/gpt-2/models/124M/model.ckpt.data-00000-of-00001")
    with pytest.raises(UserError, match="md5 check"):
        hub.download("124M", progress=False)
    folder = hub.models_root() / "124M"
    assert not (folder / "model.ckpt.data-00000-of-00001").exists()
    assert not (folder / "model.ckpt.data-00000-of-00001.part").exists()
    assert not (folder / hub.COMPLETE).exists()


def test_slow_server_and_models_dir_layout(env, server, tmp_path):
    server.slow.add("/gpt-2/models/124M/model.ckpt.data-00000-of-00001")
    r = run_cli("download", "124M", "--models-dir", tmp_path / "models", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "models" / "124M").iterdir() if not p.name.startswith(".")) == sorted(
        hub.OPENAI_FILES
    )
    r = run_cli("generate", "hi", "--model_name", "124M", "--models_dir", tmp_path / "models", "--length", "3", env=env)
    assert r.returncode == 0, r.stderr


def test_model_by_name_downloads_first_unless_offline(env, server):
    r = run_cli("generate", "hi", "--model", "124M", "--length", "3", env={**env, "GPT2KIT_OFFLINE": "1"})
    assert r.returncode == 2 and "not on this machine" in r.stderr
    r = run_cli("generate", "hi", "--model", "124M", "--length", "3", env=env)
    assert r.returncode == 0 and "downloading it first" in r.stderr


def test_unknown_name():
    r = run_cli("download", "999M")
    assert r.returncode == 2 and "not a published GPT-2 model" in r.stderr


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_is_a_clear_error_and_the_rerun_resumes(env, server):
    """/dev/full answers every write with ENOSPC, as a full disk does: the .part file is linked to it."""
    folder = hub.models_root() / "124M"
    folder.mkdir(parents=True)
    part = folder / "model.ckpt.data-00000-of-00001.part"
    part.symlink_to("/dev/full")
    r = run_cli("download", "124M", env=env)
    assert r.returncode == 2 and "no space left" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) < 300
    part.unlink()  # space freed: the same command finishes the job
    r = run_cli("download", "124M", env=env)
    assert r.returncode == 0, r.stderr
    assert expected_logits(gpt2kit.load("124M", dtype="float32")) < 1e-4


def test_a_read_only_place_is_a_clear_error(env, server, tmp_path):
    """/proc/self is not writable by anyone, root included."""
    r = run_cli("download", "124M", "--models-dir", "/proc/self/gpt2kit-models", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "/proc/self/gpt2kit-models" in r.stderr
