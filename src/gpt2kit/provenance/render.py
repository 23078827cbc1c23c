"""An Inspection for people: a terminal report (GLTR's colours when the terminal has them) and one
self-contained HTML page, readable offline (its styles inline, no script, nothing fetched)."""

from __future__ import annotations

import html

from .inspect import BUCKET_NAMES, Histogram, Inspection, TokenScore

# GLTR's colours for its buckets (green, yellow, red, purple), as the web page's backgrounds and the
# nearest of the terminal's 256 colours (xterm's palette), with black text on them.
HTML_COLOURS = ("#adff80", "#ffea80", "#ff9280", "#e5b0ff")
TERMINAL_COLOURS = (156, 229, 210, 183)
RESET = "\x1b[0m"
BAR = 30  # characters of the longest bar in the terminal's histograms


def visible(text: str, width: int = 14) -> str:
    """A token as a table cell: quoted, escapes for newlines and the like, cut to `width` characters."""
    shown = repr(text)
    return shown if len(shown) <= width else shown[: width - 2] + "…" + shown[-1]


def terminal(ins: Inspection, *, colour: bool) -> str:
    """The passage (coloured by bucket when `colour`), a table of every token, the buckets and the histograms."""
    lines = [f"{ins.model}: {len(ins.tokens)} tokens, windows of {ins.window}", ""]
    if colour:
        legend = "  ".join(_paint(f" {name} ", b) for b, name in enumerate(BUCKET_NAMES))
        lines += [_coloured(ins.tokens), "", legend, ""]
    lines.append(f"{'#':>6}  {'token':<14}  {'rank':>6}  {'prob':>7}  {'top prediction':<14}  {'top prob':>8}  entropy")
    for n, t in enumerate(ins.tokens, 1):
        token = visible(t.text)
        cell = _paint(token, t.bucket) + " " * (14 - len(token)) if colour else f"{token:<14}"
        lines.append(
            f"{n:>6}  {cell}  {t.rank:>6}  {_percent(t.prob):>7}  {visible(t.top_text):<14}  "
            f"{_percent(t.top_prob):>8}  {t.entropy:7.2f}"
        )
    lines += ["", "buckets (rank under the model)"]
    lines += _bars([(name, count) for name, count in zip(BUCKET_NAMES, ins.buckets)], len(ins.tokens))
    lines += ["", f"mean log-rank {ins.mean_log_rank:.3f}"]
    histograms = ins.histograms()
    lines += ["", "p(token) / p(top prediction)"] + _bars(_labelled(histograms["ratio"], "{:.1f}"), len(ins.tokens))
    lines += ["", "entropy (nats)"] + _bars(_labelled(histograms["entropy"], "{:.0f}"), len(ins.tokens))
    return "\n".join(lines)


def _paint(text: str, bucket: int) -> str:
    return f"\x1b[30;48;5;{TERMINAL_COLOURS[bucket]}m{text}{RESET}"


def _coloured(tokens: tuple[TokenScore, ...]) -> str:
    # Each line painted on its own: a colour carried over a newline would fill the rest of the terminal's line.
    return "".join("\n".join(_paint(part, t.bucket) if part else "" for part in t.text.split("\n")) for t in tokens)


def _percent(p: float) -> str:
    return f"{p * 100:.1f}%" if p >= 0.001 else f"{p * 100:.2g}%"  # 0.028%, not 0.0%


def _labelled(h: Histogram, form: str) -> list[tuple[str, int]]:
    return [(f"{form.format(lo)}-{form.format(hi)}", c) for lo, hi, c in zip(h.edges, h.edges[1:], h.counts)]


def _bars(rows: list[tuple[str, int]], total: int) -> list[str]:
    most = max((c for _, c in rows), default=0) or 1
    width = max(len(label) for label, _ in rows)
    return [f"  {label:<{width}}  {'█' * round(BAR * c / most):<{BAR}}  {c / total:6.1%} ({c})" for label, c in rows]


# --- the HTML page ---------------------------------------------------------------------------------------

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 980px; margin: 24px auto; padding: 0 16px; color: #1d1d1f; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.passage { white-space: pre-wrap; overflow-wrap: anywhere; font: 15px/1.9 ui-monospace, Menlo, monospace;
           border: 1px solid #ddd; border-radius: 8px; padding: 12px 14px; }
