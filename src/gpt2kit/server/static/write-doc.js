// Write mode's document: the segments <-> the contenteditable, and the cursor as a character offset.
// The document is a list of segments, {text} for the user's own text and {text, id, start} for text the
// model wrote (a slice of suggestion `id` in W.models, write.js's state).
"use strict";
const doc = $("doc");

// --- the document: DOM <-> segments -----------------------------------------------------------

// Text pieces of the DOM in order: [{node, text, span}] (a <br> is a newline; span: the model span it is in).
function pieces() {
  const out = [];
  const walk = (node, span) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) out.push({ node: child, text: child.data, span });
      else if (child.nodeName === "BR") out.push({ node: child, text: "\n", span });
      else if (child.nodeType === Node.ELEMENT_NODE) {
        // a block a browser made on Enter starts a new line
        if (/^(DIV|P)$/.test(child.nodeName) && out.length && !out[out.length - 1].text.endsWith("\n")) out.push({ node: child, text: "\n", span });
        walk(child, child.classList.contains("model") ? child : span);
      }
    }
  };
  walk(doc, null);
  // Chromium keeps a last <br> so an empty last line has a height; it is no text of the user's.
  if (out.length && out[out.length - 1].node.nodeName === "BR" && out[out.length - 1].node === doc.lastChild) out.pop();
  return out;
}

function original(span) {
  const m = W.models[span.dataset.id];
  return m ? m.text.slice(+span.dataset.start, +span.dataset.start + +span.dataset.len) : null;
}

// The DOM -> segments. A model span the user edited inside loses its mark; text typed just before or
// after one is the user's own and leaves the model's text marked.
function readDoc() {
  const segs = [];
  const add = (text, id, start) => {
    if (!text) return;
    const last = segs[segs.length - 1];
    if (last && id === undefined && last.id === undefined) last.text += text;
    else if (last && id !== undefined && last.id === id && last.start + last.text.length === start) last.text += text;
    else segs.push(id === undefined ? { text } : { text, id, start });
  };
  const ps = pieces();
  for (let i = 0; i < ps.length;) {
    const span = ps[i].span;
    let text = "";
    while (i < ps.length && ps[i].span === span) text += ps[i++].text;
    if (!span) { add(text); continue; }
    const orig = original(span), id = +span.dataset.id, start = +span.dataset.start;
    if (orig !== null && text === orig) add(text, id, start);
    else if (orig && text.startsWith(orig)) { add(orig, id, start); add(text.slice(orig.length)); }
    else if (orig && text.endsWith(orig)) { add(text.slice(0, text.length - orig.length)); add(orig, id, start); }
    else add(text);
  }
  return segs;
}

function docText(segs) { return segs.map((s) => s.text).join(""); }

function renderDoc(segs) {
  doc.textContent = "";
  segs = segs.filter((s) => s.text).reduce((out, s) => {  // the user's text in one piece between model slices
    const last = out[out.length - 1];
    if (last && last.id === undefined && s.id === undefined) last.text += s.text; else out.push({ ...s });
    return out;
  }, []);
  for (const s of segs) {
    if (s.id === undefined) { doc.append(document.createTextNode(s.text)); continue; }
    const span = document.createElement("span");
    span.className = "model";
    Object.assign(span.dataset, { id: s.id, start: s.start, len: s.text.length });
    span.textContent = s.text;
    doc.append(span);
  }
  // A last newline has no line of its own in a browser without something after it: a <br> (as the
  // browser itself adds) gives the cursor a place there. pieces() leaves it out of the text.
  if (segs.length && segs[segs.length - 1].text.endsWith("\n")) doc.append(document.createElement("br"));
}

// Is the DOM what renderDoc(segs) would make? (If not, an edit changed a model span: re-render.)
function isCanonical(segs) {
  const nodes = [...doc.childNodes].filter((n) => !(n.nodeName === "BR" && n === doc.lastChild));
  if (nodes.length !== segs.length) return false;
  return segs.every((s, i) => {
    const n = nodes[i];
    return s.id === undefined ? n.nodeType === Node.TEXT_NODE && n.data === s.text
      : n.nodeName === "SPAN" && +n.dataset.id === s.id && +n.dataset.start === s.start && n.textContent === s.text;
  });
}

// --- the caret as a character offset into the document's text --------------------------------

function offsetOf(container, off) {
  const r = document.createRange();
  r.setStart(doc, 0);
  r.setEnd(container, off);
  let n = 0;
  for (const p of pieces()) {
    if (p.node === container && p.node.nodeType === Node.TEXT_NODE) return n + off;
    const parent = p.node.parentNode;
    const inside = p.node.nodeType === Node.TEXT_NODE ? r.comparePoint(p.node, p.node.length) === 0
      : r.comparePoint(parent, [...parent.childNodes].indexOf(p.node) + 1) === 0;
    if (!inside) return n;
    n += p.text.length;
  }
  return n;
}

function caretOffset() {
  const sel = getSelection();
  if (!sel.rangeCount || !doc.contains(sel.focusNode)) return null;
  return offsetOf(sel.focusNode, sel.focusOffset);
}

function setCaret(offset) {
  const r = document.createRange();
  let n = 0, placed = false;
  for (const p of pieces()) {
    if (p.node.nodeType === Node.TEXT_NODE && offset <= n + p.text.length) {
      r.setStart(p.node, offset - n); placed = true; break;
    }
    n += p.text.length;
  }
  if (!placed) r.setStart(doc, doc.childNodes.length);
  r.collapse(true);
  const sel = getSelection();
  sel.removeAllRanges();
  sel.addRange(r);
  W.caret = offset;
}

// Replace the document's text from `start` to `end` with the segment `seg`, and put the cursor after it.
function replaceText(start, end, seg) {
  const segs = [];
  let n = 0, placed = false;
  const put = () => { if (!placed) { segs.push(seg); placed = true; } };
  for (const s of readDoc()) {
    const a = n, b = n + s.text.length;
    n = b;
    if (b <= start) { segs.push(s); continue; }
    if (a >= end) { put(); segs.push(s); continue; }
    // s overlaps the range: keep its part before start and after end (a model slice keeps its place)
    if (a < start) segs.push({ ...s, text: s.text.slice(0, start - a) });
    put();
    if (b > end) segs.push({ ...s, text: s.text.slice(end - a), ...(s.id !== undefined ? { start: s.start + end - a } : {}) });
  }
  put();
  renderDoc(segs);
  doc.focus();
  setCaret(start + seg.text.length);
  W.lastKind = "";
}
