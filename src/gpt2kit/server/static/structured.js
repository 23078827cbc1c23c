// Generate mode's "Structured output" (issue 30): the shape every generated token must keep. JSON goes as
// OpenAI's response_format, a regex or a list of choices as vLLM's structured_outputs. A schema that is
// not JSON is refused here, before anything is sent; the server's own 400s show in the page. Uses app.js's $.
"use strict";

const STRUCTURED = {
  none: { label: "", help: "Free text." },
  json_schema: { label: "JSON schema", help: "The output is JSON that validates against this schema " +
                 "(response_format json_schema).",
                 example: JSON.stringify({ type: "object", properties: { name: { type: "string", maxLength: 20 },
                   age: { type: "integer", minimum: 0, maximum: 120 } }, required: ["name", "age"] }, null, 2) },
  json_object: { label: "", help: "The output is one JSON object, of any shape (response_format json_object)." },
  regex: { label: "Regular expression", help: "The whole output matches this regular expression " +
           "(structured_outputs.regex).", example: "[A-Z][a-z]+ (loves|hates) [A-Z][a-z]+\\." },
  choice: { label: "Choices, one per line", help: "The output is exactly one of these texts " +
            "(structured_outputs.choice).", example: "yes\nno\nmaybe" },
};
const structuredTexts = {};  // each kind keeps its own text while the user switches between them

function showStructured() {
  const kind = $("so_kind").value;
  const spec = STRUCTURED[kind];
  $("so_text_label").hidden = !spec.label;
  $("so_text_label").firstChild.textContent = spec.label + " ";
  if (spec.label) $("so_text").value = structuredTexts[kind] ?? spec.example;
  $("so_text").setAttribute("aria-invalid", "false");
  $("so_help").textContent = spec.help;
  $("structured-on").textContent = kind === "none" ? "" : `(${$("so_kind").selectedOptions[0].text})`;
}

function refuse(message) {
  $("structured").open = true;
  $("so_text").setAttribute("aria-invalid", "true");
  $("so_text").focus();
  throw new Error(message);
}

// The fields for the request body; throws (and marks the box) when the text cannot be sent as it is.
function structuredFields() {
  const kind = $("so_kind").value;
  const text = $("so_text").value;
  $("so_text").setAttribute("aria-invalid", "false");
  if (kind === "none") return {};
  if (kind === "json_object") return { response_format: { type: "json_object" } };
  if (kind === "json_schema") {
    let schema;
    try { schema = JSON.parse(text); } catch (e) { refuse("The JSON schema is not valid JSON: " + e.message); }
    if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
      refuse("A JSON schema is a JSON object, e.g. {\"type\": \"object\"}.");
    }
    return { response_format: { type: "json_schema", json_schema: { name: "playground", schema } } };
  }
  if (kind === "regex") {
    if (!text) refuse("Write the regular expression the output must match, or choose None.");
    return { structured_outputs: { regex: text } };
  }
  const choices = text.split("\n").filter((c) => c !== "");
  if (!choices.length) refuse("Write the choices, one per line, or choose None.");
  return { structured_outputs: { choice: choices } };
}

$("so_kind").addEventListener("change", showStructured);
$("so_text").addEventListener("input", () => { structuredTexts[$("so_kind").value] = $("so_text").value; });
showStructured();
