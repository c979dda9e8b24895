from langchain_enclave import __all__

EXPECTED_ALL = ["EnclaveNotebookTool", "NotebookInput", "__version__"]


def test_all_imports() -> None:
    assert sorted(EXPECTED_ALL) == sorted(__all__)
