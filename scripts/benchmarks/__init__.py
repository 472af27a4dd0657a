"""``medflower benchmark <suite>``: measured comparisons that print their numbers.

- ``core``: the suite registry (name -> module, description), the command and the
  one results writer
- ``federation``: the one helper for in-process federated runs, and the pooled and
  local-only baselines
- one module per suite: ``heart``/``cost``/``scale`` (``suites``), ``imaging``,
  ``privacy``, ``dp_step``, ``personalization``, ``poisoning``, ``secagg``, ``vertical``
"""
