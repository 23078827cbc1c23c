"""Fuzz the TensorFlow checkpoint reader: the index table (footer, blocks, snappy, protobuf entries)
and the tensor reads it drives, against the real data file of tests/fixtures/openai_tiny."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_common import HERE, main, scratch  # noqa: E402

DATA = HERE.parent / "fixtures" / "openai_tiny" / "model.ckpt.data-00000-of-00001"
MAX_READS = 64  # an index may name thousands of entries; reading the first ones covers the reader


def check(data: bytes) -> None:
    from gpt2kit.errors import UserError
    from gpt2kit.formats.tf_checkpoint import TFCheckpoint

    prefix = scratch() / "model.ckpt"
    Path(f"{prefix}.index").write_bytes(data)
    if not Path(f"{prefix}.data-00000-of-00001").exists():
        shutil.copyfile(DATA, f"{prefix}.data-00000-of-00001")
    try:
        ck = TFCheckpoint(prefix)
        for name in list(ck.entries)[:MAX_READS]:
            if ck.entries[name].shard == 0 and ck.num_shards == 1:
                ck.read(name)
    except UserError:
        pass


if __name__ == "__main__":
    main(check)
