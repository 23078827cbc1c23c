"""Degeneration, measured (issue 29): every sampler at its documented default against greedy, top-k 40 and
nucleus 0.95, on the bundled model and on a model fine-tuned from it on benchmarks/data/macbeth.txt.

    python benchmarks/quality.py                              # full size: 200 prompts x 256 tokens (hours on 2 cores)
    python benchmarks/quality.py --prompts 40 --tokens 128    # what docs/samplers.md shows
    python benchmarks/quality.py --prompts 3 --tokens 32 --cost-steps 4 --no-docs    # a smoke run

Prompts are 32-token windows of benchmarks/data/henry_vi_part_1.txt, which neither model trained on, spread
evenly through it; the human continuation is the play's next --tokens tokens. Each configuration draws sample k
from the same seed, so the configurations differ in their sampler alone. The metrics (docs/samplers.md defines
them exactly): Holtzman et al.'s "% Repetition" on the generated token ids, Su et al.'s rep-2/3/4 and diversity
on whitespace-split words, and the perplexity of the continuations under the model that wrote them (prompt as
context), beside the human continuations'. The cost is the time of one decoding step (engine.step) at batch 1
and 8 on GPT-2 124M's shapes with random weights, the default --dtype, against the plain top-k 40 step.

The fine-tuned model and the random 124M are made once and kept in --work (default: a folder in the temp dir).
The table is printed and, unless --no-docs, written into docs/samplers.md between its marker comments.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
FINETUNE_TEXT = DATA / "macbeth.txt"
HELD_OUT = DATA / "henry_vi_part_1.txt"
PROMPT_TOKENS = 32
SEED = 1
FINETUNE_STEPS = 200  # at TrainOptions' fine-tuning defaults (batch 2 x 256 tokens, lr 1e-4): 3 passes over Macbeth
sys.path.insert(0, str(ROOT / "src"))

import gpt2kit  # noqa: E402 (the checkout's own source, not an installed copy)
from gpt2kit.engine import Engine  # noqa: E402
from gpt2kit.generation import make_sequences  # noqa: E402
from gpt2kit.options import SamplingSettings  # noqa: E402
from gpt2kit.provenance.inspect import windows  # noqa: E402
from gpt2kit.sequence import Request, Sample  # noqa: E402

# Each sampler at the default docs/samplers.md documents for it: llama.cpp's where it has one.
SAMPLERS = {
    "min-p 0.05": {"min_p": 0.05},
    "typical 0.95": {"typical_p": 0.95},
    "epsilon 3e-4": {"epsilon_cutoff": 3e-4},
    "eta 3e-4": {"eta_cutoff": 3e-4},
    "top-n-sigma 1.0": {"top_n_sigma": 1.0},
    "XTC 0.1 / 0.5": {"xtc_threshold": 0.1, "xtc_probability": 0.5},
    "mirostat v2 5 / 0.1": {"mirostat": 2, "mirostat_tau": 5.0, "mirostat_eta": 0.1},
    "DRY 0.8 / 1.75 / 2": {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2},
}
BASELINES = {"pure sampling": {}, "top-k 40": {"top_k": 40}, "nucleus 0.95": {"top_p": 0.95}}
DRY = "DRY 0.8 / 1.75 / 2"
TEMPERATURES = (0.7, 1.0)


def configurations() -> list[tuple[str, float, dict]]:
    """(name, temperature, sampler options) in table order: greedy alone and with DRY, then each temperature."""
    rows = [("greedy", 0.0, {}), (f"greedy + {DRY}", 0.0, SAMPLERS[DRY])]
    for t in TEMPERATURES:
        rows += [(name, t, opts) for name, opts in {**BASELINES, **SAMPLERS}.items()]
    return rows


# --- the models -----------------------------------------------------------------------------------------------


def finetuned(work: Path) -> Path:
    """The bundled model fine-tuned on FINETUNE_TEXT (made once: a finished run in `work` is reused as it is)."""
    return gpt2kit.finetune(
        dataset=str(FINETUNE_TEXT),
        steps=FINETUNE_STEPS,
        checkpoint_dir=str(work / "checkpoint"),
        run_name="macbeth",
        save_every=FINETUNE_STEPS,
        progress=False,
        print_every=50,
    )


def models(work: Path) -> dict[str, gpt2kit.LM]:
    """The two models every benchmark here compares, by the name the tables give them."""
    return {"bundled": gpt2kit.load(), "fine-tuned on Macbeth": gpt2kit.load(finetuned(work))}


def random_124m(work: Path) -> Path:
    """GPT-2 124M's shapes with random weights, saved once by transformers (the published weights need the network)."""
    folder = work / "gpt2-124M-random"
    if not (folder / "config.json").exists():
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(str(folder))
    return folder


