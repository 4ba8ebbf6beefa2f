"""`trilora ui`: a local web UI that drives the CLI.

server.py is a small HTTP server from the standard library (no framework, nothing to download:
the page, its script and style ship in static/); api.py answers its JSON requests; jobs.py runs
each job as a `trilora ...` subprocess with its settings written as TOML in its folder; runs.py
reads runs back from their folders; paths.py keeps every path the browser sends under the root.
"""
