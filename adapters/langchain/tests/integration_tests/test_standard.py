"""LangChain's standard integration tests for tools, on a real sandbox."""

from collections.abc import Iterator

import pytest
from langchain_tests.integration_tests import ToolsIntegrationTests

from enclave_tools import Sandbox, SandboxConfig
from langchain_enclave import EnclaveNotebookTool


class TestEnclaveNotebookToolIntegration(ToolsIntegrationTests):
    shared_sandbox: Sandbox

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _shared_sandbox(cls, sandbox_config: SandboxConfig) -> Iterator[None]:
        cls.shared_sandbox = Sandbox(sandbox_config)
        yield
        cls.shared_sandbox.close()

    @property
    def tool_constructor(self) -> type[EnclaveNotebookTool]:
        return EnclaveNotebookTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"sandbox": self.shared_sandbox}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"code": "x = 21\nprint(x * 2)", "timeout": 30}
