"""What this vendor API can do (the engine branches on it), apart from its backend so that
code knowing only the API's name can ask."""

from ...api.models import Capabilities

#: The Open API v1: credits reserved at creation, charged at the end; jobs can be canceled.
CAPABILITIES = Capabilities(
    can_cancel=True,
    idempotent_create=True,
    reserves_credits=True,
    image_formats=("jpg", "png", "webp"),
    max_image_bytes=200 * 1024 * 1024,
    max_video_bytes=5261334937,
)
