"""The command-line tools, one module each, and the ``cmim-dense`` entry point.

Every tool follows one contract (:mod:`.common`): arguments are parsed before the stack is
imported (``--help`` stays fast), the project's input errors become one ``error:`` line and
exit 2, Ctrl-C exits 130, and the same validators check sizes, counts and ``--cfg-options``.
``tools/*.py`` are thin wrappers of these modules.
"""
