"""`python -m saganet.serve`: tile and slide inference over HTTP.

app.py (routes), batcher.py (dynamic batching of tile requests), jobs.py (slide jobs persisted in
SQLite), security.py (auth, path confinement, size limits, decoding untrusted images). It uses
`saganet.engine` and `saganet.slide`, never training code.
"""
