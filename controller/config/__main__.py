"""`python -m controller.config` prints the configuration reference table."""

from controller.config.reference import reference_table

print(reference_table(), end="")
