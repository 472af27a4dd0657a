"""A bare Flower app: the per-message floor of a deployed hospital."""
