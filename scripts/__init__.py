"""The ``medflower`` command line and what runs around the Flower apps.

- ``cli``: the ``medflower`` entry point (commands imported only when chosen)
- ``simulate``, ``evaluate``, ``audit``: run a simulation, evaluate a saved model,
  audit it for membership inference
- ``flower/``: the Flower environment, process handling and the one ``flwr run``
  driver (simulate, deploy run and the scale benchmark use it)
- ``deploy/``: SuperLink/SuperNode deployment with TLS and authenticated nodes
- ``benchmarks/``: ``medflower benchmark <suite>``
- ``harness/``: the in-process Grid and poisoning hospitals (tests and benchmarks only)
"""
