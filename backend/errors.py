"""The one exception type for errors a user can cause and fix, and the wording of the common ones."""

from __future__ import annotations


class NetatlasError(Exception):
    """A problem with the user's input (path, checkpoint, architecture, dataset, unit).

    The message says what went wrong and what to do; the CLI prints it without a traceback and
    the app shows it as a notification while the server keeps serving.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters: an exception from a library or the
    user's code, quoted inside a one-line NetatlasError (tracebacks and multi-line reports stay out)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def model_failed(exc: BaseException, what: str, model: object | None = None) -> NetatlasError:
    """The NetatlasError for an exception the user's model raised in its forward on ``what`` (e.g. "a
    1x3x224x224 batch of zeros", "images 0-255 of digits.parquet"); raise it ``from exc``.

    A model that cannot take one image batch (a text-and-image model, a forward that needs other
    inputs, a size or channel count other than the preprocessing gives) is the user's to fix, not a
    bug of ours. A NetatlasError (raised by our own hooks inside the forward) is returned unchanged.
    """
    if isinstance(exc, NetatlasError):
        return exc
    name = f"the model {type(model).__name__}" if model is not None else "the model"
    if type(exc).__name__ == "OutOfMemoryError":   # torch.OutOfMemoryError, named so that this module needs no torch
        return NetatlasError(f"{name} ran out of memory on {what} ({first_line(exc, 120)}): lower --batch-size, "
                             "use --device cpu, or free the GPU")
    return NetatlasError(
        f"{name} failed on {what} ({first_line(exc)}): netatlas feeds it one image batch [N, C, H, W]; "
        "give a vision model (or its vision tower), or check --arch and the input size and channels "
        "(--size/--grayscale, the sidecar's preprocessing, or the page's Preprocessing fields)")
