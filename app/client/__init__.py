"""The hospital's side: which data a ClientApp reads and which model it builds.

- ``hospital``: load this hospital's data from its node config, build the run's
  model, derive the per-round seed and training settings

The Message handlers themselves are in :mod:`app.client_app`.
"""
