"""Reading KAN files: pykan's own saveckpt triple, efficient-kan state_dicts and safetensors, and every
bad input a user can give (each a NetatlasError that says what to do)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from kan import KAN
from safetensors.torch import save_file
from torch import nn

from netatlas.backend.kan.checkpoint import is_kan_checkpoint, read_kan
from netatlas.backend.errors import NetatlasError
from tests.kan_reference_spline import EfficientKAN

TOL = dict(atol=1e-5, rtol=1e-5)   # float32 files, as users save them


@pytest.fixture(scope="module")
def pykan_saved(tmp_path_factory):
    """A trained-looking pykan model saved by its own saveckpt: (prefix, model, the input it last saw)."""
    folder = tmp_path_factory.mktemp("pykan")
    torch.manual_seed(0)
    model = KAN(width=[2, 3, 2], grid=5, k=3, seed=0, auto_save=False, ckpt_path=str(folder))
    with torch.no_grad():
        model.node_scale[0].copy_(torch.tensor([0.5, 1.5, 2.0]))
        model.subnode_bias[1].copy_(torch.tensor([0.3, -0.7]))
    x = torch.randn(100, 2)
    model.update_grid_from_samples(x)
    model(x)
    model.fix_symbolic(0, 0, 1, "sin", verbose=False, log_history=False)
    model(x)                                             # cache_data = x
    model.saveckpt(str(folder / "run"))
    return folder / "run", model, x


@pytest.mark.parametrize("name", ["run_state", "run_config.yml", "run_cache_data", "run"])
def test_pykan_saveckpt_read_back_by_any_name(pykan_saved, name):
    prefix, model, x = pykan_saved
    network = read_kan(prefix.with_name(name))
    assert network.family == "pykan" and network.widths == [2, 3, 2]
    torch.testing.assert_close(network.sample, x)        # cache_data as the sample
    torch.testing.assert_close(network.forward(x), model(x), **TOL)
    assert network.layers[0].symbolic() == {(0, 1): "sin"}   # the name came from the config
    assert is_kan_checkpoint(prefix.with_name(name))


def test_pykan_without_cache_data_has_no_sample(tmp_path):
    KAN(width=[2, 1], grid=3, k=2, auto_save=False, ckpt_path=str(tmp_path)).saveckpt(str(tmp_path / "fresh"))
    assert torch.load(tmp_path / "fresh_cache_data", weights_only=True) is None   # saveckpt saved None
    assert read_kan(tmp_path / "fresh").sample is None
    (tmp_path / "fresh_cache_data").unlink()
    assert read_kan(tmp_path / "fresh_state").sample is None


def sample_files(folder, x):
    """The same batch in every sample format read_kan accepts."""
    np.save(folder / "s.npy", x.numpy())
    np.savez(folder / "named.npz", x=x.numpy(), y=np.zeros(len(x)))
    np.savez(folder / "single.npz", x.numpy())
    np.savetxt(folder / "s.csv", x.numpy(), delimiter=",", header="a,b", comments="")
    torch.save(x, folder / "s.pt")
    return ["s.npy", "named.npz", "single.npz", "s.csv", "s.pt"]


def test_sample_files_override_cache_data(pykan_saved, tmp_path):
    prefix, _, _ = pykan_saved
    x = torch.rand(7, 2)
    for name in sample_files(tmp_path, x):
        torch.testing.assert_close(read_kan(prefix, sample=tmp_path / name).sample, x, **TOL)


@pytest.fixture
def efficient():
    torch.manual_seed(1)
    return EfficientKAN([3, 4, 2], grid_size=5, spline_order=3)


def test_efficient_kan_state_dict_and_safetensors(efficient, tmp_path):
    x = torch.rand(16, 3) * 2 - 1
    state = efficient.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "wrapped.ckpt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    for name in ("plain.pt", "wrapped.ckpt", "weights.safetensors"):
        network = read_kan(tmp_path / name)
        assert network.family == "efficient-kan" and network.names == ["layers.0", "layers.1"], name
        assert network.sample is None
        torch.testing.assert_close(network.forward(x), efficient(x), **TOL)
        assert is_kan_checkpoint(tmp_path / name)
    np.save(tmp_path / "x.npy", x.numpy())
    torch.testing.assert_close(read_kan(tmp_path / "plain.pt", sample=tmp_path / "x.npy").sample, x)


def test_files_that_are_not_kans(tmp_path):
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save(mlp.state_dict(), tmp_path / "mlp.pt")
    torch.save(mlp, tmp_path / "module.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NetatlasError, match="not a KAN"):
        read_kan(tmp_path / "mlp.pt")
    with pytest.raises(NetatlasError, match="refused to unpickle.*--trust-pickle"):
        read_kan(tmp_path / "module.pt")
    with pytest.raises(NetatlasError, match="not a readable torch checkpoint"):
        read_kan(tmp_path / "corrupt.pt")
    with pytest.raises(NetatlasError, match="not found"):
        read_kan(tmp_path / "missing.pt")
    for name in ("mlp.pt", "module.pt", "corrupt.pt", "notes.txt", "missing.pt"):
        assert not is_kan_checkpoint(tmp_path / name), name


def test_a_trusted_pickled_module_gives_its_state_dict(efficient, tmp_path):
    torch.save(efficient, tmp_path / "module.pt")             # the whole module, pickled
    with pytest.raises(NetatlasError, match="refused to unpickle"):
        read_kan(tmp_path / "module.pt")
    x = torch.rand(16, 3) * 2 - 1
    network = read_kan(tmp_path / "module.pt", trust_pickle=True)
    torch.testing.assert_close(network.forward(x), efficient(x), **TOL)


def test_bad_samples(efficient, tmp_path):
    torch.save(efficient.state_dict(), tmp_path / "kan.pt")
    np.save(tmp_path / "wide.npy", np.zeros((5, 4)))
    np.save(tmp_path / "nan.npy", np.full((5, 3), np.nan))
    np.savez(tmp_path / "many.npz", a=np.zeros((5, 3)), b=np.zeros((5, 3)))
    (tmp_path / "words.csv").write_text("a,b,c\nx,y,z\n")
    (tmp_path / "sample.json").write_text("[]")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object))
    cases = {"junk.npy": "not a NumPy file of numbers", "objects.npy": "does not unpickle","wide.npy": r"shape \(5, 4\).*\[N, 3\]", "nan.npy": "NaN", "many.npz": "name the inputs 'x'",
             "words.csv": "cannot read the sample", "sample.json": "must be .pt, .npy, .npz or .csv",
             "absent.npy": "sample file not found"}
    for name, message in cases.items():
        with pytest.raises(NetatlasError, match=message):
            read_kan(tmp_path / "kan.pt", sample=tmp_path / name)


def copy_checkpoint(prefix, folder, name, **config_changes):
    """pykan's three files under a new prefix, with some config entries replaced."""
    for suffix in ("_state", "_cache_data"):
        folder.joinpath(name + suffix).write_bytes(prefix.with_name(prefix.name + suffix).read_bytes())
    config = yaml.safe_load(prefix.with_name(prefix.name + "_config.yml").read_text())
    config.update(config_changes)
    folder.joinpath(name + "_config.yml").write_text(yaml.dump(config))
    return folder / name


