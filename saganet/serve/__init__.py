"""`python -m saganet.serve`: tile and slide inference over HTTP.

app.py (settings, the Server and its probes), tiles.py and slides.py (routes), batcher.py (dynamic batching of tile requests), jobs.py (slide jobs persisted in
SQLite), security.py (auth, path confinement, size limits, decoding untrusted images), viewer.py (the
slide viewer's routes; its page in static/), http.py (a header deadline for uvicorn). It uses
`saganet.engine`, `saganet.slide` and `saganet.data`'s image conversion, never training code
(tests/test_boundaries.py holds that).
"""
