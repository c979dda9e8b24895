# Runs in every new kernel, on the cold-start path: keep it cheap, import nothing heavy.
import os as _os
import shutil as _shutil
import sys as _sys

# Out of memory, the kernel (and anything it starts, which inherits this) is the process
# the OOM killer ends, never the gateway: the run then ends as "out of memory" and the
# sandbox lives on. Any process may raise its own score; none here may lower it below 0.
try:
    with open("/proc/self/oom_score_adj", "w") as _adj:
        _adj.write("1000")
    del _adj
except OSError:
    pass

# matplotlib wants a writable config directory; seed one with the font cache that was
# built into the image, so the first plot neither rebuilds it nor prints a warning.
_mpl = _os.environ.get("MPLCONFIGDIR", "/tmp/matplotlib")
if not _os.path.isdir(_mpl):
    try:
        _shutil.copytree("/opt/enclave/matplotlib", _mpl)
    except OSError:
        pass


def _enclave_pandas_options(*_args):
    """Display options suited to a model, applied once a cell has imported pandas."""
    pd = _sys.modules.get("pandas")
    if pd is None:
        return
    pd.set_option("display.max_rows", 40)
    pd.set_option("display.max_columns", 20)
    pd.set_option("display.width", 120)
    get_ipython().events.unregister("post_run_cell", _enclave_pandas_options)  # noqa: F821


get_ipython().events.register("post_run_cell", _enclave_pandas_options)  # noqa: F821
del _os, _shutil, _mpl
