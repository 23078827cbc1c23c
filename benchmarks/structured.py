"""Constrained decoding on GPT-2's 50,257-token vocabulary: llguidance against xgrammar, then gpt2kit's stage
against a decoding step of a 124M-shaped model (random weights, the default --dtype auto).

    pip install llguidance==1.9.1 jsonschema
    pip install --no-deps xgrammar==0.2.9 apache-tvm-ffi   # its requirements would add triton (1 GB) to a CPU install
    python benchmarks/structured.py                         # about 1.5 minutes; prints the figures

Per library: install weight (the files in site-packages of it and everything it requires), import time,
the vocabulary's one-off setup, compile time per constraint (from its text to the first mask, no cache),
and mask time per token along fixed documents that both libraries accept token by token. The schema is
tests/test_constraints.py's, which uses every feature gpt2kit promises. The stage and the decoding step run on
one thread and are timed in CPU time as well as wall time, so that other processes on the cores blur them less.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))
from test_constraints import GBNF, LARK, SCHEMA  # noqa: E402 (the tests' own schema and grammars)

# Documents each library walks token by token (GPT-2's own tokenization of the text).
SCHEMA_DOCS = [
    '{"subreddit": "news", "title": "Scientists discover a new species of frog in Peru", "tags": ["news", '
    '"todayilearned"], "author": {"name": "frog_fan", "karma": 4521}, "flair": {"text": "Science", "colour": "green"}, '
    '"nsfw": false}',
    '{"subreddit": "gaming", "title": "What is the best RPG you played this year?", "tags": ["gaming"], '
    '"author": {"name": "rpg_lover22"}}',
    '{"subreddit": "AskReddit", "title": "People who wake up at 5am, why?", "tags": ["AskReddit", "funny"], '
    '"author": {"name": "early_bird", "karma": 12}, "nsfw": true}',
]
REGEX = r"[A-Z][a-z]{2,9}( [A-Z][a-z]{2,9}){0,2}"
CHOICES = ("yes", "no", "maybe not")
OBJECT_DOC = '{"name": "Ada", "tags": ["x", "y"], "n": 3, "nested": {"ok": true, "list": [1, 2.5, null]}}'
CASES = {  # name -> (kind, source, documents)
    "schema": ("json_schema", json.dumps(SCHEMA), SCHEMA_DOCS),
    "json_object": ("json_object", "", [OBJECT_DOC]),
    "regex": ("regex", REGEX, ["Hello World", "Ada Lovelace Byron"]),
    # each library's own syntax (the same language): Lark for llguidance, GBNF for xgrammar
    "grammar": ("grammar", {"llguidance": LARK, "xgrammar": GBNF}, ["ALICE: Hello there, Bob!\n", "BOB: Hi.\n"]),
    "grammar_gbnf": ("grammar", GBNF, ["ALICE: Hello there, Bob!\n", "BOB: Hi.\n"]),
    "choice": ("choice", CHOICES, ["maybe not", "yes"]),
}
# Two schemas an app would send: a record of two fields, and a product with nested arrays and $defs.
TYPICAL = {
    "small": {
        "type": "object",
        "properties": {"subreddit": {"type": "string"}, "title": {"type": "string"}},
        "required": ["subreddit", "title"],
    },
    "product": {
        "$defs": {
            "price": {
                "type": "object",
                "properties": {"amount": {"type": "number", "minimum": 0}, "currency": {"enum": ["USD", "EUR", "GBP"]}},
                "required": ["amount", "currency"],
            }
        },
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 80},
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "price": {"$ref": "#/$defs/price"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            "variants": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "colour": {"type": "string"},
                        "size": {"enum": ["S", "M", "L", "XL"]},
                        "price": {"$ref": "#/$defs/price"},
                    },
                    "required": ["size"],
                },
            },
            "in_stock": {"type": "boolean"},
            "blurb": {"type": "string", "minLength": 20, "maxLength": 400},
        },
        "required": ["name", "sku", "price", "blurb"],
    },
}
REPEATS = 3


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return " ".join(sorted(set(re.findall(r"avx512[a-z_0-9]*|avx2|amx[a-z_]*", text))))


def cpu_name() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


# --- install weight ---------------------------------------------------------------------------------


def _requirements(dist: md.Distribution) -> list[str]:
    """The names a distribution requires on this platform, without extras."""
    from packaging.requirements import Requirement

    names = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def _size_mb(dist: md.Distribution) -> float:
    return sum((dist.locate_file(f).stat().st_size for f in dist.files or [] if dist.locate_file(f).is_file()), 0) / 1e6


def _closure(names: list[str]) -> tuple[dict[str, float], list[str]]:
    """Every distribution `names` need (recursively) -> its MB in site-packages; and those not installed here."""
    seen, missing, todo = {}, [], list(names)
    while todo:
        n = todo.pop().lower().replace("_", "-")
        if n in seen or n in missing:
            continue
        try:
            dist = md.distribution(n)
        except md.PackageNotFoundError:
            missing.append(n)
            continue
        seen[n] = _size_mb(dist)
        todo += _requirements(dist)
    return seen, missing


def install_weight(name: str) -> dict:
    """MB in site-packages of `name` and of everything it requires (recursively), and what is missing here."""
    core, _ = _closure(_requirements(md.distribution("gpt2kit")))  # what `pip install gpt2kit` brings already
    seen, missing = _closure([name])
    return {
        "own_MB": seen[name.lower()],
        "with_requirements_MB": sum(seen.values()),
        "beyond_gpt2kit_MB": sum(mb for n, mb in seen.items() if n not in core),
        "beyond_gpt2kit": sorted(n for n in seen if n not in core and n != name.lower()),
        "requires": sorted(n for n in seen if n != name.lower()),
        "not_installed_here": missing,
        "needs_torch": "torch" in seen or "torch" in missing,
        "needs_transformers": "transformers" in seen or "transformers" in missing,
    }


def import_seconds(module: str) -> float:
    """Best of two fresh interpreters, less an empty one."""

    def run(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t

    return min(run(f"import {module}") for _ in range(2)) - min(run("pass") for _ in range(2))


# --- the two libraries, behind one small interface -----------------------------------------------------


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer):
        from gpt2kit.constraints.vocabulary import vocabulary_for

        self.vocabulary = vocabulary_for(tokenizer)

    def compile(self, kind: str, source):
        import llguidance

        from gpt2kit.constraints.compiler import grammar_text
        from gpt2kit.constraints.spec import Constraint

        matcher = llguidance.LLMatcher(self.vocabulary.lltokenizer, grammar_text(Constraint(kind, source)), log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def matcher(self, compiled):
        return compiled.deep_copy()

    def new_mask(self):
        from llguidance.numpy import allocate_token_bitmask

        return allocate_token_bitmask(1, self.vocabulary.size)

    def fill(self, matcher, mask) -> None:
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(matcher, mask)

    def accept(self, matcher, token: int) -> bool:
        return matcher.consume_token(token)


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer):
        import xgrammar

        self.xgr = xgrammar
        vocab = [tokenizer.decode_bytes([i]) for i in range(tokenizer.n_vocab)]  # GPT-2's byte-level ids as bytes
        self.info = xgrammar.TokenizerInfo(
            vocab, xgrammar.VocabType.RAW, vocab_size=tokenizer.n_vocab, stop_token_ids=[tokenizer.eot_id]
        )

    def compile(self, kind: str, source):
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=os.cpu_count() or 1, cache_enabled=False)
        if kind in ("json_schema", "json_object"):  # one line, ", " and ": ", as gpt2kit asks llguidance for
            return compiler.compile_json_schema(source or '{"type": "object"}', any_whitespace=False)
        if kind == "regex":
            return compiler.compile_regex(source)
        if kind == "grammar":
            return compiler.compile_grammar(source)
        return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(o) for o in source))

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def new_mask(self):
        return self.xgr.allocate_token_bitmask(1, self.info.vocab_size)

    def fill(self, matcher, mask) -> None:
        matcher.fill_next_token_bitmask(mask)

    def accept(self, matcher, token: int) -> bool:
        return matcher.accept_token(token)


def measure_library(lib, tokenizer) -> dict:
    out = {}
    for case, (kind, source, docs) in CASES.items():
        source = source[lib.name] if isinstance(source, dict) else source
        compile_s = []
        for _ in range(REPEATS):  # from the text to the first mask, no cache
            t = time.perf_counter()
            compiled = lib.compile(kind, source)
            m, mask = lib.matcher(compiled), lib.new_mask()
            lib.fill(m, mask)
            compile_s.append(time.perf_counter() - t)
        first, later = [], []
        for n in range(1 + REPEATS):  # the first walk meets lazily built state; the later ones are steady
            for doc in docs:
                m, mask = lib.matcher(compiled), lib.new_mask()
                for token in tokenizer.encode(doc):
                    t = time.perf_counter()
                    lib.fill(m, mask)
                    (first if n == 0 else later).append(time.perf_counter() - t)
                    assert lib.accept(m, token), f"{lib.name} refused {tokenizer.decode([token])!r} of {doc!r}"
        later.sort()
        # medians and p90: on a shared machine the mean and the max measure other processes' time slices
        out[case] = {
            "compile_ms": 1e3 * statistics.median(compile_s),
            "mask_us_first_walk": 1e6 * statistics.median(first),
            "mask_us_p50": 1e6 * later[len(later) // 2],
            "mask_us_p90": 1e6 * later[int(0.9 * (len(later) - 1))],
            "mask_us_mean": 1e6 * statistics.mean(later),
            "mask_us_max": 1e6 * later[-1],
        }
    for name, schema in TYPICAL.items():
        t = time.perf_counter()
        compiled = lib.compile("json_schema", json.dumps(schema))
        lib.fill(lib.matcher(compiled), lib.new_mask())
        out[f"compile_ms_{name}"] = 1e3 * (time.perf_counter() - t)
    return out


# --- gpt2kit's stage against a decoding step ---------------------------------------------------------


def step_vs_stage(tokenizer) -> dict:
    import torch

    from gpt2kit import cpu
    from gpt2kit.config import GPTConfig
    from gpt2kit.constraints import Constraint
    from gpt2kit.constraints.compiler import _cache, compile_constraint
    from gpt2kit.constraints.stage import ConstraintStage
    from gpt2kit.model import GPT, KVCache
    from gpt2kit.options import SamplingSettings
    from gpt2kit.sampling import make_generator

    out = {}
    stage = ConstraintStage(tokenizer)
    for name, schema in [("test", SCHEMA), *TYPICAL.items()]:  # gpt2kit's first use (checks included), then the cache
        _cache.clear()
        t = time.perf_counter()
        compile_constraint(Constraint.json_schema(schema), stage.vocabulary)
        t1 = time.perf_counter()
        compile_constraint(Constraint.json_schema(schema), stage.vocabulary)
        out[f"first_use_ms_{name}"], out[f"cached_ms_{name}"] = 1e3 * (t1 - t), 1e3 * (time.perf_counter() - t1)

    gpt = GPT(GPTConfig())  # 124M's shape
    gpt.init_weights(torch.Generator().manual_seed(0))
    model = cpu.prepare(gpt, "auto", probe=cpu.probe_ids(tokenizer.encode))
    out["dtype"] = model.path if hasattr(model, "path") else "float32"
    settings = SamplingSettings(constraint=Constraint.json_schema(SCHEMA))
    docs = [tokenizer.encode(d) for d in SCHEMA_DOCS]

    class Row:
        def __init__(self, i):
            self.ids, self.tokens, self.generator, self.state = [], [], make_generator(i), {}

    # One PyTorch (and C kernel) thread, and CPU time beside wall time: with other processes on the cores,
    # threads that wait for each other turn every step into scheduling noise; CPU time counts the work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for B in (1, 8):
        prompt = torch.randint(0, 50000, (B, 32), generator=torch.Generator().manual_seed(0))
        cache = KVCache(gpt.config, B, 32 + 40, "cpu", model.wte.weight.dtype)
        steps = []
        with torch.inference_mode():
            logits = model(prompt, cache=cache, last_only=True)[:, -1]
            for _ in range(24):
                t, c = time.perf_counter(), time.process_time()
                logits = model(logits.argmax(-1, keepdim=True), cache=cache, last_only=True)[:, -1]
                steps.append((time.perf_counter() - t, time.process_time() - c))
        # B rows walk the schema's documents (row i the i % 3-th) for as long as the shortest one lasts
        walks, masking = [docs[i % len(docs)] for i in range(B)], []
        raw = torch.randn(B, gpt.config.n_vocab, generator=torch.Generator().manual_seed(1))
        for _ in range(REPEATS):
            rows = [Row(i) for i in range(B)]
            for k in range(min(len(w) for w in walks)):
                t, c = time.perf_counter(), time.process_time()
                stage.apply(raw, settings, rows)
                for row, walk in zip(rows, walks):
                    stage.accept(settings, row, walk[k])
                masking.append((time.perf_counter() - t, time.process_time() - c))
        entry = {}
        for i, clock in enumerate(("wall", "cpu")):
            step, mask = statistics.median(s[i] for s in steps), statistics.median(m[i] for m in masking)
            entry[clock] = {
                "decode_step_ms": 1e3 * step,
                "stage_ms": 1e3 * mask,
                "stage_mean_ms": 1e3 * statistics.mean(m[i] for m in masking),
                "stage_share_of_step": mask / step,
            }
        out[f"batch{B}"] = entry
    torch.set_num_threads(threads)
    return out


def main() -> None:
    from gpt2kit.tokenizer import gpt2_tokenizer

    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; flags: {cpu_flags()}; "
        f"load average at start: {os.getloadavg()[0]:.1f} (other processes share the cores)"
    )
    versions = ", ".join(f"{n} {md.version(n)}" for n in ("torch", "llguidance", "xgrammar"))
    print(f"Python {platform.python_version()}; {versions}")
    tokenizer = gpt2_tokenizer()
    results = {}
    for cls, module in ((Llguidance, "llguidance"), (Xgrammar, "xgrammar")):
        entry = {"install": install_weight(module), "import_s": import_seconds(module)}
        importlib.import_module(module)  # timed above, in a fresh interpreter
        t = time.perf_counter()
        lib = cls(tokenizer)
        entry["vocabulary_setup_s"] = time.perf_counter() - t
        entry.update(measure_library(lib, tokenizer))
        results[module] = entry
    results["gpt2kit_stage"] = step_vs_stage(tokenizer)
    print(json.dumps(results, indent=1))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("\n| | llguidance | xgrammar |\n|---|---|---|")
    lg, xg = results["llguidance"], results["xgrammar"]
    rows = [
        (
            "site-packages MB, own / with requirements",
            lambda r: f"{r['install']['own_MB']:.1f} / {r['install']['with_requirements_MB']:.0f}",
        ),
        ("MB beyond what gpt2kit installs", lambda r: f"{r['install']['beyond_gpt2kit_MB']:.0f}"),
        ("not installed here", lambda r: ", ".join(r["install"]["not_installed_here"]) or "-"),
        ("import s", lambda r: f"{r['import_s']:.2f}"),
        ("vocabulary setup s", lambda r: f"{r['vocabulary_setup_s']:.2f}"),
    ]
    rows += [
        (
            f"{case}: compile ms / mask us p50, p90 (first walk p50)",
            lambda r, c=case: (
                f"{r[c]['compile_ms']:.1f} / {r[c]['mask_us_p50']:.0f}, {r[c]['mask_us_p90']:.0f} "
                f"({r[c]['mask_us_first_walk']:.0f})"
            ),
        )
        for case in CASES
    ]
    rows += [(f"compile ms, {name} schema", lambda r, n=name: f"{r[f'compile_ms_{n}']:.1f}") for name in TYPICAL]
    for label, cell in rows:
        print(f"| {label} | {cell(lg)} | {cell(xg)} |")
    st = results["gpt2kit_stage"]
    for clock in ("cpu", "wall"):
        print(
            f"gpt2kit stage on 124M ({st['dtype']}, 1 thread, {clock} time, medians): "
            + "; ".join(
                f"batch {b}: step {st[f'batch{b}'][clock]['decode_step_ms']:.2f} ms, apply+accept "
                f"{st[f'batch{b}'][clock]['stage_ms']:.3f} ms (mean {st[f'batch{b}'][clock]['stage_mean_ms']:.3f}; "
                f"{100 * st[f'batch{b}'][clock]['stage_share_of_step']:.1f}% of the step)"
                for b in (1, 8)
            )
        )
    print(
        "first use / cached, ms: "
        + "; ".join(f"{n} {st[f'first_use_ms_{n}']:.1f} / {st[f'cached_ms_{n}']:.3f}" for n in ("test", *TYPICAL))
    )


if __name__ == "__main__":
    main()
