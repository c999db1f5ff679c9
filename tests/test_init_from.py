"""--init-from torchvision's failures, each one line saying what to do (no torchvision needed:
a stand-in torchvision is put in its place)."""

from __future__ import annotations

import sys
import types
import urllib.error

import pytest
import torch

from alexnet.errors import UserError
from alexnet.training import init_from

URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def hide_torchvision(monkeypatch) -> None:
    for name in [m for m in sys.modules if m.partition(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, name)


def test_a_torchvision_built_for_another_torch_is_one_line(tmp_path, monkeypatch):
    package = tmp_path / "site" / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(package.parent))
    hide_torchvision(monkeypatch)
    with pytest.raises(UserError, match=r"torchvision does not import \(RuntimeError: operator "
                                        r"torchvision::nms does not exist\); install the "
                                        r"release built for torch"):
        init_from.source_weights("torchvision")


@pytest.fixture
def stand_in_torchvision(tmp_path, monkeypatch):
    """torchvision.models whose alexnet(weights=...) loads the weights through torch.hub as
    torchvision's does, with torch's cache in tmp_path (TORCH_HOME) and no network."""
    hide_torchvision(monkeypatch)
    models = types.ModuleType("torchvision.models")
    models.AlexNet_Weights = types.SimpleNamespace(IMAGENET1K_V1=types.SimpleNamespace(url=URL))

    def alexnet(weights):
        net = torch.nn.Linear(2, 2)
        net.load_state_dict(torch.hub.load_state_dict_from_url(weights.url, progress=False))
        return net

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    models.alexnet = alexnet
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"


def test_torchvisions_weights_name_the_file_to_place_or_delete(stand_in_torchvision):
    cached = stand_in_torchvision
    with pytest.raises(UserError) as err:  # no network, nothing cached
        init_from.source_weights("torchvision")
    assert "\n" not in str(err.value) and f"put {URL} at {cached}" in str(err.value)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(UserError, match=f"its cached weights {cached} do not load .*; delete "
                                        "that file to download it again"):
        init_from.source_weights("torchvision")
    weights = torch.nn.Linear(2, 2).state_dict()
    torch.save(weights, cached)
    got, arch, classes, _ = init_from.source_weights("torchvision")
    assert arch == "alexnet-tv" and classes == []
    assert all(torch.equal(got[k], weights[k]) for k in weights)
