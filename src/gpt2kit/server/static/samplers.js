// Generate mode's "More samplers" (issue 29) and watermark key (issue 31). Every sampler starts at its
// off value (SamplingSettings' default, gpt2kit/options.py); a request carries only the fields the user
// changed, so a server that lacks one is never sent it by accident. Uses app.js's $.
"use strict";

// The one-line help of each setting: gpt2kit/samplers/help.py's HELP, copied so the page works offline
// (tests/test_playground_samplers.py checks the copy against it).
const SAMPLER_HELP = {
  min_p: "min-p: keep the tokens at least min_p times as likely as the likeliest one; 0 = off",
  typical_p: "locally typical sampling (Meister et al.): keep the tokens whose surprise is closest to the " +
             "expected surprise, up to this much probability; 1 = off",
  epsilon_cutoff: "epsilon-sampling (Hewitt et al. 2022): drop the tokens less likely than this; 0 = off",
  eta_cutoff: "eta-sampling (Hewitt et al. 2022): drop the tokens less likely than this epsilon, lowered " +
              "where the model is unsure (high entropy); 0 = off",
  top_n_sigma: "top-n-sigma: keep the logits within n standard deviations of the largest; 0 = off",
  mirostat: "2 = mirostat v2: truncate to hold the text's surprise near mirostat_tau, in place of top-k, " +
            "top-p and the other truncations; 0 = off",
  mirostat_tau: "mirostat's target surprise, in bits per token (higher: more varied text)",
  mirostat_eta: "mirostat's learning rate: how fast it follows the surprise it observes",
  dry_multiplier: "DRY ('don't repeat yourself'): penalise the token that would extend a repeat of earlier " +
                  "text, by this times dry_base ** (repeat length - dry_allowed_length); 0 = off",
  dry_base: "DRY: how fast the penalty grows with each further repeated token",
  dry_allowed_length: "DRY: repeats up to this many tokens go unpenalised",
  dry_penalty_last_n: "DRY: how many of the latest tokens it searches for repeats; -1 = all of them",
  dry_sequence_breakers: "DRY: texts a repeat never runs across (new lines, colons, quotes, asterisks)",
  xtc_threshold: "XTC (exclude top choices): tokens at least this likely are the top choices; above 0.5 = off",
  xtc_probability: "XTC: the chance, each token, of removing every top choice but the least likely " +
                   "(when there are two or more); 0 = off",
  penalty_alpha: "contrastive search (Su et al. 2022): pick among the top_k tokens by probability minus " +
                 "this times the likeness to the text so far; 0 = off",
};

const DRY_BREAKERS = ["\n", ":", "\"", "*"];  // SamplingSettings.dry_sequence_breakers (llama.cpp's)

// [group, [[field, label, off value, step, min, max], ...]]: the off values are SamplingSettings' defaults.
const SAMPLER_GROUPS = [
  ["Truncation", [["min_p", "Min-p", 0, 0.01, 0, 1], ["typical_p", "Typical-p", 1, 0.01, 0, 1],
                  ["top_n_sigma", "Top-n-σ", 0, 0.1, 0], ["epsilon_cutoff", "ε cutoff", 0, 0.0001, 0, 1],
                  ["eta_cutoff", "η cutoff", 0, 0.0001, 0, 1]]],
  ["Mirostat", [["mirostat", "Mirostat", 0], ["mirostat_tau", "τ (tau)", 5, 0.1, 0, 100],
                ["mirostat_eta", "η (eta)", 0.1, 0.01, 0, 1]]],
  ["DRY", [["dry_multiplier", "Multiplier", 0, 0.1, 0], ["dry_base", "Base", 1.75, 0.05, 1],
           ["dry_allowed_length", "Allowed length", 2, 1, 0], ["dry_penalty_last_n", "Last n tokens", -1, 1, -1],
           ["dry_sequence_breakers", "Sequence breakers", DRY_BREAKERS]]],
  ["XTC", [["xtc_threshold", "Threshold", 0.1, 0.01, 0, 1], ["xtc_probability", "Probability", 0, 0.05, 0, 1]]],
  ["Contrastive search (uses top-k as its candidates)", [["penalty_alpha", "Penalty α", 0, 0.05, 0, 1]]],
];

