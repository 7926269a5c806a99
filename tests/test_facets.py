"""Facet discovery and the cached facet report."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import netatlas.backend.workspace as workspace_module
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.demo_model import DemoResNet
from netatlas.backend.facets import FacetReport, FacetSettings, find_facets, penultimate_layer, pixel_diversity
from netatlas.backend.featviz import FeatvizSettings
from netatlas.backend.workspace import Workspace
from netatlas.backend.errors import NetatlasError
from netatlas.viz.facets import convergence_note, diversity_text, facets_csv, facets_html, text_summary
from tests.backend_support import SMALL_PRE, SMALL_SIZE


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 top images in 4 well-separated blobs of codes, plus 300 weak images elsewhere."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 64)) * 20
    blob = np.repeat(np.arange(4), 50)
    codes = np.concatenate([centres[blob] + rng.normal(size=(200, 64)), rng.normal(size=(300, 64))])
    values = np.concatenate([10 + rng.random(200), rng.random(300)])
    return values, codes, np.concatenate([blob, np.full(300, -1)])


def test_facets_recover_planted_clusters_and_only_use_top_images():
    values, codes, blob = planted()
    facets = find_facets(values, codes, FacetSettings(k=4, top_n=200, members=15))
    assert set(facets.top) == set(range(200))
    for members in facets.exemplars:
        assert len(members) == 15
        assert len(set(blob[members])) == 1, "a facet mixes planted clusters"
    assert sorted(blob[e[0]] for e in facets.exemplars) == [0, 1, 2, 3]
    assert np.bincount(facets.assignment).tolist() == [50, 50, 50, 50]


def test_facet_assignment_is_reproducible_with_a_seed():
    rng = np.random.default_rng(1)
    values, codes = rng.random(400), rng.normal(size=(400, 32))
    a = find_facets(values, codes, FacetSettings(k=5, seed=3))
    b = find_facets(values, codes, FacetSettings(k=5, seed=3))
    np.testing.assert_array_equal(a.assignment, b.assignment)
    for x, y in zip(a.exemplars, b.exemplars):
        np.testing.assert_array_equal(x, y)
    # Facets are ordered by size, largest first.
    sizes = np.bincount(a.assignment)
    assert (np.diff(sizes) <= 0).all()


def test_bad_k_is_a_user_error():
    values, codes, _ = planted()
    with pytest.raises(NetatlasError, match="between 1 and 10"):
        find_facets(values, codes, FacetSettings(k=11))


def test_penultimate_layer_feeds_the_last_linear():
    import torchvision

    assert penultimate_layer(DemoResNet()) == "flatten"
    assert penultimate_layer(torchvision.models.resnet18()) == "avgpool"
    assert penultimate_layer(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))) is None


def test_workspace_facets_measure_against_the_data_and_are_cached(tmp_path, monkeypatch):
    loaded = load_checkpoint(demo_checkpoint())
    dataset = demo_dataset()
    ws = Workspace(loaded, dataset, ResultCache(tmp_path), "cpu")
    settings = (FacetSettings(k=3, top_n=60, members=5), FeatvizSettings(steps=20))
    report = ws.facets("", 7, *settings)

    # Independent check: the dataset's logits of class 7 and the synthetic images' logits.
    with torch.no_grad():
        logits = loaded.model(loaded.preprocessing.uint8_to_tensor(dataset.array))[:, 7].numpy()
        images = torch.from_numpy(report.images).float().div(255).unsqueeze(1)
        reached = loaded.model((images - 0.1307) / 0.3081)[:, 7].numpy()
    assert report.dataset_max == pytest.approx(float(logits.max()), rel=1e-4)
    np.testing.assert_allclose(report.activation, reached, rtol=0.05, atol=0.05)  # PNG quantization
    np.testing.assert_array_equal(report.rank, 1 + (logits[None, :] > report.activation[:, None]).sum(1))
    assert (report.activation > report.start_activation).all()
    for members in report.exemplars:
        assert set(members) <= set(np.argsort(logits)[::-1][:60])

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(workspace_module, "build_facets", refuse)
    again = ws.facets("", 7, *settings)
    np.testing.assert_array_equal(again.images, report.images)
    np.testing.assert_allclose(again.activation, report.activation)
    with pytest.raises(NetatlasError, match="out of range"):
        ws.facets("", 10, *settings)


# ----------------------------------------------------------------------------- numbers that are defined
# A unit negative on every image (ratio to the dataset max would flip sign), a constant unit (std 0),
# facets that collapse to one image, and the words and files that report them.

PIXELS = SMALL_SIZE * SMALL_SIZE
PIXEL_SUM = "tests.test_facets:PixelSum"


class PixelSum(torch.nn.Module):
    """flatten -> fc. Unit 0: the sum of the normalized pixels - 1000 (below -700 on every image, and its
    gradient brightens every pixel, so long optimizations all end on the same white image). Unit 1:
    -3 whatever the image (every dataset activation equal)."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(PIXELS, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[0] = 1.0
            self.fc.bias.copy_(torch.tensor([-1000.0, -3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


def pixel_sum_values(images: np.ndarray) -> np.ndarray:
    """Unit 0 of PixelSum by hand, in float64: sum((pixel / 255 - 0.4) / 0.3) - 1000."""
    x = (images.reshape(len(images), -1).astype(np.float64) / 255 - SMALL_PRE.mean[0]) / SMALL_PRE.std[0]
    return x.sum(1) - 1000.0


@pytest.fixture
def pixel_sum_checkpoint(tmp_path):
    path = tmp_path / "pixel_sum.pt"
    torch.save(PixelSum().state_dict(), path)
    return path


@pytest.fixture
def pixel_sum_workspace(tmp_path, pixel_sum_checkpoint, small_dataset):
    loaded = load_checkpoint(pixel_sum_checkpoint, PIXEL_SUM, preprocessing=SMALL_PRE)
    return Workspace(loaded, small_dataset, ResultCache(tmp_path / "ws-cache"), "cpu")


def visible_text(page: str) -> str:
    """The page without its embedded images and tags (base64 can spell anything)."""
    return re.sub(r"<[^>]+>", " ", re.sub(r'data:image/[^"]+', "", page))


def assert_no_nan_or_inf(text: str) -> None:
    bad = re.findall(r"\b(?:nan|inf|infinity)\b", text, flags=re.IGNORECASE)
    assert not bad, f"{bad} in {text!r}"


def card_numbers(text: str) -> list[tuple[int, int, float]]:
    """(rank, dataset images, signed SD distance) per facet card, as the page shows them."""
    found = re.findall(r"rank ([\d,]+) of ([\d,]+) dataset images\s*(?:<br>)?\s*(?:<b>)?([\d.]+) SD (above|below) "
                       r"the dataset max", text)
    return [(int(r.replace(",", "")), int(n.replace(",", "")), float(z) * (1 if side == "above" else -1))
            for r, n, z, side in found]


def test_negative_unit_shows_rank_and_sd_distance_never_a_ratio(pixel_sum_workspace, small_images):
    images, _ = small_images
    values = pixel_sum_values(images)
    assert values.max() < -700                         # negative everywhere: a ratio to the max would flip
    report = pixel_sum_workspace.facets("", 0, FacetSettings(k=3, top_n=30, members=5), FeatvizSettings(steps=3))

    assert report.dataset_max == pytest.approx(values.max(), abs=1e-3)
    assert report.dataset_std == pytest.approx(values.std(), rel=1e-5)
    assert report.dataset_size == len(images) and report.dataset_nonfinite == 0
    # The synthetic images' activations, recomputed from the images themselves (PNG holds uint8:
    # 144 pixels of at most half a grey level each).
    np.testing.assert_allclose(report.activation, pixel_sum_values(report.images), atol=1.0)
    rank = 1 + (values[None, :] > report.activation[:, None]).sum(1)
    np.testing.assert_array_equal(report.rank, rank)
    z = (report.activation - values.max()) / values.std()
    np.testing.assert_allclose(report.above_max_sd, z, rtol=1e-4, atol=1e-4)
    assert report.ratio is None

    page = facets_html(report, [[images[i] for i in e] for e in report.exemplars])
    shown = card_numbers(page)
    assert [(r, n) for r, n, _ in shown] == [(int(r), len(images)) for r in rank]
    np.testing.assert_allclose([s for _, _, s in shown], z, atol=0.0051)      # shown to 2 decimals
    assert "x the dataset max" not in page
    assert_no_nan_or_inf(visible_text(page))
    assert f"dataset max {report.dataset_max:.3g}" in page


def test_cli_featviz_writes_defined_columns_for_a_negative_unit(tmp_path, capsys, pixel_sum_checkpoint, small_npz,
                                                                small_images):
    from netatlas.viz.facets import CSV_COLUMNS

    images, _ = small_images
    values = pixel_sum_values(images)
    out = tmp_path / "fv"
    captured = run_pixel_sum_featviz(pixel_sum_checkpoint, small_npz, out, tmp_path, capsys, k=3, steps=3)
    text = (out / "facets.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 3
    assert "ratio_to_dataset_max" not in text
    assert_no_nan_or_inf(text)
    assert_no_nan_or_inf(captured.out)
    reached = np.array([float(r["activation"]) for r in rows])
    facet_images = np.stack([np.asarray(Image.open(out / f"facet_{i + 1}.png")) for i in range(3)])
    np.testing.assert_allclose(reached, pixel_sum_values(facet_images), atol=1.0)
    np.testing.assert_array_equal([int(r["rank"]) for r in rows], 1 + (values[None, :] > reached[:, None]).sum(1))
    z = (reached - values.max()) / values.std()
    np.testing.assert_allclose([float(r["sd_above_dataset_max"]) for r in rows], z, atol=1e-3)
    assert all(float(r["dataset_max"]) == pytest.approx(values.max(), abs=1e-3) for r in rows)
    for i, zi in enumerate(z):
        assert f"facet {i + 1}: activation" in captured.out
        assert f"{abs(zi):.2f} SD {'above' if zi > 0 else 'below'} the dataset max" in captured.out


def test_constant_unit_says_all_activations_equal_instead_of_dividing(pixel_sum_workspace, small_images):
    images, _ = small_images
    report = pixel_sum_workspace.facets("", 1, FacetSettings(k=2, top_n=30, members=5), FeatvizSettings(steps=2))
    assert report.dataset_max == pytest.approx(-3.0) and report.dataset_std == 0.0
    assert report.above_max_sd is None
    np.testing.assert_array_equal(report.rank, [1, 1])   # nothing in the data is above -3
    page = facets_html(report, [[images[i] for i in e] for e in report.exemplars])
    assert "all 30 dataset activations equal -3" in page
    assert page.count("no SD distance: all dataset activations are equal") == 2
    assert_no_nan_or_inf(visible_text(page))
    rows = list(csv.DictReader(io.StringIO(facets_csv(report))))
    assert [r["sd_above_dataset_max"] for r in rows] == ["", ""]
    assert [r["dataset_sd"] for r in rows] == ["", ""]
    assert all("all dataset activations equal" in r["note"] for r in rows)
    assert_no_nan_or_inf(facets_csv(report))
    assert_no_nan_or_inf(" ".join(text_summary(report)))


def test_collapsed_facets_are_reported_on_the_card_and_by_the_cli(tmp_path, capsys, pixel_sum_checkpoint, small_npz,
                                                                  small_images):
    """Unit 0's gradient brightens every pixel: after enough steps all facets are the same white image."""

    out = tmp_path / "fv"
    captured = run_pixel_sum_featviz(pixel_sum_checkpoint, small_npz, out, tmp_path, capsys, k=4, steps=120)
    facet_images = [np.asarray(Image.open(out / f"facet_{i + 1}.png")).astype(int) for i in range(4)]
    assert all(np.abs(im - facet_images[0]).max() <= 2 for im in facet_images)    # independently: one image
    assert "The 4 facets converged to the same image" in captured.out
    assert "--diversity > 0 or --start noise" in captured.out
    assert "diversity 0.000" in captured.out
    rows = list(csv.DictReader((out / "facets.csv").open()))
    assert [r["same_image_as"] for r in rows] == ["2 3 4", "1 3 4", "1 2 4", "1 2 3"]
    assert_no_nan_or_inf(captured.out)

    loaded = load_checkpoint(pixel_sum_checkpoint, PIXEL_SUM, preprocessing=SMALL_PRE)
    from netatlas.backend.datasets import npz_dataset
    ws = Workspace(loaded, npz_dataset(small_npz), ResultCache(tmp_path / "cache"), "cpu")
    report = ws.facets("", 0, FacetSettings(k=4), FeatvizSettings(steps=120))   # the CLI's, from the cache
    page = facets_html(report, [[] for _ in report.exemplars])
    assert "The 4 facets converged to the same image" in page and '"Diversity term" above 0' in page
    assert page.count("the same image as facets") == 4


def report_of(images: np.ndarray, **fields) -> FacetReport:
    """A hand-made report around ``images`` (uint8 [k, H, W])."""
    k = len(images)
    base = dict(layer="", unit=0, images=images, starts=images, exemplars=[np.arange(2)] * k,
                sizes=np.full(k, 5), activation=np.linspace(1, 2, k), start_activation=np.zeros(k),
                dataset_max=1.5, rank=np.ones(k, dtype=np.int64), diversity=pixel_diversity(images),
                start_diversity=pixel_diversity(images), dataset_std=0.5, dataset_size=10)
    return FacetReport(**{**base, **fields})


def test_pixel_diversity_matches_numpy_and_is_zero_for_identical_images_even_flat_ones():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    corr = np.corrcoef(images.reshape(4, -1).astype(np.float64))
    assert pixel_diversity(images) == pytest.approx(np.mean(1 - corr[np.triu_indices(4, 1)]), rel=1e-12)
    same = np.repeat(images[:1], 4, 0)
    assert pixel_diversity(same) == 0.0
    black = np.zeros((4, 8, 8), np.uint8)
    assert pixel_diversity(black) == 0.0          # the old measure called four black images "unrelated" (1.0)
    assert pixel_diversity(images[:1]) is None    # one facet: nothing to compare
    flat_and_not = np.stack([black[0], images[1]])
    assert pixel_diversity(flat_and_not) is None  # a flat image correlates with nothing
    assert "undefined (image 1 is flat" in diversity_text(None, flat_and_not)
    assert diversity_text(None, images[:1]) == "none to measure (one facet)"


def test_partly_collapsed_facets_are_named_and_distinct_ones_get_no_note():
    rng = np.random.default_rng(1)
    distinct = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    assert convergence_note(report_of(distinct)) is None
    partly = distinct.copy()
    partly[2] = np.clip(partly[0].astype(int) + 1, 0, 255)      # within a grey level of facet 1
    report = report_of(partly)
    assert report.same_image_groups() == [[0, 2]]
    note = convergence_note(report, hint="")
    assert note == "Facets 1 and 3 converged to the same image."
    page = facets_html(report, [[] for _ in range(4)])
    assert note in page and "the same image as facet 3" in page and "the same image as facet 1" in page


def test_facets_less_diverse_than_their_starts_say_so():
    rng = np.random.default_rng(3)
    starts = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    pulled = (starts // 4 + np.roll(starts, 1, axis=0) // 4 * 3).astype(np.uint8)   # mixed with each other
    report = report_of(pulled, starts=starts, start_diversity=pixel_diversity(starts))
    assert 0 < report.diversity < report.start_diversity
    note = convergence_note(report, hint="")
    assert note == (f"The facets are less diverse than the images they started from ({report.diversity:.3f} "
                    f"against {report.start_diversity:.3f}): the optimization pulled them together.")
    assert convergence_note(report_of(pulled, starts=pulled, start_diversity=report.diversity)) is None


def test_report_round_trip_keeps_the_new_numbers_and_old_tables_are_recomputed():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    report = report_of(images, activation=np.array([1.0, np.nan, 2.0]), rank=np.array([3, 0, 1]),
                       dataset_nonfinite=4)
    back = FacetReport.from_table(report.to_table())
    assert (back.dataset_std, back.dataset_size, back.dataset_nonfinite) == (0.5, 10, 4)
    assert back.diversity == pytest.approx(report.diversity)
    np.testing.assert_array_equal(back.rank, [3, 0, 1])
    np.testing.assert_allclose(back.above_max_sd, [-1.0, np.nan, 1.0])
    page = facets_html(back, [[] for _ in range(3)])
    assert "activation not finite · no rank among dataset images (the optimization diverged)" in page and "no SD distance: the activation is not finite" in page
    assert "4 images with a non-finite activation left out" in page
    assert_no_nan_or_inf(visible_text(page))
    assert_no_nan_or_inf(facets_csv(back))
    # A version-1 table (no dataset_std in its metadata) raises KeyError: the workspace recomputes it.
    table = report.to_table()
    meta = json.loads(table.schema.metadata[FacetReport.META])
    del meta["dataset_std"]
    with pytest.raises(KeyError):
        FacetReport.from_table(table.replace_schema_metadata({FacetReport.META: json.dumps(meta).encode()}))


def test_duplicate_codes_are_a_user_error_not_an_empty_facet():
    values = np.arange(30, dtype=np.float64)
    codes = np.repeat(np.eye(2)[None], 15, 0).reshape(30, 2)    # two distinct codes, 15 copies each
    with pytest.raises(NetatlasError, match="only 2 distinct"):
        find_facets(values, codes, FacetSettings(k=4, top_n=30, members=5))
    facets = find_facets(values, codes, FacetSettings(k=2, top_n=30, members=5))
    assert sorted(len(e) for e in facets.exemplars) == [5, 5]


def test_nan_activations_are_never_top_images():
    rng = np.random.default_rng(3)
    values = rng.random(40)
    values[:5] = np.nan
    facets = find_facets(values, rng.normal(size=(40, 8)), FacetSettings(k=2, top_n=20, members=3))
    assert not set(facets.top) & set(range(5))
    np.testing.assert_array_equal(np.sort(facets.top), np.sort(np.argsort(np.nan_to_num(values, nan=-1))[-20:]))


def run_pixel_sum_featviz(checkpoint, npz, out, tmp_path, capsys, k: int, steps: int):
    """``netatlas featviz`` on unit 0 of the pixel-sum model; returns the captured output (exit 0 checked)."""
    from netatlas.cli import main

    code = main(["featviz", str(checkpoint), str(npz), "--arch", PIXEL_SUM, "--size", str(SMALL_SIZE),
                 "--grayscale", "--mean", "0.4", "--std", "0.3", "--unit", "0", "-k", str(k), "--steps", str(steps),
                 "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured
