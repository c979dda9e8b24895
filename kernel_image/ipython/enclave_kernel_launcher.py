"""The sandbox's kernel launcher: ``ipykernel_launcher``, with the boot's modules served
from the kernel's bytecode bundle (see enclave_bundle).

``python -m enclave_kernel_launcher -f CONNECTION_FILE`` does what ``python -m
ipykernel_launcher`` does (the working directory off ``sys.path`` while ipykernel loads;
IPython puts it back), with the bundle installed for the boot only: it is removed before
the kernel runs any code, so everything imported afterwards (a cell's imports, packages
installed at run time) loads the ordinary way.

Installed into the kernel's site-packages; the gateway starts every kernel with it.
"""

from __future__ import annotations

import os
import sys

import enclave_bundle

KERNEL_BUNDLE = "/opt/enclave/ipython/kernel.bundle"
"""The kernel's bundle, written by the image build (``bundle_boot``)."""


def main() -> None:
    """Boot an IPython kernel (argv as ipykernel_launcher's) and run it."""
    if sys.path and (sys.path[0] == "" or os.path.abspath(sys.path[0]) == os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher: a module in the cwd never shadows the boot's
    finder = enclave_bundle.install(KERNEL_BUNDLE)
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    try:
        app.initialize()
    finally:
        enclave_bundle.uninstall(finder)
    app.start()


def bundle_boot() -> None:
    """What the image build runs to write the kernel's bundle: a kernel boot, in this
    process, then a first cell (``python -m enclave_bundle build PATH
    enclave_kernel_launcher:bundle_boot``)."""
    import tempfile

    from ipykernel.kernelapp import IPKernelApp

    connection_file = os.path.join(tempfile.mkdtemp(), "kernel.json")
    app = IPKernelApp.instance()
    app.initialize(["-f", connection_file])
    app.shell.run_cell("x = 1\nx", store_history=True)


if __name__ == "__main__":
    main()
