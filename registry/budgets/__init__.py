"""Budgets: spend limits per tenant (and model) per UTC day, week or month, enforced at admission."""
