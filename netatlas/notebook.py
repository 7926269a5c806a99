"""netatlas in a notebook: ``na.open(checkpoint, data)`` gives an Atlas whose views are the page's own.

Each view method first computes what the view needs in the calling thread, with a tqdm progress bar,
through the same Workspace and Parquet cache as the page and the CLI (so a map computed here opens at
once in the served page); it then hands the view object itself, which a notebook shows live and which
``.servable()`` serves. Thumbnails are inline data URIs, since a notebook has no /thumb route.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, Sequence, TypeVar

import pandas as pd
import panel as pn

from netatlas.app.config import AppConfig
from netatlas.app.neurons_view import LOGITS
from netatlas.app.page import build_views, load_extensions, view_tabs
from netatlas.app.state import AppState, left_out_message
from netatlas.backend.activations import Reduction
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import load_dataset
from netatlas.backend.demo import assets_dir, demo_checkpoint
from netatlas.backend.errors import NetatlasError
from netatlas.backend.facets import FacetSettings
from netatlas.backend.hf_cache import launch_cache, local_path
from netatlas.backend.featviz import FeatvizSettings
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.residual.paths import PathSettings
from netatlas.backend.roots import AllowedRoots
from netatlas.backend.workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])
# The backend's and the page's hints name CLI flags and sidebar fields; in a notebook they name the arguments
# of na.open, na.kan and the Atlas methods instead. Longest first: a phrase before the flags inside it.
NOTEBOOK_WORDS: list[tuple[str, str]] = [
    (r"\(--size/--grayscale, the sidecar's preprocessing, or the page's Preprocessing fields\)",
     "(na.open(..., preprocessing=Preprocessing(size=..., grayscale=...)), or the sidecar's preprocessing)"),
    (r" \(in the app: tick 'Trust pickled code'\)", ""),
    (r"--arch-kwargs '(\{[^']*\})'", r"arch_kwargs=\1"),
    (r"--arch-kwargs", "arch_kwargs="),
    (r"--arch(?![\w-])", "arch="),
    (r"--trust-pickle", "trust_pickle=True"),
    (r"--image-column NAME", 'image_column="NAME"'),
    (r"--image-column", "image_column="),
    (r"--label-column", "label_column="),
    (r"--device (\w+)", r'device="\1"'),
    (r"--device", "device="),
    (r"--method (\w+)", r'method="\1"'),
    (r"--family", "family="),
    (r"--(size|grayscale|mean|std)(?![\w-])", r"preprocessing=Preprocessing(\1=...)"),
]


def notebook_words(message: str) -> str:
    """``message`` with the CLI flags and page fields it names replaced by the notebook's own arguments."""
    for pattern, replacement in NOTEBOOK_WORDS:
        message = re.sub(pattern, replacement, message)
    return message


def _notebook_errors(function: F) -> F:
    """Raise the NetatlasErrors of ``function`` in the notebook's words (its arguments, not CLI flags)."""
    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except NetatlasError as exc:
            words = notebook_words(str(exc))
            if words == str(exc):
                raise
            raise NetatlasError(words) from exc.__cause__
    return wrapped  # type: ignore[return-value]


@_notebook_errors
def open(checkpoint: str | Path = "demo", data: str | Path = "demo", arch: str | None = None,  # noqa: A001
         arch_kwargs: dict[str, Any] | None = None, *, trust_pickle: bool = False, device: str = "auto",
         cache_dir: str | Path | None = None, preprocessing: Preprocessing | None = None,
         image_column: str | None = None, label_column: str | None = None) -> "Atlas":
    """One model and one dataset, as the page opens them: a checkpoint file, a Hugging Face folder, a hub id
    cached on this machine (``org/name[@revision]``) or "demo"; an image folder, Parquet, tar shards, a .npz,
    a cached dataset id or "demo". Pickled modules stay refused
    unless ``trust_pickle``; any path is readable (a notebook user owns their files)."""
    path = demo_checkpoint() if str(checkpoint) == "demo" else Path(checkpoint).expanduser()
    loaded = load_checkpoint(path, arch, arch_kwargs, trust_pickle=trust_pickle, preprocessing=preprocessing)
    dataset = load_dataset(data, image_column=image_column, label_column=label_column)
    cache = ResultCache(Path(cache_dir) if cache_dir is not None else None)
    workspace = Workspace(loaded, dataset, cache, device, source=str(data))
    given = ((str(checkpoint), "model"), (str(data), "dataset"))
    roots = [assets_dir(), *(local_path(p, kind).resolve().parent for p, kind in given if p != "demo")]
    config = AppConfig(checkpoint=str(checkpoint), data=str(data), arch=arch, arch_kwargs=arch_kwargs,
                       roots=AllowedRoots.of(*roots, hub=launch_cache(*given)), cache_dir=cache.root, device=device,
                       trust_pickle=trust_pickle, image_column=image_column, label_column=label_column)
    return Atlas(workspace, config)


