"""The sidebar: choose a checkpoint, its architecture and a dataset from the allowed roots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import panel as pn
import param

from netatlas.app.state import POOL, AppState
from netatlas.backend.architectures import is_import_path, torchvision_names
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import default_preprocessing, load_checkpoint, read_sidecar
from netatlas.backend.datasets import load_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.hf_cache import cached_repos, local_path, repo_label
from netatlas.backend.hf_models import hf_folder
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.timm_models import model_names as timm_model_names
from netatlas.backend.errors import NetatlasError
from netatlas.backend.pool import file_nbytes, model_key, open_workspace

DEMO_LABEL = "demo: residual CNN on MNIST"
CHANNELS = {"as the sidecar says": None, "grayscale": True, "RGB": False}
TRUST_HELP = ("Pickled checkpoints can run any code while loading. Tick only for files you made "
              "or fully trust; otherwise only tensors are read.")


class LoaderView(pn.viewable.Viewer):
    """Widgets that describe what to open, and the Load button that opens it."""

    def __init__(self, state: AppState, **params) -> None:
        super().__init__(**params)
        self.state = state
        config = state.config
        self.checkpoint = pn.widgets.Select(name="Checkpoint", sizing_mode="stretch_width")
        self.arch = pn.widgets.AutocompleteInput(
            name="Architecture", options=torchvision_names(),
            restrict=True, case_sensitive=False, min_characters=1, search_strategy="includes",
            placeholder="from the sidecar, or e.g. resnet18", sizing_mode="stretch_width")
        self.arch_kwargs = pn.widgets.TextInput(name="Architecture kwargs (JSON)", placeholder='{"num_classes": 10}',
                                                sizing_mode="stretch_width")
        self.trust = pn.widgets.Checkbox(name="Trust pickled code (runs code from the file)",
                                         value=config.trust_pickle, disabled=not config.allow_trust_pickle)
        self.pre_size = pn.widgets.TextInput(name="Input size (px)", placeholder="e.g. 224 or 28 28")
        self.pre_gray = pn.widgets.Select(name="Channels", options=list(CHANNELS), value="as the sidecar says")
        self.pre_mean = pn.widgets.TextInput(name="Mean", placeholder="e.g. 0.485 0.456 0.406")
        self.pre_std = pn.widgets.TextInput(name="Std", placeholder="e.g. 0.229 0.224 0.225")
        self.dataset = pn.widgets.Select(name="Dataset", sizing_mode="stretch_width")
        self.load_button = pn.widgets.Button(name="Load", button_type="primary", sizing_mode="stretch_width")
        self.rescan = pn.widgets.Button(name="Rescan folders", button_type="light", sizing_mode="stretch_width")
        self.load_button.on_click(self._on_load)
        self.rescan.on_click(lambda _: self.scan())
        self.checkpoint.param.watch(self._fill_from_sidecar, "value")
        state.param.watch(lambda e: setattr(self.load_button, "disabled", e.new), "busy")
        self.scan()
        self._select_initial()

    def scan(self) -> None:
        """List the checkpoints and datasets under the allowed roots (the only readable paths)."""
        roots = self.state.config.roots
        self.import_archs = self.state.config.import_architectures()
        self.arch.options = self.import_archs + torchvision_names() + timm_model_names()
        ckpts = {DEMO_LABEL: "demo"}
        ckpts.update(self._entries([p for p in roots.checkpoints() if p != demo_checkpoint()], "model"))
        data = {"demo: 5,000 MNIST digits": "demo"}
        data.update(self._entries(roots.datasets(), "dataset"))
        self.checkpoint.options, self.dataset.options = ckpts, data

    def _entries(self, paths: list[Path], kind: str) -> dict[str, str]:
        """Label -> path of what the roots hold, then of the readable Hugging Face cache's ``kind`` repos,
        named by id (the snapshot a repo opens at is the same path whichever way it was found)."""
        entries = {self._label(p): str(p) for p in paths}
        hub = self.state.config.roots.hub
        if hub is not None:
            entries.update({repo.label: str(repo.snapshot) for repo in cached_repos(hub, kind)})
        return entries

    def _label(self, path: Path) -> str:
        """A path in a hub cache snapshot by its repo id (not its 40-hex revision), else by its root."""
        return repo_label(path) or root_label(path, self.state.config.roots.roots)

    def _select_initial(self) -> None:
        config = self.state.config
        for widget, given, kind in ((self.checkpoint, config.checkpoint, "model"),
                                    (self.dataset, config.data, "dataset")):
            value = launch_value(given, kind)
            if value != "demo" and value not in widget.options.values() and Path(value).exists():
                # What the launch names is opened whether the listing found it or not (a format it does not
                # list, a folder past its depth): the sidebar must not show, and load, something else.
                widget.options = {self._label(Path(value)): value, **widget.options}
            if value in widget.options.values():
                widget.value = value
        if config.arch:
            self.arch.value = config.arch
        if config.arch_kwargs:
            self.arch_kwargs.value = json.dumps(config.arch_kwargs)

    def _fill_from_sidecar(self, event: param.parameterized.Event) -> None:
        path = demo_checkpoint() if event.new == "demo" else Path(event.new)
        if path.is_dir() and hf_folder(path) is not None:   # the class comes from its config.json
            self.arch.value, self.arch_kwargs.value = "", ""
            return
        try:
            sidecar = read_sidecar(path)
        except NetatlasError:
            sidecar = {}
        if sidecar.get("architecture") in self.arch.options:
            self.arch.value = sidecar["architecture"]
            self.arch_kwargs.value = json.dumps(sidecar.get("arch_kwargs", {}))

    async def _on_load(self, _event=None) -> None:
        await self.load()

    async def load(self) -> None:
        """Open the chosen checkpoint and dataset as the session's workspace."""
        state, config = self.state, self.state.config
        ckpt_value, data_value = self.checkpoint.value, self.dataset.value
        arch, kwargs_text, trust = self.arch.value or None, self.arch_kwargs.value.strip(), self.trust.value
        allowed = self.import_archs
        overrides = {"size": self.pre_size.value, "grayscale": CHANNELS[self.pre_gray.value],
                     "mean": self.pre_mean.value, "std": self.pre_std.value}

        def work(progress):
            if arch and is_import_path(arch) and arch not in allowed:
                raise NetatlasError(f"architecture {arch} was not offered by this server; start it "
                                    "with --arch for import paths of your own")
            ckpt = demo_checkpoint() if ckpt_value == "demo" else config.roots.check(ckpt_value)
            data = "demo" if data_value == "demo" else config.roots.check(data_value)
            kwargs = parse_kwargs(kwargs_text) if kwargs_text else None
            launched = ckpt_value in (config.checkpoint, launch_value(config.checkpoint, "model"))
            preprocessing = parse_preprocessing(overrides, lambda: default_preprocessing(ckpt, arch, kwargs).to_dict())
            if preprocessing is None and launched:
                preprocessing = config.preprocessing
            trusted = trust and config.allow_trust_pickle
            key = model_key(ckpt, arch, kwargs, preprocessing, trusted, config.device)
            launch_data = data_value in (config.data, launch_value(config.data, "dataset"))
            columns = {"image_column": config.image_column, "label_column": config.label_column} if launch_data else {}
            dataset = load_dataset(data, **columns)
            handle = open_workspace(
                POOL, key, lambda: load_checkpoint(ckpt, arch, kwargs, trust_pickle=trusted, preprocessing=preprocessing),
                dataset, ResultCache(config.cache_dir), config.device, dask=config.dask_client, source=str(data),
                estimate=file_nbytes(ckpt), label=display_name(ckpt))
            try:
                # Off the event loop: the module table needs a forward pass, and finding the residual units
                # a trace, which waits while another session's trace runs (fx traces one at a time).
                handle.value.modules  # noqa: B018
                handle.value.residual_units  # noqa: B018
            except BaseException:
                handle.release()
                raise
            return handle

        handle = await state.run(f"Loading {display_name(Path(str(ckpt_value)))}", work)
        if handle is not None:
            state.hold(handle)
            state.report_skipped()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            self.checkpoint, self.arch, self.arch_kwargs, self.trust,
            pn.pane.Markdown(TRUST_HELP, styles={"font-size": "11px", "color": "#666"}, margin=(0, 10)),
            pn.Card(pn.pane.Markdown("Blank fields keep the model's own: its sidecar's, its Hugging Face "
                                     "image processor's or its timm config's (else torchvision's ImageNet "
                                     "224 RGB).", styles={"font-size": "11px"}),
                    self.pre_size, self.pre_gray, self.pre_mean, self.pre_std, title="Preprocessing",
                    collapsed=True, sizing_mode="stretch_width"),
            self.dataset, self.load_button, self.rescan, self.state.progress, self.state.cancel_button,
            self.state.status,
            sizing_mode="stretch_width")


