"""Cross-cutting HTTP concerns shared by every domain: the response envelope, the
error shape and its handler, pagination, dependencies and middleware."""
