"""/v1/chat/completions for clients that speak nothing else.

GPT-2 is not a chat model. A Jinja template (transformers' chat-template convention: `messages`,
`add_generation_prompt`, `raise_exception`, `bos_token`, `eos_token`) turns the conversation into plain
text, the model continues it as a completion, and the reply ends at the next turn marker (stop strings).
The default template is assets/chat_template.jinja; `serve --chat-template FILE` replaces it. Templates
render in jinja2's immutable sandbox: a template can format, not reach into Python.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import UserError
from ..generation import Piece, Sample
from ..paths import CHAT_TEMPLATE
from ..sequence import Request
from .completions import APIError, Completion, finish_reason
from .protocol import ChatMessage, ChatRequest, CompletionRequest, SamplingFields

EOT = "<|endoftext|>"
DEFAULT_TRANSCRIPT = "gpt2kit's plain 'User: ... Assistant:' transcript"  # what no --chat-template gives


class ChatTemplate:
    """A compiled chat template and the stop strings that end a reply."""

    def __init__(self, path: str | Path | None, stops: tuple[str, ...]):
        self.path = Path(path).expanduser() if path else CHAT_TEMPLATE
        source = _read_template(self.path)
        # transformers' settings for chat templates, so that a template written for it renders the same here
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        try:
            self.template = env.from_string(source)
        except TemplateSyntaxError as e:
            raise UserError(
                f"the chat template {self.path} is not valid Jinja: {e.message} (line {e.lineno}); "
                f"fix it, or leave out --chat-template for {DEFAULT_TRANSCRIPT}"
            ) from None
        except TemplateError as e:
            raise UserError(
                f"the chat template {self.path} is not valid Jinja: {e}; "
                f"fix it, or leave out --chat-template for {DEFAULT_TRANSCRIPT}"
            ) from None
        self.stops = tuple(s for s in stops if s)

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, bos_token=EOT, eos_token=EOT)
        except _TemplateRefusal as e:
            raise APIError(400, f"the chat template refused these messages: {e}", param="messages") from None
        except (TemplateError, TypeError, ValueError) as e:  # a template that fails on these messages
            raise APIError(400, f"the chat template could not render these messages: {e}", param="messages") from None


def _read_template(path: Path) -> str:
    """The template's text, or one line saying which file could not be read, why, and what to do."""
    fix = f"pass --chat-template a readable Jinja file, or leave it out for {DEFAULT_TRANSCRIPT}"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"the chat template {path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise UserError(f"the chat template {path} is a folder, not a file; {fix}") from None
    except PermissionError:
        raise UserError(
            f"cannot read the chat template {path}: permission denied; make it readable (chmod +r) or {fix}"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read the chat template {path}: {e.strerror or e}; {fix}") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"the chat template {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start}); save it as UTF-8, or {fix}"
        ) from None


class _TemplateRefusal(Exception):
    pass


def _raise_exception(message: str) -> None:
    """transformers' templates call raise_exception() on conversations they do not accept."""
    raise _TemplateRefusal(message)


def plain_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the template sees them: role and text (OpenAI's text parts joined)."""
    out = []
    for i, m in enumerate(messages):
        parts = m.content if isinstance(m.content, list) else [m.content or ""]
        texts = []
        for part in parts:
            if not isinstance(part, str) and (part.type != "text" or part.text is None):
                raise APIError(
                    400, f"messages[{i}] has a {part.type!r} part; GPT-2 reads text only", param=f"messages.{i}.content"
                )
            texts.append(part if isinstance(part, str) else part.text)
        out.append({"role": m.role, "content": "".join(texts), **({"name": m.name} if m.name else {})})
    return out


def as_completion(body: ChatRequest, template: ChatTemplate) -> CompletionRequest:
    """The completion request a chat request is: the rendered conversation as the prompt."""
    if body.tools:
        raise APIError(400, "tools are not available: GPT-2 calls no tools", param="tools")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    # Every shared field as it was given (its nested models as they are: strict mode takes no dicts for them),
    # and only those given, so that a default is still a default (repeat_penalty beside repetition_penalty).
    fields = {name: getattr(body, name) for name in SamplingFields.model_fields if name in body.model_fields_set}
    return CompletionRequest(
        **fields,
        prompt=template.render(plain_messages(body.messages)),
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )


class ChatLayout:
    """Results in /v1/chat/completions' layout."""

    def __init__(self, completion: Completion):
        self.c = completion
        self.id = "chatcmpl-" + completion.id.removeprefix("cmpl-")

    def logprobs(self, steps) -> dict | None:
        if self.c.body.logprobs is None:
            return None
        tok, top_n = self.c.lm.tokenizer, self.c.body.logprobs

        def entry(token: int, logprob: float) -> dict:
            return {"token": tok.decode([token]), "logprob": logprob, "bytes": list(tok.decode_bytes([token]))}

        return {
            "content": [
                {**entry(st.token, st.logprob), "top_logprobs": [entry(t, v) for t, v in (st.top or [])[:top_n]]}
                for st in steps
            ]
        }

    async def response(self, req: Request) -> dict:
        chosen, candidates = await self.c.collect(req)
        choices = [
            {
                "index": ci,
                "message": {"role": "assistant", "content": s.completion},
                "logprobs": self.logprobs(s.steps),
                "finish_reason": finish_reason(s),
            }
            for ci, s in sorted(chosen.items())
        ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.c.model_name,
            "choices": choices,
            "usage": self.c.usage(candidates.values()),
        }

    async def stream(self, req: Request) -> AsyncIterator[str]:
        """Server-sent events: the assistant's role for each choice, content deltas, a finish per choice,
        usage if asked (stream_options.include_usage), [DONE]."""
        created = int(time.time())
        samples: list[Sample] = []
        for ci in range(len(self.c.seqs)):
            yield self._chunk(
                created,
                [{"index": ci, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
            )
        async for ev in self.c.events(req):
            if isinstance(ev, Exception):
                yield f"data: {json.dumps({'error': {'message': str(ev), 'type': 'server_error'}})}\n\n"
                break
            ci = self.c.candidate_of(ev)
            if isinstance(ev, Piece):
                yield self._chunk(
                    created,
                    [
                        {
                            "index": ci,
                            "delta": {"content": ev.text},
                            "logprobs": self.logprobs(ev.steps),
                            "finish_reason": None,
                        }
                    ],
                )
            elif isinstance(ev, Sample):
                samples.append(ev)
                yield self._chunk(
                    created, [{"index": ci, "delta": {}, "logprobs": None, "finish_reason": finish_reason(ev)}]
                )
        if self.c.include_usage():
            yield self._chunk(created, [], usage=self.c.usage(samples))
        yield "data: [DONE]\n\n"

    def _chunk(self, created: int, choices: list, usage: dict | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.c.model_name,
            "choices": choices,
        }
        if self.c.include_usage():
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
