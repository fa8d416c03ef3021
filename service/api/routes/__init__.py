"""One module per resource: rank, events, entities, ops (health, readiness, model, metrics)."""
