"""A read-only web app over a study's results, with a try-a-prompt tab (``python -m diffrep.app``).

- ``adapter``: the app's only calls into the rest of diffrep (config, generation, embeddings,
  similarity), so renames in the library touch one file;
- ``results``: reading ``results/{study}/`` through docs/formats.md;
- ``tryprompt``: input checks, the model cache and lock, the faiss index per dataset × embedder;
- ``render`` and ``page``: HTML; ``server``: the Starlette routes; ``__main__``: the command line.
"""
