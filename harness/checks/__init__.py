"""RFC conformance checks over run ladders, and the checks-by-MTAs matrix (``matrix``)."""
