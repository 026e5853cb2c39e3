"""The conformance suite: probes, overlays, the check catalog, reports and the CLI."""

from reference._version import HARNESS_VERSION as __version__

__all__ = ["__version__"]
