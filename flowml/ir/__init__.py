"""The graph IR: types, the graph, the primitive ops and the builder library."""
