"""Any GPT-2 repository from a local mirror of the Hugging Face hub's layout (never the network).

The mirror is two real HTTP servers: the hub (API listing, resolve URLs) and a CDN on another host name
that LFS files are redirected to. Downloaded models are checked against transformers' own outputs.
"""

import json

import pytest
import torch
from conftest import run_cli
from http_server import HubMirror

import gpt2kit
from gpt2kit import hub
from gpt2kit.errors import UserError
from gpt2kit.tokenizer import ASSETS

REPO = "someone/tiny-gpt2"
VOCAB = {"vocab.json": (ASSETS / "encoder.json").read_bytes(), "merges.txt": (ASSETS / "vocab.bpe").read_bytes()}


def saved(folder, seed, bin=False, **save):
    """A small random GPT2LMHeadModel saved by transformers; -> ({file name: bytes}, the model).

    bin=True writes pytorch_model.bin as transformers 4 did (torch.save of the state dict), since
    transformers 5 writes safetensors only.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    model.save_pretrained(folder, **save)
    if bin:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}, model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubmodels")
    return {
        "safetensors": saved(root / "a", 1),
        "bin": saved(root / "b", 2, bin=True),
        "sharded": saved(root / "c", 3, max_shard_size="2MB"),
    }


@pytest.fixture
def mirror(models):
    m = HubMirror()
    m.add_repo(REPO, {**models["safetensors"][0], **VOCAB, "README.md": b"# card", "tf_model.h5": b"not read"})
    m.add_repo(REPO, {**models["bin"][0], **VOCAB}, revision="v1")
    m.add_repo(REPO, models["sharded"][0], revision="refs/pr/1")
    m.add_repo(
        "someone/llama",
        {
            "config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
            "model.safetensors": b"never fetched",
        },
    )
    yield m
    m.close()


@pytest.fixture
def env(mirror, tmp_path, monkeypatch):
    e = {
        "GPT2KIT_HOME": str(tmp_path / "home"),
        "HF_ENDPOINT": mirror.url,
        "HF_TOKEN": "hf_secret",
        "GPT2KIT_OFFLINE": "0",
        "GPT2KIT_RETRY_DELAY": "0.01",
    }
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    return e


def max_diff(name, reference):
    lm = gpt2kit.load(name, device="cpu", dtype="float32", offline=True)
    idx = torch.randint(0, 50257, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (lm.model(idx) - reference(idx).logits).abs().max().item()


def test_a_hub_gpt2_downloads_through_the_cdn_and_matches_transformers(env, mirror, models):
    r = run_cli("download", REPO, env=env)
    assert r.returncode == 0, r.stderr
    folder = hub.models_root() / "hub" / REPO / "main"
    assert sorted(p.name for p in folder.iterdir()) == [
        ".complete",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model.safetensors",
        "vocab.json",
    ]
    assert max_diff(REPO, models["safetensors"][1]) < 1e-4
    # the weights came from the CDN; the token went to the hub only, never to the other host
    assert mirror.cdn.log and all("Authorization" not in h for _, h in mirror.cdn.requests)
    assert all(h.get("Authorization") == "Bearer hf_secret" for _, h in mirror.hub.requests)
    assert not [p for p, _ in mirror.hub.log if p.endswith(("tf_model.h5", "README.md"))]
    # the files are fetched at the commit the listing named, not at the moving branch
    assert all("/resolve/main/" not in p for p, _ in mirror.hub.log)
    listed = run_cli("models", env=env)
    assert REPO in listed.stdout and "huggingface" in listed.stdout, listed.stdout


def test_revisions_are_kept_apart_and_pytorch_bin_and_shards_load(env, mirror, models):
    r = run_cli("download", REPO, "--revision", "v1", env=env)  # v1 holds pytorch_model.bin only
    assert r.returncode == 0, r.stderr
    hub.download(f"{REPO}@refs/pr/1", progress=False)  # sharded safetensors with an index
    hub.download(REPO, progress=False)
    assert (hub.models_root() / "hub" / REPO / "v1" / "pytorch_model.bin").is_file()
    assert len(list((hub.models_root() / "hub" / REPO / "refs%2Fpr%2F1").glob("model-0000*-of-0000*.safetensors"))) > 1
    assert max_diff(f"{REPO}@v1", models["bin"][1]) < 1e-4
    assert max_diff(f"{REPO}@refs/pr/1", models["sharded"][1]) < 1e-4
    assert max_diff(REPO, models["safetensors"][1]) < 1e-4
    names = [row["name"] for row in hub.list_models()]
    assert {REPO, f"{REPO}@v1", f"{REPO}@refs/pr/1"} <= set(names)
    assert hub.remove_model(f"{REPO}@v1") > 0
    names = [row["name"] for row in hub.list_models()]
    assert f"{REPO}@v1" not in names and REPO in names
    hub.remove_model(REPO)
    assert not (hub.models_root() / "hub" / "someone").exists()


def test_a_repository_that_is_not_a_gpt2_is_one_line_and_nothing_more_is_fetched(env, mirror):
    r = run_cli("download", "someone/llama", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "someone/llama is not a GPT-2" in r.stderr and "'llama'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not [p for p, _ in mirror.hub.log if p.endswith("model.safetensors")]
    assert not (hub.models_root() / "hub" / "someone").exists()


@pytest.mark.parametrize(
    "config, files, message",
    [
        (
            {"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_head": 2, "n_layer": 1},
            ["tf_model.h5", "flax_model.msgpack"],
            "no weights gpt2kit reads.*tf_model.h5",
        ),
        (
            {
                "model_type": "gpt2",
                "vocab_size": 10,
                "n_embd": 8,
                "n_head": 2,
                "n_layer": 1,
                "scale_attn_by_inverse_layer_idx": True,
            },
            ["model.safetensors"],
            "variant.*scale_attn_by_inverse_layer_idx",
        ),
        ({"model_type": "gpt2", "n_embd": 8}, ["model.safetensors"], "lacks or mistypes 'vocab_size'"),
        (None, ["model.safetensors"], "no config.json"),
    ],
)
def test_repositories_gpt2kit_cannot_run_are_clear_errors(env, mirror, config, files, message):
    contents = {f: b"x" for f in files} | ({"config.json": json.dumps(config).encode()} if config else {})
    mirror.add_repo("someone/odd", contents)
    with pytest.raises(UserError, match=message):
        hub.download("someone/odd", progress=False)
    assert not (hub.models_root() / "hub" / "someone").exists()


def test_model_names_download_first_unless_offline(env, mirror, models):
    with pytest.raises(UserError, match=f"gpt2kit download {REPO}@v1"):
        hub.resolve_model_path(f"{REPO}@v1", offline=True)
    with pytest.raises(UserError, match="downloads are off"):
        hub.download(REPO, offline=True)
    r = run_cli("generate", "hi", "--model", f"{REPO}@v1", "--length", "3", env=env)
    assert r.returncode == 0 and "downloading it first" in r.stderr, r.stderr
    folder = hub.models_root() / "hub" / REPO / "v1"
    assert (folder / hub.COMPLETE).is_file() and hub.resolve_model_path(f"{REPO}@v1", offline=True) == folder


def test_a_listing_cut_short_is_fetched_again(env, mirror):
    listing = f"/api/models/{REPO}/revision/main"
    mirror.hub.faults[listing] = ["cut"]
    hub.download(REPO, progress=False)
    assert [p for p, _ in mirror.hub.log].count(listing) == 2


def test_unknown_repositories_and_bad_names(env, mirror):
    with pytest.raises(UserError, match="no such repository"):
        hub.download("someone/missing", progress=False)
    with pytest.raises(UserError, match="no such repository"):
        hub.download(REPO, revision="v9", progress=False)
    with pytest.raises(UserError, match="not a published GPT-2 model"):
        hub.download("../etc", progress=False)
    with pytest.raises(UserError, match="--revision is for hub repositories"):
        hub.download("124M", revision="v1", progress=False)


def test_models_dir_keeps_owner_and_name(env, mirror, tmp_path):
    main, v1 = hub.download(REPO, f"{REPO}@v1", models_dir=tmp_path / "models", progress=False)
    assert main == tmp_path / "models" / "someone" / "tiny-gpt2" and (main / "model.safetensors").is_file()
    assert v1 == tmp_path / "models" / "someone" / "tiny-gpt2@v1" and (v1 / "pytorch_model.bin").is_file()
    assert not (hub.models_root() / "hub").exists()
