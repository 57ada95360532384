"""The project's one exception type for bad user input."""


class InputError(ValueError):
    """Bad input from the user: a config, a checkpoint, a data folder or an output folder.

    The command-line tools print it as one ``error: ...`` line and exit with status 2. Anything
    else that goes wrong is a bug and keeps its traceback.
    """
