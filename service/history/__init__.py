"""The SQL side of tollgate: users, rules, finished-job history and the credit ledger."""
