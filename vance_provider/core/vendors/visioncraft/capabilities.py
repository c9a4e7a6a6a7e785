"""What this vendor API can do (the engine branches on it), apart from its backend so that
code knowing only the API's name can ask."""

from ...api.models import Capabilities

MAX_SOURCE_BYTES = 50 * 1024 * 1024  # the image travels base64 in a JSON body

#: VisionCraft: a subscription (0 credits per job); the result comes with the submission.
CAPABILITIES = Capabilities(
    collectable_elsewhere=False,  # results live in the submitting process only
    answers_on_submit=True,
    requests_per_job=1,  # the submission answers with the result
    charges_credits=False,  # a subscription: every job costs 0 credits
    image_formats=("jpg", "png", "webp"),
    max_image_bytes=MAX_SOURCE_BYTES,
)
