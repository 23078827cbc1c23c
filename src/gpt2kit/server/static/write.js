// Write mode: a document the user writes, with the model's continuations on request: suggestions,
// history, storage, the token explorer over model text, and the events. The document itself (segments
// and the contenteditable that renders them) is write-doc.js: read back after each edit, re-rendered
// after each insertion, undo and reload.
"use strict";
const STORE = "gpt2kit.write.v1";  // localStorage key; the version is in the name
const W = {
  models: {},  // suggestion id -> {text, tokens: [{text, logprob, top}]}
  nextId: 1,
  undo: [], redo: [],  // snapshots {segs, caret}
  lastEdit: 0, lastKind: "", editEnd: null,  // typing within a second, of one kind, in one place is one undo step
  caret: null,  // the last caret offset in the document (buttons take the focus away)
  suggestions: [], active: -1, at: 0, controller: null,
  nCtx: {},  // model id -> its context length
};

// --- history and storage ------------------------------------------------------------------------

function snapshot() { return { segs: readDoc(), caret: caretOffset() ?? W.caret ?? 0 }; }

function pushUndo() {
  W.undo.push(snapshot());
  if (W.undo.length > 500) W.undo.shift();
  W.redo.length = 0;
  updateHistoryButtons();
}

function restore(from, to) {
  if (!from.length) return;
  dismiss();
  to.push(snapshot());
  const s = from.pop();
  renderDoc(s.segs);
  doc.focus();
  setCaret(s.caret);
  W.lastKind = "";
  updateHistoryButtons();
  save();
}
const undo = () => restore(W.undo, W.redo);
const redo = () => restore(W.redo, W.undo);

function updateHistoryButtons() { $("undo").disabled = !W.undo.length; $("redo").disabled = !W.redo.length; }

function save() {
  const segs = readDoc();
  const used = new Set(segs.filter((s) => s.id !== undefined).map((s) => s.id));
  const models = Object.fromEntries(Object.entries(W.models).filter(([id]) => used.has(+id)));
  try {
    localStorage.setItem(STORE, JSON.stringify({ segs, models, nextId: W.nextId, marks: $("marks").checked }));
  } catch (e) { $("write-error").textContent = "could not keep the document in this browser: " + e.message; }
}

let saveTimer = null;
function saveSoon() { clearTimeout(saveTimer); saveTimer = setTimeout(save, 300); }

function load() {
  let state = null;
  try { state = JSON.parse(localStorage.getItem(STORE) || "null"); } catch (e) { state = null; }
  if (!state || !Array.isArray(state.segs)) return;
  W.models = state.models || {};
  W.nextId = state.nextId || 1;
  $("marks").checked = state.marks !== false;
  renderDoc(state.segs);
  showMarks();
}

function showMarks() { doc.classList.toggle("marks-off", !$("marks").checked); }

// --- suggestions --------------------------------------------------------------------------------

function settings() {
  const v = (id) => +$(id).value;
  return { n: Math.max(1, Math.min(8, v("w_n") || 3)), max_tokens: Math.max(1, v("w_length") || 20),
           temperature: v("w_temperature"), top_k: v("w_top_k"), top_p: v("w_top_p"),
           repetition_penalty: v("w_repetition_penalty") };
}

async function contextLength() {
  const model = chosenModel() || "";
  if (W.nCtx[model]) return W.nCtx[model];
  try {
    const resp = await fetch("/v1/info" + (model ? "?model=" + encodeURIComponent(model) : ""), { headers: headers() });
    if (resp.ok) W.nCtx[model] = (await resp.json()).n_ctx;
  } catch (e) { /* the completion request will say what is wrong */ }
  return W.nCtx[model] || 1024;
}

// The end of the text before the cursor that fits the model's context, cut at a space. A token is
// about 4 characters of English; 3 per token keeps most prompts in one try, and a 413 halves it.
function promptTail(text, chars) {
  if (text.length <= chars) return text;
  const tail = text.slice(text.length - chars);
  const space = tail.search(/\s/);
  return space >= 0 ? tail.slice(space + 1) : tail;
}

async function suggest() {
  const caret = caretOffset() ?? W.caret ?? docText(readDoc()).length;
  const text = docText(readDoc()).slice(0, caret);
  if (W.controller) W.controller.abort();
  const body = { ...settings(), stream: true, logprobs: 5 };
  W.at = caret;
  W.suggestions = Array.from({ length: body.n }, () => ({ text: "", tokens: [], done: false }));
  W.active = 0;
  renderSuggestions();
  $("suggestions").setAttribute("aria-busy", "true");
  $("suggest-panel").hidden = false;
  $("write-error").textContent = "";
  const controller = W.controller = new AbortController();
  let chars = Math.max(64, ((await contextLength()) - body.max_tokens) * 3);
  for (let attempt = 0; attempt < 4; attempt++) {
    try {
      await streamCompletions({ ...body, prompt: promptTail(text, chars) }, controller.signal, onSuggestionChunk);
      break;
    } catch (e) {
      if (e.name === "AbortError") return;
      if (e.status === 413 && chars > 32) { chars = Math.floor(chars / 2); continue; }
      $("write-error").textContent = e.message;
      break;
    }
  }
  if (W.controller === controller) {
    W.controller = null;
    W.suggestions.forEach((s) => { s.done = true; });
    renderSuggestions();
    $("suggestions").setAttribute("aria-busy", "false");
    $("write-status").textContent = `${W.suggestions.length} suggestions`;
  }
}

