"""The four residual-path figures: per-unit branch statistics, Veit's path trio, the order-k
decomposition against its idealisations, and lesion curves.

A report's ``meta["mode"]`` says what the lesions and gradients were measured against: a classifier's
accuracy and loss ("labels", also a report without the key), or, for a model with no classifier head,
the cosine similarity to the intact output and the output's norm ("output"); axis labels say which."""

from __future__ import annotations

from typing import Sequence

import holoviews as hv
import numpy as np
import pandas as pd

from netatlas.backend.residual.paths import ResidualReport
from netatlas.viz.styling import PAGE_SCROLLS, PANEL, WIDE, styled

COLORS = {"ratio": "#4c78a8", "cos": "#f58518", "gain": "#54a24b", "scale": "#b279a2",
          "exact": "#1f3b73", "estimate": "#e45756", "ideal": "#9d9d9d"}
_MPL_TITLE = {"fontsize": {"title": 10, "labels": 9, "xticks": 8, "yticks": 8}}
MAX_LOG_TICKS = 6       # a log axis labels whole decades only, at most this many (every 2nd, 3rd... if more)
LOG_FORMAT = "%.0e"     # 1e-03: one label per decade, none overlapping


_SMALL_TITLE = {"fontsize": {"title": "10pt"}}    # a third of the page's width: the whole title fits


def decade_axis(values) -> tuple[tuple[float, float], list[float]]:
    """A log axis over the positive ``values``: limits on whole decades around them and one tick per
    decade (every k-th when there are more than ``MAX_LOG_TICKS``), so labels never crowd."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not len(finite):
        return (0.1, 10.0), [0.1, 1.0, 10.0]
    low, high = int(np.floor(np.log10(finite.min()))), int(np.ceil(np.log10(finite.max())))
    high = max(high, low + 1)
    step = -(-(high - low + 1) // MAX_LOG_TICKS)
    return (10.0 ** low, 10.0 ** high), [10.0 ** k for k in range(low, high + 1, step)]


def residual_figures(report: ResidualReport) -> dict[str, hv.core.Dimensioned]:
    """The figures by name (``blocks``, ``paths``, ``orders``, ``lesions``), ready for page or file."""
    return {"blocks": unit_statistics(report.units), "paths": path_trio(report.paths, report.meta),
            "orders": order_decomposition(report.orders, report.meta),
            "lesions": lesion_curves(report.lesions, report.lesions_k, report.reorder, report.meta)}


def unit_names(labels: Sequence[str]) -> list[str]:
    """Unit labels short enough for an axis: the module path they all share is left out
    (``encoder.layers.encoder_layer_0 add 1`` -> ``encoder_layer_0 add 1``), never down to a bare number."""
    parts = [str(label).split(".") for label in labels]
    common = 0
    while (all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1
           and not any(".".join(p[common + 1:]).isdigit() for p in parts)):
        common += 1
    names = [".".join(p[common:]) for p in parts]
    return names if len(set(names)) == len(names) else [str(label) for label in labels]


def unit_statistics(units: pd.DataFrame) -> hv.Overlay:
    """||f(x)||/||x||, cos(f(x), x), the Jacobian gain and any learned branch scale, unit by unit in depth order."""
    series = [("ratio", "||f(x)|| / ||x||"), ("cos", "cos(f(x), x)"), ("gain", "Jacobian gain g")]
    if "scale" in units and units["scale"].notna().any():
        series.append(("scale", "learned branch scale"))
    ordered = units.sort_values("depth")
    layers = []
    for column, label in series:
        data = pd.DataFrame({"unit": unit_names(ordered["unit"]), "value": ordered[column].to_numpy(),
                             "module": ordered["unit"].to_numpy()})
        finite = np.isfinite(data["value"].to_numpy(float))   # a unit without a learned scale (NaN) or a
        if not finite.any():                                   # ratio over only zero skips (inf): a gap, every
            continue                                           # unit kept on the axis in depth order
        data.loc[~finite, "value"] = np.nan
        curve = hv.Curve(data, "unit", ["value", "module"], label=label)
        points = hv.Scatter(data, "unit", ["value", "module"], label=label)
        layers += [styled(curve, {"color": COLORS[column]}),
                   styled(points, {"color": COLORS[column]}, {"size": 7, "tools": ["hover"]}, {"s": 20})]
    zero = styled(hv.HLine(0), {"color": "#bbbbbb"}, {"line_width": 1}, {"linewidth": 1})
    return styled(hv.Overlay([zero, *layers]), {
        "title": "Per residual unit", "xlabel": "residual unit (depth order)", "ylabel": "value"},
        {**WIDE["bokeh"], "legend_position": "right", "xrotation": 45, **PAGE_SCROLLS},
        {**WIDE["matplotlib"], **_MPL_TITLE, "xrotation": 45})


def gradient_symbol(meta: dict | None) -> str:
    """What the path gradients differentiate: a loss L (a classifier), or the output's norm |y|."""
    return "d|y|/dx" if (meta or {}).get("mode") == "output" else "dL/dx"


