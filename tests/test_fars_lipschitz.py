"""rsbook.fars.lipschitz: every layer and every backbone is 1-Lipschitz in l2 (FaRS Proposition 1 needs it;
SLL: Araujo et al. 2023, Thm. 3 / FaRS eq. (1); AOL: Prach & Lampert 2022, Thm. 1).

Checked three ways: the algebraic condition itself (T - W^T W >= 0 on the explicit operator matrix),
power iteration on Jacobians, and an adversarial search for pairs that a map pulls apart; on random
weights pushed to extreme values and on trained weights. Deliberately broken layers show that the
checks can fail."""

import pytest
import torch
import torch.nn.functional as F

from rsbook.fars.lipschitz import (
    AOLConv2d,
    AOLLinear,
    ChannelPad,
    LipschitzAvgPool2d,
    SLLConv2d,
    SLLLinear,
    SpaceToDepth,
    _kernel_gram_l1,
    adversarial_lipschitz_ratio,
    circular_conv2d,
    circular_conv2d_transpose,
    conv2d,
    conv2d_transpose,
    jacobian_spectral_norm,
    max_jacobian_norm,
    sll_backbone,
)

TOL = 1e-9  # float64 rounding


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(module, scale=3.0, seed=0):
    """Random weights far from the initialisation (large kernels, log q spread over several units)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _operator(apply, shape):
    """The matrix of a linear map on inputs of `shape` (one example), built from basis vectors."""
    n = int(torch.tensor(shape).prod())
    eye = torch.eye(n, dtype=torch.float64).view(n, *shape)
    return apply(eye).reshape(n, -1).T


# ------------------------------------------------------------------------- the algebraic condition

@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_conv_transpose_is_the_adjoint(padding):
    g = torch.Generator().manual_seed(1)
    k = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    u = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64)
    assert torch.isclose((conv2d(x, k, padding) * u).sum(), (x * conv2d_transpose(u, k, padding)).sum(), rtol=1e-12)


def test_circular_convolution_wraps_around():
    # a kernel that reads the left neighbour moves the first column to the second and the last to the first
    k = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    k[0, 0, 1, 0] = 1.0
    x = torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4)
    assert torch.equal(circular_conv2d(x, k), torch.roll(x, 1, dims=-1))
    assert torch.equal(circular_conv2d_transpose(circular_conv2d(x, k), k), x)  # a permutation: A^T A = I


def test_sll_dense_t_dominates_gram():
    # Thm. 3's hypothesis: T - W^T W is positive semidefinite for every W and q > 0.
    for seed in range(20):
        layer = _perturb(SLLLinear(7, 5).double(), seed=seed)
        gram = layer.weight @ layer.weight.T
        t = torch.diag(1.0 / layer.t_inverse())
        assert torch.linalg.eigvalsh(t - gram).min() >= -TOL * t.max()


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("size", [(1, 1), (2, 5), (4, 4)])
def test_sll_conv_t_dominates_the_operator_gram(padding, size):
    # Thm. 3 for W a convolution: T (per inner channel, the same at every pixel) - A A^T >= 0 on the
    # explicit matrix of the convolution A, for both paddings, at sizes smaller than the kernel too.
    h, w = size
    for seed in range(10):
        layer = _perturb(SLLConv2d(3, 4, 3, padding_mode=padding).double(), seed=seed)
        a = _operator(lambda v, k=layer.kernel.detach(): conv2d(v, k, padding), (3, h, w))
        t = torch.diag((1.0 / layer.t_inverse().detach()).repeat_interleave(h * w))
        assert torch.linalg.eigvalsh(t - a @ a.T).min() >= -TOL * t.max()


def test_aol_conv_scaled_operator_has_norm_at_most_one():
    for padding in ("zeros", "circular"):
        for seed in range(5):
            layer = _perturb(AOLConv2d(3, 2, 3, bias=False, padding_mode=padding).double(), seed=seed)
            matrix = _operator(layer, (3, 4, 5))
            assert torch.linalg.matrix_norm(matrix, 2) <= 1 + TOL


# ---------------------------------------------------------------------- power iteration and search

def test_power_iteration_finds_the_spectral_norm_of_a_linear_map():
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(6, 9, generator=g, dtype=torch.float64)
    estimate = jacobian_spectral_norm(lambda v: v @ matrix.T, torch.randn(9, dtype=torch.float64), iterations=200,
                                      generator=g)
    assert estimate == pytest.approx(float(torch.linalg.matrix_norm(matrix, 2)), rel=1e-8)


LAYERS = [
    ("sll_linear", lambda: SLLLinear(10, 7), (10,)),
    ("sll_linear_wide", lambda: SLLLinear(4, 12), (4,)),
    ("sll_conv_zeros", lambda: SLLConv2d(4, 6, 3), (4, 5, 5)),
    ("sll_conv_circular", lambda: SLLConv2d(4, 6, 3, padding_mode="circular"), (4, 5, 5)),
    ("sll_conv_5x5", lambda: SLLConv2d(2, 3, 5), (2, 6, 4)),
    ("aol_linear_up", lambda: AOLLinear(4, 10), (4,)),
    ("aol_linear_down", lambda: AOLLinear(10, 4), (10,)),
    ("aol_conv", lambda: AOLConv2d(3, 5, 3), (3, 6, 6)),
    ("aol_conv_1x1", lambda: AOLConv2d(5, 3, 1), (5, 4, 4)),
    ("channel_pad", lambda: ChannelPad(2, 5), (2, 3, 3)),
    ("space_to_depth", lambda: SpaceToDepth(2), (2, 4, 6)),
    ("lipschitz_pool", lambda: LipschitzAvgPool2d(2), (2, 4, 6)),
]


@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_every_layer_is_1_lipschitz_on_random_weights(name, make, shape):
    for seed in range(2):
        layer = _perturb(make().double(), seed=seed)
        g = torch.Generator().manual_seed(seed)
        xs = 3 * torch.randn(4, *shape, generator=g, dtype=torch.float64)
        assert max_jacobian_norm(layer, xs, iterations=40, generator=g) <= 1 + TOL
        assert adversarial_lipschitz_ratio(layer, xs, steps=40, lr=0.05, generator=g) <= 1 + TOL


def test_isometries_preserve_distances_exactly():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 4, 3, 6, 6, generator=g, dtype=torch.float64)
    for layer in (ChannelPad(3, 7), SpaceToDepth(3), torch.nn.Flatten()):
        assert torch.allclose((layer(x) - layer(y)).flatten(1).norm(dim=1), (x - y).flatten(1).norm(dim=1),
                              rtol=1e-12)
    constant = torch.ones(1, 2, 4, 4, dtype=torch.float64)  # constant on every 2x2 window
    assert LipschitzAvgPool2d(2)(constant).norm() == pytest.approx(float(constant.norm()), rel=1e-12)


def test_aol_at_orthogonal_initialisation_is_an_isometry():
    # "norm-preserving first and last layers": AOL leaves an orthogonal P unchanged (D = I).
    torch.manual_seed(0)
    layer = AOLLinear(5, 9, bias=False).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(layer(x).norm(dim=1), x.norm(dim=1), rtol=1e-6)


class _HalfT(SLLLinear):
    """An SLL layer with T halved: it violates Thm. 3's hypothesis."""

    def t_inverse(self):
        return 2.0 * super().t_inverse()