function onSuggestionChunk(msg) {
  for (const c of msg.choices) {
    const s = W.suggestions[c.index];
    if (!s) continue;
    s.text += c.text;
    s.tokens.push(...tokensOf(c.logprobs, c.text));
    if (c.finish_reason) s.done = true;
    renderSuggestion(c.index);
  }
}

// A piece's tokens, their lengths made to add up to the piece's text (a character split between
// tokens shows in the token that completes it).
function tokensOf(logprobs, text) {
  if (!logprobs || !logprobs.tokens.length) return text ? [{ text, logprob: 0, top: [] }] : [];
  const out = logprobs.tokens.map((t, k) => ({
    text: t, logprob: logprobs.token_logprobs[k],
    top: Object.entries(logprobs.top_logprobs[k] || {}).sort((a, b) => b[1] - a[1]),
  }));
  if (out.length === 1) out[0].text = text;
  const extra = out.reduce((n, t) => n + t.text.length, 0) - text.length;
  if (extra) out[out.length - 1].text = text.slice(text.length - Math.max(0, out[out.length - 1].text.length - extra));
  return out;
}

function renderSuggestions() {
  const list = $("suggestions");
  list.innerHTML = "";
  W.suggestions.forEach((s, i) => {
    const li = document.createElement("li");
    li.id = "suggestion-" + i;
    li.setAttribute("role", "option");
    li.addEventListener("mousedown", (e) => e.preventDefault());  // keep the caret in the document
    li.addEventListener("click", () => pick(i));
    list.append(li);
    renderSuggestion(i);
  });
}

function renderSuggestion(i) {
  const li = $("suggestion-" + i), s = W.suggestions[i];
  if (!li) return;
  li.textContent = s.text || (s.done ? "(the model ended the text here)" : "…");
  li.classList.toggle("empty", !s.text);
  li.classList.toggle("streaming", !s.done);
  li.setAttribute("aria-selected", i === W.active ? "true" : "false");
  if (i === W.active) $("suggestions").setAttribute("aria-activedescendant", li.id);
}

function move(step) {
  if (!W.suggestions.length) return;
  const n = W.suggestions.length;
  W.active = ((W.active < 0 ? (step > 0 ? -1 : 0) : W.active) + step + n) % n;
  W.suggestions.forEach((_, i) => renderSuggestion(i));
  $("suggestion-" + W.active).scrollIntoView({ block: "nearest" });
}

function dismiss() {
  if (W.controller) W.controller.abort();
  W.controller = null;
  W.suggestions = [];
  W.active = -1;
  $("suggest-panel").hidden = true;
  $("suggestions").removeAttribute("aria-activedescendant");
}

function isOpen() { return !$("suggest-panel").hidden; }

// Insert suggestion i at the cursor the suggestions continue from, as one undoable step.
function pick(i) {
  const s = W.suggestions[i];
  if (!s || !s.text) { dismiss(); return; }
  pushUndo();
  const id = W.nextId++;
  W.models[id] = { text: s.text, tokens: s.tokens.map((t) => ({ ...t })) };
  dismiss();
  replaceText(W.at, W.at, { text: s.text, id, start: 0 });
  save();
}

// --- the token explorer over model text ---------------------------------------------------------

function showTokenAt(span, local) {
  const m = W.models[span.dataset.id];
  if (!m) return;
  const at = +span.dataset.start + local;
  let n = 0, tok = m.tokens[m.tokens.length - 1];
  for (const t of m.tokens) {
    if (at < n + t.text.length) { tok = t; break; }
    n += t.text.length;
  }
  if (!tok) return;
  const rows = tok.top.map(([t, lp]) => [t, Math.exp(lp)]);
  if (!rows.some(([t]) => t === tok.text)) rows.push([tok.text, Math.exp(tok.logprob)]);
  renderAlternatives(`"${visible(tok.text)}" (${percent(Math.exp(tok.logprob))})`, rows, tok.text);
}

function pointOffset(x, y) {
  if (document.caretRangeFromPoint) {
    const r = document.caretRangeFromPoint(x, y);
    return r && { node: r.startContainer, offset: r.startOffset };
  }
  const p = document.caretPositionFromPoint && document.caretPositionFromPoint(x, y);
  return p && { node: p.offsetNode, offset: p.offset };
}

