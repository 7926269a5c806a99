"""Residual networks as ensembles of paths: the residual units (blocks) and their measurements (paths)."""