// Breakers as the user writes them: separated by commas or new lines, with \n, \t, \, and \\ for a new
// line, a tab, a comma and a backslash inside one.
function parseBreakers(text) {
  const items = [];
  let item = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length) {
      const e = text[++i];
      item += e === "n" ? "\n" : e === "t" ? "\t" : e;
    } else if (c === "," || c === "\n") {
      items.push(item); item = "";
    } else item += c;
  }
  items.push(item);
  return items.map((s) => s.replace(/^ +| +$/g, "")).filter((s) => s !== "");
}

function showBreakers(list) {
  return list.map((s) => s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/,/g, "\\,"))
    .join(", ");
}

function samplerInput([name, label, off, step, min, max]) {
  let input;
  if (name === "mirostat") {
    input = document.createElement("select");
    input.append(new Option("off", "0"), new Option("v2", "2"));
  } else if (Array.isArray(off)) {
    input = document.createElement("textarea");
    input.rows = 1;
  } else {
    input = document.createElement("input");
    input.type = "number"; input.step = step;
    if (min !== undefined) input.min = min;
    if (max !== undefined) input.max = max;
  }
  input.id = name;
  input.dataset.off = Array.isArray(off) ? showBreakers(off) : String(off);
  input.value = input.dataset.off;
  input.setAttribute("aria-describedby", name + "-help");
  input.addEventListener("input", countChanged);
  const help = document.createElement("small");
  help.id = name + "-help"; help.className = "help"; help.textContent = SAMPLER_HELP[name];
  const text = document.createElement("label");
  text.htmlFor = name; text.textContent = label;
  text.title = name;  // the API's name for it
  const wrap = document.createElement("div");
  wrap.className = "field";
  wrap.append(text, input, help);
  return wrap;
}

function buildSamplers() {
  const box = $("sampler-controls");
  for (const [legendText, fields] of SAMPLER_GROUPS) {
    const set = document.createElement("fieldset");
    const legend = document.createElement("legend"); legend.textContent = legendText;
    set.append(legend, ...fields.map(samplerInput));
    box.append(set);
  }
}

// The value a changed control stands for, or undefined while it is at its off value (or empty).
function changedValue(input) {
  const off = input.dataset.off;
  if (input.id === "dry_sequence_breakers") {
    const list = parseBreakers(input.value);
    return JSON.stringify(list) === JSON.stringify(parseBreakers(off)) ? undefined : list;
  }
  if (input.value.trim() === "" || +input.value === +off) return undefined;
  return +input.value;
}

function samplerInputs() { return [...document.querySelectorAll("#sampler-controls [data-off]")]; }

// The fields for the request body: only the samplers the user changed.
function samplerFields() {
  const fields = {};
  for (const input of samplerInputs()) {
    const v = changedValue(input);
    if (v !== undefined) fields[input.id] = v;
  }
  return fields;
}

function countChanged() {
  let n = 0;
  for (const input of samplerInputs()) {
    const on = changedValue(input) !== undefined;
    input.closest(".field").classList.toggle("changed", on);
    n += on;
  }
  $("samplers-on").textContent = n ? `(${n} changed)` : "";
}

function resetSamplers() {
  for (const input of samplerInputs()) input.value = input.dataset.off;
  countChanged();
}

// {watermark: {key}} when a key is typed (the server's other watermark fields keep transformers' defaults).
function watermarkFields() {
  const text = $("watermark_key").value.trim();
  if (text === "") return {};
  const key = Number(text);
  if (!Number.isSafeInteger(key)) throw new Error("The watermark key must be a whole number, e.g. 15485863.");
  return { watermark: { key } };
}

buildSamplers();
$("samplers-reset").addEventListener("click", resetSamplers);
