"""Safe directions from the curvature of the loss (Rumezhak 2022, Sec. 4.2, Algorithm 2).

RANCER rotates the smoothing noise by U, the eigenvectors of the Hessian H of the loss at the input
(eq. 4.6-4.7; the loss is the cross-entropy against the base classifier's own prediction, as in the
authors' code). For small inputs H is computed exactly with autograd and diagonalised. For
image-sized inputs (d = 3072 on CIFAR-10) a dense Hessian is never formed: Lanczos iteration on
Hessian-vector products finds the `rank` leading eigenvectors (largest |eigenvalue|, the directions
of strongest curvature) and they are completed to an orthonormal basis of R^d.

`Rotation` stores such an orthogonal U (d x d) as Householder reflectors (torch.geqrf of its first k
columns): k x d numbers instead of d x d, applied in O(k d) per vector. Its first k columns are the
given directions; the other d - k columns are a fixed orthonormal completion.
"""

from __future__ import annotations

import numbers

import torch

from rsbook._checks import check_positive_int
from rsbook.ancer.outputs import check_outputs, to_log_probabilities

__all__ = ["Rotation", "loss_hessian", "hessian_vector_product", "lanczos", "safe_directions"]

DENSE_APPLY_LIMIT = 256
"""Rotations of dimension up to this are applied as a cached dense matrix (faster than reflectors)."""


class Rotation:
    """A batch of orthogonal matrices U (shape (..., d, d)) with prescribed leading columns.

    reflectors, tau: the output of torch.geqrf on the (..., d, k) basis; signs: (..., k) entries +-1
    so that U = Q diag(signs, 1, ..., 1), Q = H_1 ... H_k the Householder product. Build one with
    `Rotation.from_basis` or `Rotation.identity`; `apply(z)` returns U z and `apply_transpose(y)`
    U^T y for z, y of shape (..., S, d) (S vectors per matrix), `dense()` the matrices.
    """

    def __init__(self, reflectors: torch.Tensor, tau: torch.Tensor, signs: torch.Tensor):
        if reflectors.dim() < 2 or tau.shape != reflectors.shape[:-2] + reflectors.shape[-1:]:
            raise ValueError(f"reflectors must have shape (..., d, k) and tau (..., k); got {tuple(reflectors.shape)}"
                             f" and {tuple(tau.shape)}")
        if signs.shape != tau.shape:
            raise ValueError(f"signs must have shape {tuple(tau.shape)}, got {tuple(signs.shape)}")
        self.reflectors, self.tau, self.signs = reflectors, tau, signs
        self._dense = None

    @classmethod
    def from_basis(cls, basis) -> "Rotation":
        """U whose first k columns are `basis` (shape (..., d, k), orthonormal columns, k <= d)."""
        basis = torch.as_tensor(basis)
        if not basis.is_floating_point() or basis.dim() < 2 or basis.shape[-1] > basis.shape[-2]:
            raise ValueError(f"basis must be a float tensor of shape (..., d, k) with k <= d, got {tuple(basis.shape)}")
        gram = basis.transpose(-1, -2) @ basis
        eye = torch.eye(basis.shape[-1], dtype=basis.dtype, device=basis.device)
        if not torch.allclose(gram, eye.expand_as(gram), atol=1e-4 if basis.dtype == torch.float32 else 1e-8):
            raise ValueError("basis must have orthonormal columns")
        reflectors, tau = torch.geqrf(basis)
        signs = torch.sign(torch.diagonal(reflectors[..., : basis.shape[-1], :], dim1=-2, dim2=-1))
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        return cls(reflectors, tau, signs)

    @classmethod
    def identity(cls, dim: int, batch: tuple = (), dtype=torch.float32, device=None) -> "Rotation":
        """U = I (shape (*batch, dim, dim)): the axis-aligned case (ANCER) as a rotation."""
        dim = check_positive_int(dim, "dim")
        eye = torch.eye(dim, 1, dtype=dtype, device=device).expand(*batch, dim, 1).contiguous()
        return cls.from_basis(eye)

    @property
    def dim(self) -> int:
        return self.reflectors.shape[-2]

    @property
    def rank(self) -> int:
        """Number of prescribed leading columns k."""
        return self.reflectors.shape[-1]

    @property
    def batch_shape(self) -> tuple:
        return tuple(self.reflectors.shape[:-2])

    def _signed(self, z: torch.Tensor) -> torch.Tensor:
        k = self.rank
        scale = torch.ones(*self.batch_shape, 1, self.dim, dtype=z.dtype, device=z.device)
        scale[..., 0, :k] = self.signs.to(z.dtype)
        return z * scale

    def _broadcast(self, z: torch.Tensor):
        """Reflectors, tau and z^T (shape (..., d, S)) broadcast to common batch dimensions."""
        batch = torch.broadcast_shapes(self.batch_shape, z.shape[:-2])
        reflectors = self.reflectors.to(z.dtype).expand(*batch, self.dim, self.rank)
        tau = self.tau.to(z.dtype).expand(*batch, self.rank)
        return reflectors, tau, z.transpose(-1, -2).expand(*batch, self.dim, z.shape[-2])

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """U z for each of the S vectors in z (shape (*batch, S, d)); differentiable in z."""
        if self.dim <= DENSE_APPLY_LIMIT:
            return z @ self.dense(z.dtype, z.device).transpose(-1, -2)
        reflectors, tau, other = self._broadcast(self._signed(z))
        return torch.ormqr(reflectors, tau, other).transpose(-1, -2)

    def apply_transpose(self, y: torch.Tensor) -> torch.Tensor:
        """U^T y for each of the S vectors in y (shape (*batch, S, d))."""
        if self.dim <= DENSE_APPLY_LIMIT:
            return y @ self.dense(y.dtype, y.device)
        reflectors, tau, other = self._broadcast(y)
        return self._signed(torch.ormqr(reflectors, tau, other, transpose=True).transpose(-1, -2))

    def dense(self, dtype=None, device=None) -> torch.Tensor:
        """The matrices U, shape (*batch, d, d)."""
        if self._dense is None:
            eye = torch.eye(self.dim, dtype=self.reflectors.dtype, device=self.reflectors.device)
            eye = eye.expand(*self.batch_shape, self.dim, self.dim).contiguous()
            q = torch.ormqr(self.reflectors, self.tau, eye)
            self._dense = self._signed(q)  # Q diag(signs, 1, ...): scale the columns
        return self._dense.to(dtype=dtype or self._dense.dtype, device=device or self._dense.device)

    def __getitem__(self, index) -> "Rotation":
        """The rotation(s) of one batch entry (or slice)."""
        return Rotation(self.reflectors[index], self.tau[index], self.signs[index])

    @classmethod
    def stack(cls, rotations) -> "Rotation":
        """One batched Rotation from a sequence of unbatched ones of the same dimension and rank."""
        rotations = list(rotations)
        return cls(torch.stack([r.reflectors for r in rotations]), torch.stack([r.tau for r in rotations]),
                   torch.stack([r.signs for r in rotations]))

    def state(self) -> dict:
        """Plain tensors, for torch.save."""
        return {"reflectors": self.reflectors.cpu(), "tau": self.tau.cpu(), "signs": self.signs.cpu()}

    @classmethod
    def from_state(cls, state: dict, device=None) -> "Rotation":
        return cls(*(state[key].to(device or "cpu") for key in ("reflectors", "tau", "signs")))

    def to(self, device) -> "Rotation":
        return Rotation(self.reflectors.to(device), self.tau.to(device), self.signs.to(device))


