"""Test helpers (importable as ``support.*``; ``pythonpath = tests`` in pyproject).

- ``federation``: repo paths, run configs, hospital messages and contexts
- ``imaging``: real PNG, DICOM, NIfTI and MedMNIST files written for loader tests
- ``secagg``: one secure-aggregation round driven by hand
- ``deploy``: heart-disease hospital folders and process lookups for deployment tests
"""
