"""Request validation and response bodies in the shapes OpenAI clients expect.

Validation is done by hand rather than by pydantic so every malformed request gets a 400 in
OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``) naming the field.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant")
MAX_JSON_DEPTH = 64  # deeper nesting is refused (no chat request needs it)
# Below this a temperature divides the logits past float range and sampling returns NaN.
MIN_TEMPERATURE = 1e-3


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    def clean(text: str | None) -> str | None:  # an echoed lone surrogate must not break the reply
        return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")

    return {"error": {"message": clean(message), "type": kind, "param": clean(param), "code": code}}


@dataclass
class ChatRequest:
    """A validated ``/v1/chat/completions`` request (the fields this server honours)."""

    messages: list[dict]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None  # None: the server's configured temperature
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    extra: dict = field(default_factory=dict)


def _number(body: dict, key: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"'{key}' must be a finite number, got {_short(value)}", key)
    if not (lo < value if lo_open else lo <= value) or not value <= hi:
        raise RequestError(f"'{key}' must lie in {'(' if lo_open else '['}{lo}, {hi}], got {_short(value)}", key)
    return float(value)


def _short(value: Any, limit: int = 60) -> str:
    """A value for an error message: repr, cut (a 4,000-digit integer is not echoed whole)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _integer(body: dict, key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{key}' must be an integer, got {_short(value)}", key)
    if not lo <= value <= hi:
        raise RequestError(f"'{key}' must lie in [{lo}, {hi}], got {_short(value)}", key)
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _check_tree(value: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and strings that are not valid unicode
    (lone surrogates such as "\ud800" parse, but no tokenizer can encode them)."""
    stack = [(value, 1, "the body")]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(f"{where} holds invalid unicode (a lone surrogate)") from None
        elif isinstance(node, dict):
            for key, child in node.items():
                stack.append((key, depth + 1, where))
                named = depth == 1 and isinstance(key, str) and key.isprintable() and len(key) <= 40
                stack.append((child, depth + 1, f"'{key}'" if named else where))
        elif isinstance(node, list):
            stack.extend((child, depth + 1, where) for child in node)


def load_json_body(raw: bytes) -> Any:
    """``json.loads`` with every parser failure as a 400: bad bytes, bad syntax, NaN/Infinity,
    integers over Python's digit limit, nesting past the recursion limit."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    except RecursionError:
        raise RequestError(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's 4,300-digit limit
            raise RequestError("the body holds an integer with too many digits") from None
        raise RequestError(f"the body is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    _check_tree(body)
    return body


def _content(value: Any, where: str) -> str:
    """A message content: a string, or a list of text parts (images are not supported)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}.content[{j}] must be a text part {{'type': 'text', 'text': ...}}",
                                   f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def parse_messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list", "messages")
    messages = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", where)
        role = msg.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {list(ROLES)}, got {role!r}", f"{where}.role")
        if "content" not in msg or msg["content"] is None:
            raise RequestError(f"{where} lacks 'content'", f"{where}.content")
        messages.append({"role": "system" if role == "developer" else role, "content": _content(msg["content"], where)})
    if messages[-1]["role"] != "user":
        raise RequestError("the last message must come from the user", "messages")
    if not messages[-1]["content"].strip():
        raise RequestError("the last user message is empty", "messages")
    return messages


def parse_chat_request(raw: bytes, max_tokens_cap: int, max_logprobs: int) -> ChatRequest:
    """Parse and check a request body; raise :class:`RequestError` on anything malformed."""
    body = load_json_body(raw)
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    messages = parse_messages(body.get("messages"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", "model")
    n = _integer(body, "n", 1, 1000)
    if n not in (None, 1):
        raise RequestError("only n=1 is supported", "n")
    max_tokens = _integer(body, "max_completion_tokens", 1, max_tokens_cap)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, max_tokens_cap)
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None and 0 < temperature < MIN_TEMPERATURE:
        raise RequestError(f"'temperature' must be 0 (greedy) or lie in [{MIN_TEMPERATURE}, 2.0], got {temperature:g}",
                           "temperature")
    _number(body, "top_p", 0.0, 1.0, lo_open=True)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", "stream")
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    include_usage = options.get("include_usage", False)
    if include_usage is None:
        include_usage = False
    if not isinstance(include_usage, bool):
        raise RequestError(f"'stream_options.include_usage' must be true or false, got {_short(include_usage)}",
                           "stream_options.include_usage")
    logprobs = body.get("logprobs", False)
    if logprobs is None:
        logprobs = False
    if not isinstance(logprobs, bool):
        raise RequestError("'logprobs' must be true or false", "logprobs")
    top = _integer(body, "top_logprobs", 0, max_logprobs) or 0
    if top and not logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return ChatRequest(
        messages=messages, model=model, max_tokens=max_tokens,
        temperature=temperature, stream=stream,
        include_usage=include_usage, logprobs=logprobs, top_logprobs=top,
    )


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def chat_completion(cid: str, model: str, content: str, finish_reason: str, usage: dict,
                    conscience: dict | None, logprobs: list | None = None) -> dict:
    body = {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": {"content": logprobs} if logprobs is not None else None,
                     "finish_reason": finish_reason}],
        "usage": usage,
    }
    if conscience is not None:
        body["conscience"] = conscience
    return body


def stream_chunks(cid: str, model: str, content: str, finish_reason: str, usage: dict,
                  conscience: dict | None, include_usage: bool, piece_chars: int = 16) -> list[dict]:
    """The chunks of an already-reviewed answer: role, content pieces, finish (+ conscience)."""
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> dict:
        out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    chunks = [chunk({"role": "assistant", "content": ""})]
    for start in range(0, len(content), piece_chars):
        chunks.append(chunk({"content": content[start:start + piece_chars]}))
    last = chunk({}, finish_reason)
    if conscience is not None:
        last["conscience"] = conscience
    chunks.append(last)
    if include_usage:
        chunks.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": usage})
    return chunks
