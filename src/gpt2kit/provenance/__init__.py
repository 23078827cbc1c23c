"""Where a text came from: tools that work on a text after it has left gpt2kit (issue 31).

    inspect.py    GLTR: each token's rank, probability and entropy under a model; buckets and histograms
    render.py     an Inspection for a terminal (colours) and as one self-contained HTML page
    watermark.py  Kirchenbauer et al.'s watermark as transformers seeds it: a logits-pipeline stage and `detect`
    source.py     what the commands read: a text, a file or standard input

Imports point down: nothing here imports the CLI, the server or lm.py (lm.py reaches `inspect` from `LM.inspect`).
"""
