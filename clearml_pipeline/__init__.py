"""Spanish speech -> Mandarin speech: the pipeline definition, its local runner and (next) its ClearML controller."""