def _loss_fn(model, label: int, outputs: str = "logits"):
    """The cross-entropy loss of the class `label` at one point, the model's outputs read as `outputs`
    (rsbook.ancer.outputs: 'logits' or 'probabilities', checked)."""
    def loss(point):
        log_p = to_log_probabilities(model(point.unsqueeze(0)), outputs)
        return torch.nn.functional.nll_loss(log_p, torch.tensor([label], device=point.device))
    return loss


def _label(model, x: torch.Tensor, label) -> int:
    if label is None:
        with torch.no_grad():
            return int(model(x.unsqueeze(0)).argmax(1))
    if isinstance(label, bool) or not isinstance(label, numbers.Integral):
        raise ValueError(f"label must be an int class index or None, got {label!r}")
    return int(label)


def loss_hessian(model, x, label=None, outputs: str = "logits") -> torch.Tensor:
    """The exact Hessian of the cross-entropy loss at one input x w.r.t. x (thesis eq. 4.7), shape
    (d, d) with d = x.numel(); `label` defaults to the base classifier's prediction at x. outputs: what
    the model returns, 'logits' or 'probabilities' (rsbook.ancer.outputs)."""
    x = torch.as_tensor(x)
    label = _label(model, x, label)
    flat = x.detach().reshape(-1).clone()
    loss = _loss_fn(model, label, outputs)
    hessian = torch.autograd.functional.hessian(lambda v: loss(v.reshape(x.shape)), flat, vectorize=True)
    return 0.5 * (hessian + hessian.T)