@_notebook_errors
def kan(checkpoint: str | Path = "demo", sample: str | Path | None = None, family: str | None = None,
        *, trust_pickle: bool = False) -> Any:
    """The KAN view on ``checkpoint`` ("demo": the shipped pykan KAN), opened and drawn; a pickled
    module stays refused unless ``trust_pickle``."""
    from netatlas.backend.kan.demo import demo_kan

    path = (demo_kan() if str(checkpoint) == "demo" else Path(checkpoint).expanduser()).resolve()
    roots = [assets_dir(), path.parent] + ([Path(sample).resolve().parent] if sample else [])
    load_extensions(inline=True)
    state = AppState(AppConfig(roots=AllowedRoots.of(*roots), trust_pickle=trust_pickle))
    view = _notebook_views(state)["KAN"]
    changes = [(view.checkpoint, str(path))]
    if sample is not None:
        changes.append((view.sample, str(Path(sample).resolve())))
    if family is not None:
        changes.append((view.family, family))
    _settle(state, changes, view._on_open)
    return _in_cell(view, state)


class Atlas:
    """One model and dataset (the Workspace the page uses), with the page's views and its results."""

    def __init__(self, workspace: Workspace, config: AppConfig) -> None:
        load_extensions(inline=True)
        self.workspace = workspace
        self.config = config
        self.views: dict[str, Any] = {}          # the views the last call built, by the page's tab names
        # Opened now, as the page's Load does (a model that cannot run fails here, in the na.open cell), and
        # handed to the first view asked for; every later call builds its own.
        self._unshown: AppState | None = self._open_views()

    def __repr__(self) -> str:
        loaded, dataset = self.workspace.loaded, self.workspace.dataset
        return (f"Atlas({loaded.path.name}: {loaded.arch or loaded.format}, {dataset.name}: "
                f"{len(dataset):,} images)")

    # ---- results ---------------------------------------------------------------------------------
    @_notebook_errors
    def activations(self, layers: Sequence[str] = (), reduction: Reduction = "mean") -> pd.DataFrame:
        """One row per image: index, id, label, prediction, logits and one vector column per layer."""
        with _progress_bar("activations", "img") as progress:
            acts = self.workspace.activations(list(layers), reduction, progress)
        self._tell_left_out()
        return self.workspace.table(acts).to_pandas()

    @property
    def modules(self) -> pd.DataFrame:
        """The module tree the Model view shows: names, types, output shapes, parameters."""
        return self.workspace.modules

    # ---- views -----------------------------------------------------------------------------------
    def model(self) -> Any:
        """The module tree with output shapes and parameter counts."""
        return self._cell("Model")

    @_notebook_errors
    def neurons(self, layer: str | None = None, unit: int = 0) -> Any:
        """Top and bottom images and the histogram of one unit (``layer`` "": the logits)."""
        view = self._cell("Neurons")
        changes = [(view.unit, unit)]
        if layer is not None:
            self._warm(lambda p: self.workspace.activations([layer] if layer else [], view.reduction.value, p))
            changes.insert(0, (view.layer, layer or LOGITS))
        _settle(view.state, changes, view._on_layer)
        return view

    @_notebook_errors
    def facets(self, layer: str, unit: int, k: int = 4, steps: int = 200) -> Any:
        """One synthetic image per facet of what the unit detects, beside its exemplars."""
        view = self.neurons(layer, unit).facets
        self._warm(lambda p: self.workspace.facets(layer, unit, FacetSettings(k=k), FeatvizSettings(steps=steps), p))
        _settle(view.state, [(view.k, k), (view.steps, steps)], view._on_run)
        return _in_cell(view, view.state)

    @_notebook_errors
    def dendromap(self, layer: str | None = None) -> Any:
        """The zoomable treemap of the images' hierarchical clusters (``layer`` "": the logits)."""
        view = self._cell("DendroMap")
        if layer is not None:
            _settle(view.state, [(view.layer, layer or LOGITS)])
        name = self._layer_name(view)
        with _progress_bar("clustering", "step") as progress:
            tree = self.workspace.cluster_tree(name, progress=progress)
            _, vectors, acts = self.workspace.representation(name)
        _settle(view.state, [], lambda: view.show(tree, vectors, acts.predictions))
        view.shown = True
        return view

    @_notebook_errors
    def map(self, color: str = "class", method: str = "umap", layer: str | None = None) -> Any:
        """The datashader embedding map: ``color`` class, predicted, correct, cluster, value or density
        (predicted and correct only for a model with predictions)."""
        from netatlas.app.map_view import COLOR_BY, METHODS, NEEDS_PREDICTIONS
        from netatlas.backend.embedding import EmbedSettings, default_seed

        view = self._cell("Map")
        label = _label_of(COLOR_BY, color, "color")
        note = self.workspace.predictions_note
        if note and label in NEEDS_PREDICTIONS:
            raise NetatlasError(f"colour {color!r} needs predictions, and this model has none: {note}")
        changes = [(view.color_by, label), (view.method, _label_of(METHODS, method, "method"))]
        if layer is not None:
            changes.append((view.layer, layer or LOGITS))
        _settle(view.state, changes)
        name = self._layer_name(view)
        settings = EmbedSettings(method=METHODS[view.method.value], seed=default_seed(len(self.workspace.dataset)))
        with _progress_bar("mapping", "step") as progress:
            embedding = self.workspace.embedding(name, settings=settings, progress=progress)
            _, vectors, acts = self.workspace.representation(name)
        _settle(view.state, [], lambda: view.show(embedding, vectors, acts.predictions))
        view.shown = True
        return view

    @_notebook_errors
    def diagram(self, fold_depth: int | None = None) -> Any:
        """The neural circuit diagram; ``.save("fig.pdf")`` writes it (.svg .pdf .png .tex)."""
        view = self._cell("Diagram")
        if view.circuit is None:
            _settle(view.state, [], lambda: view.show(self.workspace.circuit))
        _settle(view.state, [(view.depth, fold_depth or 0)])
        view.shown = True
        return view

    @_notebook_errors
    def residual(self, units: Sequence[str] | None = None, images: int = 256, samples: int = 8) -> Any:
        """Residual-expansion path plots: paths by length, gradient per length, orders, lesions."""
        view = self._cell("Residual")
        chosen = list(units) if units is not None else list(view.units.value)
        settings = PathSettings(images=images, samples=samples)
        self._warm(lambda p: self.workspace.residual_paths(chosen, settings, p))
        _settle(view.state, [(view.units, chosen), (view.images, images), (view.samples, samples)],
                view._on_compute)
        return view

    def app(self) -> pn.viewable.Viewable:
        """Every view as the page's tabs, on this workspace, with the status line under them;
        ``.servable()`` serves it."""
        state = self._open_views(tabs=True)
        return pn.Column(view_tabs(self.views), state.status, state.progress, state.cancel_button,
                         sizing_mode="stretch_width")

    # ---- helpers ---------------------------------------------------------------------------------
    def _cell(self, name: str) -> Any:
        """The view ``name`` of a new set of the page's views on this workspace, with its own status line.

        Each call shows its own objects: an earlier cell's output stays what it was, and no Bokeh model is
        owned by two cells' documents (which made a button in the second one fail without a word)."""
        state = self._open_views()
        return _in_cell(self.views[name], state)

    def _open_views(self, tabs: bool = False) -> AppState:
        """A new session on this workspace and its views (``self.views``), as the page's Load opens them; the
        one opened with the Atlas if no cell has shown it yet."""
        state, self._unshown = getattr(self, "_unshown", None), None
        if state is not None and state.tabs == tabs:
            return state
        state = AppState(self.config)
        self.views = _notebook_views(state, tabs)
        _checked(state, lambda: setattr(state, "workspace", self.workspace))
        return state

    def _warm(self, compute: Callable[[Callable[[int, int], None]], Any]) -> None:
        """Compute into the cache here, with a progress bar; the view then reads it at once."""
        with _progress_bar("computing", "step") as progress:
            compute(progress)
        self._tell_left_out()

    def _tell_left_out(self) -> None:
        """Say once (a warning under the cell) which unreadable images no result includes, as the page's
        status line does."""
        skipped = self.workspace.dataset.skipped
        if len(skipped) > getattr(self, "_told", 0):
            warnings.warn(left_out_message(skipped).replace("`", ""), UserWarning, stacklevel=3)
        self._told = len(skipped)

    @staticmethod
    def _layer_name(view: Any) -> str:
        """The backend's name of a view's chosen representation ("" for the logits)."""
        return "" if view.layer.value == LOGITS else view.layer.value


