# IPython inside the sandbox: plain tracebacks, inline plots, no history file.
c = get_config()  # noqa: F821

c.InteractiveShell.colors = "nocolor"
c.InteractiveShell.xmode = "Plain"  # no ANSI and no giant frame dumps
c.HistoryManager.hist_file = ":memory:"
c.InlineBackend.figure_formats = {"png"}
c.InlineBackend.rc = {"figure.dpi": 100}
