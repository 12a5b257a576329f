"""Uploaded files: model files and datasets that belong to a project."""
