"""Model references: the hub, local folders, test fixtures and (next) the ClearML model registry."""
