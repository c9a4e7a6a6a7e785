"""What this vendor API can do (the engine branches on it), apart from its backend so that
code knowing only the API's name can ask."""

from ...api.models import Capabilities

#: The web API v1: charged at the first download of a result.
CAPABILITIES = Capabilities(
    charges_on_download=True,
    requests_per_job=4,  # upload, transform, one progress, download
    has_usage_history=True,
    image_formats=("jpg", "png"),
    max_image_bytes=10 * 1024 * 1024,
    max_image_pixels=34_000_000,
)
