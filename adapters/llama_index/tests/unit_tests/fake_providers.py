"""A loopback HTTP server standing in for OpenAI (Chat Completions and Responses) and
Anthropic (Messages).

It records each request body, checks it with the provider SDK's own request types
(``openai.types.chat.ChatCompletionMessageParam``, ``openai.types.responses.ResponseInputParam``,
``anthropic.types.MessageParam``) and answers as the real API would: 400 for a request the
types refuse, else the next scripted turn rendered in that API's response format.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from openai.types.responses import ResponseInputParam
from pydantic import ConfigDict, TypeAdapter, ValidationError

STRICT = ConfigDict(extra="forbid")
REQUEST_TYPES: dict[str, tuple[str, TypeAdapter[Any]]] = {
    "/v1/chat/completions": ("messages", TypeAdapter(list[ChatCompletionMessageParam], config=STRICT)),
    "/v1/responses": ("input", TypeAdapter(ResponseInputParam, config=STRICT)),
    "/v1/messages": ("messages", TypeAdapter(list[MessageParam], config=STRICT)),
}


def problems(path: str, body: dict[str, Any]) -> str | None:
    """Why the provider at ``path`` refuses ``body`` by its SDK's request types, or None."""
    key, adapter = REQUEST_TYPES[path]
    if path == "/v1/responses" and isinstance(body.get(key), str):
        return None  # `input` may be a plain string (one user message)
    try:
        _drain(adapter.validate_python(_with_api_defaults(path, body[key])))
    except (ValidationError, KeyError) as exc:
        return str(exc)[:4000]
    return None


def _with_api_defaults(path: str, items: Any) -> Any:
    """``items`` with the fields the API fills in itself and the SDK types require.

    The Responses API accepts an earlier assistant message without its ``status`` (as
    langchain-openai sends it); ``ResponseOutputMessageParam`` requires one.
    """
    if path != "/v1/responses" or not isinstance(items, list):
        return items
    return [
        {"status": "completed", **item}
        if isinstance(item, dict) and item.get("type") == "message" and item.get("role") == "assistant"
        else item
        for item in items
    ]


def _drain(value: Any) -> Any:
    """Validate lazily checked iterables (the SDKs type lists as ``Iterable[...]``)."""
    if isinstance(value, Iterator):  # pydantic's lazy ValidatorIterator
        return [_drain(item) for item in value]
    if isinstance(value, dict):
        return {key: _drain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_drain(item) for item in value]
    return value


@dataclass
class Call:
    """A scripted turn that calls the notebook tool."""

    code: str
    id: str


@dataclass
class Say:
    """A scripted closing answer."""

    text: str


@dataclass
class FakeProvider:
    """The server; ``url`` is its base URL, ``requests`` the (path, body) pairs it got."""

    script: list[Call | Say]
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                provider.requests.append((self.path, body))
                problem = problems(self.path, body)
                if problem is not None:
                    provider.refused.append(problem)
                    self._answer(400, {"error": {"message": problem, "type": "invalid_request_error"}})
                else:
                    self._answer(200, render(self.path, provider.script.pop(0), body))

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL of the fake API (ends in /v1)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def anthropic_url(self) -> str:
        """Base URL as Anthropic clients take it (they add /v1 themselves)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        """Stop the server."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def render(path: str, turn: Call | Say, body: dict[str, Any]) -> dict[str, Any]:
    """``turn`` as the API at ``path`` answers it."""
    model = body.get("model", "model")
    arguments = json.dumps({"code": turn.code}) if isinstance(turn, Call) else ""
    usage_chat = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    if path == "/v1/chat/completions":
        if isinstance(turn, Call):
            call = {
                "id": turn.id,
                "type": "function",
                "function": {"name": "notebook_executor", "arguments": arguments},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            message = {"role": "assistant", "content": turn.text}
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": "tool_calls" if isinstance(turn, Call) else "stop",
        }
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [choice],
            "usage": usage_chat,
        }
    if path == "/v1/responses":
        if isinstance(turn, Call):
            item = {
                "type": "function_call",
                "id": f"fc_{turn.id}",
                "call_id": turn.id,
                "name": "notebook_executor",
                "arguments": arguments,
                "status": "completed",
            }
        else:
            item = {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": turn.text, "annotations": []}],
            }
        return {
            "id": "resp_1",
            "object": "response",
            "created_at": 0,
            "model": model,
            "status": "completed",
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 1,
                "output_tokens": 1,
                "total_tokens": 2,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
    if isinstance(turn, Call):
        content = [
            {"type": "tool_use", "id": turn.id, "name": "notebook_executor", "input": {"code": turn.code}}
        ]
    else:
        content = [{"type": "text", "text": turn.text}]
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if isinstance(turn, Call) else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
