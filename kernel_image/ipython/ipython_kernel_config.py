# IPython inside the sandbox: plain tracebacks without colour, no history database, and the
# enclave start-up code.  Installed as <venv>/etc/ipython/ipython_kernel_config.py, which
# IPython reads whatever its (temporary, writable) profile directory is.
c = get_config()  # noqa: F821

c.InteractiveShell.colors = "nocolor"
c.InteractiveShell.xmode = "Plain"
# No history database at all (not even one in memory): a sandbox never reads past sessions,
# and the kernel's boot skips sqlite3. In, Out, _ih and %history still work in the session.
c.HistoryManager.enabled = False
# No output cache (Out[n], _, __): over a long session it keeps every result alive and,
# after 1000 cells, prints "Output cache limit ... hit" into the model's output.
c.InteractiveShell.cache_size = 0
c.InteractiveShellApp.exec_files = ["/opt/enclave/ipython/startup.py"]
c.InlineBackend.figure_formats = {"png"}
c.InlineBackend.rc = {"figure.dpi": 100}

# Fewer thread hand-offs per cell: a flush with nothing to send returns at once, and no
# half-millisecond sleep before each reply (it only helped clients that stop reading at the
# reply; enclave-tools waits for the reply and the idle status that follows all output).
c.IPKernelApp.outstream_class = "enclave_kernel.QuickFlushOutStream"
# An interrupt that lands as a cell begins ends that cell, never swallowed by IPython.
c.IPKernelApp.kernel_class = "enclave_kernel.EnclaveKernel"
c.IPythonKernel._execute_sleep = 0.0
