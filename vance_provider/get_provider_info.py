"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Kept free of heavy imports (it reads only :mod:`vance_provider.defaults`): Airflow calls it on
every ``providers list`` and UI start.
"""

from __future__ import annotations

from typing import Any

from vance_provider.defaults import (
    API_CHOICES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
)

__all__ = [
    "API_CHOICES",
    "CONN_FIELDS",
    "FORM_API_VALUES",
    "INTEGRATION",
    "UI_FIELD_BEHAVIOUR",
    "get_provider_info",
]

INTEGRATION = "VanceAI"
#: The ``api`` extra as the form stores it, and the API each names. Airflow hands every string
#: extra of a connection to its secrets masker when it fetches the connection, and warns
#: "Skipping masking for a secret as it's too short (<5 chars)" for ``open``, ``web`` or ``auto``;
#: so the form offers names of five characters or more, and leaves the field empty for ``auto``.
#: The hook reads both spellings.
FORM_API_VALUES = {"open_api": "open", "web_api": "web", "visioncraft": "visioncraft"}
#: The connection form's extra fields, each with help text under it. Airflow >= 3.2 reads them
#: from here; on 3.0 and 3.1 the hook builds the same fields as WTForms widgets from this mapping.
CONN_FIELDS = {
    "api": {
        "label": "API",
        "description": "Which API the token is for: web_api (VanceAI web API v1), open_api (VanceAI "
        "Open API v1) or visioncraft. Empty: chosen by the token (an sk_live_ key uses the Open API, "
        "any other token the web API).",
        "schema": {"type": ["string", "null"], "default": None, "enum": list(FORM_API_VALUES)},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": f"Seconds to wait for one HTTP answer from VanceAI (default {DEFAULT_TIMEOUT:g}). "
        "A batch as a whole is bounded by the task's own timeout, not by this.",
        "schema": {"type": ["number", "null"], "default": int(DEFAULT_TIMEOUT), "exclusiveMinimum": 0},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of one call that may pass next time (HTTP 429 and 5xx, dropped "
        f"connections), with jittered backoff and Retry-After honoured (default {DEFAULT_MAX_RETRIES}; "
        "0: no retry). Job creation carries an Idempotency-Key, so a retry never pays twice.",
        "schema": {"type": ["integer", "null"], "default": DEFAULT_MAX_RETRIES, "minimum": 0},
    },
    "max_concurrency": {
        "label": "Max concurrent jobs per task",
        "description": "Jobs one batch task keeps in flight when the operator does not say "
        f"(default {DEFAULT_MAX_CONCURRENCY}). To bound the whole account across tasks, use a pool.",
        "schema": {"type": ["integer", "null"], "default": DEFAULT_MAX_CONCURRENCY, "minimum": 1},
    },
    "account_store": {
        "label": "Account store",
        "description": "Where every worker using this account shares its request rate, job cap and "
        "credit budgets: local (the workers of one machine), redis://host:6379/0 (every machine, "
        "e.g. the Celery broker's Redis), postgresql://user:pass@host/db (every machine, e.g. "
        "Airflow's metadata database), none. Empty: VANCE_ACCOUNT_STORE, else local.",
        "schema": {"type": ["string", "null"], "default": None},
    },
    "account_max_jobs": {
        "label": "Account job cap",
        "description": "The account's cap on jobs in flight, shared by every worker through the "
        "account store, so no job is refused for concurrency. Empty: each task learns it from refusals.",
        "schema": {"type": ["integer", "null"], "default": None, "minimum": 1},
    },
}
#: How the form shows the standard fields; the hook's ``get_ui_field_behaviour`` says the same.
#: Airflow's form takes a label and a placeholder for these (no help text), so the placeholder
#: carries the help.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"password": "API Token", "host": "Base URL (optional)"},
    "placeholders": {
        "host": "empty: VanceAI's own URL for the API; http://127.0.0.1:8765 for the simulator",
        "password": "web API token (My Account > API), or an Open API key sk_live_...",
    },
}


def get_provider_info() -> dict:
    from vance_provider import __version__
    from vance_provider.supported_airflow import require_supported_airflow

    require_supported_airflow()  # Airflow 2.x: refused here by name, not later by an ImportError

    return {
        "package-name": "vance-pipelines",
        "name": "VanceAI",
        "description": "`VanceAI <https://vanceai.com/>`__ image and video enhancement (web API v1 and Open "
        "API v1): resumable, credit-aware batches, deferrable operators and sensors.\n",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://docs.vanceai.com/",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["vance_provider.hooks.vanceai"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "vance_provider.operators.submit",
                    "vance_provider.operators.batch",
                    "vance_provider.operators.shards",
                    "vance_provider.operators.credits",
                ],
            }
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["vance_provider.sensors.vanceai"]}],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["vance_provider.triggers.vanceai"]}
        ],
        "connection-types": [
            {
                "hook-class-name": "vance_provider.hooks.vanceai.VanceAIHook",
                "hook-name": "VanceAI",
                "connection-type": "vanceai",
                # Declarative form fields (Airflow >= 3.2 reads these instead of importing the hook);
                # the hook's get_connection_form_widgets/get_ui_field_behaviour say the same.
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
        "extra-links": ["vance_provider.operators.links.VanceAIDestinationLink"],
        "config": {
            "vanceai": {
                "description": "The VanceAI provider's settings.",
                "options": {
                    "preview": {
                        "description": "Whether a VanceAI batch task writes a before/after contact sheet "
                        "of its first outputs beside them (_vance_preview/_vance_contact_sheet.jpg, "
                        "a few small thumbnails) "
                        "and returns its URL as 'preview'. False for private data: no picture is made.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "resume_after_deferral": {
                        "description": "Seconds a deferred VanceAI task waits, at least, before it "
                        "resumes (its trigger holds back an early event). Airflow up to 3.3.2 fails a "
                        "task that resumes before the scheduler has read the exit of the worker that "
                        "deferred it, which can come [workers] min_heartbeat_interval late "
                        "(apache/airflow#67287, #72716). A deferrable batch whose rest looks shorter "
                        "than this wait finishes in the worker instead. Empty: that interval plus 3 "
                        "seconds. 0: no wait (an Airflow with both fixes, or dag.test()).",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "0",
                        "default": "",
                    },
                },
            }
        },
    }