def _label_of(options: dict[str, str], value: str, what: str) -> str:
    """The widget label of a backend value (``"class"`` -> "Class")."""
    for label, key in options.items():
        if value in (key, label):
            return label
    raise NetatlasError(f"unknown {what} {value!r}: use one of {', '.join(options.values())}")


def _settle(state: AppState, changes: Sequence[tuple[Any, Any]], then: Callable[[], Coroutine | None] | None = None
            ) -> None:
    """Set widgets' values (``(widget, value)`` pairs), then run ``then``, with every watcher they trigger
    finished before the cell returns. Set from the cell itself, a value's async watchers would run on the
    kernel's loop once the cell had returned, and undo what it shows (a new layer clears the facets)."""
    def work() -> Coroutine | None:
        for widget, value in changes:
            widget.value = value
        return then() if then is not None else None
    _checked(state, work)


def _checked(state: AppState, work: Callable[[], Coroutine | None]) -> None:
    """``_run(work)``, raising what the page would have shown as an error (views report through the state),
    in the notebook's words."""
    state.status.object, state.last_error = "", None
    _run(work)
    if state.last_error is not None:
        raise NetatlasError(notebook_words(state.last_error))


def _notebook_views(state: AppState, tabs: bool = False) -> dict[str, Any]:
    """The page's views for cells, not tabs (their texts say "view"), unless ``tabs``. Building them lists the KAN checkpoints
    under the notebook's folders (those of its checkpoint and data), which opens every state_dict there with
    the safe unpickler: a file pickled with protocol 4 (not torch's 2) made torch warn on each na.open."""
    state.tabs = tabs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return build_views(state)


