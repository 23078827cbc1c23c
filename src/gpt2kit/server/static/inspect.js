// Inspect mode: GLTR's colours over any text (POST /v1/inspect). Hover over, focus or tap a token to see
// its rank and what the model predicted there, in the token explorer. Uses app.js's helpers.
"use strict";
let inspection = null;  // the last /v1/inspect answer

async function runInspect() {
  $("inspect-error").textContent = "";
  const text = $("inspect-text").value;
  if (!text) { $("inspect-error").textContent = "Paste or type a text to inspect first."; return; }
  $("inspect-run").disabled = true;
  $("inspect-output").setAttribute("aria-busy", "true");
  try {
    const resp = await fetch("/v1/inspect", { method: "POST", headers: headers(),
                                              body: JSON.stringify({ model: chosenModel(), text, alternatives: 10 }) });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error((data.error && data.error.message) || resp.statusText);
    showInspection(data);
  } catch (e) {
    $("inspect-error").textContent = e.message;
  } finally {
    $("inspect-run").disabled = false;
    $("inspect-output").setAttribute("aria-busy", "false");
  }
}

function showInspection(data) {
  inspection = data;
  const out = $("inspect-output");
  out.replaceChildren(...data.tokens.map((t, i) => {
    const span = document.createElement("span");
    span.className = "itok gltr" + t.bucket;
    span.textContent = t.text;
    span.dataset.index = i;
    span.tabIndex = 0;
    span.title = `rank ${t.rank}, ${percent(t.prob)}`;
    return span;
  }));
  const summary = [`${data.tokens.length} tokens: `];
  data.buckets.forEach((b, k) => {
    const name = document.createElement("span"); name.className = "gltr" + k; name.textContent = b.name;
    summary.push(name, ` ${percent(b.share)} · `);
  });
  summary.push(`mean log-rank ${data.mean_log_rank.toFixed(2)}`);
  $("inspect-summary").replaceChildren(...summary);
  $("inspect-histograms").replaceChildren(
    histogram("p(token) / p(top prediction)", data.histograms.ratio, (x) => x.toFixed(1)),
    histogram("Entropy (nats)", data.histograms.entropy, (x) => x.toFixed(0)));
  renderAlternatives("Token explorer", [], null);
  $("explorer-hint").textContent = "Hover over or tap a token.";
}

// One of GLTR's histograms as rows of bars: the bin, its bar, its count.
function histogram(title, h, label) {
  const box = document.createElement("figure");
  box.className = "ihist";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  box.append(caption);
  const most = Math.max(1, ...h.counts);
  h.counts.forEach((c, k) => {
    const name = document.createElement("span"); name.textContent = `${label(h.edges[k])}–${label(h.edges[k + 1])}`;
    const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = (100 * c / most) + "%";
    const n = document.createElement("span"); n.className = "prob"; n.textContent = c;
    box.append(name, bar, n);
  });
  return box;
}

function explainToken(span) {
  if (!inspection || !span || !span.classList.contains("itok")) return;
  document.querySelectorAll(".itok.selected").forEach((el) => el.classList.remove("selected"));
  span.classList.add("selected");
  const t = inspection.tokens[+span.dataset.index];
  const rows = t.alternatives.map((a) => [a.text, a.prob]);
  if (!rows.some(([text]) => text === t.text)) rows.push([t.text, t.prob]);
  renderAlternatives(`"${visible(t.text)}": rank ${t.rank}, ${percent(t.prob)}`, rows, t.text);
  $("explorer-hint").textContent = `Top prediction "${visible(t.top_text)}" (${percent(t.top_prob)}); entropy ${t.entropy.toFixed(2)} nats.`;
}

$("tab-inspect").addEventListener("click", () => showMode("inspect"));
$("inspect-run").addEventListener("click", runInspect);
$("inspect-text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runInspect(); });
for (const kind of ["mouseover", "click", "focusin"]) $("inspect-output").addEventListener(kind, (e) => explainToken(e.target));
