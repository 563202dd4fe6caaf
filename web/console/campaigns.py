"""Console pages: campaigns (see web/console/__init__.py)."""