# --- prompts, generation and scoring --------------------------------------------------------------------------


@dataclass
class Prompt:
    ids: list[int]  # PROMPT_TOKENS tokens, which encode(decode(ids)) gives back
    text: str
    human: list[int]  # the text's own next tokens


def held_out_prompts(lm: gpt2kit.LM, count: int, tokens: int, path: Path = HELD_OUT) -> list[Prompt]:
    """`count` prompt windows spread evenly through `path`, each moved on to the first start whose text
    re-encodes to the same tokens (so the engine sees exactly these ids)."""
    ids = lm.tokenizer.encode(path.read_text(encoding="utf-8"))
    span = PROMPT_TOKENS + tokens
    if len(ids) < span + count:
        raise SystemExit(f"{path} has {len(ids)} tokens: too few for {count} prompts of {span}")
    prompts = []
    for i in range(count):
        start = round(i * (len(ids) - span - 64) / max(1, count - 1))
        for s in range(start, start + 64):
            window = ids[s : s + PROMPT_TOKENS]
            if lm.tokenizer.encode(text := lm.tokenizer.decode(window)) == window:
                prompts.append(Prompt(window, text, ids[s + PROMPT_TOKENS : s + span]))
                break
    return prompts


def generate(
    lm: gpt2kit.LM,
    prompts: list[str],
    *,
    tokens: int,
    temperature: float,
    options: dict,
    batch_size: int,
    seed: int = SEED,
) -> list[list[int]]:
    """Each prompt's continuation of exactly `tokens` tokens (an <|endoftext|> does not end it)."""
    out = [
        ev.tokens
        for ev in lm.samples(
            prompts,
            length=tokens,
            temperature=temperature,
            seed=seed,
            batch_size=batch_size,
            stop_at_eot=False,
            include_prefix=False,
            **options,
        )
        if isinstance(ev, Sample)
    ]
    return out


@torch.inference_mode()
def continuation_nll(
    lm: gpt2kit.LM, contexts: list[list[int]], continuations: list[list[int]], rows: int = 4
) -> tuple[float, int]:
    """(total negative log-likelihood in nats, tokens) of each continuation after its context, under `lm`.
    Rows of one length go through together; a row longer than the context slides by half a window
    (gpt2kit.provenance.inspect.windows), so every token keeps at least half a window of context."""
    total, count = 0.0, 0
    by_length: dict[tuple[int, int], list[list[int]]] = {}
    for ctx, cont in zip(contexts, continuations):
        by_length.setdefault((len(ctx), len(cont)), []).append(ctx + cont)
    for (first, _), seqs in by_length.items():
        for r in range(0, len(seqs), rows):
            batch = torch.tensor(seqs[r : r + rows], device=lm.device)  # (R, L)
            for first_input, first_target, end in windows(batch.shape[1], lm.config.n_ctx):
                logits = lm.model(batch[:, first_input : end - 1])[:, :, : lm.tokenizer.n_vocab]  # (R, T, V)
                logits = logits[:, first_target - 1 - first_input :].float()  # (R, end - first_target, V)
                targets = batch[:, first_target:end]  # (R, end - first_target)
                flat = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # (R x T,)
                nll = flat.view(targets.shape)  # (R, end - first_target)
                keep = max(first, first_target) - first_target  # score the continuation's tokens alone
                total += nll[:, keep:].sum().item()
                count += nll[:, keep:].numel()
    return total, count


