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
                 status: int = 400, kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind
        self.headers = headers or {}


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    def clean(text: str | None) -> str | None:  # an echoed lone surrogate must not break the reply
        return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")

    return {"error": {"message": clean(message), "type": kind, "param": clean(param), "code": code}}


@dataclass
class ChatRequest:
    """A validated ``/v1/chat/completions`` request (the fields this server honours).

    Of OpenAI's other fields, each is honoured or refused, never ignored in silence:

    * ``seed`` (an integer in [0, 2**63)) is honoured: a local model reseeds before the request's
      drafts, and a sampled request with a seed is drafted alone, since the draws of a batch are
      shared; an upstream is given the seed.
    * ``stop`` (a string or up to 4 non-empty strings) is honoured: every answer is cut before the
      earliest stop sequence *before* the conscience reviews it, so the verdict reads exactly the
      text that may be released.
    * ``tools`` / ``functions`` (non-empty), ``tool_choice`` / ``function_call`` other than
      ``"none"`` / ``"auto"`` are refused (400): the conscience reviews text answers, and a tool
      call is not one.
    * ``response_format`` other than ``{"type": "text"}`` is refused (400): JSON modes need
      constrained decoding, which this server does not do.
    * ``top_p`` is honoured like ``temperature`` (for the drafts and their rewrites).
    * ``presence_penalty`` / ``frequency_penalty`` other than 0 and a non-empty ``logit_bias`` are
      refused (400): the local generator has no such knobs.
    * ``user``, ``metadata`` and similar bookkeeping fields do not change the answer.
    """

    messages: list[dict]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None  # None: the server's configured temperature
    top_p: float | None = None  # None: the server's (1.0)
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
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


MAX_STOPS, MAX_STOP_CHARS = 4, 256
SEED_RANGE = (0, 2**63 - 1)  # torch and vLLM both take a 64-bit seed


def _stops(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None or value == []:  # no stop sequences, as OpenAI reads both
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(x, str) for x in stops):
        raise RequestError(f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop")
    if not all(0 < len(x) <= MAX_STOP_CHARS for x in stops):
        raise RequestError(f"each 'stop' sequence must have 1 to {MAX_STOP_CHARS} characters", "stop")
    return tuple(dict.fromkeys(stops))


def _refuse_unsupported(body: dict) -> None:
    """Fields this server cannot honour are refused, never ignored (see :class:`ChatRequest`)."""
    for key in ("tools", "functions"):
        value = body.get(key)
        if value not in (None, []):
            raise RequestError(f"'{key}' is not supported: the conscience reviews text answers, and a tool call is "
                               "not one (send no tools)", key, "unsupported_parameter")
    for key in ("tool_choice", "function_call"):
        value = body.get(key)
        if value not in (None, "none", "auto"):
            raise RequestError(f"'{key}' is not supported: this server answers in text only", key,
                               "unsupported_parameter")
    for key in ("presence_penalty", "frequency_penalty"):
        value = body.get(key)
        if value is not None and value != 0:
            raise RequestError(f"'{key}' other than 0 is not supported, got {_short(value)}", key,
                               "unsupported_parameter")
    if body.get("logit_bias") not in (None, {}):
        raise RequestError("'logit_bias' is not supported (send none or {})", "logit_bias", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        raise RequestError(f"'response_format' {_short(kind if isinstance(kind, str) else fmt)} is not supported: "
                           "JSON modes need constrained decoding, which this server does not do (only "
                           "{'type': 'text'})", "response_format", "unsupported_parameter")


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
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
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
    _refuse_unsupported(body)
    return ChatRequest(
        messages=messages, model=model, max_tokens=max_tokens,
        temperature=temperature, top_p=top_p, stream=stream,
        include_usage=include_usage, logprobs=logprobs, top_logprobs=top,
        seed=_integer(body, "seed", *SEED_RANGE), stop=_stops(body),
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
