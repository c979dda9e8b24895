"""A running cell's output reaches the workflow's event stream (fake sandbox at the boundary)."""

from __future__ import annotations

from llama_index.core.workflow import Context, StartEvent, StopEvent, Workflow, step

from enclave_tools.fakes import FakeSandbox, plotted, printed
from llama_index.tools.enclave import EnclaveNotebookToolSpec, NotebookOutputEvent


async def _stream(sandbox: FakeSandbox, **options: object) -> list[NotebookOutputEvent]:
    (tool,) = EnclaveNotebookToolSpec(sandbox, **options).to_tool_list()

    class Runs(Workflow):
        @step
        async def go(self, ctx: Context, ev: StartEvent) -> StopEvent:
            await tool.acall(ctx=ctx, code="train()")
            return StopEvent()

    handler = Runs(timeout=30).run()
    events = [e async for e in handler.stream_events() if isinstance(e, NotebookOutputEvent)]
    await handler
    return events


async def test_outputs_are_written_to_the_workflow_stream() -> None:
    events = await _stream(FakeSandbox(printed("epoch 1\n")), stream_output=True)
    assert [(e.tool_name, e.kind, e.text) for e in events] == [("notebook_executor", "stdout", "epoch 1\n")]
    plots = await _stream(FakeSandbox(plotted()), stream_output=True)
    assert [e.kind for e in plots] == ["image"] and "image/png" in plots[0].data


async def test_without_stream_output_the_tool_takes_no_context() -> None:
    (tool,) = EnclaveNotebookToolSpec(FakeSandbox()).to_tool_list()
    assert not tool.requires_context
    (tool,) = EnclaveNotebookToolSpec(FakeSandbox(), stream_output=True).to_tool_list()
    assert tool.requires_context and "ctx" not in tool.metadata.get_parameters_dict()["properties"]
    assert (await tool.acall(code="print(1)")).content == "ok"  # no context: still runs
