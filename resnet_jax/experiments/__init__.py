"""Experiment tooling: sweeps, error-curve plots, and the gradient-flow analysis of plain and
residual networks. The recipes themselves are the files under configs/."""
