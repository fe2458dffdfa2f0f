"""The cost ledger: exact, idempotent usage counters per model (and, to come, per tenant)."""
