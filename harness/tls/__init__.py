"""TLS in the lab (RFC 3207 STARTTLS): the run's PKI (``pki``)."""
