"""Experiment tooling: the paper's recipes shared by configs/, sweeps, error-curve plots, and the
gradient-flow analysis of plain and residual networks."""
