"""Captures: reading (and writing) pcap/pcapng files; live capture comes here too."""
