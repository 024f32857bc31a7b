"""smtp-harness: a packet-level SMTP conformance test harness."""

__version__ = "0.1.0"
