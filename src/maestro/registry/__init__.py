"""The model registry: models in projects, their versions, tags, stages and aliases."""
