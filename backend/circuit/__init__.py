"""Neural circuit diagrams: the traced graph (trace), its folding and axis symbols (graph)."""
