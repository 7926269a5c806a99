"""Datasets (image folders, .npz, the demo digits) and the allowed roots a served app may read."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.backend_support import preprocess_by_hand
from netatlas.backend.datasets import demo_dataset, folder_dataset, load_dataset, npz_dataset
from netatlas.backend.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from netatlas.backend.roots import AllowedRoots
from netatlas.backend.errors import NetatlasError


def random_rgb(seed: int, h: int = 10, w: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save(array: np.ndarray, path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def collect(dataset, pre, **kwargs):
    indices, tensors = [], []
    for idx, x in dataset.batches(pre, **kwargs):
        indices.append(idx)
        tensors.append(x)
    return torch.cat(indices), torch.cat(tensors)


# --------------------------------------------------------------------------- image folders

def test_class_subfolders_give_labels(tmp_path):
    images = {"cat/a.png": random_rgb(0), "cat/b.png": random_rgb(1), "dog/c.png": random_rgb(2),
              "bird/nested/d.png": random_rgb(3)}
    for rel, array in images.items():
        save(array, tmp_path / rel)
    ds = load_dataset(tmp_path)
    assert ds.classes == ["bird", "cat", "dog"]
    got = dict(zip(ds.ids, ds.labels.tolist()))
    assert got == {"bird/nested/d.png": 0, "cat/a.png": 1, "cat/b.png": 1, "dog/c.png": 2}
    assert ds.labeled
    for i, image_id in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.read(i), images[image_id])
    table = ds.table()
    assert table["class"].tolist() == [ds.classes[label] for label in ds.labels]
    assert table["id"].tolist() == ds.ids


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        save(random_rgb(i), tmp_path / f"img{i}.png")
    ds = folder_dataset(tmp_path)
    assert ds.labels.tolist() == [-1, -1, -1]
    assert ds.classes == []
    assert not ds.labeled
    assert ds.class_name(-1) == "?"


def smooth_rgb(h: int, w: int) -> np.ndarray:
    """A gradient: JPEG keeps it close, unlike noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 255 // (h - 1), xx * 255 // (w - 1), (yy + xx) * 255 // (h + w - 2)],
                    axis=-1).astype(np.uint8)


def test_all_image_formats_load(tmp_path):
    original = smooth_rgb(12, 9)
    save(original, tmp_path / "x" / "a.png")
    save(original, tmp_path / "x" / "b.jpg", quality=95)
    save(original, tmp_path / "x" / "c.webp", lossless=True)
    save(original, tmp_path / "x" / "d.bmp")
    save(original, tmp_path / "x" / "e.JPEG", quality=95)
    ds = folder_dataset(tmp_path)
    assert ds.ids == ["x/a.png", "x/b.jpg", "x/c.webp", "x/d.bmp", "x/e.JPEG"]
    assert ds.skipped == []
    for i, image_id in enumerate(ds.ids):
        image = ds.read(i)
        assert image.shape == (12, 9, 3) and image.dtype == np.uint8
        if image_id.endswith((".png", ".webp", ".bmp")):  # lossless
            np.testing.assert_array_equal(image, original)
        else:  # jpeg: close, not equal
            assert np.abs(image.astype(int) - original).mean() < 4


def test_grayscale_and_rgba_files(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, size=(6, 5), dtype=np.uint8)
    rgba = np.random.default_rng(1).integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    save(gray, tmp_path / "g.png")
    save(rgba, tmp_path / "r.png")
    ds = folder_dataset(tmp_path)
    np.testing.assert_array_equal(ds.read(ds.ids.index("g.png")), gray)
    np.testing.assert_array_equal(ds.read(ds.ids.index("r.png")), rgba[..., :3])


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    deep = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300)  # 0 .. 61100
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    ds = folder_dataset(tmp_path)
    image = ds.read(0)
    assert image.dtype == np.uint8
    np.testing.assert_allclose(image.astype(float), deep / 257.0, atol=1.0)