def test_configs_and_caches_that_disagree_with_the_state(pykan_saved, tmp_path):
    prefix, _, _ = pykan_saved
    cases = {
        "k": ({"k": 2}, "k=2 was given"),
        "width": ({"width": [[2, 0], [4, 0], [2, 0]]}, "config belongs to another checkpoint"),
        "mult": ({"width": [[2, 0], [3, 1], [2, 0]]}, "multiplication nodes"),
        "names": ({"symbolic.funs_name.0": [["0", "0"]]}, "not 3 rows of 2"),
        "base": ({"base_fun_name": "softsign"}, "unknown base function"),
    }
    for name, (changes, message) in cases.items():
        with pytest.raises(NetatlasError, match=message):
            read_kan(copy_checkpoint(prefix, tmp_path, name, **changes))
    broken = copy_checkpoint(prefix, tmp_path, "yaml")
    broken.with_name("yaml_config.yml").write_text("width: [2, 3\n")
    with pytest.raises(NetatlasError, match="cannot read the pykan config"):
        read_kan(broken)
    narrow = copy_checkpoint(prefix, tmp_path, "cache")
    torch.save(torch.zeros(4, 5), narrow.with_name("cache_cache_data"))
    with pytest.raises(NetatlasError, match=r"\[N, 2\]"):
        read_kan(narrow)
    orphan = tmp_path / "orphan_config.yml"
    orphan.write_text("k: 3\n")
    with pytest.raises(NetatlasError, match="orphan_state is missing"):
        read_kan(orphan)
