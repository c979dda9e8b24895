"""The notebook as a Model Context Protocol server (``enclave-tools mcp``).

Needs the optional extra: ``pip install 'enclave-tools[mcp]'``. This package imports the
SDK only in its modules, so the command line can say when it is missing::

    from enclave_tools import SandboxSessions
    from enclave_tools.mcp.server import NotebookServer, build_server

    with SandboxSessions(warm=1, idle_ttl=1800) as sessions:
        build_server(NotebookServer(sessions, max_sessions=8)).run("stdio")
"""
