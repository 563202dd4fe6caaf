"""Console pages: reports (see web/console/__init__.py)."""
