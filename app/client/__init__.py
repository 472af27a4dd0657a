"""The hospital's side: which data a ClientApp reads and which model it builds.

- ``hospital``: load this hospital's data from its node config, build the run's
  model, derive the per-round seed and training settings
- ``handlers``: the Message handlers (train, evaluate, queries), which
  :mod:`app.client_app` registers and imports on the first message
- ``cache``: what a process keeps per run and hospital (config, data, model)
- ``decision``: the decision-threshold query's validation statistics
"""