def launch_value(given: str, kind: str) -> str:
    """The sidebar value a launch argument stands for: "demo", or its resolved path (for a Hugging Face
    repo id or repo folder, the snapshot's), as the listing under the roots gives it."""
    if given == "demo":
        return given
    try:
        return str(local_path(given, kind).resolve())
    except NetatlasError:                 # not cached: nothing in the sidebar is it
        return str(Path(given).resolve())


def display_name(path: Path) -> str:
    """What status lines call a model: a cache snapshot by its repo id, anything else by its name."""
    return repo_label(path) or path.name


def root_label(path: Path, roots: tuple[Path, ...]) -> str:
    """How the sidebar names ``path``: under the first root holding it, as ``root/inside``; a root that is
    itself the entry (the folder given as --checkpoint or --data) as ``root/``, not ``root/.``."""
    for root in roots:
        if path == root:
            return f"{root.name}/"
        if path.is_relative_to(root):
            return f"{root.name}/{path.relative_to(root)}"
    return str(path)


def parse_kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise NetatlasError(f"architecture kwargs are not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise NetatlasError('architecture kwargs must be a JSON object, e.g. {"num_classes": 10}')
    return value


def parse_preprocessing(fields: dict, model_default: Callable[[], dict]) -> Preprocessing | None:
    """The page's preprocessing fields over the model's own (sidecar, HF image processor, timm config);
    None when every field is blank. ``model_default`` is only called when a field is filled."""
    values = {}
    for key, given in fields.items():
        if isinstance(given, str):
            try:
                given = [float(t) for t in given.replace(",", " ").split()] or None
            except ValueError as exc:
                raise NetatlasError(f"preprocessing {key} must be numbers separated by spaces, got {given!r}") from exc
        values[key] = given
    if all(v is None for v in values.values()):
        return None
    return Preprocessing.overriding(model_default(), **values)
