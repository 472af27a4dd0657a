"""``medflower benchmark <suite>``: measured comparisons that print their numbers.

- ``core``: the suite registry, the command and the results writer
- one module per suite: ``heart``/``cost``/``scale`` (``suites``), ``imaging``,
  ``privacy``, ``dp_step``, ``personalization``, ``poisoning``, ``secagg``, ``vertical``
"""
