from langchain_enclave import __all__

EXPECTED_ALL = ["EnclaveNotebookTool", "NotebookInput", "ToolImagesMiddleware", "__version__"]


def test_all_imports() -> None:
    assert sorted(EXPECTED_ALL) == sorted(__all__)
