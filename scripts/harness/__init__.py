"""Test and benchmark harness: never imported by the production ServerApp or ClientApp.

- ``inprocess``: an in-process Flower Grid (messages serialised as on the wire)
- ``poisoning``: model-poisoning hospitals for robustness experiments
"""
