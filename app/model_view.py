"""The Model tab: what was loaded, and its module tree with output shapes and parameter counts; for a model
without predictions (no classifier head for the dataset's classes), the one place the page says why."""

from __future__ import annotations

import pandas as pd
import panel as pn
import param

from netatlas.app.state import AppState
from netatlas.backend.workspace import Workspace


NUMBERS = ("units", "params", "trainable")   # the module table's counts


class ModelView(pn.viewable.Viewer):
    def __init__(self, state: AppState, **params) -> None:
        super().__init__(**params)
        self.state = state
        self._chance_shown = ""
        self.summary = pn.pane.Markdown("Load a checkpoint to see its modules.", sizing_mode="stretch_width",
                                       css_classes=["na-model-summary"])
        # Counts keep Panel's own number format (thousands separated, right-aligned), titles over them too: a
        # Tabulator formatter of our own drops that alignment (params were left-aligned beside right-aligned units).
        self.tree = pn.widgets.Tabulator(
            None, show_index=False, disabled=True, sizing_mode="stretch_width", height=600,
            pagination=None, layout="fit_data_stretch", css_classes=["na-module-tree"],
            header_align={name: "right" for name in NUMBERS})
        state.param.watch(self._update, "workspace")
        state.param.watch(self._after_work, "busy")   # the first pass may find an accuracy at chance

    def _after_work(self, event: param.parameterized.Event) -> None:
        ws = self.state.workspace
        if not event.new and ws is not None and ws.chance_note != self._chance_shown:
            self._update(None)

    def _update(self, event: param.parameterized.Event | None) -> None:
        ws: Workspace | None = self.state.workspace if event is None else event.new
        if ws is None:
            return
        self._chance_shown = ws.chance_note
        table = ws.modules
        loaded, dataset = ws.loaded, ws.dataset
        total = int(table["params"].iloc[0])
        note = ws.predictions_note                  # "" when the model predicts the dataset's classes
        accuracy = loaded.sidecar.get("test_accuracy") if not note else None
        lines = [
            f"### {loaded.path.name}",
            f"**format** {loaded.format} · **architecture** `{loaded.arch or type(loaded.model).__name__}` · "
            f"**parameters** {total:,} · **input** {'x'.join(map(str, loaded.input_shape[1:]))} · "
            f"**device** {ws.device}",
            f"**dataset** {dataset.name}: {len(dataset):,} images, {len(dataset.classes)} classes"
            + (f" · **held-out accuracy (sidecar)** {accuracy:.2%}" if isinstance(accuracy, float) else "")
            + (f" · {len(dataset.skipped)} unreadable files skipped (first: `{dataset.skipped[0]}`)"
               if dataset.skipped else ""),
        ]
        if note:
            lines.append(f"**No predictions**: {note}")
        if ws.chance_note and not note:
            lines.append(f"**Hint**: {ws.chance_note}")
        lines += [f"*note: {n}*" for n in loaded.notes]
        self.summary.object = "\n\n".join(lines)
        shown = table[["name", "type", "output_shape", *NUMBERS]].copy()
        shown["name"] = ["\u2003" * d + n for d, n in zip(table["depth"], table["name"])]
        self.tree.value = shown

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.summary, self.tree, sizing_mode="stretch_width")

    @property
    def data(self) -> pd.DataFrame:
        """The module table shown: one row per module (name, type, output shape, units, parameters, ...)."""
        ws = self.state.workspace
        return pd.DataFrame() if ws is None else ws.modules.copy()
