"""The Open API: transforms by name, with a Pixel-style job model."""