def path_trio(paths: pd.DataFrame, meta: dict | None = None) -> hv.Layout:
    """Veit et al.'s three plots: paths per length, gradient per path length, effective paths."""
    n = int(paths["k"].max())
    d = gradient_symbol(meta)
    count = styled(hv.Bars(paths, "k", "count"), {
        "title": f"Paths by length (2^{n} in all)", "xlabel": "path length k", "ylabel": "paths C(n, k)",
        "color": COLORS["ratio"]}, {**PANEL["bokeh"], "tools": ["hover"], **PAGE_SCROLLS, **_SMALL_TITLE},
        {**PANEL["matplotlib"], **_MPL_TITLE})
    grad = _with_errors(paths, "grad_mean", "grad_sem", "Gradient per path length",
                        f"mean ||{d}|| (log)", COLORS["exact"])
    effective = _with_errors(paths, "effective", "effective_sem", "Effective paths (count x grad)",
                             f"total ||{d}|| (log)", COLORS["estimate"])
    return hv.Layout([count, grad, effective]).cols(3).opts(shared_axes=False, backend="bokeh")


def _with_errors(paths: pd.DataFrame, value: str, error: str, title: str, ylabel: str,
                 color: str) -> hv.Overlay:
    data, title = _drawable_on_log(paths[["k", value, error, "samples"]], value, title)
    data["low"] = (data[value] - data[error]).clip(lower=data[value] * 0.05)   # error bars stay above 0
    curve = styled(hv.Curve(data, "k", value), {"color": color})
    points = styled(hv.Scatter(data, "k", [value, error, "samples"]), {"color": color},
                    {"size": 6, "tools": ["hover"]}, {"s": 15})
    bars = styled(hv.ErrorBars((data["k"], data[value], data[value] - data["low"], data[error]),
                               vdims=["y", "yerrneg", "yerrpos"]), {"color": color})
    ylim, yticks = decade_axis(np.concatenate([data[value].to_numpy(float), data["low"].to_numpy(float),
                                               (data[value] + data[error]).to_numpy(float)]))
    return styled(hv.Overlay([curve, points, bars]), {
        "title": title, "xlabel": "path length k", "ylabel": ylabel, "logy": True, "ylim": ylim, "yticks": yticks},
        {**PANEL["bokeh"], "yformatter": LOG_FORMAT, **PAGE_SCROLLS, **_SMALL_TITLE},
        {**PANEL["matplotlib"], **_MPL_TITLE})


def order_decomposition(orders: pd.DataFrame, meta: dict) -> hv.Overlay:
    """Share of the output in each order k, with the idealised C(n,k) lambda^k for three lambdas."""
    n = int(orders["k"].max())
    layers = []
    ideals = [("ideal_1", "idealised, lambda = 1"), ("ideal_inv_sqrt_n", "idealised, lambda = 1/sqrt(n)"),
              ("ideal_inv_n", "idealised, lambda = 1/n")]
    for (column, label), dash in zip(ideals, ("dotted", "dashdot", "dashed")):
        layers.append(_share_curve(orders, column, label, COLORS["ideal"], dash))
    if "exact_share" in orders:
        layers.append(_share_curve(orders, "exact", "exact (Moebius over 2^n masks)", COLORS["exact"], "solid"))
    layers.append(_share_curve(orders, "estimate", "estimate e_k(g) from Jacobian gains", COLORS["estimate"],
                               "solid"))
    ylim, yticks = decade_axis(np.concatenate([layer.dimension_values("share") for layer in layers]))
    return styled(hv.Overlay(layers), {
        "title": f"Order-k decomposition, n = {n} (grey: idealisations, exact only for linear branches)",
        "xlabel": "order k (branches in the term)",
        "ylabel": "share of sum ||Delta_S|| (log)", "logy": True, "ylim": ylim, "yticks": yticks},
        {**WIDE["bokeh"], "legend_position": "right", "yformatter": LOG_FORMAT, **PAGE_SCROLLS},
        {**WIDE["matplotlib"], **_MPL_TITLE})


