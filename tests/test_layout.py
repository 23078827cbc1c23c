"""The shape of the package: imports point one way, and starting up loads only what it uses."""

import ast
import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import gpt2kit

PACKAGE = Path(gpt2kit.__file__).parent
HEAVY = ("torch", "numpy", "tiktoken", "fastapi", "uvicorn", "transformers", "safetensors", "matplotlib")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every gpt2kit module `path` imports, at the top or inside functions (not under TYPE_CHECKING)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_counting_imports_inside_functions():
    graph = import_graph()
    assert "gpt2kit.cli.common" in graph["gpt2kit.cli.generate"]  # relative imports count
    assert "gpt2kit.lm" in graph["gpt2kit.cli.common"]  # and so do imports inside functions
    assert cycles(graph) == []


def test_the_cli_imports_point_down():
    graph = import_graph()
    commands = {m for m in graph if m.startswith("gpt2kit.cli.") and m != "gpt2kit.cli.common"}
    assert len(commands) >= 7
    assert not graph["gpt2kit.cli.common"] & (commands | {"gpt2kit.cli"})
    for m in commands:  # a command module uses common and the library, never another command
        assert not graph[m] & (commands | {"gpt2kit.cli"}), m
    library = [m for m in graph if not m.startswith(("gpt2kit.cli", "gpt2kit.server")) and m != "gpt2kit.__main__"]
    for m in library:  # the library never reaches up into its adapters
        assert not {d for d in graph[m] if d.startswith(("gpt2kit.cli", "gpt2kit.server"))}, m


def test_package_inits_that_name_a_boundary_only_re_export():
    """formats/ and server/ are read through their __init__, which holds no logic: each name's home is a
    module named for what it does (formats/read.py, server/run.py, ...)."""
    for package in ("formats", "server"):
        tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
        for node in tree.body:
            is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            is_all = isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]
            assert isinstance(node, (ast.Import, ast.ImportFrom)) or is_docstring or is_all, (
                f"{package}/__init__.py:{node.lineno} {ast.unparse(node)[:60]}"
            )


def test_options_classes_go_by_their_own_names():
    """`GenerateOptions.top_k`, never `_G.top_k`: an alias makes a reader look up what `G` is (STYLE.md)."""
    aliases = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                aliases += [
                    f"{module_name(path)}: {a.name} as {a.asname}"
                    for a in node.names
                    if a.asname and a.name.endswith("Options")
                ]
            elif (
                isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id.endswith("Options")
            ):
                aliases += [
                    f"{module_name(path)}:{node.lineno} {ast.unparse(node)}"
                    for t in node.targets
                    if isinstance(t, ast.Name)
                ]
    assert not aliases, aliases


def loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])


def test_import_gpt2kit_and_help_load_nothing_heavy():
    assert loaded_after("import gpt2kit") == []
    help_all = "\n".join(
        f"try:\n    main([{c!r}, '--help'] if {c!r} else ['--help'])\nexcept SystemExit:\n    pass"
        for c in [
            "",
            "generate",
            "interactive",
            "info",
            "convert",
            "encode",
            "decode",
            "finetune",
            "perplexity",
            "download",
            "models",
            "serve",
        ]
    )
    assert (
        loaded_after(
            "import contextlib, io\nfrom gpt2kit.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            + "\n".join("    " + line for line in help_all.splitlines())
        )
        == []
    )


def test_generating_a_token_loads_nothing_it_does_not_use():
    """Start-up is what people feel when they call `gpt2kit generate` in a loop (issue 16)."""
    # torch._dynamo: what PyTorch imported when the embeddings' init ran under build_model's meta device
    unused = ("torch._dynamo", "transformers", "fastapi", "uvicorn", "jinja2", "matplotlib")
    code = (
        "import contextlib, io, sys\nfrom gpt2kit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['generate', 'Hello', '--length', '1', '--seed', '1']) == 0\n"
        f"print([m for m in {unused!r} if m in sys.modules])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "GPT2KIT_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert eval(r.stdout.strip().splitlines()[-1]) == []


def test_public_names_are_the_library_functions_with_their_signatures():
    from gpt2kit import evaluation, hub, lm
    from gpt2kit.options import EncodeOptions

    assert gpt2kit.load is lm.load and gpt2kit.download is hub.download and gpt2kit.perplexity is evaluation.perplexity
    params = inspect.signature(gpt2kit.encode_dataset).parameters
    assert params["val_fraction"].default == EncodeOptions.val_fraction and params["errors"].annotation == "str"
    assert set(gpt2kit.__all__) <= set(dir(gpt2kit))


def test_finetune_shows_every_training_option_with_its_default():
    from gpt2kit.training.options import TrainOptions

    params = inspect.signature(gpt2kit.finetune).parameters
    assert {"dataset", "model", "run_name"} <= set(params)
    for f in dataclasses.fields(TrainOptions):
        assert params[f.name].default == f.default and params[f.name].kind is inspect.Parameter.KEYWORD_ONLY


def test_no_function_is_longer_than_60_lines():
    """Functions short enough to read at once (STYLE.md); declarative tables aside, none is longer."""
    root = Path(gpt2kit.__file__).parent
    long = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{f.relative_to(root)}:{node.lineno} {node.name}")
    assert not long, long


def _steps(tree: ast.AST) -> bool:
    """The module draws a step's tokens (draw_rows) or feeds them to the running batch (batch.feed)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "draw_rows" or (node.func.attr == "feed" and "batch" in ast.unparse(node.func.value)):
                return True
    return False


def test_one_token_loop_and_one_sequence_type():
    """Issue 26: the draw and the feed of a step happen in gpt2kit.engine alone, and only gpt2kit.sequence
    defines a type holding a row's prompt ids, tokens and generator."""
    stepping, row_types = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if _steps(tree):
            stepping.append(module_name(path))
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            fields = {
                t.attr if isinstance(t, ast.Attribute) else getattr(t, "id", None)
                for n in ast.walk(cls)
                for t in (
                    n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
                )
            }
            if {"ids", "tokens", "generator"} <= fields:
                row_types.append(f"{module_name(path)}.{cls.name}")
    assert stepping == ["gpt2kit.engine"]
    assert row_types == ["gpt2kit.sequence.Sequence"]
