"""``storage_conn_id`` through Airflow's object storage (the Amazon provider's S3 filesystem), against
moto's S3 and STS on loopback: access keys with an ``endpoint_url``, an assumed role, and what is
refused (with nothing uploaded, nothing charged and no secret in the message)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from tests.airflow.helpers import NEEDS_AMAZON
from tests.airflow.test_airflow_batch import _context, _drive, _operator

pytest.importorskip("s3fs")
pytestmark = NEEDS_AMAZON

LOGIN = "AKIAVANCECONNECTION1"
SECRET = "vance-conn-secret-7f3c9a1e5b2d4c6e8a0b"
ROLE = "arn:aws:iam::123456789012:role/vance-media"


@pytest.fixture(autouse=True)
def _fresh_connections() -> Any:
    """Each test resolves its connections afresh (the options are kept per connection digest)."""
    from vance_provider.hooks import storage

    storage._built.clear()
    yield
    storage._built.clear()


def _aws_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, endpoint: str, **fields: Any) -> None:
    extra = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        # STS (for role_arn) on the same loopback server: never AWS's own endpoint.
        "service_config": {"sts": {"endpoint_url": endpoint}},
        **fields.pop("extra", {}),
    }
    conn = {"conn_type": "aws", **fields, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _put_inputs(fs: Any, make_image: Any, bucket: str, n: int) -> None:
    from pathlib import Path

    for i in range(n):
        fs.pipe(f"{bucket}/in/p{i}.jpg", Path(make_image(f"{bucket}/p{i}.jpg", 32, 24)).read_bytes())


def _credentials(options: dict[str, Any]) -> Any:
    async def frozen() -> Any:
        credentials = await options["session"].get_credentials()
        return credentials.method, await credentials.get_frozen_credentials()

    return asyncio.run(frozen())


def _assumed_roles() -> int:
    from moto.sts.models import sts_backends

    return sum(
        len(backend.assumed_roles) for account in sts_backends.values() for backend in account.values()
    )


def test_access_keys_and_endpoint_read_and_write_s3(
    sim, vance_conn, make_image, s3_server, bucket, s3fs_plain, monkeypatch, caplog, capsys
) -> None:
    """Keys in login/password, endpoint_url in the extras: the deferrable batch reads s3:// and
    writes s3:// with the connection's own credentials (not the AWS_* variables the moto fixture
    sets), the trigger resolves them again from the connection id, and no secret shows anywhere."""
    from vance_provider.hooks.vanceai import storage_options_from_connection

    caplog.set_level(logging.INFO)
    token = vance_conn("open")
    _aws_conn(monkeypatch, "s3_keys", s3_server, login=LOGIN, password=SECRET)
    _put_inputs(s3fs_plain, make_image, bucket, 3)

    options = storage_options_from_connection("s3_keys")
    assert options is not None
    method, frozen = _credentials(options)
    assert (method, frozen.access_key, frozen.secret_key) == ("explicit", LOGIN, SECRET)

    op = _operator(f"s3://{bucket}/in/", f"s3://{bucket}/out/", storage_conn_id="s3_keys", max_concurrency=2)
    context = _context()
    triggers: list[dict[str, Any]] = []
    from vance_provider.triggers.vanceai import VanceAIBatchTrigger

    original = VanceAIBatchTrigger.serialize

    def serialize(self: Any) -> Any:
        path, kwargs = original(self)
        triggers.append(kwargs)
        return path, kwargs

    monkeypatch.setattr(VanceAIBatchTrigger, "serialize", serialize)
    summary, deferrals = _drive(op, context)
    assert len(deferrals) == 1 and triggers and triggers[0]["storage_conn_id"] == "s3_keys"
    assert summary["done"] == 3 and summary["credits_spent"] == 3.0
    s3fs_plain.invalidate_cache()
    assert len(s3fs_plain.glob(f"{bucket}/out/*.jpg")) == 3
    assert s3fs_plain.exists(f"{bucket}/out/_vance_manifest.json")
    assert len(sim.state.charges()) == 3 and not sim.state.double_charges()
    assert "Airflow's s3:// filesystem (explicit credentials)" in caplog.text

    seen = caplog.text + "".join(capsys.readouterr()) + json.dumps(triggers) + repr(summary)
    seen += repr(context["ti"].pushed)
    for secret in (SECRET, token):
        assert secret not in seen


def test_role_arn_is_assumed_and_refreshed(
    sim, vance_conn, make_image, s3_server, bucket, s3fs_plain, monkeypatch
) -> None:
    """A connection with ``role_arn``: the Amazon provider assumes the role (moto's STS), its
    credentials refresh themselves, and the batch's trigger assumes it again from the connection id."""
    from vance_provider.hooks import storage
    from vance_provider.hooks.vanceai import storage_options_from_connection

    vance_conn("open")
    # 900 s, the shortest STS session: inside botocore's refresh window, so it refreshes on use.
    _aws_conn(
        monkeypatch,
        "s3_role",
        s3_server,
        login=LOGIN,
        password=SECRET,
        extra={"role_arn": ROLE, "assume_role_kwargs": {"DurationSeconds": 900}},
    )
    _put_inputs(s3fs_plain, make_image, bucket, 2)
    before = _assumed_roles()
    options = storage_options_from_connection("s3_role")
    assert options is not None
    method, frozen = _credentials(options)
    assert method == "sts-assume-role"
    assert frozen.access_key.startswith("ASIA") and frozen.access_key != LOGIN and frozen.token
    assert _assumed_roles() > before
    assert storage_options_from_connection("s3_role")["session"] is options["session"]  # kept

    op = _operator(f"s3://{bucket}/in/", f"s3://{bucket}/out/", storage_conn_id="s3_role")
    context = _context()
    from vance_provider.triggers.vanceai import VanceAIBatchTrigger

    original_run = VanceAIBatchTrigger.run
    in_trigger: list[int] = []

    async def run(self: Any) -> Any:
        storage._built.clear()  # as in a separate triggerer process: only the connection id
        in_trigger.append(_assumed_roles())
        async for event in original_run(self):
            yield event

    monkeypatch.setattr(VanceAIBatchTrigger, "run", run)
    summary, _ = _drive(op, context)
    assert summary["done"] == 2 and summary["credits_spent"] == 2.0
    assert in_trigger and _assumed_roles() > in_trigger[0]  # the trigger assumed the role itself
    s3fs_plain.invalidate_cache()
    assert len(s3fs_plain.glob(f"{bucket}/out/*.jpg")) == 2
    assert len(sim.state.charges()) == 2 and not sim.state.double_charges()
    assert SECRET not in repr(summary) + repr(context["ti"].pushed)


def test_unsupported_connection_type_fails_before_anything(
    sim, vance_conn, make_image, tmp_path, monkeypatch
) -> None:
    from vance_provider.airflow_compat import AirflowFailException
    from vance_provider.core.api.errors import ConfigurationError

    vance_conn("open")
    make_image("u/in/p0.jpg", 32, 24)
    monkeypatch.setenv(
        "AIRFLOW_CONN_FTP_MEDIA",
        json.dumps({"conn_type": "ftp", "host": "127.0.0.1", "login": "media", "password": SECRET}),
    )
    op = _operator(tmp_path / "u" / "in", tmp_path / "u" / "out", storage_conn_id="ftp_media")
    with pytest.raises(AirflowFailException) as refused:  # no retry can fix it: the task fails at once
        _drive(op, _context())
    assert isinstance(refused.value.__cause__, ConfigurationError)
    text = str(refused.value)
    assert "'ftp_media'" in text and "'ftp'" in text and "aws" in text and SECRET not in text
    assert not sim.state.requests and not sim.state.charges()  # nothing uploaded, nothing paid
    assert not (tmp_path / "u" / "out").exists()


def test_missing_provider_is_named(monkeypatch, s3_server) -> None:
    from vance_provider.core.api.errors import ConfigurationError
    from vance_provider.hooks.vanceai import storage_options_from_connection

    _aws_conn(monkeypatch, "s3_keys", s3_server, login=LOGIN, password=SECRET)
    import airflow.sdk.io as io_module

    if not hasattr(io_module, "has_fs"):  # Airflow 3.0 keeps it in airflow.io
        import airflow.io as io_module  # type: ignore[no-redef]
    monkeypatch.setattr(io_module, "has_fs", lambda scheme: False)
    with pytest.raises(ConfigurationError, match="apache-airflow-providers-amazon") as refused:
        storage_options_from_connection("s3_keys")
    assert "'s3_keys'" in str(refused.value) and SECRET not in str(refused.value)


def test_no_credentials_at_all_is_refused_not_anonymous(monkeypatch, s3_server, tmp_path) -> None:
    """No credentials in the connection and none in the AWS default chain: refused, where the
    provider alone would go on anonymously."""
    from vance_provider.core.api.errors import ConfigurationError
    from vance_provider.hooks.vanceai import storage_options_from_connection

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata service
    _aws_conn(monkeypatch, "s3_empty", s3_server)
    with pytest.raises(ConfigurationError, match="yields no AWS credentials"):
        storage_options_from_connection("s3_empty")


def test_environment_credentials_are_said_in_the_log(monkeypatch, s3_server, caplog) -> None:
    """A connection with no credentials of its own uses the AWS default chain, as Airflow does for
    it, and the log says so (the moto fixture's AWS_* variables are the environment here)."""
    from vance_provider.hooks.vanceai import storage_options_from_connection

    caplog.set_level(logging.INFO)
    _aws_conn(monkeypatch, "s3_ambient", s3_server)
    options = storage_options_from_connection("s3_ambient")
    assert options is not None and _credentials(options)[0] == "env"
    assert "holds no credentials of its own" in caplog.text


def test_edited_connection_is_read_again_and_old_extra_names_refused(monkeypatch, s3_server) -> None:
    from vance_provider.core.api.errors import ConfigurationError
    from vance_provider.hooks.vanceai import storage_options_from_connection

    _aws_conn(monkeypatch, "s3_keys", s3_server, login=LOGIN, password=SECRET)
    first = storage_options_from_connection("s3_keys")
    _aws_conn(monkeypatch, "s3_keys", s3_server, login="AKIAROTATEDKEY000001", password=SECRET + "2")
    second = storage_options_from_connection("s3_keys")
    assert first is not None and second is not None and second["session"] is not first["session"]
    assert _credentials(second)[1].access_key == "AKIAROTATEDKEY000001"
    # An extra merged as s3fs options, as before.
    _aws_conn(
        monkeypatch,
        "s3_keys",
        s3_server,
        login=LOGIN,
        password=SECRET,
        extra={"storage_options": {"requester_pays": True}},
    )
    assert storage_options_from_connection("s3_keys")["requester_pays"] is True

    # The name this provider read before: refused, not ignored (the hook reads aws_session_token).
    _aws_conn(
        monkeypatch, "s3_old", s3_server, login=LOGIN, password=SECRET, extra={"session_token": "tok-123456"}
    )
    with pytest.raises(ConfigurationError, match="aws_session_token") as refused:
        storage_options_from_connection("s3_old")
    assert "tok-123456" not in str(refused.value) and SECRET not in str(refused.value)
    assert storage_options_from_connection(None) is None


def test_a_failing_role_is_a_clear_error_without_secrets(monkeypatch, s3_server) -> None:
    from vance_provider.core.api.errors import ConfigurationError
    from vance_provider.hooks.vanceai import storage_options_from_connection

    _aws_conn(
        monkeypatch,
        "s3_bad_role",
        s3_server,
        login=LOGIN,
        password=SECRET,
        extra={"role_arn": ROLE, "assume_role_method": "assume_role_with_carrier_pigeon"},
    )
    with pytest.raises(ConfigurationError) as refused:
        storage_options_from_connection("s3_bad_role")
    text = str(refused.value)
    assert "'s3_bad_role'" in text and "could not build" in text and SECRET not in text
