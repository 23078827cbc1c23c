// The playground: streams /v1/completions (server-sent events) and shows each token's alternatives.
"use strict";
const $ = (id) => document.getElementById(id);
const tokens = [];  // {text, logprob, top: [[token, logprob], ...]} per generated token
let controller = null;
const MODEL_STORE = "gpt2kit.model.v1";  // localStorage key of the chosen model; the version is in the name

// The model every request names: the picker's choice (none while the list loads: the server's first).
function chosenModel() { return $("model").value || undefined; }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) { $("error").textContent = message || ""; }

function percent(p) { return p >= 0.01 ? (p * 100).toFixed(1) + "%" : (p * 100).toPrecision(2) + "%"; }

function visible(s) { return s.replace(/\n/g, "\u21b5\n").replace(/ /g, "\u00b7"); }

function renderAlternatives(title, rows, chosen) {
  $("explorer-title").textContent = title;
  $("explorer-hint").textContent = "";
  const list = $("alternatives");
  list.innerHTML = "";
  for (const [tok, prob] of rows) {
    const li = document.createElement("li");
    if (tok === chosen) li.className = "chosen";
    const t = document.createElement("span"); t.className = "tok"; t.textContent = visible(tok);
    const p = document.createElement("span"); p.className = "prob"; p.textContent = percent(prob);
    const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = Math.max(1, prob * 100) + "%";
    li.append(t, p, bar);
    list.append(li);
  }
}

function selectToken(i, span) {
  document.querySelectorAll(".token.selected").forEach((el) => el.classList.remove("selected"));
  span.classList.add("selected");
  const tok = tokens[i];
  const rows = tok.top.map(([t, lp]) => [t, Math.exp(lp)]);
  if (!rows.some(([t]) => t === tok.text)) rows.push([tok.text, Math.exp(tok.logprob)]);
  renderAlternatives(`"${visible(tok.text)}" (${percent(Math.exp(tok.logprob))})`, rows, tok.text);
}

function addTokens(logprobs, text) {
  const out = $("output");
  if (!logprobs || !logprobs.tokens.length) { if (text) out.append(document.createTextNode(text)); return; }
  logprobs.tokens.forEach((t, k) => {
    const i = tokens.length;
    const top = Object.entries(logprobs.top_logprobs[k] || {}).sort((a, b) => b[1] - a[1]);
    tokens.push({ text: t, logprob: logprobs.token_logprobs[k], top });
    const span = document.createElement("span");
    span.className = "token" + (Math.exp(logprobs.token_logprobs[k]) < 0.05 ? " unlikely" : "");
    span.dataset.index = i;
    // the piece's text is what to show; a token split across pieces shows in the piece that completes it
    span.textContent = logprobs.tokens.length === 1 ? text : t;
    span.addEventListener("click", () => selectToken(i, span));
    out.append(span);
  });
}

async function generate() {
  showError("");
  let extras;  // samplers.js's and structured.js's fields; a constraint the page cannot send stops here
  try { extras = { ...samplerFields(), ...structuredFields(), ...watermarkFields() }; } catch (e) {
    showError(e.message);
    return;
  }
  tokens.length = 0;
  const out = $("output");
  out.innerHTML = "";
  const echo = document.createElement("span"); echo.id = "echo"; echo.textContent = $("prompt").value; out.append(echo);
  $("usage").textContent = "";
  const body = {
    prompt: $("prompt").value, stream: true, stream_options: { include_usage: true }, logprobs: 10,
    max_tokens: +$("max_tokens").value, temperature: +$("temperature").value,
    top_k: +$("top_k").value, top_p: +$("top_p").value, repetition_penalty: +$("repetition_penalty").value,
    ...extras,
  };
  if ($("seed").value !== "") body.seed = +$("seed").value;
  controller = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false;
  let finish = null;
  try {
    await streamCompletions(body, controller.signal, (msg) => {
      for (const c of msg.choices) { addTokens(c.logprobs, c.text); finish = c.finish_reason || finish; }
      if (msg.usage) $("usage").textContent = `${msg.usage.prompt_tokens} prompt tokens, ${msg.usage.completion_tokens} generated`;
    });
    if (finish === "length" && (extras.response_format || extras.structured_outputs)) {
      $("usage").textContent += "; cut at max tokens before the structured output was complete";
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
  } finally {
    $("generate").disabled = false; $("stop").disabled = true; controller = null;
  }
}

// POST /v1/completions with stream: true; onMessage gets each server-sent event's JSON.
// A failed request throws an Error with the server's message and its HTTP status as .status.
async function streamCompletions(body, signal, onMessage) {
  const sent = { model: chosenModel(), ...body };  // a body that names its model keeps it
  const resp = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(sent), signal });
  if (!resp.ok) {
    const e = await resp.json().catch(() => ({}));
    const err = new Error((e.error && e.error.message) || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") continue;
      const msg = JSON.parse(data);
      if (msg.error) throw new Error(msg.error.message);
      onMessage(msg);
    }
  }
}

