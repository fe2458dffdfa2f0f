"""Importers that turn third-party model catalogs into :class:`registry.models.ModelSpec`."""