def perplexity(lm: gpt2kit.LM, contexts: list[list[int]], continuations: list[list[int]]) -> float:
    total, count = continuation_nll(lm, contexts, continuations)
    return math.exp(total / count)


# --- the metrics ----------------------------------------------------------------------------------------------


def ends_in_loop(tokens: list[int], eot: int, max_n: int = 90) -> bool:
    """Holtzman et al.'s test for "% Repetition" (their code: ari-holtzman/degen, metrics/repetition.py): for each
    phrase length n up to 90 tokens, count how many times the last n tokens occur back to back at the end; take
    the n with the most (the shortest on a tie). The text ends in a loop when that phrase occurs twice or more
    and is 3 tokens or longer, or occurs more than 50 times. A final <|endoftext|> is dropped first."""
    rev = tokens[::-1][1:] if tokens and tokens[-1] == eot else tokens[::-1]
    best_n, best = 1, 0
    for n in range(1, max_n + 1):
        repeats = 1
        while rev[n * repeats : n * (repeats + 1)] == rev[:n] and len(rev) >= n * (repeats + 1):
            repeats += 1
        if repeats > best:
            best_n, best = n, repeats
    return best > 1 and (best_n >= 3 or best > 50)


def rep_n(texts: list[str], n: int) -> float:
    """Su et al. 2022's rep-n: 100 x (1 - unique n-grams / n-grams) over whitespace-split words, the counts
    summed over all texts first (as their simctg/evaluation.py does), each text's unique n-grams its own."""
    unique = total = 0
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        unique, total = unique + len(set(grams)), total + len(grams)
    return 100.0 * (1 - unique / total) if total else 0.0


def metrics(lm: gpt2kit.LM, prompts: list[Prompt], outputs: list[list[int]]) -> dict:
    texts = [lm.tokenizer.decode(ids) for ids in outputs]
    reps = {n: rep_n(texts, n) for n in (2, 3, 4)}
    return {
        "repetition": 100.0 * sum(ends_in_loop(ids, lm.tokenizer.eot_id) for ids in outputs) / len(outputs),
        **{f"rep-{n}": r for n, r in reps.items()},
        "diversity": math.prod(1 - r / 100 for r in reps.values()),
        "perplexity": perplexity(lm, [p.ids for p in prompts], outputs),
    }


