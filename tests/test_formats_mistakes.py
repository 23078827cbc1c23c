"""User mistakes in what a model folder holds or how it is named: each is one line on stderr and exit 2,
naming the file and what to do, before any work starts (the real CLI on real damaged copies)."""

import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

ADVICE = "restore it"


def one_line_error(r, *needles: str) -> str:
    """The run failed as a user mistake: exit 2, one line, no traceback, holding every needle."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def damaged_copy(hf_tiny: Path, folder: Path, change) -> Path:
    shutil.copytree(hf_tiny, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(cfg)))
    return folder


def command(name: str, folder: Path, tmp_path: Path) -> list:
    """The four commands that read a model folder, each as a user types it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some words to train on, more than a few of them. " * 20)
    return {
        "generate": ["generate", "Hi", "--length", "2", "--model", folder],
        "info": ["info", folder],
        "convert": ["convert", folder, tmp_path / "converted"],
        "finetune": [
            "finetune",
            "--dataset",
            corpus,
            "--model",
            folder,
            "--steps",
            "1",
            "--checkpoint-dir",
            tmp_path / "ck",
            "--no-progress",
        ],
    }[name]


DAMAGE = [
    ("a list", lambda cfg: [], "holds a list, not a JSON object"),
    ("null", lambda cfg: None, "holds null, not a JSON object"),
    ("n_layer text", lambda cfg: {**cfg, "n_layer": "x"}, 'n_layer is "x"'),
    ("epsilon text", lambda cfg: {**cfg, "layer_norm_epsilon": "x"}, 'layer_norm_epsilon is "x"'),
    ("epsilon zero", lambda cfg: {**cfg, "layer_norm_epsilon": 0}, "layer_norm_epsilon is 0"),
    ("n_layer negative", lambda cfg: {**cfg, "n_layer": -1}, "n_layer is -1"),
    ("n_positions null", lambda cfg: {**cfg, "n_positions": None}, "n_positions is null"),
    ("n_head true", lambda cfg: {**cfg, "n_head": True}, "n_head is true"),
    ("no n_embd", lambda cfg: {k: v for k, v in cfg.items() if k != "n_embd"}, "lacks or mistypes 'n_embd'"),
    # a billion blocks would be built before the weights were compared: the sizes are checked first
    ("n_layer huge", lambda cfg: {**cfg, "n_layer": 10**9}, "n_layer=1000000000 but the weights have 2"),
]


@pytest.mark.parametrize("label,change,what", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_config_json_is_one_line_naming_the_file(hf_tiny, tmp_path, label, change, what):
    folder = damaged_copy(hf_tiny, tmp_path / "model", change)
    names = ["generate", "info", "convert", "finetune"]
    # every command for the commonest damage; one command each (in turn) for the rest, to keep the suite quick
    chosen = names if label == "a list" else [names[[d[0] for d in DAMAGE].index(label) % 4]]
    for name in chosen:
        r = run_cli(*command(name, folder, tmp_path), timeout=120)
        one_line_error(r, str(folder / "config.json"), what, ADVICE)
        assert "timing" not in r.stderr and "checking" not in r.stderr  # refused before auto-tuning starts
        assert not (tmp_path / "converted").exists() and not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    "hparams,what",
    [
        ("[]", "holds a list"),
        ('{"n_vocab": 1000}', "lacks or mistypes 'n_ctx'"),
        ('{"n_vocab": 1000, "n_ctx": 32, "n_embd": 64, "n_head": 4, "n_layer": "2"}', 'n_layer is "2"'),
    ],
)
def test_a_damaged_hparams_json_is_one_line_naming_the_file(tmp_path, hparams, what):
    folder = tmp_path / "openai"
    shutil.copytree(FIXTURES / "openai_tiny", folder)
    (folder / "hparams.json").write_text(hparams)
    one_line_error(run_cli("info", folder), str(folder / "hparams.json"), what, ADVICE)


@pytest.mark.parametrize(
    "key,fmt,value,what",
    [
        ("gpt2.attention.layer_norm_epsilon", "<f", float("nan"), "layer_norm_epsilon is NaN"),
        ("gpt2.block_count", "<I", 0, "n_layer is 0"),
    ],
)
def test_a_damaged_gguf_header_is_one_line_naming_the_file(hf_tiny, tmp_path, key, fmt, value, what):
    from gpt2kit.export import export

    good = export(hf_tiny, tmp_path / "good.gguf", type="f32")
    data = good.read_bytes()
    at = data.index(key.encode()) + len(key) + 4  # a key, then its uint32 value type, then the value
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:at] + struct.pack(fmt, value) + data[at + 4 :])
    one_line_error(run_cli("info", bad), str(bad), what, "export or download it again")


@pytest.fixture
def run_folder(hf_tiny, tmp_path) -> Path:
    """A gpt2kit run folder as training leaves it: two complete step folders and `latest`."""
    run = tmp_path / "run1"
    for step in ("step-000001", "step-000002"):
        shutil.copytree(hf_tiny, run / step)
    (run / "latest").write_text("step-000002\n")
    return run


