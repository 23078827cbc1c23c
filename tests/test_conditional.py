"""Conditional datasets through the real CLI: encode --template/--keywords, generate --template --field."""

import csv
import json
import random

import pytest
from conftest import run_cli

from gpt2kit.data.keywords import extract_keywords
from gpt2kit.data.templates import parse_template

# Several titles per subreddit, none starting alike across them: a model that learned the conditioning writes
# one of the chosen subreddit's titles, and one that learned only "titles" mixes the two sets.
TITLES = {
    "legaladvice": ["My landlord kept my deposit", "Can my boss fire me for this", "Neighbor built a fence here"],
    "askscience": ["Why is the sky blue", "How do magnets work", "What makes ice float on water"],
}


def decode(path) -> str:
    r = run_cli("decode", path)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_encode_csv_rows_with_quotes_commas_and_newlines(tmp_path):
    data = tmp_path / "posts.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:  # written by Python's csv, the reference quoting
        w = csv.writer(f)
        w.writerow(["id", "subreddit", "title"])
        w.writerow([1, "legaladvice", 'Landlord says "no pets", what now?'])
        w.writerow([2, "askscience", "Two lines,\nin one title"])
        w.writerow([3, "héllo", "{braces} stay"])
    r = run_cli("encode", data, "-o", tmp_path / "t.tokens", "--template", "{{{subreddit}}} [{id}] {title}", "--quiet")
    assert r.returncode == 0, r.stderr
    assert decode(tmp_path / "t.tokens") == (
        '{legaladvice} [1] Landlord says "no pets", what now?<|endoftext|>'
        "{askscience} [2] Two lines,\nin one title<|endoftext|>"
        "{héllo} [3] {braces} stay<|endoftext|>"
    )


def test_encode_jsonl_records(tmp_path):
    data = tmp_path / "posts.jsonl"
    rows = [{"sub": "a", "title": 'first, "quoted"', "n": 3}, {"sub": "b", "title": "second\nline", "n": None}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    r = run_cli("encode", data, "-o", tmp_path / "t.tokens", "--template", "<{sub}|{n}> {title}", "--quiet")
    assert r.returncode == 0, r.stderr
    assert decode(tmp_path / "t.tokens") == '<a|3> first, "quoted"<|endoftext|><b|> second\nline<|endoftext|>'


@pytest.mark.parametrize(
    "template, needle",
    [
        ("[{subreddit}] {title", "unclosed"),
        ("[{subreddit}]} {title}", "no {"),
        ("[{}] {title}", "empty"),
        ("no fields at all", "no {field}"),
        ("[{subreddit}] {title} {flair}", "row 2 has no 'flair'"),
    ],
)
def test_template_errors_are_one_line_and_exit_2(tmp_path, template, needle):
    data = tmp_path / "posts.csv"
    data.write_text("subreddit,title,flair\na,first,x\nb,second\n")  # row 2 lacks its flair
    r = run_cli("encode", data, "-o", tmp_path / "t.tokens", "--template", template, "--quiet")
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "t.tokens").exists()


