# Runs in every new kernel.  Keep it cheap: it is on the cold-start path, so nothing
# heavy is imported here.  pandas gets display options suited to a model, applied the
# first time a cell has imported it.
import sys as _sys


def _enclave_pandas_options(*_args):
    pd = _sys.modules.get("pandas")
    if pd is None:
        return
    pd.set_option("display.max_rows", 40)
    pd.set_option("display.max_columns", 20)
    pd.set_option("display.width", 120)
    get_ipython().events.unregister("post_run_cell", _enclave_pandas_options)  # noqa: F821


get_ipython().events.register("post_run_cell", _enclave_pandas_options)  # noqa: F821
