"""Datasets, partitioning and preprocessing for medflower hospitals.

- ``registry``: dataset name -> class (one module plus one record per dataset)
- ``spec``, ``base``: what a hospital holds and the interface every dataset implements
- ``tabular``, ``imaging``: WDBC, UCI heart disease, any CSV; MedMNIST, image folders
  (PNG, DICOM, NIfTI), synthetic lesions
- ``partition``: splits across simulated hospitals (flwr-datasets partitioners)
- ``preprocessing``, ``transforms``: feature standardisation, MONAI image transforms
- ``lazy``: registries whose entries are imported on first use
"""
