"""rsbook.ancer.curvature: RANCER's rotation U (thesis Sec. 4.2, Algorithm 2): the Householder-stored
orthogonal completion, the exact Hessian of the loss against its closed form, Hessian-vector
products, and Lanczos against a dense eigendecomposition."""

import pytest
import torch

from rsbook.ancer import curvature
from rsbook.ancer.curvature import (
    Rotation,
    hessian_vector_product,
    lanczos,
    loss_hessian,
    safe_directions,
)


@pytest.mark.parametrize("d, k", [(2, 2), (5, 2), (300, 4), (300, 300)])
def test_rotation_is_orthogonal_with_the_given_leading_columns(d, k):
    # U = [basis | completion] must be orthogonal (eq. 4.2 needs U^T U = I for N(0, U S U^T)).
    torch.manual_seed(d + k)
    basis = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64))[0]
    rotation = Rotation.from_basis(basis)
    u = rotation.dense()
    torch.testing.assert_close(u.T @ u, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(u[:, :k], basis, atol=1e-12, rtol=0)
    z = torch.randn(3, 7, d, dtype=torch.float64)
    torch.testing.assert_close(rotation.apply(z), z @ u.T)
    torch.testing.assert_close(rotation.apply_transpose(z), z @ u)


def test_rotation_paths_agree_above_and_below_the_dense_limit(monkeypatch):
    # The reflector path (ormqr, image-sized inputs) and the cached dense path give the same U z.
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(2, 40, 6, dtype=torch.float64))[0]
    rotation = Rotation.from_basis(basis)
    z = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    dense = rotation.apply(z)
    monkeypatch.setattr(curvature, "DENSE_APPLY_LIMIT", 0)
    householder = rotation.apply(z)
    torch.testing.assert_close(householder, dense)
    torch.testing.assert_close(rotation.apply_transpose(householder), z.detach(), atol=1e-12, rtol=0)
    householder.sum().backward()  # differentiable, for the reparametrised noise
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_identity_rotation_is_the_axis_aligned_case():
    torch.testing.assert_close(Rotation.identity(4, dtype=torch.float64).dense(), torch.eye(4, dtype=torch.float64))


class SoftmaxLinear(torch.nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return x.reshape(len(x), -1) @ self.weight.T + self.bias


def test_loss_hessian_matches_the_closed_form_of_softmax_regression():
    # For logits W x + b and cross-entropy at label y: H = W^T (diag(p) - p p^T) W (eq. 4.7).
    torch.manual_seed(1)
    weight, bias = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    model = SoftmaxLinear(weight, bias)
    x = torch.randn(5, dtype=torch.float64)
    p = torch.softmax(model(x[None])[0], 0)
    expected = weight.T @ (torch.diag(p) - torch.outer(p, p)) @ weight
    torch.testing.assert_close(loss_hessian(model, x, label=2), expected)
    vector = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(hessian_vector_product(model, x, label=2)(vector), expected @ vector)


def test_lanczos_finds_the_leading_eigenpairs():
    # Largest |eigenvalue| first; with a spread spectrum the leading pairs converge in few steps.
    torch.manual_seed(2)
    q = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64))[0]
    spectrum = torch.cat([torch.tensor([50.0, -40.0, 30.0], dtype=torch.float64), torch.rand(197, dtype=torch.float64)])
    matrix = (q * spectrum) @ q.T
    values, vectors = lanczos(lambda v: matrix.to(v.dtype) @ v, 200, 3, steps=40, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(values, spectrum[:3], atol=1e-4, rtol=1e-5)
    overlap = (vectors.T @ q[:, :3]).abs()
    torch.testing.assert_close(overlap, torch.eye(3, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_safe_directions_exact_and_lanczos_agree_on_the_leading_direction():
    # Algorithm 2: U = eigenvectors of the Hessian; the Lanczos path (never a dense Hessian) finds
    # the same leading direction on a d = 64 model.
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 10)).double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    exact, exact_values = safe_directions(model, x)
    assert exact.batch_shape == (2,) and exact.rank == 64
    approx, approx_values = safe_directions(model, x, rank=2, steps=64, generator=torch.Generator().manual_seed(0))
    assert approx.rank == 2
    torch.testing.assert_close(approx_values, exact_values[:, :2], atol=1e-8, rtol=1e-6)
    for b in range(2):
        leading = (approx.dense()[b][:, 0] @ exact.dense()[b][:, 0]).abs()
        assert leading == pytest.approx(1.0, abs=1e-8)
        hessian = loss_hessian(model, x[b])
        u = approx.dense()[b]
        torch.testing.assert_close(u.T @ u, torch.eye(64, dtype=torch.float64), atol=1e-10, rtol=0)
        torch.testing.assert_close(hessian @ u[:, 0], approx_values[b, 0] * u[:, 0], atol=1e-8, rtol=1e-6)


def test_image_sized_inputs_need_a_rank():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    with pytest.raises(ValueError, match="exceed exact_limit"):
        safe_directions(model, torch.zeros(1, 3, 32, 32))
    rotation, values = safe_directions(model, torch.rand(1, 3, 32, 32), rank=3, steps=8,
                                       generator=torch.Generator().manual_seed(0))
    assert rotation.dim == 3072 and rotation.rank == 3 and values.shape == (1, 3)
    assert rotation.reflectors.shape == (1, 3072, 3)  # k x d numbers stored, never d x d


def test_bad_rotation_input_names_the_argument():
    with pytest.raises(ValueError, match="basis must have orthonormal columns"):
        Rotation.from_basis(torch.ones(3, 2))
    with pytest.raises(ValueError, match="k must be <= dim"):
        lanczos(lambda v: v, 3, 4)
