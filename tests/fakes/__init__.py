"""Local stand-ins for remote services, used by tests and benchmarks. They bind to 127.0.0.1 only.

Each module documents its own API; e.g. :mod:`fakes.flickr_server` fakes Flickr's REST
search API and photo server, with a generated catalogue and configurable fault injection.
Tests import them as ``fakes.<module>`` (pytest puts ``tests/`` on ``sys.path``).
"""
