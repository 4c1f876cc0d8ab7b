"""`tollgate flusher`: the process that finishes the work no request will do.

loop (the passes over the buckets with due work), bucket (one bucket's work in a pass),
dead_letters (rows SQL refused), retention (files past their time) and webhooks (delivery
from the outbox).
"""
