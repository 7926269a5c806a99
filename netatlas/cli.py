"""``netatlas``: the headless side of the app (inspect a model, extract activations, serve)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from netatlas.app.arguments import add_serve_args
from netatlas.backend.arguments import (add_cache_args, add_dask_args, add_data_args, add_model_args,
                                        dataset_from_args, load_from_args, preprocessing_from_args)
from netatlas.backend.errors import NetatlasError, first_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except NetatlasError as exc:
        print(f"netatlas: error: {' '.join(line.strip() for line in str(exc).splitlines() if line.strip())}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last net: a bug or an unconverted failure, still one line, never a traceback
        if os.environ.get("NETATLAS_DEBUG", "") not in ("", "0"):
            raise
        print(f"netatlas: error: {args.command} failed unexpectedly ({first_line(exc)}); "
              "set NETATLAS_DEBUG=1 for the traceback", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netatlas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="module tree with output shapes and parameter counts")
    add_model_args(info)
    add_cache_args(info)   # nothing of info is cached, but a script passes the same flags to every command
    info.set_defaults(run=cmd_info)

    extract = sub.add_parser("extract", help="activations of chosen layers on a dataset, to Parquet")
    add_model_args(extract)
    add_data_args(extract)
    extract.add_argument("--layers", nargs="+", default=[], metavar="NAME",
                         help="module names (see `netatlas info`); logits are always kept")
    extract.add_argument("-o", "--output", required=True, type=Path, help="output .parquet file")
    extract.add_argument("--reduction", choices=("mean", "max"), default="mean",
                         help="how conv maps become one value per channel (default: mean)")
    extract.add_argument("--batch-size", type=int, default=256)
    add_cache_args(extract)
    add_dask_args(extract)
    extract.set_defaults(run=cmd_extract)

    paths = sub.add_parser("paths", help="residual-expansion path plots (Veit trio, order-k, lesions)")
    add_model_args(paths)
    add_data_args(paths)
    paths.add_argument("-o", "--output", required=True, type=Path, help="folder for the plots and tables")
    paths.add_argument("--units", nargs="+", default=None, metavar="MODULE",
                       help="residual modules to use (default: every one found; `module#i` for one add)")
    paths.add_argument("--images", type=int, default=256, help="held-out images to measure on (default 256)")
    paths.add_argument("--samples", type=int, default=8, help="sampled subsets per path length (default 8)")
    paths.add_argument("--formats", nargs="+", default=["svg", "pdf", "png"], choices=["svg", "pdf", "png"])
    paths.add_argument("--dpi", type=int, default=200, help="PNG resolution (default 200)")
    add_cache_args(paths)
    paths.set_defaults(run=cmd_paths)

    featviz = sub.add_parser("featviz", help="multifaceted feature visualization of one unit")
    add_model_args(featviz)
    add_data_args(featviz)
    featviz.add_argument("--layer", default="", help="module name (default: the class logits)")
    featviz.add_argument("--unit", type=int, required=True, help="channel, feature or class index")
    featviz.add_argument("-k", type=int, default=4, help="facets, 1-10 (default 4)")
    featviz.add_argument("--optimizer", choices=("paper", "lucid"), default="paper")
    featviz.add_argument("--start", choices=("mean", "noise"), default="mean",
                         help="start from each facet's mean image (the paper) or from noise")
    featviz.add_argument("--steps", type=int, default=200)
    featviz.add_argument("--diversity", type=float, default=0.0, help="weight of the diversity term")
    featviz.add_argument("--seed", type=int, default=0)
    featviz.add_argument("-o", "--output", required=True, type=Path, help="folder for images and the card")
    add_cache_args(featviz)
    featviz.set_defaults(run=cmd_featviz)

    from netatlas.backend.cluster.tree import TreeSettings  # numpy and scipy only: --help stays quick

    cluster = sub.add_parser("cluster", help="the dataset's cluster tree (DendroMap), cached in Parquet")
    add_model_args(cluster)
    add_data_args(cluster)
    cluster.add_argument("--layer", default=None,
                         help="representation to cluster (default: the penultimate layer; '' for the logits)")
    cluster.add_argument("--reduction", choices=("mean", "max"), default="mean")
    cluster.add_argument("-k", type=int, default=8, help="top-level clusters to list (default 8)")
    cluster.add_argument("--exact-threshold", type=int, default=TreeSettings.exact_threshold,
                         help="exact Ward up to this many images, micro-clusters above (default %(default)s)")
    cluster.add_argument("--micro-size", type=int, default=TreeSettings.micro_size,
                         help="images per k-means micro-cluster above the threshold (default %(default)s)")
    cluster.add_argument("-o", "--output", type=Path, default=None,
                         help="also write the tree's node table (one row per node) to this .parquet")
    add_cache_args(cluster)
    cluster.set_defaults(run=cmd_cluster)

    embed = sub.add_parser("embed", help="2-D UMAP map of a representation (the Map tab), cached in Parquet")
    add_model_args(embed)
    add_data_args(embed)
    embed.add_argument("--layer", default=None,
                       help="representation to map (default: the penultimate layer; '' for the logits)")
    embed.add_argument("--reduction", choices=("mean", "max"), default="mean")
    embed.add_argument("--method", choices=("umap", "pca"), default="umap")
    embed.add_argument("--neighbors", type=int, default=15, help="UMAP n_neighbors (default 15)")
    embed.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist (default 0.1)")
    embed.add_argument("--fit-sample", type=int, default=200_000,
                       help="UMAP is fitted on at most this many images; the rest are placed (default 200000)")
    embed.add_argument("--seed", type=int, default=None,
                       help="seed; -1 for none, which lets UMAP use every core (default, as the app: "
                            "0 up to 50,000 images, none above)")
    embed.add_argument("-o", "--output", type=Path, default=None,
                       help="write index, id, label, prediction, x, y, fitted to this .parquet")
    embed.add_argument("--png", type=Path, default=None, help="also render the map, coloured by class, to a PNG")
    add_dask_args(embed)
    add_cache_args(embed)
    embed.set_defaults(run=cmd_embed)

    diagram = sub.add_parser("diagram", help="neural circuit diagram of the model, as SVG/PDF/PNG/TikZ")
    add_model_args(diagram)
    diagram.add_argument("-o", "--output", required=True, type=Path, action="append",
                         help="output file, .svg .pdf .png or .tex (repeatable)")
    diagram.add_argument("--fold-depth", type=int, default=None, metavar="D",
                         help="draw modules at depth D as boxes (1: the top-level modules); default: open all")
    diagram.add_argument("--layout", choices=("LR", "TB"), default="LR", help="left to right (default) or top down")
    diagram.add_argument("--unfold", nargs="+", default=[], metavar="MODULE", help="modules to open anyway")
    diagram.add_argument("--unroll", nargs="+", default=[], metavar="MODULE",
                         help="folded runs (named by their first block) to draw block by block")
    diagram.add_argument("--no-fold", action="store_true", help="do not fold repeated blocks into xN")
    diagram.add_argument("--sizes", action="store_true", help="write sizes on the wires (C=64), not only symbols")
    diagram.add_argument("--rename", nargs="+", default=[], metavar="SYMBOL=NAME",
                         help="name axis symbols, e.g. D2=d_model S=seq (a digit stands for its subscript)")
    diagram.add_argument("--input-key", default=None, metavar="KEY",
                         help="the model's forward takes a dict: pass the image batch under KEY")
    diagram.add_argument("--dpi", type=int, default=200, help="PNG resolution (default 200)")
    diagram.set_defaults(run=cmd_diagram)

    kan = sub.add_parser("kan", help="KAN activation curves: network, edge importance, curves, formulas")
    kan.add_argument("checkpoint", help="pykan's <name>_state (beside its _config.yml and _cache_data), or a "
                     "state_dict/.safetensors of efficient-kan, FastKAN, ChebyKAN, FourierKAN, ReLU-KAN, TruKAN "
                     "or AF-KAN; 'demo' for the shipped pykan demo")
    kan.add_argument("-o", "--out", required=True, type=Path, help="folder for the figures and CSV files")
    kan.add_argument("--family", default=None, help="the KAN library, when detection from the keys is not enough")
    kan.add_argument("--option", nargs="+", default=[], metavar="NAME=VALUE",
                     help="what the keys do not store, e.g. k=3 (the error lists each family's options)")
    kan.add_argument("--sample", type=Path, default=None,
                     help="inputs [N, in] (.npy, .npz, .pt, .csv) drawn behind the curves and ranking the edges")
    kan.add_argument("--layer", type=int, nargs="+", default=None, help="layers to draw (default: all)")
    kan.add_argument("--top", type=int, default=16, help="draw each layer's N most important edges (default 16)")
    kan.add_argument("--edges", nargs="+", default=None, metavar="I:J",
                     help="draw these edges (input I -> output J) instead of the top ones")
    kan.add_argument("--parts", action="store_true", help="draw base and spline parts beside each total")
    kan.add_argument("--suggest", action="store_true", help="fit c*f(a*x+b)+d to each drawn edge, rank formulas")
    kan.add_argument("--format", nargs="+", default=["svg"], choices=("svg", "pdf", "png"), dest="formats")
    kan.add_argument("--trust-pickle", action="store_true",
                     help="load a pickled module (runs code from the file); state_dicts need no trust")
    kan.set_defaults(run=cmd_kan)

    serve = sub.add_parser("serve", help="serve the app (same options as launch.py)")
    add_serve_args(serve)
    serve.set_defaults(run=cmd_serve)
    return parser


@contextlib.contextmanager
def progress_bar(desc: str, unit: str, notebook: bool = False,
                 stages: Sequence[tuple[str, str]] = ()) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar driven by the backend's (done, total) progress callbacks: on stderr for the CLI, or
    ``tqdm.auto``'s (the notebook widget where ipywidgets is installed), cleared when done, for a notebook.

    A bar only goes forward. A command's work can run in stages that report through one callback, each
    from 0 to its own total (a pass over the images, then the tree); a report that starts over (a new
    total, or fewer done than shown) finishes the current bar where it stands and opens the next one,
    named by ``stages`` ((name, unit) in order: "cluster: tree") or else numbered ("cluster (2)").
    """
    if notebook:
        from tqdm.auto import tqdm
        options = {"leave": False}
    else:
        from tqdm import tqdm
        options = {"file": sys.stderr}

    def stage_bar(index: int):
        if index < len(stages):
            name, stage_unit = stages[index]
            return tqdm(unit=stage_unit, desc=f"{desc}: {name}", **options)
        return tqdm(unit=unit, desc=desc if index == 0 else f"{desc} ({index + 1})", **options)

    current = {"index": 0, "bar": stage_bar(0)}

    def progress(done: int, total: int) -> None:
        bar = current["bar"]
        if bar.total is not None and (total != bar.total or done < bar.n):   # the next stage began
            bar.close()
            current["index"] += 1
            bar = current["bar"] = stage_bar(current["index"])
        if bar.total != total:
            bar.total = total
        bar.update(max(0, done - bar.n))

    try:
        yield progress
    finally:
        current["bar"].close()


