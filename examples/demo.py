"""`make demo`: an agent explores a CSV in a sandbox over several turns.

It loads data/sales.csv, explores it, hits an error and fixes it, makes a plot and saves
it as a PNG, and writes the whole session as a notebook (demo-output/session.ipynb).
Without a model configured, a scripted model drives the same agent loop.
With an OpenAI-compatible endpoint configured (OPENAI_API_KEY, and optionally
OPENAI_BASE_URL and ENCLAVE_DEMO_MODEL), a real model drives it.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver

from enclave_tools import Sandbox
from langchain_enclave import EnclaveNotebookTool
from langchain_enclave.scripted import ScriptedChatModel, answer, notebook_call

DATA = Path(__file__).parent / "data" / "sales.csv"
OUT = Path("demo-output")
QUESTIONS = [
    "I uploaded sales.csv. Load it and tell me what is in it.",
    "Which region brings in the most revenue? Plot monthly revenue per region and save "
    "the chart as revenue.png.",
]
SYSTEM = (
    "You are a data analyst. Use the notebook_executor tool to run Python; the kernel "
    "keeps variables between calls. Files are in the working directory."
)

SCRIPT = [
    # Question 1
    notebook_call(
        "import pandas as pd\ndf = pd.read_csv('sales.csv', parse_dates=['date'])\nprint(df.shape)\ndf.head()"
    ),
    answer("sales.csv holds 1,460 daily sales: date, region, product, units and revenue."),
    # Question 2: a wrong column name first, then the fix, then the plot.
    notebook_call("df.groupby('Region')['revenue'].sum()"),
    notebook_call("df.groupby('region')['revenue'].sum().sort_values(ascending=False)"),
    notebook_call(
        "import matplotlib.pyplot as plt\n"
        "monthly = df.groupby([df.date.dt.to_period('M'), 'region'])['revenue'].sum().unstack()\n"
        "ax = monthly.plot(figsize=(8, 4), marker='o', title='Monthly revenue by region')\n"
        "ax.set_xlabel('month'); ax.set_ylabel('revenue')\n"
        "plt.tight_layout()\n"
        "plt.savefig('revenue.png')\n"
        "plt.show()"
    ),
    answer("West brings in the most revenue. The chart is saved as revenue.png."),
]


def choose_model():
    """A real model when one is configured, else the scripted one (and say which)."""
    if os.environ.get("OPENAI_API_KEY"):
        from langchain_openai import ChatOpenAI

        name = os.environ.get("ENCLAVE_DEMO_MODEL", "gpt-4o-mini")
        print(f"Model: {name} at {os.environ.get('OPENAI_BASE_URL', 'the OpenAI API')}\n")
        return ChatOpenAI(model=name, base_url=os.environ.get("OPENAI_BASE_URL"))
    print(
        "Model: none configured, so a scripted model drives the agent loop (set "
        "OPENAI_API_KEY, and OPENAI_BASE_URL / ENCLAVE_DEMO_MODEL for another endpoint, "
        "to use a real one).\n"
    )
    return ScriptedChatModel.from_script(SCRIPT)


def show(message, saved: list[Path]) -> None:
    """Print one message of the conversation readably; save images it carries."""
    if isinstance(message, HumanMessage):
        print(f"\nUser: {message.content}")
    elif isinstance(message, AIMessage) and message.tool_calls:
        for call in message.tool_calls:
            print("\n  Agent runs:")
            print(textwrap.indent(call["args"].get("code", ""), "    | "))
    elif isinstance(message, ToolMessage):
        execution = message.artifact
        label = "error" if execution is not None and execution.status != "ok" else "output"
        print(f"  Notebook {label}:")
        print(textwrap.indent(str(message.content) or "(none)", "    > "))
        for png in getattr(execution, "images", []):
            OUT.mkdir(exist_ok=True)
            path = OUT / f"plot-{len(saved) + 1}.png"
            path.write_bytes(png)
            saved.append(path.resolve())
            print(f"    [plot saved to {path}]")
    elif isinstance(message, AIMessage):
        print(f"\nAgent: {message.content}")


def main() -> None:
    """Run the conversation and list the files it wrote."""
    saved: list[Path] = []
    with Sandbox() as sandbox:  # builds the kernel image on first use, with progress
        sandbox.upload(DATA, "sales.csv")
        tool = EnclaveNotebookTool(sandbox=sandbox)
        agent = create_agent(choose_model(), tools=[tool], system_prompt=SYSTEM, checkpointer=InMemorySaver())
        config = {"configurable": {"thread_id": "demo"}}
        seen = 0
        for question in QUESTIONS:
            state = agent.invoke({"messages": [("user", question)]}, config)
            for message in state["messages"][seen:]:
                show(message, saved)
            seen = len(state["messages"])
        try:
            OUT.mkdir(exist_ok=True)
            saved.append(sandbox.download("revenue.png", OUT / "revenue.png").resolve())
        except Exception as exc:  # noqa: BLE001 - a real model may not have saved it
            print(f"\n(no revenue.png in the sandbox: {exc})")
        saved.append(sandbox.export_notebook(OUT / "session.ipynb").resolve())
    print("\nFiles written (open session.ipynb in Jupyter to see what the agent did):")
    for path in saved:
        print(f"  {path}")


if __name__ == "__main__":
    main()
