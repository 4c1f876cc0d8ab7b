"""tollgate: a credit-metered job gateway for GPU work."""