def test_generate_template_errors_exit_2(tmp_path):
    for args, needle in [
        (["--template", "[{a}] {b}", "--field", "c=1"], "no field 'c'"),
        (["--template", "{a}{b}"], "touch"),
        (["--template", "{a} [{b}]", "--field", "b=1"], "after {a}"),
        (["--template", "[{a}] {b}", "--field", "a"], "NAME=VALUE"),
        (["--field", "a=1"], "pass --template"),
        (["--template", "[{a}] {b}", "--fields", tmp_path / "none.jsonl"], "does not exist"),
    ]:
        r = run_cli("generate", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_template_reads_back_what_it_writes():
    t = parse_template("[{subreddit}] {title} ({flair}) {{x}}")
    values = {"subreddit": "legal advice", "title": "A [tricky] one)\nreally", "flair": "help (me)"}
    assert t.render(values) == "[legal advice] A [tricky] one)\nreally (help (me)) {x}"
    assert t.read(t.render(values)) == values
    # a field that holds the text after it is ambiguous: it ends at the first place that text fits
    assert t.read("[a] b (c) d (e) {x}") == {"subreddit": "a", "title": "b", "flair": "c) d (e"}
    assert t.prompt({"subreddit": "legaladvice"}) == "[legaladvice]"  # the space goes with the next word
    assert t.prompt({}) == "["
    assert t.read("no brackets here") is None
    assert t.read("[a] b] c (d) {x}") == {"subreddit": "a", "title": "b] c", "flair": "d"}
    assert t.read("[a] b] c (d) {x}", known={"subreddit": "a] b"}) == {"subreddit": "a] b", "title": "c", "flair": "d"}
    assert t.read("[a] b] c (d) {x}", known={"subreddit": "z"}) is None


def test_keywords_are_deterministic_on_a_known_text():
    text = (
        "Compatibility of systems of linear constraints over the set of natural numbers. Criteria of "
        "compatibility of a system of linear Diophantine equations, strict inequations, and nonstrict "
        "inequations are considered."
    )
    # The start of RAKE's worked example (Rose et al. 2010, figure 1.1). By hand, degree/frequency per word:
    # linear 5/2, diophantine 3, equations 3, constraints 2, natural 2, numbers 2, strict 2, nonstrict 2,
    # inequations 4/2, compatibility 2/2: phrases 8.5, 4.5, 4, 4, 4, then 1 (ties in order of appearance).
    assert extract_keywords(text, 6) == [
        "linear diophantine equations",
        "linear constraints",
        "natural numbers",
        "strict inequations",
        "nonstrict inequations",
        "compatibility",
    ]
    assert extract_keywords(text, 6) == extract_keywords(text, 6)


def test_encode_keywords_alone_and_in_a_template(tmp_path):
    data = tmp_path / "posts.csv"
    data.write_text("subreddit,title\nlegaladvice,My landlord kept my security deposit\n")
    r = run_cli(
        "encode",
        data,
        "-o",
        tmp_path / "a.tokens",
        "--template",
        "[{subreddit}] ~{keywords}~ {title}",
        "--keywords-count",
        "3",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    # the keywords come from the fields after {keywords} (the title, not the subreddit): two phrases of 4
    assert decode(tmp_path / "a.tokens") == (
        "[legaladvice] ~landlord kept, security deposit~ My landlord kept my security deposit<|endoftext|>"
    )
    r = run_cli("encode", "--keywords", data, "-o", tmp_path / "b.tokens", "--column", "title", "--quiet")
    assert r.returncode == 0, r.stderr
    assert decode(tmp_path / "b.tokens") == (
        "keywords: landlord kept, security deposit\nMy landlord kept my security deposit<|endoftext|>"
    )
    r = run_cli("encode", data, "-o", tmp_path / "c.tokens", "--template", "[{subreddit}] {title}", "--keywords")
    assert r.returncode == 2 and "{keywords}" in r.stderr
    r = run_cli("encode", data, "-o", tmp_path / "c.tokens", "--template", "{title} [{keywords}]", "--keywords")
    assert r.returncode == 2 and "no field after {keywords}" in r.stderr


def test_titles_model_generates_titles_for_a_chosen_subreddit(tmp_path):
    """The reddit-titles workflow of the README: encode a CSV, fine-tune, generate for chosen subreddits."""
    data = tmp_path / "titles.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subreddit", "title"])
        # shuffled: in a fixed order each title would predict the next one, and a prompt with no title before
        # it would get one title nearly always (p ~0.9), on some CPUs' numerics for every sample
        rows = [[sub, title] for _ in range(20) for sub, titles in TITLES.items() for title in titles]
        random.Random(0).shuffle(rows)
        w.writerows(rows)
    template = "[{subreddit}] {title}"
    r = run_cli("encode", data, "-o", tmp_path / "titles.tokens", "--template", template, "--quiet")
    assert r.returncode == 0, r.stderr
    # a tiny model from scratch learns in 200 steps which titles go with which subreddit, each about a third
    # of the time (measured in fp32 and bf16 training alike; 120 steps left one title at 0.6)
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
        "32",
        "--batch-size",
        "4",
        "--steps",
        "200",
        "--learning-rate",
        "1e-2",
        "--checkpoint-dir",
        tmp_path / "ck",
        "--no-progress",
        "--save-every",
        "1000",
        "--sample-every",
        "0",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    model = tmp_path / "ck" / "run1"
    r = run_cli(
        "generate",
        "--model",
        model,
        "--template",
        template,
        "--field",
        "subreddit=legaladvice",
        "--nsamples",
        "6",
        "--seed",
        "3",
        "--top-k",
        "3",
        "--format",
        "jsonl",
    )
    assert r.returncode == 0, r.stderr
    samples = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(samples) == 6
    for s in samples:
        assert s["finish_reason"] == "stop"  # it ended at the end of the document
        assert s["fields"]["subreddit"] == "legaladvice" and s["fields"]["title"] in TITLES["legaladvice"], s
        assert s["text"] == f"[legaladvice] {s['fields']['title']}"
    assert len({s["fields"]["title"] for s in samples}) >= 2  # it learned the subreddit's titles, not one line
    # --fields: one prompt per line; the same model, asked for the other subreddit, writes its title
    fields = tmp_path / "fields.jsonl"
    fields.write_text('{"subreddit": "askscience"}\n{"subreddit": "legaladvice"}\n')
    r = run_cli("generate", "--model", model, "--template", template, "--fields", fields, "--temperature", "0")
    assert r.returncode == 0, r.stderr
    askscience, legaladvice = r.stdout.split("\n" + "=" * 20 + "\n")
    assert askscience.removeprefix("[askscience] ") in TITLES["askscience"], r.stdout
    assert legaladvice.removeprefix("[legaladvice] ").removesuffix("\n") in TITLES["legaladvice"], r.stdout
