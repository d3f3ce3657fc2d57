"""The S3 location config (repository/s3_config.py): each bad key, URL or credentials file
gets an error naming it; plain http only to loopback; secrets never in a repr or error."""

from __future__ import annotations

from pathlib import Path

import pytest

from repository.s3_config import (
    MIB,
    S3ConfigError,
    S3Location,
    load_s3_config,
    parse_s3_config,
    parse_s3_url,
    read_credentials_file,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _creds(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "creds"
    p.write_text(text)
    return p


def test_a_whole_file(tmp_path: Path) -> None:
    creds = _creds(tmp_path, f"[lab]\naws_access_key_id = AK1\naws_secret_access_key = {SECRET}\n")
    conf = tmp_path / "s3.toml"
    conf.write_text(
        'endpoint = "https://rgw.example.net:7480"\nbucket = "backups"\nprefix = "site-a/r1"\n'
        f'region = "eu"\ncredentials_file = "{creds}"\nprofile = "lab"\n'
        'ca_file = "/etc/ca.pem"\npart_size_mib = 32\nmax_attempts = 3\n'
        "connect_timeout_seconds = 2\nread_timeout_seconds = 7.5\n"
    )
    loc = load_s3_config(conf)
    assert loc == S3Location(
        endpoint="https://rgw.example.net:7480",
        bucket="backups",
        prefix="site-a/r1",
        region="eu",
        credentials_file=creds,
        profile="lab",
        ca_file=Path("/etc/ca.pem"),
        part_size=32 * MIB,
        max_attempts=3,
        connect_timeout=2.0,
        read_timeout=7.5,
    )
    c = loc.credentials()
    assert (c.access_key, c.secret_key, c.source) == ("AK1", SECRET, f"{creds} [lab]")
    assert SECRET not in repr(c) and SECRET not in repr(loc)
    at = load_s3_config(conf, "s3://other-bucket/x/y")  # the URL's bucket and prefix win
    assert (at.bucket, at.prefix, at.endpoint) == ("other-bucket", "x/y", loc.endpoint)
    assert loc.at("s3://b12") == S3Location(**{**loc.__dict__, "bucket": "b12", "prefix": ""})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bucket": "b12"}, "endpoint is required"),
        ({"endpoint": "http://127.0.0.1:1"}, "bucket is required"),
        (
            {"endpoint": "http://127.0.0.1:1", "bucket": "b12", "secret": "x"},
            "unknown key 'secret'",
        ),
        ({"endpoint": "ftp://h", "bucket": "b12"}, "not an http"),
        ({"endpoint": "http://127.0.0.1:1/b12", "bucket": "b12"}, "no path"),
        ({"endpoint": "http://10.1.2.3:7480", "bucket": "b12"}, "plain http to a non-loopback"),
        ({"endpoint": "http://rgw.example.net", "bucket": "b12"}, "use https"),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "B_12"}, "bucket 'B_12'"),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "ab"}, "not an S3 bucket name"),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "b12", "prefix": "/x"}, "prefix: "),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "b12", "prefix": "a/../b"}, "prefix: "),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "b12", "part_size_mib": 4}, "part_size"),
        (
            {"endpoint": "http://127.0.0.1:1", "bucket": "b12", "stream_part_mib": 3},
            "stream_part_size: 3145728 is below S3's 5242880 bytes",
        ),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "b12", "max_attempts": 0}, "max_attempts"),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "b12", "max_attempts": "3"}, "not a int"),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "b12", "insecure_http": 1}, "not a bool"),
        ({"endpoint": "http://127.0.0.1:1", "bucket": "b12", "region": ""}, "region: empty"),
    ],
)
def test_bad_config_names_what_is_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(S3ConfigError, match="S3 config: .*" + message.replace("(", r"\(")):
        parse_s3_config(data)


def test_streaming_is_off_unless_asked() -> None:
    base = {"endpoint": "http://127.0.0.1:1", "bucket": "b12"}
    assert parse_s3_config(base).stream_part_size == 0
    assert parse_s3_config(base | {"stream_part_mib": 16}).stream_part_size == 16 * MIB


def test_plain_http_is_for_loopback_or_said_out_loud() -> None:
    for host in ("127.0.0.1", "localhost", "[::1]", "127.1.2.3"):
        assert S3Location(endpoint=f"http://{host}:7480", bucket="b12").uses_tls is False
    loc = S3Location(endpoint="http://rgw.lan:7480", bucket="b12", insecure_http=True)
    assert loc.endpoint_host == "rgw.lan"
    assert S3Location(endpoint="https://rgw.lan", bucket="b12").uses_tls


@pytest.mark.parametrize(
    "url", ["s3:/b12", "http://b12/x", "s3://", "s3://b12/x?y=1", "b12/x", "s3://b12/x#f"]
)
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises(S3ConfigError, match="not an s3://BUCKET"):
        parse_s3_url(url)


def test_s3_url() -> None:
    assert parse_s3_url("s3://b12") == ("b12", "")
    assert parse_s3_url("s3://b12/") == ("b12", "")
    assert parse_s3_url("s3://b12/a/b/") == ("b12", "a/b")


def test_credentials_from_the_environment_or_a_clear_error() -> None:
    loc = S3Location(endpoint="http://127.0.0.1:1", bucket="b12")
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": SECRET}
    c = loc.credentials(env)
    assert (c.access_key, c.secret_key, c.source) == ("AK", SECRET, "environment")
    for partial in ({}, {"AWS_ACCESS_KEY_ID": "AK"}, {"AWS_SECRET_ACCESS_KEY": SECRET}):
        with pytest.raises(S3ConfigError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
            loc.credentials(partial)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"no \[default\] section"),
        ("[other]\naws_access_key_id = A\naws_secret_access_key = B\n", r"no \[default\]"),
        ("[default]\naws_access_key_id = A\n", "lacks aws_secret_access_key"),
        (f"[default]\naws_secret_access_key = {SECRET}\n", "lacks aws_access_key_id"),
        (f"aws_secret_access_key = {SECRET}\n", "not in the AWS credentials format"),
        (f"[default]\n[default]\n{SECRET}\n", "not in the AWS credentials format"),
    ],
)
def test_bad_credentials_file(tmp_path: Path, text: str, message: str) -> None:
    path = _creds(tmp_path, text)
    with pytest.raises(S3ConfigError, match=message) as e:
        read_credentials_file(path)
    assert str(path) in str(e.value) and SECRET not in str(e.value)


def test_missing_credentials_file(tmp_path: Path) -> None:
    loc = S3Location(endpoint="http://127.0.0.1:1", bucket="b12", credentials_file=tmp_path / "no")
    with pytest.raises(S3ConfigError, match=r"S3 credentials file .*/no: No such file"):
        loc.credentials()


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(S3ConfigError, match=r"S3 config .*missing.toml: No such file"):
        load_s3_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("endpoint = \n")
    with pytest.raises(S3ConfigError, match=r"bad.toml: not TOML"):
        load_s3_config(bad)
