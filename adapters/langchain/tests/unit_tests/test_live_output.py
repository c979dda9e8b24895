"""The tool streams a running cell's output as custom events, against a sandbox whose
kernel client (the boundary) replays a recorded message stream."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from langgraph.graph import START, MessagesState, StateGraph

from enclave_tools.kernel import KernelClient
from enclave_tools.protocol import ExecuteCall
from enclave_tools.sandbox import Sandbox
from langchain_enclave import EnclaveNotebookTool
from langchain_enclave.tools import LIVE_OUTPUT_EVENT


def msg(kind: str, **content: Any) -> dict[str, Any]:
    return {
        "header": {"msg_type": kind},
        "parent_header": {"msg_id": "m1"},
        "metadata": {},
        "content": content,
    }


RECORDED = [
    msg("stream", name="stdout", text="epoch 1\n"),
    msg("stream", name="stdout", text="epoch 2\n"),
    msg("execute_result", data={"text/plain": "'trained'"}, metadata={}, execution_count=1),
    msg("status", execution_state="idle"),
    msg("execute_reply", status="ok", execution_count=1),
]


class ReplayKernel(KernelClient):
    """Feeds the recorded messages to each call on a thread of its own, as the reader does."""

    def __init__(self) -> None:
        super().__init__(http=None)  # type: ignore[arg-type]  # nothing goes on the wire
        self.connected = True

    def execute(
        self,
        code: str,
        *,
        capture_limit: int,
        output_limit: int,
        rich_limit: int,
        listener: Any = None,
        caller: Any = None,
    ) -> ExecuteCall:
        call = ExecuteCall("m1", capture_limit, output_limit, rich_limit=rich_limit, listener=listener)
        self._done = threading.Event()

        def feed() -> None:
            for message in RECORDED:
                call.feed(message)
            self._done.set()

        threading.Thread(target=feed, daemon=True).start()
        return call

    def wait(self, call: ExecuteCall, timeout: float | None) -> bool:
        self._done.wait(timeout)
        return call.done


def tool() -> EnclaveNotebookTool:
    sandbox = Sandbox()
    sandbox._kernel = ReplayKernel()  # type: ignore[assignment]
    sandbox._handle = object()  # type: ignore[assignment]
    return EnclaveNotebookTool(sandbox=sandbox)


def graph(notebook: EnclaveNotebookTool, use_async: bool) -> Any:
    def node(state: MessagesState) -> dict[str, Any]:
        notebook.invoke({"code": "train()"})
        return {}

    async def anode(state: MessagesState) -> dict[str, Any]:
        await notebook.ainvoke({"code": "train()"})
        return {}

    builder = StateGraph(MessagesState)
    builder.add_node("run", anode if use_async else node)
    builder.add_edge(START, "run")
    return builder.compile()


def test_langgraph_custom_stream_shows_the_output_as_it_comes():
    chunks = list(graph(tool(), use_async=False).stream({"messages": []}, stream_mode="custom"))
    assert [(c["type"], c["kind"], c["text"]) for c in chunks] == [
        (LIVE_OUTPUT_EVENT, "stdout", "epoch 1\n"),
        (LIVE_OUTPUT_EVENT, "stdout", "epoch 2\n"),
        (LIVE_OUTPUT_EVENT, "result", "'trained'"),
    ]


def test_async_custom_stream_and_astream_events():
    async def main() -> tuple[list[Any], list[Any]]:
        chunks = [
            c async for c in graph(tool(), use_async=True).astream({"messages": []}, stream_mode="custom")
        ]
        notebook = tool()
        events = [
            e
            async for e in notebook.astream_events({"code": "train()"}, version="v2")
            if e["event"] == "on_custom_event"
        ]
        return chunks, events

    chunks, events = asyncio.run(asyncio.wait_for(main(), 30))
    assert [c["text"] for c in chunks] == ["epoch 1\n", "epoch 2\n", "'trained'"]
    assert [e["name"] for e in events] == [LIVE_OUTPUT_EVENT] * 3
    assert [e["data"]["text"] for e in events] == ["epoch 1\n", "epoch 2\n", "'trained'"]


def test_outside_a_graph_the_tool_still_answers():
    assert tool().invoke({"code": "train()"}) == "epoch 1\nepoch 2\n'trained'"
