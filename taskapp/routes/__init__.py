"""The blueprints, side by side over the app's shared parts (none imports another): ``auth``
(registration, logins and their tokens, the caller's account), ``tasks`` (a user's tasks and
activity), ``admin`` (any account and its tasks), ``service`` (liveness, readiness, metrics, the
OpenAPI document) and ``docs`` (the document's interactive page)."""
