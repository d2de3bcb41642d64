"""FaRS (Ghazanfari, *FaRS: Fast Randomized Smoothing*): certificates in the embedding space of a
1-Lipschitz backbone (book chapter "FaRS").

f = l o e with e 1-Lipschitz in l2, so a radius certified for the head l at z = e(x) holds for f at x
(Proposition 1). The head is certified in closed form (a linear head: the exact distance to its
decision boundary) or by randomized smoothing of the head alone (Cohen et al.'s CERTIFY, cheap since
the backbone runs once).

    lipschitz  1-Lipschitz layers (SLL, AOL), pooling and padding, `sll_backbone`, and the checks of
               the property (Jacobian spectral norm by power iteration, adversarial pairs)
    certify    the FaRS model, `margin_radius` / `linear_certify` (exact), the seed's per-class score
               (not a certificate), sparsemax, the smoothed sparsemax head, margin training
    pipeline   training, embeddings, certificate and PGD tables of Tables 1-2, timing (run folders)
    plots      the chapter's figures (certified vs attacked accuracy, seconds per certificate)
    steps      the chapter's heavy steps, described once (rsbook.book.steps): training as in-process calls,
               certificates, attacks and timing, for the chapter and `make plan`
"""

from rsbook.fars.certify import (
                                 BOUNDS,
                                 FaRS,
                                 MLPHead,
                                 SmoothedSparsemaxModel,
                                 SparsemaxSmooth,
                                 build_head,
                                 carry_radius,
                                 empirical_bernstein_lower,
                                 hoeffding_lower,
                                 linear_certify,
                                 margin_logits,
                                 margin_radius,
                                 nearest_boundary_point,
                                 per_class_radius,
                                 sparsemax,
)
from rsbook.fars.lipschitz import (
                                 AOLConv2d,
                                 AOLLinear,
                                 SLLBackbone,
                                 SLLConv2d,
                                 SLLLinear,
                                 adversarial_lipschitz_ratio,
                                 max_jacobian_norm,
                                 sll_backbone,
)

__all__ = ["FaRS", "sll_backbone", "SLLBackbone", "SLLLinear", "SLLConv2d", "AOLLinear", "AOLConv2d",
           "max_jacobian_norm", "adversarial_lipschitz_ratio", "margin_radius", "linear_certify", "per_class_radius",
           "nearest_boundary_point", "carry_radius", "sparsemax", "SparsemaxSmooth", "SmoothedSparsemaxModel",
           "MLPHead", "build_head", "margin_logits", "hoeffding_lower", "empirical_bernstein_lower", "BOUNDS"]
