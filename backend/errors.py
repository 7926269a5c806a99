"""The one exception type for errors a user can cause and fix."""


class NetatlasError(Exception):
    """A problem with the user's input (path, checkpoint, architecture, dataset, unit).

    The message says what went wrong and what to do; the CLI prints it without a traceback and
    the app shows it as a notification while the server keeps serving.
    """
