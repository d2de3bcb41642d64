"""DDS, ANCER and RANCER (Rumezhak, *Non-Axis Aligned Anisotropic Certification with Randomized
Smoothing*): data-dependent and anisotropic smoothing, made sound by memory-based certification
(book chapter "DDS, ANCER and RANCER").

The noise at x is N(0, U diag(sigma)^2 U^T) with sigma (and U) chosen for x; CERTIFY then certifies an
ellipsoid (thesis eq. 3.12, 4.4), and because sigma depends on x, certificates of different inputs
must be reconciled (Algorithm 1).

    anisotropic  sigma optimisation (DDS, ANCER, RANCER) and anisotropic CERTIFY
    outputs      what the model returns (outputs="logits" or "probabilities"): no softmax applied twice
    metrics      certified accuracy by radius or proxy radius, ACR, ARI (Sec. 5.2)
    curvature    the Hessian's eigenvectors U (exact, or Lanczos on Hessian-vector products), `Rotation`
    ellipsoids   intersection test and projection distance of ellipsoids (eq. 3.16, 4.9, 4.10)
    memory       memory-based certification over balls and ellipsoids (Algorithm 1)
    toy          the seeded 2-D toy sets and the thesis's shallow classifiers (Sec. 5.1, 5.3.2)
    pipeline     the four-method experiment as resumable runs (Tables 5.1-5.6)
    plots        the chapter's figures (accuracy curves, certified regions, optimisation traces)
    steps        the chapter's heavy steps, described once (rsbook.book.steps): `rsbook train` of the image
                 classifier and the four-method runs, for the chapter and `make plan`

The proxy radius is the radius of the ball with the certified region's volume: a size, not an l2
certificate.
"""

from rsbook.ancer.anisotropic import (
                                      ABSTAIN,
                                      Certificate,
                                      Optimization,
                                      certify,
                                      optimize_ancer,
                                      optimize_isotropic,
                                      optimize_rancer,
)
from rsbook.ancer.curvature import Rotation, safe_directions
from rsbook.ancer.ellipsoids import distance_to_ellipsoid, ellipsoids_intersect
from rsbook.ancer.memory import Region, memory_certify, region_conflicts
from rsbook.ancer.metrics import (
                                      accuracy_table,
                                      acr_table,
                                      average_certified_radius,
                                      average_radius_improvement,
                                      certified_accuracy,
)
from rsbook.ancer.toy import make_toy

__all__ = ["ABSTAIN", "Optimization", "Certificate", "optimize_isotropic", "optimize_ancer", "optimize_rancer",
           "certify", "certified_accuracy", "average_certified_radius", "average_radius_improvement",
           "accuracy_table", "acr_table", "Rotation", "safe_directions", "ellipsoids_intersect",
           "distance_to_ellipsoid", "Region", "memory_certify", "region_conflicts", "make_toy"]