async function nextToken() {
  showError("");
  try {
    const resp = await fetch("/v1/next_token", { method: "POST", headers: headers(), body: JSON.stringify({ model: chosenModel(), prompt: $("prompt").value, top: 20 }) });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error ? data.error.message : resp.statusText);
    renderAlternatives("Next token after the prompt", data.tokens.map((t) => [t.token, t.prob]), null);
  } catch (e) { showError(e.message); }
}

// The modes are tabs; the choice is kept in the address (#write, #inspect) so a reload stays in it.
function showMode(mode) {
  for (const m of ["generate", "write", "inspect"]) {
    const on = m === mode;
    $("tab-" + m).setAttribute("aria-selected", on ? "true" : "false");
    $("tab-" + m).tabIndex = on ? 0 : -1;
    $(m + "-mode").hidden = !on;
  }
  $("main").className = mode + "-layout";
  $("explorer-hint").textContent = mode === "write" ? "Hover over model text (or move the cursor into it)."
    : mode === "inspect" ? "Inspect a text, then hover over or tap a token." : "Generate, then click a token.";
  if (location.hash !== "#" + mode) history.replaceState(null, "", mode === "generate" ? location.pathname : "#" + mode);
}

async function status() {
  try {
    const resp = await fetch("/health");
    const data = await resp.json();
    $("status").textContent = data.status === "ok" ? "ready" : data.status;
    if (data.status === "loading") setTimeout(status, 1000);
    if (data.status === "ok") await loadModels((data.models || []).map((m) => m.id));
  } catch (e) { $("status").textContent = "offline"; setTimeout(status, 2000); }
}

// The picker lists /v1/models (or, while the server wants an API key not typed yet, /health's ids);
// the choice is kept in this browser across reloads, like the document.
async function loadModels(fallback) {
  let ids = fallback;
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (resp.ok) ids = (await resp.json()).data.map((m) => m.id);
  } catch (e) { /* the fallback list */ }
  const picker = $("model");
  const wanted = picker.value || localStorage.getItem(MODEL_STORE);
  picker.replaceChildren(...ids.map((id) => new Option(id, id)));
  if (ids.includes(wanted)) picker.value = wanted;
  showModel();
}

function showModel() {
  $("model-name").textContent = chosenModel() || "";
  try { if (chosenModel()) localStorage.setItem(MODEL_STORE, chosenModel()); } catch (e) { /* private mode: not kept */ }
}

$("generate").addEventListener("click", generate);
$("model").addEventListener("change", showModel);
$("api_key").addEventListener("change", () => loadModels([...$("model").options].map((o) => o.value)));
$("stop").addEventListener("click", () => controller && controller.abort());
$("next").addEventListener("click", nextToken);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
$("tab-generate").addEventListener("click", () => showMode("generate"));
$("tab-write").addEventListener("click", () => showMode("write"));
showMode(["#write", "#inspect"].includes(location.hash) ? location.hash.slice(1) : "generate");
status();
