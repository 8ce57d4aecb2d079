"""The task domain: schemas and the caching task service (routes: ``taskapp.routes.tasks``)."""