def workspace_from_args(args: argparse.Namespace, dataset, batch_size: int = 256,
                        resources: contextlib.ExitStack | None = None):
    """The Workspace the model, cache, device and --dask arguments describe, over ``dataset``.

    With --dask the Dask client is entered on ``resources``, so it lives as long as the command's
    ExitStack (and a LocalCluster is shut down with it).
    """
    from netatlas.backend.cache import ResultCache
    from netatlas.backend.workspace import Workspace

    loaded, client = load_from_args(args), None
    if getattr(args, "dask", None):
        from netatlas.backend.sharded import connect

        if resources is None:
            raise ValueError("workspace_from_args needs an ExitStack to keep the --dask client open")
        client = resources.enter_context(connect(args.dask))
    return Workspace(loaded, dataset, ResultCache(args.cache_dir), args.device, batch_size,
                     dask=client, source=getattr(args, "data", None))


def cmd_info(args: argparse.Namespace) -> int:
    from netatlas.backend.hf_cache import repo_label
    from netatlas.backend.model_info import describe_model

    loaded = load_from_args(args)
    table = describe_model(loaded.model, loaded.input_shape)
    name = repo_label(loaded.path) or loaded.path.name      # a cached hub model by its id, not its revision
    print(f"{name}  format={loaded.format}  arch={loaded.arch or '-'}  "
          f"input={'x'.join(map(str, loaded.input_shape))}")
    for note in loaded.notes:
        print(f"note: {note}")
    rows = [("  " * r.depth + r.name, str(r.type), str(r.output_shape), f"{r.params:,}") for r in table.itertuples()]
    for line in aligned_table(("module", "type", "output", "params"), rows, INFO_COLUMN_LIMITS, right=(3,)):
        print(line)
    return 0


