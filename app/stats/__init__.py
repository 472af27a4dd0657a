"""Federated statistics: what a consortium looks at before training.

Every hospital answers one aggregate query about its own records (counts,
missing counts, sums, histograms, label counts; pixel-intensity histograms and
image sizes for imaging), suppresses cells counting fewer records than the
minimum, optionally adds DP noise (the cohort-statistics release,
:mod:`app.privacy.cohort_release`); the server combines the answers per site and
over all sites. Run as ``medflower stats`` or the run-config ``mode = "stats"``.

- ``query``: the query a server sends (typed, checked on both sides)
- ``release``: what a hospital sends back, as typed records
- ``hospital``: a hospital computes its release (suppression, DP noise)
- ``summary``: releases -> per-site and combined statistics (quantiles too)
- ``protocol``: the two-stage exchange, over a Flower Grid or in this process
- ``output``: stats.json, the PNG and the self-contained HTML page, text tables
"""
