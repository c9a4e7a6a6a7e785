"""What lives beside the outputs: the manifest, the lease, the result cache, and file access."""
