"""Models: the catalog, fetching and converting model files, and checking them."""
