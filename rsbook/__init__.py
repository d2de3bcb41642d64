"""rsbook: randomized-smoothing certificates (Cohen et al. 2019 and the bounds it improves on),
their statistics, and the published numbers of the documents the rsbook book reproduces.

Modules: stats, bounds (no torch); smooth (PREDICT / CERTIFY); logs (the authors' log format and
run manifests); analysis (tables from logs); published (the papers' numbers and artifacts);
plots; data, models, dataset_runs; report (chapter plumbing); cli.
"""

__version__ = "0.1.0"
