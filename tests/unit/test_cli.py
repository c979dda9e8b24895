"""The command line's own behaviour, without Docker."""

from __future__ import annotations

import pytest

from enclave_tools import __version__
from enclave_tools.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "gc" in capsys.readouterr().out
    assert main([]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["stop"])
    assert exited.value.code == 2


def test_errors_are_plain_words_with_exit_code_3(monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    import enclave_tools._docker as docker_module

    monkeypatch.setattr(docker_module, "_client", None)
    assert main(["gc"]) == 3
    err = capsys.readouterr().err
    assert "Cannot reach the Docker daemon" in err and "Traceback" not in err


def test_mcp_sessions_carry_the_command_lines_config_so_the_tool_describes_it():
    from enclave_tools.cli import _parser
    from enclave_tools.mcp.command import sessions_for
    from enclave_tools.tooling import describe_tool

    args = _parser().parse_args(["mcp", "--network", "bridge", "--warm", "0", "--memory", "3g"])
    sessions = sessions_for(args, lambda _line: None)
    try:
        assert sessions.config.network == "bridge" and sessions.config.memory == "3g"
        assert "has network access" in describe_tool(sessions.config)  # main: "no network access"
    finally:
        sessions.close()
