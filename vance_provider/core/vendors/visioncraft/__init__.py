"""VisionCraft: the backend, and the calls only VisionCraft has (``client.visioncraft``)."""
