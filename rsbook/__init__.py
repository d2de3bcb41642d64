"""rsbook: randomized-smoothing certificates (Cohen et al. 2019 and the bounds it improves on),
their statistics, and the published numbers of the documents the rsbook book reproduces.

Modules: stats, bounds (no torch); smooth (PREDICT / CERTIFY); logs (the authors' log format and
run manifests); analysis (tables from logs); published (the papers' numbers and artifacts);
data, models, train, dataset_runs, experiments (datasets, networks, noise training, resumable
certification); attacks, topk, throughput; relax (IBP, dual, LP and MILP certificates);
lipschitz, fars (1-Lipschitz backbones, FaRS); anisotropic, curvature, ellipsoids, memory, toy2d
(DDS, ANCER, RANCER and memory-based certification); plots, report (chapter plumbing); cli.
"""

__version__ = "0.1.0"
