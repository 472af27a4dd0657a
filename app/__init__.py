"""medflower's Flower apps and every feature that serves them, one home each.

- ``server_app``, ``client_app``: the thin Flower ServerApp and ClientApp
  (Message <-> Python only; ``pyproject.toml`` names them)
- ``config``: the run configuration, parsed once into a frozen, validated record
- ``server/``: the federation loop, round runner, model averaging, checkpoints,
  run outputs (history.json, final_model.pt) and the report
- ``client/``: which data a hospital reads and which model it builds
- ``privacy/``: accounting, DP-SGD, per-sample gradients, central DP, cohort
  statistics, membership-inference audits
- ``secagg/``: secure aggregation (SecAgg+ and CKKS), server and hospital stages
- ``governance/``: the hospital's site policy, epsilon ledger and audit log
- ``vertical/``: vertical FL (PSI, split networks, parties, coordinator)
- ``personalization/``: personalised FL (fine-tuning, Ditto, APFL, FedRep,
  FENDA-FL): each hospital's own model, kept in ``context.state``
- ``logs``, ``jsonio``: log routing and the one JSON writer
"""