class _AvgPoolTimesTwo(LipschitzAvgPool2d):
    """Average pooling scaled by 2k instead of k: 2-Lipschitz."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def test_the_checks_detect_layers_that_are_not_1_lipschitz():
    g = torch.Generator().manual_seed(0)
    broken = _perturb(_HalfT(6, 6).double(), scale=1.0)
    xs = torch.randn(8, 6, generator=g, dtype=torch.float64)
    assert max_jacobian_norm(broken, xs, iterations=60, generator=g) > 1.01
    assert adversarial_lipschitz_ratio(broken, xs, steps=100, lr=0.05, generator=g) > 1.01
    pool = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    assert adversarial_lipschitz_ratio(_AvgPoolTimesTwo(2), pool, steps=20, generator=g) > 1.9
    plain_pool = torch.nn.AvgPool2d(2)  # the usual average pool is 1/2-Lipschitz: radii would shrink
    assert max_jacobian_norm(plain_pool, pool, generator=g) == pytest.approx(0.5, rel=1e-6)
    zero_padded_conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False).double()  # unconstrained
    _perturb(zero_padded_conv)
    assert max_jacobian_norm(zero_padded_conv, torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)) > 1.5


# ------------------------------------------------------------------------------------- backbones

BACKBONES = [
    ("digits", (1, 8, 8), {}),
    ("circular_pool", (1, 8, 8), {"padding": "circular", "downsample": "pool", "widths": [8, 16]}),
    ("aol_stem", (3, 8, 8), {"stem": "aol", "stem_unshuffle": 2, "widths": [8, 8], "depths": [1, 1],
                             "linear_depth": 2, "linear_inner": 16, "embedding_dim": 12}),
    ("three_stages", (2, 16, 16), {"widths": [4, 16, 16], "depths": [1, 1, 1], "inner_factor": 1.5}),
]


@pytest.mark.parametrize("name, shape, config", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_backbones_are_1_lipschitz_on_random_weights(name, shape, config):
    torch.manual_seed(0)
    backbone = _perturb(sll_backbone(shape, **config).double(), scale=1.0)
    g = torch.Generator().manual_seed(1)
    xs = torch.rand(3, *shape, generator=g, dtype=torch.float64)
    assert max_jacobian_norm(backbone, xs, iterations=20, generator=g) <= 1 + 1e-7
    assert adversarial_lipschitz_ratio(backbone, xs, steps=25, lr=0.02, generator=g) <= 1 + 1e-7


def test_trained_backbone_is_1_lipschitz_and_close_to_tight():
    # Train backbone + linear head for a few hundred steps on digits, in float64, then search.
    from rsbook.data import load_dataset

    torch.manual_seed(0)
    data = load_dataset("digits", "train")
    backbone = sll_backbone((1, 8, 8), widths=[8, 16], depths=[1, 1], linear_inner=32, embedding_dim=16).double()
    head = torch.nn.Linear(16, 10).double()
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=0.02)
    x, y = data.x.double(), data.labels
    for _ in range(80):
        batch = torch.randint(0, len(y), (64,))
        loss = F.cross_entropy(5 * head(backbone(x[batch])), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = float((head(backbone(x)).argmax(1) == y).double().mean())
    assert accuracy > 0.6  # the weights really were trained
    g = torch.Generator().manual_seed(2)
    xs = x[:4]
    jac = max_jacobian_norm(backbone, xs, iterations=25, generator=g)
    ratio = adversarial_lipschitz_ratio(backbone, xs, steps=40, lr=0.01, generator=g)
    assert jac <= 1 + 1e-7 and ratio <= 1 + 1e-7
    assert jac > 0.3  # the backbone did not collapse to a constant


def test_backbone_shapes_and_config():
    backbone = sll_backbone((3, 32, 32), stem_unshuffle=2, widths=[16, 32], depths=[1, 1], embedding_dim=10)
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert backbone.config["input_shape"] == [3, 32, 32] and backbone.lipschitz_constant == 1.0
    rebuilt = sll_backbone(backbone.config.pop("input_shape"), **backbone.config)
    assert [type(m) for m in rebuilt] == [type(m) for m in backbone]


@pytest.mark.parametrize("call, match", [
    (lambda: SLLConv2d(3, 3, 4), "kernel_size must be odd"),
    (lambda: SLLConv2d(3, 3, 3, padding_mode="reflect"), "padding_mode"),
    (lambda: SLLLinear(0), "features"),
    (lambda: ChannelPad(4, 2), "out_channels"),
    (lambda: sll_backbone((1, 8, 8), widths=[8]), "widths and depths"),
    (lambda: sll_backbone((1, 8, 8), colour="red"), "unknown backbone option"),
    (lambda: sll_backbone((1, 6, 6), widths=[4, 4, 4], depths=[1, 1, 1]), "multiples of 4"),
    (lambda: sll_backbone((8, 8)), "input_shape"),
    (lambda: sll_backbone((1, 8, 8), downsample="max"), "downsample"),
    (lambda: LipschitzAvgPool2d(3)(torch.zeros(1, 1, 4, 4)), "multiples of 3"),
    (lambda: SLLConv2d(3)(torch.zeros(1, 2, 4, 4)), r"\(B, 3, H, W\)"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_gram_l1_matches_the_explicit_circular_gram_row_sums():
    # For circular padding on an image at least as large as the correlation (2k - 1), the bound is exact
    # with q = 1: the absolute row sums of A A^T equal the l1 norms of the correlations.
    g = torch.Generator().manual_seed(4)
    kernel = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)
    a = _operator(lambda v: circular_conv2d(v, kernel), (3, 5, 5))
    row_sums = (a @ a.T).abs().sum(dim=1).view(2, 25)
    assert torch.allclose(row_sums, _kernel_gram_l1(kernel).sum(dim=1)[:, None].expand(2, 25), rtol=1e-12)
