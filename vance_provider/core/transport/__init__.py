"""The transport under every backend: retries, the rate gate, bounded downloads."""
