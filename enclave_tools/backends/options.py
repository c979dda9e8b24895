"""A backend from a few options: the one place that turns "kubernetes, namespace X" or
"remote, this URL, the token from that file" into a :class:`Backend`, for the command line
(``enclave-tools ps --backend kubernetes --namespace sandboxes``) and for programs alike.

A gateway's token is never an option's value (command lines are visible to every user of
the host, and end up in shell histories): it comes from a file or the environment.
"""

from __future__ import annotations

import argparse
import os
import ssl
from pathlib import Path

from enclave_tools.backends.base import Backend
from enclave_tools.errors import InvalidInput

__all__ = ["BACKENDS", "GATEWAY_TOKEN_ENV", "add_arguments", "from_args", "make_backend", "read_token"]

BACKENDS = ("docker", "kubernetes", "remote")
GATEWAY_TOKEN_ENV = "ENCLAVE_TOOLS_GATEWAY_TOKEN"
"""The environment variable that holds a remote gateway's token (else ``--token-file``)."""


def make_backend(
    name: str = "docker",
    *,
    namespace: str | None = None,
    context: str | None = None,
    url: str | None = None,
    token: str | None = None,
    ca_file: str | None = None,
) -> Backend:
    """The backend ``name`` with its options: ``namespace`` (default: as kubectl picks it)
    and ``context`` (a kubeconfig context) for "kubernetes"; ``url``, ``token`` and
    ``ca_file`` (the CA bundle an https gateway's certificate is verified against; default:
    the system's) for "remote". An option of another backend, or a missing one, is refused
    (:class:`InvalidInput`)."""
    given = {"namespace": namespace, "context": context, "url": url, "token": token, "ca_file": ca_file}
    allowed = {"docker": set(), "kubernetes": {"namespace", "context"}, "remote": {"url", "token", "ca_file"}}
    if name not in allowed:
        raise InvalidInput(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    stray = sorted(key for key, value in given.items() if value is not None and key not in allowed[name])
    if stray:
        raise InvalidInput(f"{', '.join(stray)}: not an option of the {name} backend")
    if name == "kubernetes":
        from enclave_tools.backends.kubernetes import KubernetesBackend
        from enclave_tools.backends.kubernetes.api import default_namespace

        return KubernetesBackend(namespace or default_namespace(context), context=context)
    if name == "remote":
        if not url:
            raise InvalidInput("the remote backend needs the gateway's URL (--url)")
        if not token:
            raise InvalidInput(
                f"the remote backend needs the gateway's token: set {GATEWAY_TOKEN_ENV} or pass --token-file"
            )
        from enclave_tools.backends.remote import RemoteGatewayBackend

        if ca_file is not None and not Path(ca_file).is_file():
            raise InvalidInput(f"the CA bundle {ca_file} is not a file")
        try:
            return RemoteGatewayBackend(url, token, verify=ca_file if ca_file is not None else True)
        except ssl.SSLError as exc:
            raise InvalidInput(
                f"the CA bundle {ca_file} holds no certificate that can be used ({exc})"
            ) from None
    from enclave_tools.backends.docker import DockerBackend

    return DockerBackend()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and its options, on a command that works on existing sandboxes."""
    group = parser.add_argument_group("backend (default: the local Docker engine)")
    group.add_argument("--backend", choices=BACKENDS, default="docker", help="where the sandboxes run")
    group.add_argument(
        "--namespace", help="kubernetes: the sandboxes' namespace (default: as kubectl picks it)"
    )
    group.add_argument(
        "--context", help="kubernetes: the kubeconfig context (default: in-cluster, else current)"
    )
    group.add_argument("--url", help="remote: the gateway's URL, e.g. http://10.0.0.7:8888")
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"remote: file holding the gateway's token (or set {GATEWAY_TOKEN_ENV}; "
        "never on the command line)",
    )
    group.add_argument(
        "--ca-file",
        metavar="FILE",
        help="remote: the CA bundle to verify an https gateway's certificate (default: the system's)",
    )


def from_args(args: argparse.Namespace) -> Backend:
    """The backend the options of :func:`add_arguments` chose."""
    token = None
    if args.backend == "remote" or args.token_file is not None:
        token = read_token(args.token_file, GATEWAY_TOKEN_ENV)
    return make_backend(
        args.backend,
        namespace=args.namespace,
        context=args.context,
        url=args.url,
        token=token,
        ca_file=args.ca_file,
    )


def read_token(path: str | None, env: str) -> str | None:
    """A token from the file ``path`` if given (stripped; an empty file gives ""), else
    from the environment variable ``env`` (None if it is unset or empty)."""
    if path is not None:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read the token file {path}: {exc.strerror}") from exc
    return os.environ.get(env) or None
