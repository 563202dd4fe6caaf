"""Console pages: operations (see web/console/__init__.py)."""
