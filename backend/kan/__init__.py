"""Kolmogorov-Arnold networks: every family reduced to layers of per-edge univariate functions.

``base`` holds what the views need (``EdgeLayer``, ``KANNetwork``); ``families`` reads each library's
state_dict layout into those layers; ``checkpoint`` finds and reads KAN files; ``symbolic`` fits
formulas to an edge's curve.
"""
