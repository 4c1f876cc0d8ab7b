"""The use cases the API and the flusher share: create, lifecycle (confirm, execute, cancel,
retry), views (the job view, the listing cursor, result expiry), dispatch to the workers,
webhook targets and one delivery attempt. Below the API and the flusher, above the runtime.
"""
