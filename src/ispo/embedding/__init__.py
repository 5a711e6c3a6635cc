"""Cell embeddings: the API call (``ispo.embed``) and the streaming file-to-file path
(``ispo embed``), both over the one runner in :mod:`ispo.runtime`."""
