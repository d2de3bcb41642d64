"""The machinery that builds the book (what only the chapters, tools/book.py and `make` use), in a room of its
own: the library a researcher imports (rsbook.smooth, stats, bounds, sequential, analysis, logs, data, models,
train, ...) never imports it. The document packages' `steps` modules describe their chapters' heavy steps and
needs with it.

Modules:
  profiles      the profiles (smoke, default, full, paper-sample) and a chapter's parameters as the build
                injects them; the book's documents in reading order
  steps         a chapter's heavy steps as records (Step, Work, Model, RunRecord), the registry the document
                packages fill (register, discover) and their cost paths (register_paths)
  commands      steps that are `rsbook` commands: training (or the authors' released model in its place),
                CERTIFY, sequential certification, PREDICT
  running       which steps are done (progress) and running them, in this process or launched through torchrun
  needs         what each chapter needs, declared by its document package (Needs, declare)
  disk          the disk a paper-scale run needs
  requirements  every requirement of the chapters a build runs, as plain values
  preflight     `python -m rsbook.book.preflight`: check the requirements before anything runs
  plan          `make plan` (`python -m rsbook.book.plan`): every step's time on this machine's devices, and the
                cost of each path to a chapter's results
  report        a chapter's run folder, its comparisons with the published numbers, the scoreboard, table style
  throughput    the sampling engine's throughput behind `make bench` and the chapters' performance sections
"""