function onHover(e) {
  const span = e.target.closest && e.target.closest(".model");
  if (!span) return;
  const p = pointOffset(e.clientX, e.clientY);
  if (p && span.contains(p.node) && p.node.nodeType === Node.TEXT_NODE) showTokenAt(span, Math.max(0, p.offset - (p.offset === p.node.length ? 1 : 0)));
}

function onSelectionChange() {
  const sel = getSelection();
  if (!sel.rangeCount || !doc.contains(sel.focusNode)) return;
  W.caret = offsetOf(sel.focusNode, sel.focusOffset);
  const el = sel.focusNode.nodeType === Node.TEXT_NODE ? sel.focusNode.parentNode : sel.focusNode;
  const span = el.closest && el.closest(".model");
  if (span && doc.contains(span) && sel.focusNode.nodeType === Node.TEXT_NODE) showTokenAt(span, Math.max(0, sel.focusOffset - 1));
}

// --- events -------------------------------------------------------------------------------------

function onKeyDown(e) {
  const mod = e.ctrlKey || e.metaKey;
  if (mod && !e.altKey && e.key.toLowerCase() === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); return; }
  if (mod && !e.altKey && e.key.toLowerCase() === "y") { e.preventDefault(); redo(); return; }
  if (e.key === "Tab" && !e.shiftKey && !mod && !e.altKey) { e.preventDefault(); suggest(); return; }
  if (!isOpen()) return;
  if (e.key === "ArrowDown") { e.preventDefault(); move(1); }
  else if (e.key === "ArrowUp") { e.preventDefault(); move(-1); }
  else if (e.key === "Enter" && W.active >= 0) { e.preventDefault(); pick(W.active); }
  else if (e.key === "Escape") { e.preventDefault(); dismiss(); }
}

function onBeforeInput(e) {
  if (e.inputType === "historyUndo" || e.inputType === "historyRedo") {
    e.preventDefault();
    e.inputType === "historyUndo" ? undo() : redo();
    return;
  }
  if (e.inputType === "insertParagraph" || e.inputType === "insertLineBreak") {
    // Our own newline: browsers add placeholder newlines and <br>s of their own at the end of a text.
    e.preventDefault();
    const sel = getSelection();
    if (!sel.rangeCount) return;
    const r = sel.getRangeAt(0);
    const a = offsetOf(r.startContainer, r.startOffset), b = offsetOf(r.endContainer, r.endOffset);
    pushUndo();
    if (isOpen()) dismiss();
    replaceText(a, b, { text: "\n" });
    W.editEnd = caretOffset();
    saveSoon();
    return;
  }
  // One undo step per burst of typing: a new one after a pause, a new line, a switch between typing
  // and deleting, or a jump of the cursor.
  const kind = e.inputType.startsWith("delete") ? "delete" : "insert";
  const now = Date.now();
  if (kind !== W.lastKind || now - W.lastEdit > 1000 || caretOffset() !== W.editEnd) pushUndo();
  W.lastKind = kind;
  W.lastEdit = now;
}

function onInput(e) {
  if (isOpen()) dismiss();  // the text the suggestions continue has changed
  if (!e.isComposing) {
    const segs = readDoc();
    if (!isCanonical(segs)) {
      const caret = caretOffset();
      renderDoc(segs);
      if (caret !== null) setCaret(caret);
    }
  }
  W.editEnd = caretOffset();
  saveSoon();
}

function download(ext) {
  const text = docText(readDoc());
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: ext === "md" ? "text/markdown" : "text/plain" }));
  a.download = "document." + ext;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

doc.addEventListener("keydown", onKeyDown);
doc.addEventListener("beforeinput", onBeforeInput);
doc.addEventListener("input", onInput);
doc.addEventListener("mousemove", onHover);
doc.addEventListener("click", onHover);
document.addEventListener("selectionchange", onSelectionChange);
$("suggestions").addEventListener("keydown", (e) => {
  if (e.key === "ArrowDown") { e.preventDefault(); move(1); }
  else if (e.key === "ArrowUp") { e.preventDefault(); move(-1); }
  else if ((e.key === "Enter" || e.key === " ") && W.active >= 0) { e.preventDefault(); pick(W.active); }
  else if (e.key === "Escape") { e.preventDefault(); dismiss(); doc.focus(); setCaret(W.at); }
});
for (const id of ["suggest", "undo", "redo", "again", "dismiss"]) {
  $(id).addEventListener("mousedown", (e) => e.preventDefault());  // the caret stays where it is
}
$("suggest").addEventListener("click", suggest);
$("again").addEventListener("click", () => { doc.focus(); setCaret(W.at); suggest(); });
$("dismiss").addEventListener("click", () => { dismiss(); doc.focus(); setCaret(W.at); });
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("marks").addEventListener("change", () => { showMarks(); save(); });
$("download-txt").addEventListener("click", () => download("txt"));
$("download-md").addEventListener("click", () => download("md"));
window.addEventListener("pagehide", save);
load();
