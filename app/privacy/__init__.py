"""Differential privacy and privacy audits: every privacy mechanism lives here.

- ``accounting``: Opacus accountants whose history survives serialisation
- ``dp_sgd``: local DP-SGD (Poisson sampling, per-sample clipping, noise)
- ``dp_optimizer``, ``per_sample``: the per-sample-gradient engine behind DP-SGD
- ``local_dp``: a hospital's DP-SGD round, its budget kept in ``context.state``
- ``central_dp``: server-side clipping and hospital-level accounting (DP-FedAvg)
- ``server``: the server's privacy log and per-round history entries
- ``cohort_release``: DP release of cohort statistics (OpenDP noise)
- ``cohort_stats``: global standardisation (``dp-global``, ``public-bounds``)
- ``membership``, ``shadow``: membership-inference audits of a trained model
"""
