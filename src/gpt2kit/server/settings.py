"""A request's sampling fields -> the library's SamplingSettings, with every refusal a 400 naming its field.

The samplers come under their vLLM and llama.cpp names (protocol.SamplingFields); the constraint from
exactly one of OpenAI's response_format, vLLM's structured_outputs or guided_* fields, or llama.cpp's
json_schema / grammar; the watermark from the `watermark` extension. SamplingSettings checks the ranges
(the library's one rule) and the constraint is compiled here, so a bad one is refused before any work.
"""

from __future__ import annotations

import re

from ..constraints.compiler import compile_constraint
from ..constraints.spec import Constraint
from ..constraints.vocabulary import vocabulary_for
from ..errors import UserError
from ..options import GenerateOptions, SamplingSettings
from ..tokenizer import Tokenizer
from .errors import APIError
from .protocol import SamplingFields

SAMPLERS = GenerateOptions.SAMPLERS  # the request fields of the same names (protocol.SamplingFields)
_WATERMARK = {
    "watermark_key": "key",
    "watermark_gamma": "gamma",
    "watermark_delta": "delta",
    "watermark_context_width": "context_width",
}


def sampling_settings(body: SamplingFields, tokenizer: Tokenizer, logit_bias: tuple) -> SamplingSettings:
    """The settings `body` asks for, its constraint compiled for `tokenizer`; an APIError(400) naming the field."""
    constraint, where = constraint_of(body)
    repetition = _repetition_penalty(body)
    mark = body.watermark
    try:
        settings = SamplingSettings(
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            repetition_penalty=repetition,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=logit_bias,
            constraint=constraint,
            **{name: getattr(body, name) for name in SAMPLERS},
            **(
                {f"watermark_{k}": getattr(mark, k) for k in ("key", "gamma", "delta", "context_width")} if mark else {}
            ),
        )
    except UserError as e:
        raise APIError(400, str(e), param=_param_of(str(e), body)) from None
    if constraint is not None:
        try:
            compile_constraint(constraint, vocabulary_for(tokenizer))  # cached by content: the engine's check is free
        except UserError as e:
            raise APIError(400, f"{where}: {e}", param=where) from None
    return settings


def _repetition_penalty(body: SamplingFields) -> float:
    """repetition_penalty, or llama.cpp's repeat_penalty; both only when they agree."""
    if body.repeat_penalty is None:
        return body.repetition_penalty
    if "repetition_penalty" in body.model_fields_set and body.repetition_penalty != body.repeat_penalty:
        raise APIError(
            400,
            f"repeat_penalty ({body.repeat_penalty}) and repetition_penalty "
            f"({body.repetition_penalty}) are one setting: send one of them",
            param="repeat_penalty",
        )
    return body.repeat_penalty


def _param_of(message: str, body: SamplingFields) -> str | None:
    """The request field a SamplingSettings message names (its first word is the setting's name)."""
    word = m.group(0) if (m := re.match(r"\w+", message)) else ""
    if word in _WATERMARK:
        return f"watermark.{_WATERMARK[word]}"
    if word == "repetition_penalty" and body.repeat_penalty is not None:
        return "repeat_penalty"
    return word if word in SamplingFields.model_fields else None


def constraint_of(body: SamplingFields) -> tuple[Constraint | None, str]:
    """The one constraint `body` asks for and the field it came in ("" for none); two forms at once are a 400."""
    forms = [(where, build) for where, build in _forms(body)]
    if len(forms) > 1:
        raise APIError(
            400, f"one constraint per request: {forms[0][0]} and {forms[1][0]} were both given", param=forms[1][0]
        )
    if not forms:
        return None, ""
    where, build = forms[0]
    try:
        return build(), where
    except UserError as e:
        raise APIError(400, f"{where}: {e}", param=where) from None


def _forms(body: SamplingFields):
    """(field, a function making its Constraint) for every structured-output field the body sets."""
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        if fmt.json_schema is not None:
            raise APIError(
                400,
                "response_format: json_schema goes with type json_schema, not json_object",
                param="response_format.json_schema",
            )
        yield "response_format", Constraint.json_object
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise APIError(
                400,
                "response_format of type json_schema needs its json_schema: {name, schema}",
                param="response_format.json_schema",
            )
        yield "response_format.json_schema.schema", lambda: Constraint.json_schema(fmt.json_schema.schema_)
    elif fmt is not None and fmt.json_schema is not None:
        raise APIError(
            400,
            "response_format: json_schema goes with type json_schema, not text",
            param="response_format.json_schema",
        )
    so = body.structured_outputs
    if so is not None:
        given = [
            (f"structured_outputs.{name}", build)
            for name, value, build in (
                ("json", so.json_, lambda: Constraint.json_schema(so.json_)),
                ("regex", so.regex, lambda: Constraint.regex(so.regex)),
                ("choice", so.choice, lambda: Constraint.choice(so.choice)),
                ("grammar", so.grammar, lambda: Constraint.grammar(so.grammar)),
                ("json_object", so.json_object or None, Constraint.json_object),
            )
            if value is not None
        ]
        if not given:
            raise APIError(
                400,
                "structured_outputs names none of json, regex, choice, grammar, json_object",
                param="structured_outputs",
            )
        yield from given
    for name, build in (
        ("guided_json", lambda: Constraint.json_schema(body.guided_json)),
        ("guided_regex", lambda: Constraint.regex(body.guided_regex)),
        ("guided_choice", lambda: Constraint.choice(body.guided_choice)),
        ("guided_grammar", lambda: Constraint.grammar(body.guided_grammar)),
        ("json_schema", lambda: Constraint.json_schema(body.json_schema)),
        ("grammar", lambda: Constraint.grammar(body.grammar)),
    ):
        if getattr(body, name) is not None:
            yield name, build