.t { border-radius: 3px; cursor: help; } .t:hover { outline: 2px solid #333; }
.b0 { background: #adff80; } .b1 { background: #ffea80; } .b2 { background: #ff9280; } .b3 { background: #e5b0ff; }
.legend span { display: inline-block; padding: 0 8px; margin-right: 6px; border-radius: 3px; }
.hist { display: grid; grid-template-columns: 8em 1fr 7em; gap: 3px 10px; align-items: center; font-size: 14px; }
.bar { height: 14px; background: #3b5bdb; border-radius: 3px; min-width: 1px; }
.num { text-align: right; font-variant-numeric: tabular-nums; color: #555; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 2px 8px; text-align: right; }
td.s, th.s { text-align: left; font-family: ui-monospace, Menlo, monospace; white-space: pre; }
tr:nth-child(even) { background: #f4f4f6; }
.muted { color: #666; font-size: 14px; }
"""


def page(ins: Inspection, *, title: str = "gpt2kit inspect") -> str:
    """One HTML page: the coloured passage (hover a token for its statistics), buckets, histograms, the table."""
    e = html.escape
    histograms = ins.histograms()
    legend = "".join(f'<span class="b{b}">{e(name)}</span>' for b, name in enumerate(BUCKET_NAMES))
    body = [
        f"<h1>{e(title)}</h1>",
        (
            f'<p class="muted">{e(ins.model)}: {len(ins.tokens)} tokens, windows of {ins.window}. Each token is '
            f"coloured by its rank under the model (GLTR); hover over one for its statistics.</p>"
        ),
        f'<p class="legend">{legend}</p>',
        f'<div class="passage">{"".join(_span(t) for t in ins.tokens)}</div>',
        "<h2>Buckets</h2>",
        _html_bars(list(zip(BUCKET_NAMES, ins.buckets)), len(ins.tokens)),
        f'<p class="muted">mean log-rank {ins.mean_log_rank:.3f}</p>',
        "<h2>p(token) / p(top prediction)</h2>",
        _html_bars(_labelled(histograms["ratio"], "{:.1f}"), len(ins.tokens)),
        "<h2>Entropy (nats)</h2>",
        _html_bars(_labelled(histograms["entropy"], "{:.0f}"), len(ins.tokens)),
        "<h2>Every token</h2>",
        _table(ins),
    ]
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{e(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _span(t: TokenScore) -> str:
    alternatives = ", ".join(f"{visible(a.text, 20)} {_percent(a.prob)}" for a in t.alternatives[:5])
    tip = (
        f"rank {t.rank} · {_percent(t.prob)} · top {visible(t.top_text, 20)} {_percent(t.top_prob)} · "
        f"entropy {t.entropy:.2f}" + (f"\n{alternatives}" if alternatives else "")
    )
    return f'<span class="t b{t.bucket}" title="{html.escape(tip)}">{html.escape(t.text)}</span>'


def _html_bars(rows: list[tuple[str, int]], total: int) -> str:
    most = max((c for _, c in rows), default=0) or 1
    cells = "".join(
        f'<span>{html.escape(label)}</span><span class="bar" style="width: {100 * c / most:.1f}%"></span>'
        f'<span class="num">{c / total:.1%} ({c})</span>'
        for label, c in rows
    )
    return f'<div class="hist">{cells}</div>'


def _table(ins: Inspection) -> str:
    head = (
        '<tr><th>#</th><th class="s">token</th><th>rank</th><th>prob</th><th class="s">top prediction</th>'
        "<th>top prob</th><th>entropy</th></tr>"
    )
    rows = "".join(
        f'<tr><td>{n}</td><td class="s b{t.bucket}">{html.escape(visible(t.text, 24))}</td><td>{t.rank}</td>'
        f'<td>{_percent(t.prob)}</td><td class="s">{html.escape(visible(t.top_text, 24))}</td>'
        f"<td>{_percent(t.top_prob)}</td><td>{t.entropy:.2f}</td></tr>"
        for n, t in enumerate(ins.tokens, 1)
    )
    return f"<details open><summary>{len(ins.tokens)} tokens</summary><table>{head}{rows}</table></details>"
