"""Structured output (issue 30) through its front ends: `gpt2kit generate --json-schema/--json/--regex/--grammar/
--choice`, LM.generate's constraint options, and `generate --template --constrain`, on the bundled model."""

import csv
import json
import random
import re

import jsonschema
import pytest
from conftest import run_cli

import gpt2kit
from gpt2kit.errors import UserError
from gpt2kit.options import GenerateOptions

FAST = ("--device", "cpu", "--dtype", "float32")
# Every feature issue 30 lists: objects, arrays, enums, pattern, minLength/maxLength, required, nested $defs.
# Bounded (lengths, items, additionalProperties false), so each document ends well inside the context.
SCHEMA = {
    "$defs": {
        "person": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "role"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,9}$"},
                "role": {"enum": ["king", "queen", "fool"]},
            },
        },
    },
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "cast"],
    "properties": {
        "title": {"type": "string", "minLength": 2, "maxLength": 16},
        "cast": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 1, "maxItems": 2},
        "act": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}


@pytest.fixture(scope="module")
def lm():
    return gpt2kit.load(None, device="cpu", dtype="float32")


def test_200_samples_under_a_json_schema_all_validate(lm):
    texts = lm.generate("A play:", json_schema=SCHEMA, nsamples=200, batch_size=100, seed=1, include_prefix=False)
    assert len(texts) == 200
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 20  # sampled, not one document
    # the same schema as JSON text is the same constraint
    assert lm.generate("A play:", json_schema=json.dumps(SCHEMA), nsamples=3, seed=1, include_prefix=False) == texts[:3]


def test_regex_and_choice_samples_keep_their_shape(lm):
    pattern = r"[A-Z][a-z]+ (of|to) [a-z]+, [0-9]{2}\."
    texts = lm.generate("ROMEO.", regex=pattern, nsamples=20, batch_size=20, seed=2, include_prefix=False)
    assert all(re.fullmatch(pattern, t) for t in texts), texts
    choices = ("Verily", "Nay", "Peradventure, good sir")
    texts = lm.generate("Is it so?", choices=list(choices), nsamples=20, batch_size=20, seed=3, include_prefix=False)
    assert set(texts) <= set(choices) and len(set(texts)) > 1


def test_one_constraint_at_a_time_and_bad_ones_are_user_errors(lm):
    with pytest.raises(UserError, match="one constraint at a time: got json_object and regex"):
        GenerateOptions(json_object=True, regex="a+").sampling()
    with pytest.raises(UserError, match="regular expression is invalid"):
        lm.generate("x", regex="(")


def test_the_cli_forms(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    r = run_cli(
        "generate",
        "A play:",
        "--json-schema",
        schema,
        "--nsamples",
        3,
        "--batch-size",
        3,
        "--seed",
        4,
        "--format",
        "jsonl",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        record = json.loads(line)
        assert record["finish_reason"] == "stop"
        jsonschema.validate(json.loads(record["completion"]), SCHEMA)
    grammar = tmp_path / "verdict.gbnf"  # llama.cpp's GBNF
    grammar.write_text('root ::= "The " who " is " ("guilty" | "innocent") "."\nwho ::= "king" | "fool"\n')
    r = run_cli(
        "generate",
        "Verdict:",
        "--grammar",
        grammar,
        "--nsamples",
        4,
        "--seed",
        5,
        "--no-include-prefix",
        "--sample-delim",
        "|\n",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    for text in r.stdout.strip().split("|\n"):
        assert re.fullmatch(r"The (king|fool) is (guilty|innocent)\.", text.strip()), r.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--regex", "[a-"], "the regular expression is invalid"),
        (["--json-schema", "SCHEMA", "--choice", "a"], "one constraint at a time"),
        (["--json-schema", "BADJSON"], "the JSON schema is not valid JSON"),
        (["--grammar", "BADGRAMMAR"], "the grammar is invalid"),
        (["--json-schema", "missing.json"], "does not exist"),
    ],
)
def test_a_bad_constraint_is_one_line_and_exit_2(tmp_path, args, needle):
    files = {
        "SCHEMA": ("schema.json", json.dumps(SCHEMA)),
        "BADJSON": ("bad.json", "{not json"),
        "BADGRAMMAR": ("bad.lark", "start: ("),
    }
    for token, (name, text) in files.items():
        (tmp_path / name).write_text(text)
    args = [
        str(tmp_path / files[a][0]) if a in files else str(tmp_path / a) if a.endswith(".json") else a for a in args
    ]
    r = run_cli("generate", "Hi", *args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


TITLES = {
    "legaladvice": ["Landlord kept my deposit", "Neighbor cut down my tree"],
    "askscience": ["Why is the sky blue", "How do magnets work"],
}


def test_template_constrain_reads_back_every_sample_from_a_barely_trained_model(tmp_path):
    data = tmp_path / "titles.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subreddit", "title"])
        rows = [[sub, t] for _ in range(10) for sub, titles in TITLES.items() for t in titles]
        random.Random(0).shuffle(rows)
        w.writerows(rows)
    template = "[{subreddit}] {title}"
    r = run_cli("encode", data, "-o", tmp_path / "titles.tokens", "--template", template, "--quiet")
    assert r.returncode == 0, r.stderr
    # 20 steps: far from the template's shape on its own; training samples through the new samplers too
    r = run_cli(
        "finetune",
        "--dataset",
        tmp_path / "titles.tokens",
        "--from-scratch",
        "--n-layer",
        "2",
        "--n-embd",
        "32",
        "--n-head",
        "2",
        "--n-ctx",
        "64",
        "--batch-size",
        "4",
        "--steps",
        "20",
        "--learning-rate",
        "1e-2",
        "--checkpoint-dir",
        tmp_path / "ck",
        "--no-progress",
        "--save-every",
        "1000",
        "--sample-every",
        "20",
        "--sample-dir",
        tmp_path / "samples",
        "--sample-min-p",
        "0.05",
        "--sample-dry-multiplier",
        "0.8",
        "--sample-length",
        "10",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "samples" / "run1" / "step-000020.txt").read_text().strip()
    model = tmp_path / "ck" / "run1"
    for fields in (["--field", "subreddit=legaladvice"], []):
        r = run_cli(
            "generate",
            "--model",
            model,
            "--template",
            template,
            *fields,
            "--constrain",
            "--nsamples",
            8,
            "--batch-size",
            8,
            "--seed",
            3,
            "--length",
            40,
            "--format",
            "jsonl",
            *FAST,
        )
        assert r.returncode == 0, r.stderr
        samples = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(samples) == 8
        for s in samples:
            assert s["fields"] is not None and s["fields"]["title"].strip(), s
            if fields:
                assert s["fields"]["subreddit"] == "legaladvice"
    r = run_cli("generate", "--template", template, "--constrain", "--regex", "a")
    assert r.returncode == 2 and "leave out --regex" in r.stderr