INFO_COLUMN_LIMITS = (64, 40, 28, 20)   # a longer cell is cut, with an ellipsis, so the columns stay aligned


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis in the middle (both ends of a dotted module
    name or a class name say the most); leading indentation is kept."""
    if len(text) <= width:
        return text
    body = text.lstrip(" ")
    indent = text[:len(text) - len(body)][:max(0, width - 8)]
    room = width - len(indent) - 1
    head = (room + 1) // 2
    return indent + body[:head] + "…" + body[len(body) - (room - head):]


def aligned_table(header: Sequence[str], rows: Sequence[Sequence[str]], limits: Sequence[int],
                  right: Sequence[int] = ()) -> list[str]:
    """Lines of a text table whose columns are as wide as their widest cell (cut to ``limits``), two
    spaces apart; ``right`` names the right-aligned columns (numbers)."""
    cells = [[clip(str(c), limit) for c, limit in zip(row, limits)] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in cells]


def cmd_extract(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from netatlas.backend.class_stats import labelled_accuracy

    with contextlib.ExitStack() as resources:
        workspace = workspace_from_args(args, dataset_from_args(args), args.batch_size, resources)
        with progress_bar("extract", "img") as progress:
            acts = workspace.activations(args.layers, args.reduction, progress)
    dataset = workspace.dataset               # the readable images: the pass has found the others
    report_left_out(workspace)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(workspace.table(acts), args.output, compression="zstd")
    acc = labelled_accuracy(dataset.labels, acts.predictions)
    print(f"wrote {args.output}: {len(dataset)} images, layers {', '.join(args.layers) or '(outputs only)'}"
          + (f", accuracy {acc:.4f}" if acc is not None else ""))
    report_chance(workspace)
    return 0


def report_chance(workspace) -> None:
    """On stderr, one line when the accuracy is at chance (``class_stats.chance_hint``): check the preprocessing."""
    if workspace.chance_note:
        print(f"hint: {workspace.chance_note}", file=sys.stderr)


def report_left_out(workspace) -> None:
    """On stderr: the images left out of every result (unreadable when decoded), and why there are no
    predictions when the model has no classifier head for this dataset."""
    skipped = workspace.dataset.skipped
    if skipped:
        names = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(f"left out {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} ({names}): no rows, "
              "no predictions, not in any result", file=sys.stderr)
    if workspace.predictions_note:
        print(f"no predictions: {workspace.predictions_note}", file=sys.stderr)


def cmd_paths(args: argparse.Namespace) -> int:
    from netatlas.backend.residual.paths import PathSettings
    from netatlas.viz.residual import residual_figures
    from netatlas.viz.styling import export

    workspace = workspace_from_args(args, dataset_from_args(args))
    settings = PathSettings(images=args.images, samples=args.samples)
    with progress_bar("residual paths", "pass", stages=(("images", "img"), ("passes", "pass"))) as progress:
        report = workspace.residual_paths(args.units, settings, progress)
    report_left_out(workspace)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, frame in ((s, getattr(report, s)) for s in report.SECTIONS):
        frame.to_csv(args.output / f"{name}.csv", index=False)
    (args.output / "meta.json").write_text(report.meta_json() + "\n")
    written = [export(figure, args.output / f"residual_{name}.{fmt}", dpi=args.dpi)
               for name, figure in residual_figures(report).items() for fmt in args.formats]
    meta = report.meta
    measured = (f"no classifier head, so measured against the model's output: lesions and reorders scored by "
                f"the {meta['score_label']}, gradients of {meta['gradient_of']}" if meta.get("mode") == "output"
                else f"baseline accuracy {meta['baseline_accuracy']:.4f}")
    print(f"wrote {len(written)} figures and {len(report.SECTIONS)} tables to {args.output}: "
          f"{meta['n_units']} residual units, {meta['images']} images, {measured}")
    return 0


def cmd_featviz(args: argparse.Namespace) -> int:
    from PIL import Image
    from netatlas.backend.facets import FacetSettings
    from netatlas.backend.featviz import FeatvizSettings
    from netatlas.backend.neurons import top_bottom
    from netatlas.viz.facets import facets_csv, neuron_card, save_card, text_summary

    workspace = workspace_from_args(args, dataset_from_args(args))
    facet_settings = FacetSettings(k=args.k, start=args.start, seed=args.seed)
    featviz_settings = FeatvizSettings(optimizer=args.optimizer, steps=args.steps, diversity=args.diversity,
                                       seed=args.seed)
    with progress_bar("featviz", "step") as progress:
        report = workspace.facets(args.layer, args.unit, facet_settings, featviz_settings, progress)
    acts = workspace.activations([args.layer] if args.layer else [])
    values = (acts.layers[args.layer] if args.layer else acts.logits)[:, args.unit]
    dataset = workspace.dataset               # the readable images, which the report's indices count
    report_left_out(workspace)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(report.images):
        Image.fromarray(image).save(out / f"facet_{i + 1}.png")
    (out / "facets.csv").write_text(facets_csv(report))
    top, bottom = top_bottom(values, 8)
    exemplars = [[dataset.read(int(i)) for i in e] for e in report.exemplars]
    title = f"{args.layer or ('model output' if workspace.predictions_note else 'logits')} · unit {args.unit}"
    for fmt in ("png", "svg", "pdf"):
        card = neuron_card(report, exemplars, values, [dataset.read(int(i)) for i in top],
                           [dataset.read(int(i)) for i in bottom], title)
        save_card(card, out / f"neuron_card.{fmt}")
    print(f"wrote {len(report.images)} facets, facets.csv and neuron_card.png/svg/pdf to {out}")
    for line in text_summary(report):
        print(f"  {line}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    import numpy as np

    from netatlas.backend.cluster.tree import TreeSettings

    if args.exact_threshold < 1 or args.micro_size < 2 or not 1 <= args.k <= 1000:
        raise NetatlasError("--exact-threshold must be >= 1, --micro-size >= 2 and -k between 1 and 1000")
    workspace = workspace_from_args(args, dataset_from_args(args))
    settings = TreeSettings(exact_threshold=args.exact_threshold, micro_size=args.micro_size)
    with progress_bar("cluster", "step", stages=(("images", "img"), ("tree", "step"))) as progress:
        tree = workspace.cluster_tree(args.layer, args.reduction, settings, progress)
    dataset = workspace.dataset
    report_left_out(workspace)
    meta = tree.meta
    print(f"{meta['method']} tree of {tree.n_images:,} images on {meta.get('layer') or 'the outputs'} "
          f"({meta['dims']} dims) in {meta['seconds']:.2f} s"
          + (f", {meta['micro_clusters']:,} micro-clusters" if meta["micro_clusters"] else ""))
    report_chance(workspace)                  # the root's accuracy is the dataset's
    scored = workspace.predicts and dataset.labeled
    print(f"{'node':>8} {'images':>8}" + (f" {'accuracy':>9}" if scored else "")
          + f" {'height':>10}  majority class         medoid")
    for node in tree.frontier(tree.root, args.k):
        counts = tree.classes_of(node, dataset.labels, len(dataset.classes))
        major = int(np.argmax(counts)) if counts.sum() else -1
        share = f"{dataset.class_name(major)} ({counts[major] / counts.sum():.0%})" if major >= 0 else "-"
        acc = tree.accuracy[node]
        print(f"{node:>8} {tree.count[node]:>8,}" + (f" {'-' if np.isnan(acc) else f'{acc:.1%}':>9}" if scored else "")
              + f" {tree.height[node]:>10.4g}  {share:<22} {dataset.ids[tree.medoid[node]]}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(tree.to_table(), args.output, compression="zstd")
        print(f"wrote {args.output}: {len(tree.left):,} nodes (leaves 0..{tree.n_images - 1} are the images)")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from netatlas.backend.embedding import EmbedSettings, default_seed

    if args.neighbors < 2 or args.fit_sample < 3 or not 0 <= args.min_dist <= 1:
        raise NetatlasError("--neighbors must be >= 2, --fit-sample >= 3 and --min-dist between 0 and 1")
    start = time.perf_counter()
    with contextlib.ExitStack() as resources:
        workspace = workspace_from_args(args, dataset_from_args(args), resources=resources)
        progress = resources.enter_context(   # after the model opened (or failed)
            progress_bar("embed", "img", stages=(("images", "img"), ("map", "img"))))
        workspace.representation(args.layer, args.reduction, progress)  # the pass finds the readable images,
        dataset = workspace.dataset                                      # whose count sets the default seed
        seed = default_seed(len(dataset)) if args.seed is None else None if args.seed < 0 else args.seed
        settings = EmbedSettings(method=args.method, n_neighbors=args.neighbors, min_dist=args.min_dist,
                                 fit_sample=args.fit_sample, seed=seed)
        result = workspace.embedding(args.layer, args.reduction, settings, progress)
        predictions = workspace.activations([], args.reduction).predictions
    report_left_out(workspace)
    layer = workspace.representation_layer() if args.layer is None else args.layer
    print(f"{result.method} map of {len(dataset):,} images on {layer or 'the outputs'} in "
          f"{time.perf_counter() - start:.1f} s ({result.n_fitted:,} fitted"
          + (f", {len(dataset) - result.n_fitted:,} placed)" if result.n_fitted < len(dataset) else ")"))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        columns = {"index": range(len(dataset)), "id": dataset.ids, "label": dataset.labels,
                   **({"prediction": predictions} if predictions is not None else {}),
                   "x": result.xy[:, 0], "y": result.xy[:, 1], "fitted": result.fitted}
        pq.write_table(pa.table(columns), args.output, compression="zstd")
        print(f"wrote {args.output}")
    if args.png:
        from netatlas.viz.embedding import MapPoints, map_png

        points = MapPoints.build(result.xy, dataset.labels, predictions, dataset.classes)
        args.png.parent.mkdir(parents=True, exist_ok=True)
        args.png.write_bytes(map_png(points, "class"))
        print(f"wrote {args.png}")
    return 0


def cmd_diagram(args: argparse.Namespace) -> int:
    from netatlas.backend.checkpoint import default_preprocessing
    from netatlas.backend.circuit.trace import architecture_circuit, example_input, trace_circuit
    from netatlas.viz.circuit import FORMATS, DiagramStyle, export, parse_names

    bad = [p for p in args.output if p.suffix.lstrip(".").lower() not in FORMATS]
    if bad:
        raise NetatlasError(f"cannot write {bad[0]}: the suffix must be one of .{', .'.join(FORMATS)}")
    start = time.perf_counter()
    if args.checkpoint == "none":
        if not args.arch:
            raise NetatlasError("'none' draws an architecture without weights: give it with --arch")
        pre = preprocessing_from_args(args, None) or default_preprocessing(None, args.arch, args.arch_kwargs)
        shape = (1, pre.channels, *pre.size)
        circuit = architecture_circuit(args.arch, args.arch_kwargs, shape, args.input_key)
    else:
        loaded = load_from_args(args)
        circuit = trace_circuit(loaded.model, example_input(loaded.input_shape, args.input_key))
    view = circuit.view(args.fold_depth, set(args.unfold), set(args.unroll), fold_repeats=not args.no_fold)
    style = DiagramStyle(layout=args.layout, show_sizes=args.sizes, names=parse_names(args.rename))
    for note in circuit.notes:
        print(f"note: {note}", file=sys.stderr)
    for path in args.output:
        export(view, path, style, dpi=args.dpi)
        print(f"wrote {path}")
    runs = ", ".join(f"{head} x{len(run)}" for head, run in view.repeats.items()) or "none"
    print(f"{view.boxes} boxes ({circuit.method}); folded: {runs}; {time.perf_counter() - start:.2f} s")
    return 0


def cmd_kan(args: argparse.Namespace) -> int:
    import pandas as pd

    from netatlas.backend.kan.analysis import analyze
    from netatlas.backend.kan.checkpoint import read_kan
    from netatlas.backend.kan.demo import demo_kan
    from netatlas.backend.kan.families import parse_options
    from netatlas.viz.kan import curve_table, edge_curves, importance_heatmap, network_figure, top_edges
    from netatlas.viz.styling import export

    path = demo_kan() if args.checkpoint == "demo" else Path(args.checkpoint)
    analysis = analyze(read_kan(path, family=args.family, options=parse_options(args.option), sample=args.sample,
                                trust_pickle=args.trust_pickle))
    network = analysis.network
    layers = args.layer if args.layer is not None else range(len(network.layers))
    if any(not 0 <= index < len(network.layers) for index in layers):
        raise NetatlasError(f"--layer: this KAN has layers 0..{len(network.layers) - 1}")
    chosen = {index: parse_edges(args.edges, network.layers[index]) if args.edges
              else top_edges(analysis.importance[index], args.top) for index in layers}
    print(f"{path.name}: {network.family}, widths {' -> '.join(map(str, network.widths))}; {analysis.sample_note}")
    for note in network.notes:
        print(f"note: {note}", file=sys.stderr)
    figures = {"network": network_figure(network, analysis.inputs, analysis.importance)}
    tables, formulas = [], []
    for index, edges in chosen.items():
        layer, inputs = network.layers[index], analysis.inputs[index]
        fits = {}
        for i, j in edges if args.suggest else []:
            ranked = analysis.suggest(index, (i, j))
            fits[(i, j)] = ranked[0]
            formulas += [{"layer": index, "i": i, "j": j, "rank": rank + 1, "formula": fit.expression(),
                          "r2": fit.r2, "complexity": fit.complexity, "note": fit.note}
                         for rank, fit in enumerate(ranked)]
            note = f"; {ranked[0].note}" if ranked[0].note else ""
            print(f"layer {index} edge {i} -> {j}: {ranked[0].expression()}  (R^2 {ranked[0].r2:.4f}{note})")
        parts = tuple(p.name for p in layer.parts) if args.parts else ()
        figures[f"layer{index}_heatmap"] = importance_heatmap(analysis.importance[index], analysis.layer_label(index))
        figures[f"layer{index}_curves"] = edge_curves(layer, edges, inputs, parts=parts, symbolic_fits=fits,
                                                      index=index)
        tables.append(curve_table(layer, edges, inputs=inputs, index=index))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, figure in figures.items():
        for fmt in args.formats:
            print(f"wrote {export(figure, args.out / f'{name}.{fmt}')}")
    pd.concat(tables).to_csv(args.out / "curves.csv", index=False)
    print(f"wrote {args.out / 'curves.csv'}")
    if formulas:
        pd.DataFrame(formulas).to_csv(args.out / "formulas.csv", index=False)
        print(f"wrote {args.out / 'formulas.csv'}")
    return 0


def parse_edges(given: list[str], layer) -> list[tuple[int, int]]:
    """``["0:1", "3:0"]`` -> [(0, 1), (3, 0)], each inside the layer's [in, out]."""
    edges = []
    for text in given:
        i, sep, j = text.partition(":")
        if not (sep and i.isdigit() and j.isdigit()) or int(i) >= layer.in_dim or int(j) >= layer.out_dim:
            raise NetatlasError(f"--edges {text}: write I:J with I < {layer.in_dim} (inputs), J < {layer.out_dim}")
        edges.append((int(i), int(j)))
    return edges


def cmd_serve(args: argparse.Namespace) -> int:
    from netatlas.app.server import serve

    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
