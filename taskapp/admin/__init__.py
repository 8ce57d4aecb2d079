"""Administration of users and their tasks."""
