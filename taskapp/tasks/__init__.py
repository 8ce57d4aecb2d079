"""The task domain: schemas, the caching task service, and its routes."""