def _drawable_on_log(data: pd.DataFrame, column: str, title: str) -> tuple[pd.DataFrame, str]:
    """The rows a log axis can show (positive values), and the title saying which orders were left out."""
    keep = data[column].to_numpy() > 0          # NaN compares False: left out too
    if keep.all():
        return data.copy(), title
    dropped = ", ".join(str(int(k)) for k in data.loc[~keep, "k"])
    return data[keep].copy(), f"{title} (k = {dropped} not drawn: 0)"


def _share_curve(orders: pd.DataFrame, column: str, label: str, color: str, dash: str) -> hv.Curve:
    data = pd.DataFrame({"k": orders["k"], "share": orders[f"{column}_share"], "weight": orders[column]})
    data, label = _drawable_on_log(data, "share", label)
    curve = styled(hv.Curve(data, "k", ["share", "weight"], label=label), {"color": color},
                   {"line_dash": dash, "tools": ["hover"]}, {"linestyle": _MPL_DASH[dash]})
    return curve


_MPL_DASH = {"solid": "-", "dashed": "--", "dotted": ":", "dashdot": "-."}


def lesion_curves(lesions: pd.DataFrame, lesions_k: pd.DataFrame, reorder: pd.DataFrame,
                  meta: dict) -> hv.Layout:
    """The score (accuracy, or for a model without a classifier the cosine similarity to the intact
    output) after removing one unit, k random units (mean +- sd), and after reordering blocks."""
    column = meta.get("score", "accuracy")
    output = meta.get("mode") == "output"
    base = float(meta.get("baseline", meta.get("baseline_accuracy", 1.0 if output else np.nan)))
    baseline = styled(hv.HLine(base), {"color": "#888888"}, {"line_dash": "dashed"}, {"linestyle": "--"})
    axes = {"ylabel": "cosine to the intact output" if output else "accuracy",
            "ylim": (_score_floor(lesions[column], lesions_k["mean"] - lesions_k["sd"], reorder[column])
                     if output else 0, 1.06)}                      # room for a marker at 1
    small_b, small_m = {**PANEL["bokeh"], **PAGE_SCROLLS, **_SMALL_TITLE}, {**PANEL["matplotlib"], **_MPL_TITLE}
    lesions = lesions.assign(module=lesions["unit"], unit=unit_names(lesions["unit"]))
    single = styled(hv.Bars(lesions, "unit", [column, "module"]), {
        "title": "One unit removed", "xlabel": "removed unit", "color": COLORS["ratio"], **axes},
        {**small_b, "tools": ["hover"], "xrotation": 45}, {**small_m, "xrotation": 45})
    k_data = lesions_k.assign(low=lesions_k["mean"] - lesions_k["sd"], high=lesions_k["mean"] + lesions_k["sd"])
    k_curve = styled(hv.Curve(k_data, "k", ["mean", "sd"]), {"color": COLORS["estimate"]},
                     {"tools": ["hover"]})
    k_spread = styled(hv.Spread((k_data["k"], k_data["mean"], k_data["sd"])), {"alpha": 0.25},
                      {"color": COLORS["estimate"]}, {"facecolor": COLORS["estimate"]})
    k_plot = styled(hv.Overlay([k_spread, k_curve, baseline]), {
        "title": "k random units removed", "xlabel": "units removed k", **axes}, small_b, small_m)
    r_points = styled(hv.Scatter(reorder, "tau", [column, "swaps"]), {"color": COLORS["exact"]},
                      {"size": 8, "tools": ["hover"]}, {"s": 25})
    r_plot = styled(hv.Overlay([r_points, baseline]), {
        "title": "Blocks reordered", "xlabel": "Kendall tau to the original order",
        "xlim": (min(-0.1, float(reorder["tau"].min()) - 0.1), 1.1), **axes}, small_b, small_m)   # tau = 1 whole
    return hv.Layout([styled(hv.Overlay([single, baseline]), {}, small_b, small_m), k_plot, r_plot]).cols(3)


def _score_floor(*values: pd.Series) -> float:
    """The lower end of a cosine axis: 0, or below the lowest finite value shown (cosines reach -1)."""
    finite = [float(v) for series in values for v in np.asarray(series, float) if np.isfinite(v)]
    return min([0.0] + [max(-1.02, v - 0.05) for v in finite])
