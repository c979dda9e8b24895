"""The ``enclave-tools`` command: build images, list and clean up sandboxes, run code.

Exit codes: 0 success; 1 the code raised, timed out or killed its kernel; 2 bad usage;
3 the sandbox could not do its job (no Docker, no image, ...).
"""

from __future__ import annotations

import argparse
import codeop
import signal
import sys
import threading
from pathlib import Path

from enclave_tools import __version__
from enclave_tools.errors import EnclaveError
from enclave_tools.execution import for_model

EXIT_OK, EXIT_CODE_FAILED, EXIT_USAGE, EXIT_ENCLAVE = 0, 1, 2, 3

PRINT_LIMIT = 200_000
"""The most characters of one message from the sandbox printed to the terminal."""


def safe(text: object) -> str:
    """``text`` fit for the user's terminal: whatever came from the sandbox (output,
    errors, container logs) may carry escape sequences, controls or bidi overrides."""
    return for_model(str(text), PRINT_LIMIT)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``enclave-tools``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except _UsageError as exc:
        print(f"enclave-tools: {safe(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except EnclaveError as exc:
        print(f"enclave-tools: {safe(exc)}", file=sys.stderr)
        return EXIT_ENCLAVE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclave-tools",
        description="A stateful Python kernel in a hardened Docker container, for LLM agents.",
    )
    parser.add_argument("--version", action="version", version=f"enclave-tools {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    image = commands.add_parser("image", help="build or list kernel images")
    image_commands = image.add_subparsers(title="image commands", metavar="COMMAND")
    build = image_commands.add_parser("build", help="build the kernel image (shows progress)")
    build.add_argument("--base", help="base image (must be local, or pullable)")
    build.add_argument(
        "--bootstrap",
        action="store_true",
        help="build the base from Debian packages (no registry needed)",
    )
    build.add_argument("--tag", help="tag for the image (default: the project's own tag)")
    build.add_argument("--if-missing", action="store_true", help="do nothing if the default image exists")
    build.add_argument(
        "--with",
        dest="packages",
        action="append",
        default=[],
        metavar="PKG",
        help="build a derived image: the kernel image plus PKG (repeatable; e.g. scikit-learn, "
        "'polars>=1'); the kernel image's packages keep their versions",
    )
    build.add_argument(
        "--requirements", metavar="FILE", help="a requirements file whose packages are added like --with"
    )
    build.add_argument(
        "--from",
        dest="from_image",
        metavar="IMAGE",
        help="with --with: the image to add to (default: the project's kernel image)",
    )
    build.set_defaults(func=_image_build)
    image_ls = image_commands.add_parser("ls", help="list enclave-tools images")
    image_ls.set_defaults(func=_image_ls)
    prune = image_commands.add_parser(
        "prune",
        help="remove kernel images of older recipes and the derived images built on them "
        "(never the current one, the Debian base, or an image a container uses)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    prune.set_defaults(func=_image_prune)

    def image_usage(_args: argparse.Namespace) -> int:
        image.print_help()
        return EXIT_USAGE

    image.set_defaults(func=image_usage)

    from enclave_tools.backends import options as backend_options

    ps = commands.add_parser(
        "ps", help="list sandboxes (Docker's, a namespace's pods, or a gateway's kept-alive kernels)"
    )
    ps.set_defaults(func=_ps)
    stop = commands.add_parser("stop", help="end a sandbox (a detached one too) by id or name")
    stop.add_argument(
        "id",
        help="sandbox id (the name without 'enclave-'), name, "
        "or a prefix of the container id, pod name or kernel id",
    )
    stop.set_defaults(func=_stop)
    gc = commands.add_parser(
        "gc",
        help="remove sandboxes whose owner process is provably gone, and kept-alive ones that "
        "ended or expired (Docker: also leftover run directories)",
    )
    gc.set_defaults(func=_gc)
    for sub in (ps, stop, gc):
        backend_options.add_arguments(sub)

    from enclave_tools.mcp import command as mcp_command

    mcp = commands.add_parser("mcp", help="serve the notebook as an MCP server (stdio or HTTP)")
    mcp_command.add_arguments(mcp)
    mcp.set_defaults(func=lambda args: mcp_command.run(args, _say))

    for name, helptext, func in (
        ("exec", "run code once in a fresh sandbox and print the result", _exec),
        ("run", "an interactive prompt into a fresh sandbox", _run),
    ):
        sub = commands.add_parser(name, help=helptext)
        if name == "exec":
            sub.add_argument("code", help="Python code, or - to read it from standard input")
        sub.add_argument("--network", default="none", help="'none' (default) or 'bridge'")
        sub.add_argument("--timeout", type=float, default=None, help="seconds per run")
        sub.add_argument("--memory", default=None, help="memory limit, e.g. 2g")
        sub.add_argument("--image", default=None, help="kernel image (default: the project's)")
        sub.add_argument("--output-dir", default="enclave-output", help="where images are saved")
        sub.add_argument(
            "--notebook",
            metavar="FILE",
            default=None,
            help="also write the session as a Jupyter notebook (.ipynb) to FILE",
        )
        sub.set_defaults(func=func)
    return parser


def _say(line: str) -> None:
    print(safe(line), file=sys.stderr, flush=True)


def _image_build(args: argparse.Namespace) -> int:
    from enclave_tools.image import build_image, ensure_image

    if args.packages or args.requirements:
        return _image_build_derived(args)
    if args.if_missing and not (args.tag or args.base or args.bootstrap):
        from enclave_tools._docker import docker_client

        print(ensure_image(docker_client(), progress=_say))
        return EXIT_OK
    image_id = build_image(tag=args.tag, base=args.base, bootstrap=args.bootstrap, progress=_say)
    print(image_id)
    return EXIT_OK


def _image_build_derived(args: argparse.Namespace) -> int:
    """``image build --with PKG``: the kernel image plus packages (cached by what went in)."""
    from enclave_tools._docker import docker_client
    from enclave_tools.image import ensure_image
    from enclave_tools.image.derived import derived_tag, ensure_derived
    from enclave_tools.packages import check_requirement, read_requirements_file

    requirements = [check_requirement(p) for p in args.packages]
    if args.requirements:
        requirements += read_requirements_file(args.requirements)
    client = docker_client()
    base = ensure_image(client, args.from_image, progress=_say)
    image_id = ensure_derived(client, base, requirements, progress=_say)
    tag = derived_tag(base, requirements)
    if args.tag:
        repository, _, version = args.tag.partition(":")
        client.api.tag(image_id, repository, version or "latest")
        tag = args.tag
    _say(f"use it with SandboxConfig(image={tag!r}) or SandboxConfig(packages=[...])")
    print(tag)
    return EXIT_OK


def _image_ls(_args: argparse.Namespace) -> int:
    from enclave_tools._docker import docker_client
    from enclave_tools.image import list_images

    rows = list_images(docker_client())
    _print_table(
        ["TAG", "ID", "SIZE", "CREATED"], [[r["tag"], r["id"], r["size"], r["created"]] for r in rows]
    )
    return EXIT_OK


def _image_prune(args: argparse.Namespace) -> int:
    from enclave_tools._docker import docker_client
    from enclave_tools.image.prune import prune_images

    verb = "would remove" if args.dry_run else "removed"
    pruned = prune_images(docker_client(), dry_run=args.dry_run)
    for tag in pruned.removed:
        print(f"{verb} {safe(tag)}")
    for tag in pruned.in_use:
        print(f"kept {safe(tag)}: a container uses it")
    print(f"{verb} {len(pruned.removed)} image tag(s)")
    return EXIT_OK


def _backend(args: argparse.Namespace):
    """The backend ``--backend`` and its options chose (Docker by default)."""
    from enclave_tools.backends.options import from_args
    from enclave_tools.errors import InvalidInput

    try:
        return from_args(args)
    except InvalidInput as exc:
        raise _UsageError(str(exc)) from None


class _UsageError(EnclaveError):
    """The command line asked for something impossible (exit code 2)."""


def _ps(args: argparse.Namespace) -> int:
    from enclave_tools import ps

    _print_table(ps.HEADER, ps.rows(_backend(args).describe_sandboxes()))
    return EXIT_OK


def _stop(args: argparse.Namespace) -> int:
    from enclave_tools import ps

    backend = _backend(args)
    matches = ps.matching(backend.describe_sandboxes(), args.id)
    if len(matches) != 1:
        what = "no sandbox" if not matches else f"{len(matches)} sandboxes"
        print(
            f"enclave-tools: {what} match {safe(repr(args.id))} on the {backend.name} backend; "
            "see `enclave-tools ps`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    backend.stop_sandbox(matches[0])
    print(f"removed {ps.cell(matches[0].name, 256)}")
    return EXIT_OK


def _gc(args: argparse.Namespace) -> int:
    from enclave_tools import ps

    removed = _backend(args).reap_orphans(on_removed=lambda what: print(f"removed {ps.cell(what, 256)}"))
    print(f"{removed} orphaned sandbox(es) removed")
    return EXIT_OK


def _sandbox(args: argparse.Namespace):
    from enclave_tools import Sandbox

    overrides = {"network": args.network}
    if args.timeout:
        overrides["timeout"] = args.timeout
    if args.memory:
        overrides["memory"] = args.memory
    if args.image:
        overrides["image"] = args.image
    return Sandbox(progress=_say, **overrides)


def _show(execution, output_dir: Path, counter: list[int]) -> None:
    if execution.text:
        print(safe(execution.text))
    for png in execution.images:
        output_dir.mkdir(parents=True, exist_ok=True)
        counter[0] += 1
        path = output_dir / f"image-{counter[0]}.png"
        path.write_bytes(png)
        print(f"[image saved to {path}]")


def _exec(args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code
    sandbox = _sandbox(args)
    try:
        with sandbox:
            execution = sandbox.run(code)
            _show(execution, Path(args.output_dir), [0])
    finally:
        _write_notebook(sandbox, args.notebook)
    return EXIT_OK if execution.ok else EXIT_CODE_FAILED


def _write_notebook(sandbox, path: str | None) -> None:
    """Write the session as a notebook when ``--notebook`` asked for one (even after a
    failure: what ran so far is in it)."""
    if path and len(sandbox.history):
        written = sandbox.export_notebook(path)
        print(f"[session written to {written}]", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    print("Starting a sandbox ...", file=sys.stderr)
    sandbox = _sandbox(args)
    try:
        return _prompt(sandbox, args)
    finally:
        _write_notebook(sandbox, args.notebook)


def _prompt(sandbox, args: argparse.Namespace) -> int:
    counter = [0]
    with sandbox:
        print(
            "Python in a sandbox. Variables persist between inputs. Ctrl-C interrupts a "
            "running cell, Ctrl-D quits.",
            file=sys.stderr,
        )
        buffer: list[str] = []
        prompts = sys.stdin.isatty()  # piped input gets no prompts in its output
        while True:
            try:
                line = input(("... " if buffer else ">>> ") if prompts else "")
            except EOFError:
                print(file=sys.stderr)
                return EXIT_OK
            except KeyboardInterrupt:
                buffer = []
                print(file=sys.stderr)
                continue
            buffer.append(line)
            source = "\n".join(buffer)
            try:
                complete = codeop.compile_command(source, symbol="exec") is not None
            except (SyntaxError, ValueError, OverflowError):
                complete = True  # let the kernel report it
            if not complete and line.strip():
                continue
            buffer = []
            if source.strip():
                _show(_run_cell(sandbox, source), Path(args.output_dir), counter)


def _run_cell(sandbox, source: str):
    """Run one cell; Ctrl-C meanwhile interrupts the cell (as in IPython), keeping the
    session and its variables, instead of ending the program."""

    def interrupt() -> None:
        try:
            sandbox.interrupt()
        except EnclaveError as exc:
            _say(f"could not interrupt the cell: {exc}")

    def on_sigint(_signum: int, _frame: object) -> None:
        # Never blocks the handler: the request goes on a thread of its own.
        threading.Thread(target=interrupt, name="enclave-cli-interrupt", daemon=True).start()

    if threading.current_thread() is not threading.main_thread():
        return sandbox.run(source)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return sandbox.run(source)
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    from enclave_tools.ps import table

    for line in table(header, rows):
        print(safe(line))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