@pytest.mark.parametrize("checkpoint", ["step-999", "bogus"])
def test_a_checkpoint_the_run_does_not_hold_is_refused_with_those_it_does(run_folder, tmp_path, checkpoint):
    for args in (
        ["generate", "Hi", "--length", "2", "--model", run_folder],
        ["info", run_folder],
        ["export", run_folder, tmp_path / "out.gguf"],
        ["convert", run_folder, tmp_path / "out"],
    ):
        r = run_cli(*args, "--checkpoint", checkpoint, timeout=120)
        one_line_error(r, f"no checkpoint {checkpoint!r} in {run_folder}", "it has: step-000001, step-000002")
    assert not (tmp_path / "out.gguf").exists() and not (tmp_path / "out").exists()


def test_a_checkpoint_by_name_or_number_picks_that_step(run_folder):
    for name in ("step-000001", "step-1"):
        r = run_cli("info", run_folder, "--checkpoint", name, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["checkpoint"] == "step-000001"


def test_latest_names_the_newest_checkpoint_in_every_format(run_folder):
    """`latest` is a gpt2kit run's pointer file and gpt-2-simple's default checkpoint name: the newest step."""
    for folder, newest in ((run_folder, "step-000002"), (FIXTURES / "gpt2_simple_run/run1", "model-20")):
        r = run_cli("info", folder, "--checkpoint", "latest", "--json")
        assert r.returncode == 0, r.stderr
        assert Path(json.loads(r.stdout)["checkpoint"]).name.removesuffix(".index") == newest


def test_any_file_of_a_model_folder_stands_for_the_folder(hf_tiny, tmp_path):
    """People pass a file of the folder (the weights, an index, the tokenizer's files): the folder loads."""
    folder = tmp_path / "m"
    shutil.copytree(hf_tiny, folder)
    (folder / "special_tokens_map.json").write_text("{}")
    for name in ("model.safetensors", "config.json", "special_tokens_map.json"):
        r = run_cli("info", folder / name, "--json")
        assert r.returncode == 0, (name, r.stderr)
        assert json.loads(r.stdout)["format"] == "huggingface"


def test_tf_runs_word_a_missing_checkpoint_the_same_way():
    run = FIXTURES / "gpt2_simple_run/run1"
    one_line_error(
        run_cli("info", run, "--checkpoint", "step-2"),
        f"no checkpoint 'step-2' in {run}; it has: model-10, model-20",
        "leave --checkpoint out",
    )


def test_a_checkpoint_for_a_single_model_is_refused(hf_tiny, tmp_path):
    from gpt2kit.export import export

    gguf = export(hf_tiny, tmp_path / "m.gguf", type="f32")
    for model in (hf_tiny, gguf):
        one_line_error(
            run_cli("info", model, "--checkpoint", "step-000001"),
            f"{model} holds a single model with none to choose from",
            "leave --checkpoint out",
        )


def test_a_plain_file_is_named_as_what_it_is(tmp_path):
    notes = tmp_path / "afile.txt"
    notes.write_text("not a model\n")
    for args in (["info", notes], ["generate", "Hi", "--model", notes]):
        line = one_line_error(
            run_cli(*args), f"{notes} is a file, not a model", "not a GGUF", "Pass the model's folder"
        )
        assert f"{tmp_path} holds no" not in line


def test_a_path_through_a_file_says_what_is_there(hf_tiny, tmp_path):
    notes = tmp_path / "afile.txt"
    notes.write_text("not a model\n")
    for args in (["info", notes / "sub"], ["convert", notes / "sub", tmp_path / "out"]):
        one_line_error(run_cli(*args), f"{notes} is a file, not a folder", "check the path")
    weights = hf_tiny / "model.safetensors"
    one_line_error(run_cli("info", weights / "x"), f"pass {weights} itself")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    one_line_error(run_cli("info", tmp_path / "gone"), "is a broken symbolic link")


def test_a_folder_above_the_model_names_the_model_inside(hf_tiny, tmp_path):
    shutil.copytree(hf_tiny, tmp_path / "models" / "mine")
    one_line_error(run_cli("info", tmp_path / "models"), f"pass {tmp_path / 'models' / 'mine'}")


def test_bundled_names_the_bundled_model_in_every_command(tmp_path):
    from gpt2kit.paths import BUNDLED_DIR

    r = run_cli("info", "bundled", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(BUNDLED_DIR)
    r = run_cli("convert", "bundled", tmp_path / "copy")
    assert r.returncode == 0 and (tmp_path / "copy" / "model.safetensors").is_file(), r.stderr
    r = run_cli("generate", "Hi", "--model", "bundled", "--length", "2", "--seed", "1")
    assert r.returncode == 0, r.stderr


def test_a_local_folder_named_bundled_wins_over_the_word(hf_tiny, tmp_path):
    shutil.copytree(hf_tiny, tmp_path / "bundled")
    r = run_cli("info", "bundled", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "bundled"
    shutil.rmtree(tmp_path / "bundled")
    (tmp_path / "bundled").mkdir()  # an empty one: the message says how to reach the package's model
    one_line_error(run_cli("info", "bundled", cwd=tmp_path), "bundled holds no GPT-2 checkpoint", "leave --model out")
