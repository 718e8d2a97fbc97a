"""imaguard-keyring: the signing authority's tools (key ceremony, signature bundles)."""

__all__: list[str] = []
