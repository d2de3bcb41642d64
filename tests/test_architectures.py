"""Base-classifier architectures of Cohen et al. 2019 (App. J.2): the CIFAR ResNets of their code
base, torchvision's ResNet-50, the normalisation layer that lets every model take [0, 1] pixels,
and checkpoints that rebuild it."""

import pytest
import torch
from torch import nn

from rsbook.models import (
    ARCHITECTURES,
    CifarResNet,
    DigitsCNN,
    NormalizeLayer,
    build,
    load_checkpoint,
    normalization,
    save_checkpoint,
)

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # Cohen et al., datasets.py
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, depth, count", [
    # 16/32/64 channels, 1x1-conv shortcuts where the shape changes: 0.27M and 1.73M for 10 classes
    ("cifar_resnet20", 20, 272_474),
    ("cifar_resnet110", 110, 1_730_714),
])
def test_cifar_resnet_depth_shapes_and_size(arch, depth, count):
    torch.manual_seed(0)
    model = build(arch, 10).eval()
    assert isinstance(model, CifarResNet) and model.depth == depth
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == (depth - 2) // 6
    assert parameter_count(model) == count
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == depth - 1  # + the linear head = depth layers
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [32, 64]  # two projection shortcuts
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert build(arch, 7)(torch.rand(3, 3, 32, 32)).shape == (3, 7)


def test_cifar_resnet_rejects_bad_depth_and_input():
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        CifarResNet(21)
    with pytest.raises(ValueError, match="expects a batch of shape \\(B, 3, 32, 32\\), got \\(1, 3, 224, 224\\)"):
        build("cifar_resnet20", 10)(torch.rand(1, 3, 224, 224))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build("cifar_resnet20", 0)


def test_resnet50_builds_without_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("resnet50 tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = build("resnet50", 1000, "imagenet").eval()
    assert isinstance(model[0], NormalizeLayer) and parameter_count(model) == 25_557_032  # torchvision's, 25.6M
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
    assert set(ARCHITECTURES) == {"digits_cnn", "rancer_mlp", "cifar_resnet20", "cifar_resnet110", "resnet50",
                                  "cifar_resnet18"}


def test_normalize_layer_is_per_channel_standardisation():
    layer = NormalizeLayer(CIFAR10_MEAN, CIFAR10_STD)
    x = torch.rand(4, 3, 5, 6)
    expected = torch.stack([(x[:, c] - CIFAR10_MEAN[c]) / CIFAR10_STD[c] for c in range(3)], dim=1)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert layer.state_dict() == {}  # statistics come from the dataset name, not the checkpoint
    assert layer.to(torch.float64).mean.dtype == torch.float64  # buffers follow the model
    with pytest.raises(ValueError, match="expects a batch of shape \\(B, 3, ...\\), got \\(4, 1, 8, 8\\)"):
        layer(torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="one value per channel"):
        NormalizeLayer([0.5, 0.5], [0.2])
    with pytest.raises(ValueError, match="std must be > 0"):
        NormalizeLayer([0.5], [0.0])


@pytest.mark.parametrize("dataset, mean, std", [
    ("cifar10", CIFAR10_MEAN, CIFAR10_STD),
    ("imagenet", IMAGENET_MEAN, IMAGENET_STD),
    ("imagenette", IMAGENET_MEAN, IMAGENET_STD),
])
def test_model_for_dataset_normalises_its_pixel_input(dataset, mean, std):
    assert normalization(dataset) == (mean, std)
    torch.manual_seed(0)
    model = build("cifar_resnet20", 10, dataset).eval()
    assert isinstance(model, nn.Sequential) and isinstance(model[0], NormalizeLayer)
    assert isinstance(model[1], CifarResNet)
    x = torch.rand(3, 3, 32, 32)
    standardised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model[1](standardised), atol=1e-5)
    assert "1.conv1.weight" in model.state_dict()  # the layout of Cohen et al.'s checkpoints


def test_embedded_datasets_get_the_bare_architecture():
    for dataset in (None, "digits"):
        assert isinstance(build("digits_cnn", 10, dataset), DigitsCNN)
    assert normalization("rancer_toy") is None
    with pytest.raises(ValueError, match="dataset must be None or one of"):
        build("cifar_resnet20", 10, "mnist")


def perturbed(model):
    """`model` after one training-mode forward pass (BatchNorm running statistics move off their defaults)."""
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    return model.eval()


def test_checkpoint_round_trip_rebuilds_normalisation(tmp_path):
    torch.manual_seed(0)
    model = perturbed(build("cifar_resnet20", 10, "cifar10"))
    path = tmp_path / "cifar.pt"
    save_checkpoint(path, model, "cifar_resnet20", "cifar10", noise_sd=0.25, epoch=90)
    loaded, payload = load_checkpoint(path, 10)
    assert payload["dataset"] == "cifar10" and payload["arch"] == "cifar_resnet20" and not loaded.training
    assert isinstance(loaded[0], NormalizeLayer) and loaded[0].mean.tolist() == pytest.approx(CIFAR10_MEAN)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_checkpoint(path, 10, dataset="cifar10")[1]["epoch"] == 90
    with pytest.raises(ValueError, match="trained on 'cifar10', but dataset 'imagenet' was requested"):
        load_checkpoint(path, 10, dataset="imagenet")

    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state_dict: arch and dataset named
    bare, payload = load_checkpoint(tmp_path / "bare.pt", 10, arch="cifar_resnet20", dataset="cifar10")
    assert payload["dataset"] == "cifar10"
    with torch.no_grad():
        assert torch.equal(bare(x), model(x))
    with pytest.raises(ValueError, match="does not fit architecture 'cifar_resnet20' for dataset None "
                                         "\\(without a normalisation layer\\)"):
        load_checkpoint(tmp_path / "bare.pt", 10, arch="cifar_resnet20")


def test_checkpoint_in_the_layout_of_cohen_et_al(tmp_path):
    """{arch, state_dict, epoch, optimizer}, no dataset, the net inside nn.DataParallel ('1.module.' keys)."""
    torch.manual_seed(1)
    model = perturbed(build("cifar_resnet20", 10, "cifar10"))
    state = {key.replace("1.", "1.module.", 1): value for key, value in model.state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "cifar_resnet20", "state_dict": state, "optimizer": {}}, path)
    loaded, payload = load_checkpoint(path, 10, dataset="cifar10")
    assert payload["dataset"] == "cifar10" and payload["epoch"] == 90
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "anonymous.pt")
    with pytest.raises(ValueError, match="does not name its architecture"):
        load_checkpoint(tmp_path / "anonymous.pt", 10)
