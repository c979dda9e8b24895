"""LangChain's standard unit tests for tools (langchain-tests)."""

from langchain_tests.unit_tests import ToolsUnitTests

from langchain_enclave import EnclaveNotebookTool


class TestEnclaveNotebookToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self) -> type[EnclaveNotebookTool]:
        return EnclaveNotebookTool

    @property
    def tool_constructor_params(self) -> dict:
        return {}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"code": "x = 21\nprint(x * 2)", "timeout": 30}
