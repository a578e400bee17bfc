"""restic's REST backend protocol on top of the gateway: unmodified restic backs up into orbitvault.

Entry point: `serve_rest(gateway, settings) -> RestServer` (`server.py`); settings and their
`[rest]` TOML/environment loading in `config.py`. HTTP-free pieces: `protocol.py` (paths, names,
ranges) and `repo.py` (the operations over the Gateway facade). `python -m orbitvault.rest` runs one
for tests and benchmarks.
"""

from orbitvault.rest.config import RestSettings, load_rest_settings
from orbitvault.rest.server import RestServer, http_status, serve_rest

__all__ = ["RestServer", "RestSettings", "http_status", "load_rest_settings", "serve_rest"]
