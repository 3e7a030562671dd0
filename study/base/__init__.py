"""What the runner and the analysis share: the study's storage, its search space, its records and row vocabulary."""
