"""Benchmarks of taskapp against a bare Flask route and the caches a Flask user would pick."""
