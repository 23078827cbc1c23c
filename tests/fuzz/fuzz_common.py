"""What every fuzz harness here shares: a scratch folder, and `main`, which runs atheris on a check.

A check takes the fuzzer's bytes, feeds them to one gpt2kit parser, and lets only UserError (the
documented "bad file" answer) pass; anything else escapes and atheris records the input as a crasher.
The same checks replay tests/fuzz/crashers/ and the seed corpora in tests/test_fuzz.py without atheris.

    python tests/fuzz/fuzz_tf_index.py -runs=100000 -seed=1 NEW_CORPUS tests/fuzz/corpus/tf_index
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

HERE = Path(__file__).parent
_scratch: Path | None = None


def scratch() -> Path:
    """One temporary folder per process, reused for every input (fuzzing makes millions)."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="gpt2kit-fuzz-"))
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def main(check: Callable[[bytes], None], mutate: Callable[[bytes, int, int], bytes] | None = None) -> None:
    import atheris

    # Coverage only of gpt2kit's own code: instrumenting torch or numpy would slow each run many times over.
    with atheris.instrument_imports(include=["gpt2kit"]):
        import gpt2kit.data.tokens  # noqa: F401
        import gpt2kit.formats  # noqa: F401
    atheris.Setup(sys.argv, check, **({"custom_mutator": mutate} if mutate else {}))
    atheris.Fuzz()
