"""HTTP routes, one module per part of the REST reference (docs/reference.md)."""
