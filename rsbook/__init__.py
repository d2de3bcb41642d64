"""rsbook: randomized-smoothing certificates (Cohen et al. 2019 and the bounds it improves on),
their statistics, and the published numbers of the documents the rsbook book reproduces.

The shared core: stats, bounds (no torch); smooth (PREDICT / CERTIFY); streams (random streams, one
purpose each); logs, analysis, report, plots, published (the book's data); data, models, train,
dataset_runs, attacks, throughput (datasets, networks, noise training, resumable certification,
PGD, the benchmark); cli. One package per document's methods, each importing only the core:

    cohen   Cohen et al. 2019 re-run: grids of runs, top-k certificates, smoothed attacks
    relax   IBP, dual, LP and MILP certificates (LP-relaxation slides)
    fars    1-Lipschitz backbones and FaRS certificates
    ancer   DDS, ANCER, RANCER and memory-based certification
"""

__version__ = "0.1.0"