def test_unreadable_file_is_left_out_of_its_batch_and_counted_when_decoded(tmp_path):
    save(random_rgb(0), tmp_path / "a" / "good.png")
    (tmp_path / "a" / "x.png").write_bytes(os.urandom(200))
    (tmp_path / "a" / "notes.txt").write_text("not an image, not even looked at")
    (tmp_path / "a" / "._good.png").write_bytes(b"macOS resource fork, hidden")
    ds = folder_dataset(tmp_path)
    assert ds.ids == ["a/good.png", "a/x.png"]
    assert ds.skipped == []                                  # opening reads no image
    idx, x = collect(ds, Preprocessing(size=(10, 10), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert idx.tolist() == [0] and x.shape == (1, 3, 10, 10)  # left out, not replaced by a black image
    assert ds.skipped == ["a/x.png"]
    assert (ds.read(1) == 0).all() and ds.read(0).shape == (10, 10, 3)  # read(i) gives a black stand-in
    (tmp_path / "a" / "good.png").unlink()                   # removed after opening: black, counted
    assert (ds.read(0) == 0).all()
    assert ds.skipped == ["a/x.png", "a/good.png"]           # each counted once
    collect(ds, Preprocessing(size=(10, 10), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert ds.skipped == ["a/x.png", "a/good.png"]


def test_folder_open_reads_no_image(tmp_path, monkeypatch):
    for i in range(3):
        save(random_rgb(i), tmp_path / f"c{i}" / f"{i}.png")
    first = folder_dataset(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("an image was opened while opening the folder")
    monkeypatch.setattr(Image, "open", refuse)
    again = load_dataset(tmp_path)
    assert again.ids == first.ids and again.manifest_hash == first.manifest_hash
    assert again.labels.tolist() == [0, 1, 2] and again.classes == ["c0", "c1", "c2"]


def test_folder_of_only_unreadable_files_opens_and_counts_them(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    ds = folder_dataset(tmp_path)
    collect(ds, Preprocessing(size=(8, 8), grayscale=True, mean=(0.5,), std=(0.5,)))
    assert ds.skipped == ["x.png"]


def test_missing_empty_and_unsupported_sources(tmp_path):
    with pytest.raises(NetatlasError, match="not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NetatlasError, match="no readable images"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(NetatlasError, match="unsupported"):
        load_dataset(tmp_path / "data.csv")


def test_manifest_hash_tracks_contents(tmp_path):
    save(random_rgb(0), tmp_path / "a.png")
    first = folder_dataset(tmp_path).manifest_hash
    assert folder_dataset(tmp_path).manifest_hash == first
    save(random_rgb(1, 11, 10), tmp_path / "a.png")
    assert folder_dataset(tmp_path).manifest_hash != first


def test_manifest_hash_changes_when_a_file_is_added_removed_or_touched(tmp_path):
    for i in range(3):
        save(random_rgb(i), tmp_path / "c" / f"{i}.png")
    hashes = [folder_dataset(tmp_path).manifest_hash]
    save(random_rgb(3), tmp_path / "c" / "3.png")                    # added
    hashes.append(folder_dataset(tmp_path).manifest_hash)
    (tmp_path / "c" / "0.png").unlink()                               # removed
    hashes.append(folder_dataset(tmp_path).manifest_hash)
    st = (tmp_path / "c" / "1.png").stat()                            # touched: same bytes, new mtime
    os.utime(tmp_path / "c" / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    hashes.append(folder_dataset(tmp_path).manifest_hash)
    assert len(set(hashes)) == 4
    assert folder_dataset(tmp_path).manifest_hash == hashes[-1]       # and nothing else moves it


def test_folder_order_is_sorted_paths(tmp_path):
    """Ids in the order of sorted Paths (part by part), which the cached activations' rows follow."""
    names = ["b.png", "a b/x.png", "a/x.png", "a/y/z.png", "a/y.png", "A.png"]
    for i, name in enumerate(names):
        save(random_rgb(i), tmp_path / name)
    ds = folder_dataset(tmp_path)
    assert ds.ids == [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*.png"))]
    assert ds.classes == ["a", "a b"]


# --------------------------------------------------------------------------- .npz archives

def test_npz_without_images_is_an_error(tmp_path):
    np.savez(tmp_path / "x.npz", pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(NetatlasError, match="images"):
        load_dataset(tmp_path / "x.npz")


def test_corrupt_npz_is_an_error(tmp_path):
    (tmp_path / "bad.npz").write_bytes(os.urandom(300))
    with pytest.raises(NetatlasError, match="bad.npz"):
        load_dataset(tmp_path / "bad.npz")


def test_npz_bad_shapes_are_errors(tmp_path):
    np.savez(tmp_path / "flat.npz", images=np.zeros((5, 16), np.uint8))
    with pytest.raises(NetatlasError, match="images must be"):
        npz_dataset(tmp_path / "flat.npz")
    np.savez(tmp_path / "labels.npz", images=np.zeros((5, 4, 4), np.uint8), labels=np.zeros(4))
    with pytest.raises(NetatlasError, match="labels"):
        npz_dataset(tmp_path / "labels.npz")


def test_npz_with_labels_and_classes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([1, 0, 1, 1]), classes=np.array(["no", "yes"]))
    ds = npz_dataset(tmp_path / "d.npz")
    assert ds.classes == ["no", "yes"]
    assert ds.labels.tolist() == [1, 0, 1, 1]
    np.testing.assert_array_equal(ds.read(2), images[2])
    assert len(ds) == 4


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npz_float_images_in_unit_range_become_uint8(tmp_path, dtype):
    levels = np.arange(256).reshape(16, 16)
    images = np.stack([levels, levels[::-1]]).astype(np.float64) / 255.0
    np.savez(tmp_path / "f.npz", images=images.astype(dtype))
    ds = npz_dataset(tmp_path / "f.npz")
    assert ds.array.dtype == np.uint8
    np.testing.assert_array_equal(ds.array[0], levels)  # every level survives the round trip
    np.testing.assert_array_equal(ds.array[1], levels[::-1])
    assert ds.labels.tolist() == [-1, -1]


def test_npz_single_channel_axis_is_squeezed(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 4, 4, 1), dtype=np.uint8)
    np.savez(tmp_path / "c1.npz", images=images)
    np.testing.assert_array_equal(npz_dataset(tmp_path / "c1.npz").read(1), images[1, ..., 0])


# --------------------------------------------------------------------------- batches

def test_batches_of_arrays_equal_hand_preprocessing(small_dataset, small_images):
    images, _ = small_images
    pre = Preprocessing(size=(12, 12), grayscale=True, mean=(0.3,), std=(0.2,))
    indices, x = collect(small_dataset, pre, batch_size=7)
    assert indices.tolist() == list(range(30))
    assert x.dtype == torch.float32 and x.shape == (30, 1, 12, 12)
    torch.testing.assert_close(x, preprocess_by_hand(images, (0.3,), (0.2,)), atol=1e-5, rtol=1e-5)


def test_batches_expand_gray_to_rgb_with_imagenet_stats(small_dataset, small_images):
    images, _ = small_images
    indices, x = collect(small_dataset, Preprocessing(size=(12, 12)), batch_size=64)
    rgb = np.repeat(images[..., None], 3, axis=-1)
    torch.testing.assert_close(x, preprocess_by_hand(rgb, IMAGENET_MEAN, IMAGENET_STD), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_of_files_equal_hand_preprocessing(tmp_path, workers):
    arrays = {f"c{i % 2}/{i}.png": random_rgb(i, 10, 10) for i in range(5)}
    arrays["c0/odd_size.png"] = random_rgb(9, 14, 7)
    for rel, array in arrays.items():
        save(array, tmp_path / rel)
    ds = folder_dataset(tmp_path)
    pre = Preprocessing(size=(10, 10), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    indices, x = collect(ds, pre, batch_size=4, num_workers=workers)
    assert indices.tolist() == list(range(len(ds)))

    expected = []
    for image_id in ds.ids:  # by hand: decode, resize with PIL bilinear when the size differs, normalize
        with Image.open(tmp_path / image_id) as im:
            im = im.convert("RGB")
            if im.size != (10, 10):
                im = im.resize((10, 10), Image.BILINEAR)
            expected.append(np.asarray(im))
    torch.testing.assert_close(x, preprocess_by_hand(np.stack(expected), pre.mean, pre.std),
                               atol=1e-5, rtol=1e-5)


def test_batches_of_rgb_files_for_a_grayscale_model(tmp_path):
    arrays = [random_rgb(i, 8, 8) for i in range(3)]
    for i, array in enumerate(arrays):
        save(array, tmp_path / f"{i}.png")
    pre = Preprocessing(size=(8, 8), grayscale=True, mean=(0.5,), std=(0.5,))
    _, x = collect(folder_dataset(tmp_path), pre, num_workers=0)
    gray = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in arrays])
    assert x.shape == (3, 1, 8, 8)
    torch.testing.assert_close(x, preprocess_by_hand(gray, (0.5,), (0.5,)), atol=1e-5, rtol=1e-5)


def test_resized_array_batches_match_antialiased_bilinear(small_dataset, small_images):
    images, _ = small_images
    pre = Preprocessing(size=(6, 9), grayscale=True, mean=(0.0,), std=(1.0,))
    _, x = collect(small_dataset, pre)
    t = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    expected = torch.nn.functional.interpolate(t, size=(6, 9), mode="bilinear", antialias=True,
                                               align_corners=False)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)


def test_preprocessing_validation_and_dict_round_trip():
    with pytest.raises(NetatlasError):
        Preprocessing(grayscale=True, mean=(0.1, 0.2), std=(1.0,))
    with pytest.raises(NetatlasError):
        Preprocessing(std=(0.0, 1.0, 1.0))
    pre = Preprocessing.from_dict({"size": 32, "grayscale": True, "mean": 0.2, "std": [0.5]})
    assert pre == Preprocessing(size=(32, 32), grayscale=True, mean=(0.2,), std=(0.5,))
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_grayscale_without_mean_std_uses_one_channel_defaults():
    # e.g. `netatlas info model.pt --grayscale` with no sidecar: ImageNet's 3-value stats cannot apply
    for pre in (Preprocessing(grayscale=True), Preprocessing.from_dict({"grayscale": True, "size": 8})):
        assert len(pre.mean) == 1 and len(pre.std) == 1
        assert pre.mean[0] == pytest.approx(np.mean(IMAGENET_MEAN), abs=1e-4)
        assert pre.std[0] == pytest.approx(np.mean(IMAGENET_STD), abs=1e-4)
    images = np.full((1, 8, 8), 255, np.uint8)
    x = Preprocessing.from_dict({"grayscale": True, "size": 8}).uint8_to_tensor(images)
    assert x.shape == (1, 1, 8, 8)
    torch.testing.assert_close(x, torch.full((1, 1, 8, 8), (1 - 0.449) / 0.226), atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- the demo digits

def test_demo_dataset():
    ds = demo_dataset()
    assert len(ds) == 5000
    assert ds.array.shape == (5000, 28, 28) and ds.array.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [500] * 10
    split = ds.meta["split"]
    assert set(split) == {"train", "test"}
    assert (split == "test").sum() == 1000
    assert np.bincount(ds.labels[split == "test"]).tolist() == [100] * 10
    assert ds.classes == [str(d) for d in range(10)]
    assert load_dataset("demo").manifest_hash == ds.manifest_hash
    assert ds.table()["split"].tolist() == split.tolist()
    assert 0 < ds.array.mean() < 128  # real digits: mostly black background


# --------------------------------------------------------------------------- allowed roots

@pytest.fixture
def roots_tree(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "models").mkdir(parents=True)
    outside.mkdir()
    (root / "models" / "a.pt").write_bytes(b"x")
    (root / "models" / "b.safetensors").write_bytes(b"x")
    (root / "models" / "readme.txt").write_text("x")
    save(random_rgb(0), root / "images" / "cat" / "1.png")
    save(random_rgb(1), root / "flat" / "2.jpg")
    np.savez(root / "digits.npz", images=np.zeros((1, 2, 2), np.uint8))
    (root / "nothing").mkdir()
    (outside / "secret.pt").write_bytes(b"x")
    save(random_rgb(2), outside / "pics" / "3.png")
    return root, outside


def test_roots_accept_paths_inside(roots_tree):
    root, _ = roots_tree
    roots = AllowedRoots.of(root)
    assert roots.check(root / "models" / "a.pt") == (root / "models" / "a.pt").resolve()
    assert roots.check(str(root / "images")) == (root / "images").resolve()
    assert roots.check(root / "models" / ".." / "digits.npz") == (root / "digits.npz").resolve()
    assert roots.check("demo").name == "demo"


def test_roots_refuse_paths_outside(roots_tree):
    root, outside = roots_tree
    roots = AllowedRoots.of(root)
    with pytest.raises(NetatlasError, match="outside"):
        roots.check(outside / "secret.pt")
    with pytest.raises(NetatlasError, match="outside"):
        roots.check(root / ".." / "outside" / "secret.pt")
    with pytest.raises(NetatlasError, match="outside"):
        roots.check(root / "models" / ".." / ".." / "outside" / "pics")
    with pytest.raises(NetatlasError, match="outside"):
        roots.check("/etc/passwd")
    # a sibling folder whose name merely starts with the root's name is not inside it
    (root.parent / "root-evil").mkdir()
    with pytest.raises(NetatlasError, match="outside"):
        roots.check(root.parent / "root-evil")


def test_roots_refuse_symlinks_pointing_out(roots_tree):
    root, outside = roots_tree
    (root / "models" / "link.pt").symlink_to(outside / "secret.pt")
    (root / "linked_dir").symlink_to(outside / "pics", target_is_directory=True)
    np.savez(outside / "secret.npz", images=np.zeros((1, 2, 2), np.uint8))
    (root / "linked.npz").symlink_to(outside / "secret.npz")
    roots = AllowedRoots.of(root)
    with pytest.raises(NetatlasError, match="outside"):
        roots.check(root / "models" / "link.pt")
    with pytest.raises(NetatlasError, match="outside"):
        roots.check(root / "linked_dir" / "3.png")
    # and they are not offered either
    assert root / "models" / "link.pt" not in roots.checkpoints()
    assert all(roots.check(p) for p in roots.checkpoints())
    with pytest.raises(NetatlasError, match="outside"):
        roots.check(root / "linked.npz")
    assert not any("linked_dir" in p.parts or p.name == "linked.npz" for p in roots.datasets())
    assert root / "digits.npz" in roots.datasets()


def test_root_must_be_a_folder(roots_tree, tmp_path):
    root, _ = roots_tree
    with pytest.raises(NetatlasError, match="not a folder"):
        AllowedRoots.of(tmp_path / "missing")
    with pytest.raises(NetatlasError, match="not a folder"):
        AllowedRoots.of(root / "models" / "a.pt")


def test_roots_list_checkpoints_and_datasets(roots_tree):
    root, outside = roots_tree
    roots = AllowedRoots.of(root)
    assert roots.checkpoints() == [root / "models" / "a.pt", root / "models" / "b.safetensors"]
    found = set(roots.datasets())
    assert {root / "images", root / "flat", root / "digits.npz"} <= found
    assert root / "models" not in found and root / "nothing" not in found
    assert not any(p.is_relative_to(outside) for p in found)


def test_roots_walk_is_bounded(tmp_path):
    deep = tmp_path.joinpath(*[f"d{i}" for i in range(8)])
    deep.mkdir(parents=True)
    (deep / "deep.pt").write_bytes(b"x")
    (tmp_path / "d0" / "shallow.pt").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "hidden.pt").write_bytes(b"x")
    roots = AllowedRoots.of(tmp_path)
    assert roots.checkpoints() == [tmp_path / "d0" / "shallow.pt"]


def test_roots_list_large_image_folders_without_reading_them_again(tmp_path, monkeypatch):
    """Folder listings are reused while a folder's mtime stands and leave image files out: a page load
    does not read a big image folder's names again (datasets() only probes 50), a new checkpoint shows."""
    import time

    from netatlas.backend import roots as roots_module

    root = tmp_path / "root"
    for i in range(60):
        save(random_rgb(i, 4, 4), root / "pics" / "c" / f"{i}.png")
    (root / "models").mkdir()
    (root / "models" / "a.pt").write_bytes(b"x")
    past = time.time() - 60                      # changed long ago: listings may be reused
    for folder in (root, root / "pics", root / "pics" / "c", root / "models"):
        os.utime(folder, (past, past))
    roots = AllowedRoots.of(root)
    assert roots.checkpoints() == [root / "models" / "a.pt"] and root / "pics" in roots.datasets()
    assert not any(p.suffix == ".png" for p in roots.files())

    listed = []
    scandir = os.scandir
    monkeypatch.setattr(roots_module.os, "scandir", lambda path=".": listed.append(str(path)) or scandir(path))
    assert roots.checkpoints() == [root / "models" / "a.pt"] and len(roots.files()) == 1
    assert listed == []                                      # every folder's listing was reused
    (root / "models" / "b.pt").write_bytes(b"x")             # the folder's mtime moves on
    assert roots.checkpoints() == [root / "models" / "a.pt", root / "models" / "b.pt"]
    assert listed == [str(root / "models")]