def hessian_vector_product(model, x, label=None, outputs: str = "logits"):
    """A function v -> H v (v of shape (d,)) for the Hessian of the cross-entropy loss at x, by
    double back-propagation; never forms H. `label` defaults to the base prediction at x; outputs as in
    loss_hessian."""
    x = torch.as_tensor(x)
    label = _label(model, x, label)
    point = x.detach().clone().requires_grad_(True)
    loss = _loss_fn(model, label, outputs)(point)
    (grad,) = torch.autograd.grad(loss, point, create_graph=True)
    grad = grad.reshape(-1)

    def product(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(grad, point, grad_outputs=v.reshape(-1).to(grad.dtype), retain_graph=True)
        return hv.reshape(-1).detach()

    return product


def lanczos(matvec, dim: int, k: int, steps: int | None = None, generator=None, dtype=torch.float64,
            device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k eigenpairs of largest |eigenvalue| of a symmetric operator, by Lanczos iteration with
    full re-orthogonalisation (Golub & Van Loan, Sec. 10.1).

    matvec: v (shape (d,)) -> A v. steps: Krylov dimension m (default min(d, 2k + 20)). The start
    vector is drawn from `generator`. Returns (eigenvalues (k,), eigenvectors (d, k)) with
    orthonormal columns, ordered by decreasing |eigenvalue|. With m = d the result is exact up to
    rounding; otherwise the leading pairs converge first.
    """
    dim = check_positive_int(dim, "dim")
    k = check_positive_int(k, "k")
    if k > dim:
        raise ValueError(f"k must be <= dim = {dim}, got {k}")
    steps = min(dim, 2 * k + 20) if steps is None else check_positive_int(steps, "steps")
    if not k <= steps <= dim:
        raise ValueError(f"steps must lie in [k, dim] = [{k}, {dim}], got {steps}")
    device = torch.device("cpu" if device is None else device)
    basis = torch.zeros(dim, steps, dtype=dtype, device=device)
    alphas, betas = [], []
    v = torch.randn(dim, generator=generator, dtype=dtype, device=device)
    v = v / v.norm()
    beta, previous = 0.0, torch.zeros_like(v)
    for j in range(steps):
        basis[:, j] = v
        w = matvec(v.to(torch.get_default_dtype())).to(dtype) - beta * previous
        alpha = float(w @ v)
        w = w - alpha * v
        for _ in range(2):  # full re-orthogonalisation, twice is enough (Parlett)
            w = w - basis[:, : j + 1] @ (basis[:, : j + 1].T @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        if j == steps - 1:
            break
        if beta <= 1e-10 * max(1.0, max(abs(a) for a in alphas)):
            # invariant subspace found: continue from a fresh direction orthogonal to the basis
            w = torch.randn(dim, generator=generator, dtype=dtype, device=device)
            w = w - basis[:, : j + 1] @ (basis[:, : j + 1].T @ w)
            w = w - basis[:, : j + 1] @ (basis[:, : j + 1].T @ w)
            beta_used = 0.0
            betas.append(beta_used)
            previous, v, beta = v, w / w.norm(), beta_used
            continue
        betas.append(beta)
        previous, v = v, w / beta
    tri = torch.diag(torch.tensor(alphas, dtype=dtype))
    if betas:
        off = torch.tensor(betas, dtype=dtype)
        tri = tri + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tri)
    order = torch.argsort(values.abs(), descending=True)[:k]
    ritz = basis[:, : len(alphas)] @ vectors[:, order].to(device)
    q, r = torch.linalg.qr(ritz)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(1, dtype=dtype, device=device))
    return values[order].to(device), q


def safe_directions(model, x, rank: int | None = None, *, exact_limit: int = 1024, steps: int | None = None,
                    generator=None, labels=None, outputs: str = "logits") -> tuple[Rotation, torch.Tensor]:
    """RANCER's rotation at each input of the batch x (shape (B, *input_shape)): the eigenvectors of
    the Hessian of the loss (Sec. 4.2, Algorithm 2).

    rank None (default): all d eigenvectors of the exact autograd Hessian; allowed only when
    d <= exact_limit (a dense d x d Hessian is never built for image-sized inputs by default).
    rank k < d: the k leading eigenvectors (largest |eigenvalue|) by Lanczos on Hessian-vector
    products (`steps` Krylov vectors, start vectors from `generator`), completed to an orthonormal
    basis. labels: the classes whose loss is used (default: the base predictions). outputs: what the
    model returns, 'logits' (default) or 'probabilities' (rsbook.ancer.outputs; a softmax-ending model read
    as logits is refused, not differentiated through a second softmax).
    Returns (Rotation with batch shape (B,), eigenvalues of shape (B, k)).
    """
    check_outputs(outputs)
    x = torch.as_tensor(x)
    if x.dim() < 2:
        raise ValueError(f"x must be a batch of shape (B, *input_shape), got shape {tuple(x.shape)}")
    dim = x[0].numel()
    if rank is None:
        if dim > exact_limit:
            raise ValueError(f"inputs of dimension {dim} exceed exact_limit = {exact_limit}: give a rank k < d "
                             "to use Lanczos on Hessian-vector products instead of a dense Hessian")
        rank = dim
    rank = check_positive_int(rank, "rank")
    if rank > dim:
        raise ValueError(f"rank must be <= the input dimension {dim}, got {rank}")
    rotations, eigenvalues = [], []
    for i in range(len(x)):
        label = None if labels is None else int(labels[i])
        if rank == dim and dim <= exact_limit:
            hessian = loss_hessian(model, x[i], label, outputs).to(torch.float64)
            values, vectors = torch.linalg.eigh(hessian)
            order = torch.argsort(values.abs(), descending=True)
            values, vectors = values[order], vectors[:, order]
        else:
            values, vectors = lanczos(hessian_vector_product(model, x[i], label, outputs), dim, rank, steps=steps,
                                      generator=generator, device=x.device)
        rotations.append(Rotation.from_basis(vectors.to(torch.float64)))  # applied in the dtype of the noise
        eigenvalues.append(values)
    return Rotation.stack(rotations), torch.stack(eigenvalues)
