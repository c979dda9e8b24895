"""The sandbox's kernel launcher: ``ipykernel_launcher``, with the boot's modules served
from the kernel's bytecode bundle (see enclave_bundle).

``python -m enclave_kernel_launcher -f CONNECTION_FILE`` does what ``python -m
ipykernel_launcher`` does (the working directory off ``sys.path`` while ipykernel loads;
IPython puts it back), with the bundle installed for the boot only: it is removed before
the kernel runs any code, so everything imported afterwards (a cell's imports, packages
installed at run time) loads the ordinary way.

The boot also takes the ``jupyter_client`` package as a lazy stand-in (enclave_lazy): a
kernel uses its session and connection-file modules, but the package's ``__init__``
imports every client, kernel manager and provisioner (entry points included), about a
tenth of a boot. A cell that asks the package for any other name loads it whole.

Installed into the kernel's site-packages; the gateway starts every kernel with it.
"""

from __future__ import annotations

import os
import sys

import enclave_bundle

KERNEL_BUNDLE = "/opt/enclave/ipython/kernel.bundle"
"""The kernel's bundle, written by the image build (``bundle_boot``)."""


def boot_stand_ins() -> dict:
    """What a kernel's boot takes as stand-ins (enclave_lazy): module: the names served
    without loading it. ipykernel.connect takes two functions from ``jupyter_client``;
    IPKernelApp's ``blocking_class`` trait resolves its default, the blocking client, at
    instantiation."""
    from enclave_lazy import attribute_of

    return {
        "jupyter_client": {
            "write_connection_file": attribute_of("jupyter_client.connect", "write_connection_file"),
            "find_connection_file": attribute_of("jupyter_client.connect", "find_connection_file"),
            "BlockingKernelClient": attribute_of("jupyter_client.blocking", "BlockingKernelClient"),
        }
    }


def main() -> None:
    """Boot an IPython kernel (argv as ipykernel_launcher's) and run it."""
    if sys.path and (sys.path[0] == "" or os.path.abspath(sys.path[0]) == os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher: a module in the cwd never shadows the boot's
    finder = enclave_bundle.install(KERNEL_BUNDLE)
    # Once the bundle serves: enclave_lazy imports importlib.abc, and with it twenty modules.
    import enclave_lazy

    stand_ins = enclave_lazy.install(boot_stand_ins())
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    try:
        app.initialize()
    finally:
        enclave_lazy.uninstall(stand_ins)
        enclave_bundle.uninstall(finder)
    app.start()


def bundle_boot() -> None:
    """What the image build runs to write the kernel's bundle: a kernel boot, in this
    process, then a first cell (``python -m enclave_bundle build PATH
    enclave_kernel_launcher:bundle_boot``)."""
    import tempfile

    import enclave_lazy

    enclave_lazy.install(boot_stand_ins())  # the boot loads what main()'s loads
    from ipykernel.kernelapp import IPKernelApp

    connection_file = os.path.join(tempfile.mkdtemp(), "kernel.json")
    app = IPKernelApp.instance()
    app.initialize(["-f", connection_file])
    app.shell.run_cell("x = 1\nx", store_history=True)


if __name__ == "__main__":
    main()