def quality(lm: gpt2kit.LM, prompts: list[Prompt], tokens: int, batch_size: int) -> list[dict]:
    """The human continuations' row, then one row per configuration."""
    rows = [{"decoding": "human continuation", "T": "", **metrics(lm, prompts, [p.human for p in prompts])}]
    for name, temperature, options in configurations():
        started = time.perf_counter()
        outputs = generate(
            lm,
            [p.text for p in prompts],
            tokens=tokens,
            temperature=temperature,
            options=options,
            batch_size=batch_size,
        )
        rows.append({"decoding": name, "T": temperature, **metrics(lm, prompts, outputs)})
        print(f"  {name} T={temperature}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


# --- the cost -------------------------------------------------------------------------------------------------

COST_ROWS = {
    "top-k 40": {"top_k": 40},
    "greedy": {"temperature": 0.0},
    "pure sampling": {},
    "nucleus 0.95": {"top_p": 0.95},
    **SAMPLERS,
}


def step_times(lm: gpt2kit.LM, options: dict, prompt: list[int], rows: int, steps: int) -> list[float]:
    """Seconds of each of `steps` decoding steps of `rows` rows, after their prefill."""
    settings = SamplingSettings(**{"temperature": 1.0, **options})
    seqs = list(
        make_sequences(
            [None] * rows,
            [prompt] * rows,
            per_prompt=1,
            seed=SEED,
            settings=settings,
            max_new=steps + 2,
            stops=[],
            include_prefix=False,
            stop_at_eot=False,
            logprobs=0,
        )
    )
    engine = Engine(lm.model, lm.tokenizer, max_rows=rows)
    engine.add(Request(seqs))
    while not all(s.generated for s in seqs):
        engine.step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return times


def cost(lm: gpt2kit.LM, prompt: list[int], steps: int, repeats: int = 3) -> list[dict]:
    """Median milliseconds per step of each COST_ROWS entry at batch 1 and 8, the entries interleaved round by
    round so that a busy moment of the machine falls on all of them alike."""
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for batch in (1, 8):
            for name, options in COST_ROWS.items():
                times.setdefault((name, batch), []).extend(step_times(lm, options, prompt, batch, steps))
    ms = {key: 1000 * statistics.median(t) for key, t in times.items()}
    return [
        {
            "sampler": name,
            **{f"b{b}": ms[name, b] for b in (1, 8)},
            **{f"b{b}_vs": ms[name, b] / ms["top-k 40", b] - 1 for b in (1, 8)},
        }
        for name in COST_ROWS
    ]


# --- the report -----------------------------------------------------------------------------------------------


def cpu_line() -> str:
    """This CPU and the flags gpt2kit's kernels depend on (gpt2kit.cpu's own reading of them)."""
    from gpt2kit.cpu.features import detect

    return detect().describe()


def quality_table(rows: list[dict]) -> list[str]:
    out = [
        "| decoding | T | % Repetition | rep-2 | rep-3 | rep-4 | diversity | perplexity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['decoding']} | {r['T']} | {r['repetition']:.1f} | {r['rep-2']:.1f} | {r['rep-3']:.1f} | "
            f"{r['rep-4']:.1f} | {r['diversity']:.3f} | {r['perplexity']:.1f} |"
        )
    return out


def cost_table(rows: list[dict]) -> list[str]:
    out = [
        "| sampler | batch 1, ms/step | vs top-k 40 | batch 8, ms/step | vs top-k 40 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(f"| {r['sampler']} | {r['b1']:.1f} | {r['b1_vs']:+.1%} | {r['b8']:.1f} | {r['b8_vs']:+.1%} |")
    return out


def find(rows: list[dict], decoding: str, temperature: float) -> dict:
    return next(r for r in rows if r["decoding"] == decoding and r["T"] == temperature)


def targets(results: dict[str, list[dict]], costs: list[dict]) -> list[str]:
    """Issue 29's targets, each met or not met, with the figures that decide it."""
    lines = []
    for model, rows in results.items():
        for base, with_dry, t in (("greedy", f"greedy + {DRY}", 0.0), ("pure sampling", DRY, 0.7)):
            before, after = find(rows, base, t)["repetition"], find(rows, with_dry, t)["repetition"]
            if before == 0:
                verdict = "met (nothing to cut)" if after == 0 else "not met"
                lines.append(f"- DRY, {model}, {base} (T={t}): {verdict}: % Repetition {before:.1f} -> {after:.1f}")
            else:
                cut = 1 - after / before
                lines.append(
                    f"- DRY, {model}, {base} (T={t}): {'met' if cut >= 0.8 else 'not met'}: % Repetition "
                    f"{before:.1f} -> {after:.1f}, cut by {cut:.0%} (target at least 80%)"
                )
        greedy = find(rows, "greedy", 0.0)["repetition"]
        sampled = [find(rows, name, t)["repetition"] for name in ("top-k 40", "nucleus 0.95") for t in TEMPERATURES]
        ordered = greedy >= max(sampled) and greedy > 0 and max(sampled) <= 5.0
        lines.append(
            f"- Holtzman's ordering, {model}: {'met' if ordered else 'not met'}: greedy {greedy:.1f}% loops; "
            f"top-k 40 and nucleus 0.95 at most {max(sampled):.1f}% (target: greedy most, those two at most 5%)"
        )
    worst = max((r for r in costs if r["sampler"] in SAMPLERS), key=lambda r: r["b1_vs"])
    over = [r["sampler"] for r in costs if r["sampler"] in SAMPLERS and r["b1_vs"] > 0.05]
    lines.append(
        f"- Cost, each sampler at most +5% on a batch-1 step of 124M: {'met' if not over else 'not met'}: "
        f"the most is {worst['sampler']} at {worst['b1_vs']:+.1%}" + (f" (over: {', '.join(over)})" if over else "")
    )
    lines.append("- Contrastive search: not measured by this script (the engine runs it: penalty_alpha with top_k)")
    return lines


def report(args, results: dict[str, list[dict]], costs: list[dict]) -> str:
    lines = [
        f"Run on {cpu_line()}, {platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
        f"with `python benchmarks/quality.py --prompts {args.prompts} --tokens {args.tokens}` "
        f"({args.prompts} prompts of {PROMPT_TOKENS} tokens, {args.tokens} new tokens each; the script's "
        f"defaults, 200 prompts and 256 tokens, are the issue's full size). Perplexity: of the continuations "
        f"under the model that wrote them; the human row's is the play's own continuation."
    ]
    for model, rows in results.items():
        lines += ["", f"**{model}**", "", *quality_table(rows)]
    lines += [
        "",
        f"**Cost per decoding step**, GPT-2 124M's shapes (random weights), --dtype auto "
        f"({args.cost_path}), median of {3 * args.cost_steps} steps after a {PROMPT_TOKENS}-token prompt:",
        "",
        *cost_table(costs),
        "",
        "**Targets (issue 29)**",
        "",
        *targets(results, costs),
    ]
    return "\n".join(lines)


def write_section(page: Path, name: str, body: str) -> None:
    """Put `body` between `<!-- name:begin -->` and `<!-- name:end -->` in `page` (appended if they are missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = page.read_text(encoding="utf-8") if page.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    page.write_text(text, encoding="utf-8")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=200, help="held-out prompts per model (default 200)")
    p.add_argument("--tokens", type=int, default=256, help="new tokens per sample (default 256)")
    p.add_argument(
        "--batch-size", type=int, default=32, help="samples decoded together (the text does not depend on it)"
    )
    p.add_argument("--cost-steps", type=int, default=16, help="decoding steps timed per sampler, batch and round")
    p.add_argument("--work", type=Path, default=None, help="where the fine-tuned model and the random 124M are kept")
    p.add_argument("--no-docs", action="store_true", help="print the table only; leave docs/samplers.md as it is")
    args = p.parse_args()
    args.work = args.work or Path(tempfile.gettempdir()) / "gpt2kit-benchmarks"
    return args


def main() -> None:
    args = parse()
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the fine-tune's progress, when it runs
    results = {}
    for name, lm in models(args.work).items():
        print(f"{name} ({lm.info.get('cpu_path', lm.info.get('dtype'))}):", file=sys.stderr, flush=True)
        prompts = held_out_prompts(lm, args.prompts, args.tokens)
        results[name] = quality(lm, prompts, args.tokens, args.batch_size)
    big = gpt2kit.load(str(random_124m(args.work)))
    args.cost_path = big.info.get("cpu_path", big.info.get("dtype"))
    costs = cost(big, held_out_prompts(big, 1, 0)[0].ids, args.cost_steps)
    text = report(args, results, costs)
    print(text)
    if not args.no_docs:
        write_section(ROOT / "docs" / "samplers.md", "quality", text)


if __name__ == "__main__":
    os.environ.setdefault("GPT2KIT_OFFLINE", "1")  # everything here is local: never reach for the network
    main()
