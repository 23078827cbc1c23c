"""Structured output over HTTP: OpenAI's response_format through the official `openai` client, vLLM's guided_* and
structured_outputs fields and llama.cpp's json_schema / grammar through raw requests, on a tiny random model
(whatever it would write, the constraint keeps its output in shape). Bad constraints are 400s naming the field."""

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from live_server import start_server

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "kind": {"enum": ["cat", "dog"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 2},
    },
    "required": ["name", "kind", "age", "tags"],
    "additionalProperties": False,
    "$defs": {"tag": {"type": "string", "pattern": "^[a-z]{1,4}$"}},
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}
REGEX, CHOICES = r"[A-Z][a-z]{2,5} [0-9]{2}", ["yes", "no", "maybe"]
GBNF = 'root ::= "(" [0-9] ("+" [0-9])? ")"'
MAX = 64
# A random model writes a JSON key forever; a bias towards the tokens that close one (" } : 0 "} ":) lets its
# objects end within MAX tokens. The constraint still decides which tokens are allowed.
CLOSING = {str(t): 10 for t in (1, 92, 25, 15, 20662, 1298)}


@pytest.fixture(scope="module")
def server(hf_tiny):
    proc, url = start_server(hf_tiny, "--dtype", "float32")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def post(url, path, body):
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def completions(url, fields, *, n=3, prompt="Data:"):
    """The texts and finish reasons of n completions with `fields`."""
    status, answer = post(url, "/v1/completions", {"prompt": prompt, "max_tokens": MAX, "n": n, "seed": 3, **fields})
    assert status == 200 and len(answer["choices"]) == n, answer
    return [(c["text"], c["finish_reason"]) for c in answer["choices"]]


def test_openai_clients_json_schema_gives_valid_json_from_both_endpoints(client):
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "A pet, as JSON"}],
        response_format=FORMAT,
        max_tokens=MAX,
        n=4,
        seed=1,
    )
    text = client.completions.create(
        model="tiny", prompt="A pet, as JSON:", max_tokens=MAX, n=4, seed=1, extra_body={"response_format": FORMAT}
    )
    outputs = [(c.message.content, c.finish_reason) for c in chat.choices]
    outputs += [(c.text, c.finish_reason) for c in text.choices]
    for output, finish in outputs:
        assert finish == "stop", output
        jsonschema.validate(json.loads(output), SCHEMA)


def test_json_object_gives_a_json_object(client):
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "JSON"}],
        max_tokens=MAX,
        response_format={"type": "json_object"},
        n=3,
        seed=2,
        logit_bias=CLOSING,
    )
    for c in r.choices:
        if c.finish_reason == "stop":  # an object may be cut by max_tokens ("length"): never a wrong one
            assert isinstance(json.loads(c.message.content), dict)
    assert any(c.finish_reason == "stop" for c in r.choices)
    free = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "JSON"}],
        max_tokens=8,
        response_format={"type": "text"},
        seed=2,
    )
    assert free.choices[0].finish_reason == "length"  # text: the random model's free output


@pytest.mark.parametrize(
    "fields",
    [
        {"guided_json": SCHEMA},
        {"guided_json": json.dumps(SCHEMA)},
        {"structured_outputs": {"json": SCHEMA}},
        {"json_schema": SCHEMA},
    ],
)
def test_vllm_and_llama_cpp_json_schema_fields(server, fields):
    for text, finish in completions(server, fields):
        assert finish == "stop"
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize(
    "fields, check",
    [
        ({"guided_regex": REGEX}, lambda t: re.fullmatch(REGEX, t)),
        ({"structured_outputs": {"regex": REGEX}}, lambda t: re.fullmatch(REGEX, t)),
        ({"guided_choice": CHOICES}, lambda t: t in CHOICES),
        ({"structured_outputs": {"choice": CHOICES}}, lambda t: t in CHOICES),
        ({"guided_grammar": GBNF}, lambda t: re.fullmatch(r"\([0-9](\+[0-9])?\)", t)),
        ({"structured_outputs": {"grammar": GBNF}}, lambda t: re.fullmatch(r"\([0-9](\+[0-9])?\)", t)),
        ({"grammar": GBNF}, lambda t: re.fullmatch(r"\([0-9](\+[0-9])?\)", t)),
        (
            {"structured_outputs": {"json_object": True}, "logit_bias": CLOSING},
            lambda t: isinstance(json.loads(t), dict),
        ),
    ],
)
def test_vllm_regex_choice_grammar_fields(server, fields, check):
    results = completions(server, fields)
    assert [f for _, f in results if f == "stop"], results
    for text, finish in results:
        if finish == "stop":
            assert check(text), (fields, text)


def test_a_document_cut_by_max_tokens_ends_with_length(server):
    fields = {
        "guided_json": {"type": "object", "properties": {"s": {"type": "string", "minLength": 40}}, "required": ["s"]},
        "max_tokens": 4,
    }
    assert [f for _, f in completions(server, fields)] == ["length"] * 3


def test_a_free_request_beside_constrained_ones_gives_the_same_text(server):
    free = {"prompt": "Once upon a time", "max_tokens": 24, "seed": 5}
    alone = post(server, "/v1/completions", free)[1]["choices"][0]["text"]
    bodies = [free] + [
        {"prompt": "Data:", "max_tokens": MAX, "seed": i, **c}
        for i, c in enumerate([{"guided_json": SCHEMA}, {"guided_regex": REGEX}, {"guided_choice": CHOICES}] * 2)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: post(server, "/v1/completions", b), bodies))
    assert all(status == 200 for status, _ in answers)
    assert answers[0][1]["choices"][0]["text"] == alone


BAD = [
    ({"guided_json": SCHEMA, "guided_regex": REGEX}, "guided_regex"),
    ({"response_format": FORMAT, "structured_outputs": {"regex": REGEX}}, "structured_outputs.regex"),
    ({"structured_outputs": {"regex": REGEX, "choice": CHOICES}}, "structured_outputs.choice"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
        "response_format.json_schema.schema",
    ),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_regex": r"[^\s\S]"}, "guided_regex"),  # no text matches it
    ({"guided_grammar": "root ::= undefined_rule"}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"grammar": "::="}, "grammar"),
]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_bad_constraints_are_400s_naming_the_field(server, endpoint):
    path, base = (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
        if endpoint == "chat"
        else ("/v1/completions", {"prompt": "Hi"})
    )
    for fields, param in BAD:
        status, answer = post(server, path, {**base, "max_tokens": 4, **fields})
        assert (status, answer["error"]["param"]) == (400, param), (fields, answer)