def _in_cell(view: Any, state: AppState) -> Any:
    """``view``, drawn in its cell with its session's status line, progress bar and Cancel under it: what a
    button pressed in the cell computes, and the error it may end with, show in that cell (the page shows
    them in its sidebar). The view stays the page's own object, with its ``.data`` and methods."""
    body = type(view).__panel__

    def framed() -> pn.viewable.Viewable:
        return pn.Column(body(view), state.status, state.progress, state.cancel_button, sizing_mode="stretch_width")
    view.__panel__ = framed
    return view


@contextlib.contextmanager
def _progress_bar(desc: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar (``tqdm.auto``: the notebook widget where ipywidgets is installed), cleared when done, that
    appears only once work is under way: a result read from the cache (no callback, or one that reports it
    complete at once) prints no empty bar."""
    from tqdm.auto import tqdm

    bars: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            if done >= total:                  # read, not computed: nothing to watch
                return
            bars.append(tqdm(unit=unit, desc=desc, leave=False))
        bar = bars[0]
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _run(work: Callable[[], Coroutine | None]) -> None:
    """Run a view's own coroutine (or a change that triggers its async watchers) to completion.

    Outside a running event loop Panel runs async watchers synchronously. In a notebook the kernel's
    loop is running and cannot be waited on from the cell, so the work runs in a thread of its own,
    where it finishes before the cell returns the view.
    """
    def complete() -> None:
        result = work()
        if asyncio.iscoroutine(result):
            asyncio.run(result)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        complete()
        return
    failure: list[BaseException] = []

    def guarded() -> None:
        try:
            complete()
        except BaseException as exc:   # re-raised in the cell below
            failure.append(exc)
    worker = threading.Thread(target=guarded, name="netatlas-notebook")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
