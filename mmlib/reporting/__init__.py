"""Reporting: the notebook runner, result records, the index, markdown logs and plots."""
