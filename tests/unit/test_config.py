"""Settings precedence and every kind of bad setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from iceprod_exporter import config
from iceprod_exporter.config import AuthMode, ConfigError


def test_defaults_need_only_url_and_credentials() -> None:
    s = config.load({}, environ={"API_URL": "https://api.example.org/", "OAUTH_CLIENT_SECRET": "x"})
    assert s.api_url == "https://api.example.org"
    assert s.effective_auth_mode() is AuthMode.CLIENT_CREDENTIALS
    assert s.port == config.DEFAULT_PORT and not 9100 <= s.port <= 9999
    s.require_api()


def test_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("poll_interval: 30\nconcurrency: 3\nretries: 4\napi_url: http://file\n")
    env = {"ICEPROD_EXPORTER_CONCURRENCY": "5", "ICEPROD_EXPORTER_RETRIES": "6"}
    s = config.load({"retries": "7"}, environ=env, config_file=file)
    assert (s.poll_interval, s.concurrency, s.retries, s.api_url) == (30, 5, 7, "http://file")
    assert s.timeout == 30.0  # untouched default


def test_config_file_from_environment(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("shard: 1\ntotal_shards: 2\n")
    s = config.load({}, environ={"ICEPROD_EXPORTER_CONFIG_FILE": str(file)})
    assert (s.shard, s.total_shards) == (1, 2)


def test_iceprod_names_and_prefixed_names() -> None:
    env = {
        "API_URL": "http://iceprod",
        "OAUTH_URL": "http://issuer/realms/x",
        "OAUTH_CLIENT_ID": "cid",
        "OAUTH_CLIENT_SECRET": "sec",
        "PROMETHEUS_PORT": "9000",
        "ICEPROD_EXPORTER_PORT": "9001",
    }
    s = config.load({}, environ=env)
    assert s.oauth_url == "http://issuer/realms/x" and s.oauth_client_id == "cid"
    assert s.port == 9001, "the prefixed name wins over IceProd's"
    assert s.oauth_client_secret is not None and s.oauth_client_secret.get_secret_value() == "sec"


def test_boolean_from_environment() -> None:
    s = config.load({}, environ={"ICEPROD_EXPORTER_COMPAT_DATASET_MONITOR": "true"})
    assert s.compat_dataset_monitor is True


BAD = [
    ({"poll_interval": "soon"}, "poll_interval: Input should be a valid number"),
    ({"poll_interval": "0.5"}, "poll_interval: Input should be greater than or equal to 1"),
    ({"port": "70000"}, "port: Input should be less than or equal to 65535"),
    ({"concurrency": "0"}, "concurrency: Input should be greater than or equal to 1"),
    ({"rate_limit": "-1"}, "rate_limit: Input should be greater than or equal to 0"),
    ({"api_url": "iceprod.example.org"}, "api_url: must start with http:// or https://"),
    ({"log_level": "loud"}, "log_level: must be one of"),
    ({"log_format": "xml"}, "log_format: Input should be 'auto', 'json' or 'console'"),
    ({"auth_mode": "magic"}, "auth_mode: Input should be"),
    ({"shard": "2", "total_shards": "2"}, "shard: must be below total_shards (2)"),
    ({"token": "a", "token_file": "/x"}, "token: set either it or token_file"),
    ({"compat_dataset_monitor": "perhaps"}, "compat_dataset_monitor: Input should be a valid"),
    ({"api_url": "http://"}, "api_url: must name a valid host"),
    ({"api_url": "http://bad host name"}, "api_url: must name a valid host"),
    ({"api_url": "https://h:99999/"}, "api_url: must be an http:// or https:// URL"),
    ({"oauth_url": "http://-x-/realm"}, "oauth_url: must name a valid host"),
    ({"poll_interval": "inf"}, "poll_interval: Input should be a finite number"),
    ({"timeout": "1e300"}, "timeout: Input should be less than or equal to 600"),
    ({"timeout": "nan"}, "timeout: Input should be a finite number"),
    ({"rate_limit": "inf"}, "rate_limit: Input should be a finite number"),
    ({"max_staleness": "1e300"}, "max_staleness: Input should be less than or equal to"),
    ({"grace_period": "-inf"}, "grace_period: Input should be a finite number"),
    ({"task_stats_interval": "inf"}, "task_stats_interval: Input should be a finite number"),
    ({"timeout": "60", "poll_timeout": "30"}, "poll_timeout: must be at least timeout (60s)"),
    ({"listen_address": "bad host"}, "listen_address: must be an IPv4 or IPv6 address"),
]


@pytest.mark.parametrize(("flags", "message"), BAD)
def test_bad_setting_names_the_setting(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(flags, environ={})
    assert str(err.value).startswith(message)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("poll_intervall: 5\n")
    with pytest.raises(ConfigError, match=r"^poll_intervall: unknown setting$"):
        config.load({}, environ={}, config_file=file)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1, 2]", "must hold a mapping"), ("a: [", "is not valid YAML")],
)
def test_bad_file(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load({}, environ={}, config_file=file)


def test_invalid_yaml_gives_the_position_but_never_the_line(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("api_url: http://x\noauth_client_secret: [s3cr3t-line\n")
    with pytest.raises(ConfigError) as err:
        config.load({}, environ={}, config_file=file)
    message = str(err.value)
    assert message == f"config_file: {file} is not valid YAML at line 3, column 1"
    assert "s3cr3t" not in message and "\n" not in message


@pytest.mark.parametrize("setting", ["config_file", "oauth_client_secret_file", "token_file"])
def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path, setting: str) -> None:
    file = tmp_path / "f"
    file.write_bytes(b"secret\xff\xfe")
    with pytest.raises(ConfigError) as err:
        if setting == "config_file":
            config.load({}, environ={}, config_file=file)
        else:
            config.validate({"api_url": "http://x", setting: str(file)}).require_api()
    assert str(err.value) == f"{setting}: {file} is not UTF-8 text (byte 6)"


def test_listen_address_takes_ipv6_brackets_and_host_names() -> None:
    for given, stored in [("::", "::"), ("[::1]", "::1"), ("localhost", "localhost")]:
        assert config.validate({"listen_address": given}).listen_address == stored


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config_file: cannot read"):
        config.load({}, environ={}, config_file=tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "api_url: required"),
        ({"api_url": "http://x"}, "auth_mode: no credentials"),
        ({"api_url": "http://x", "auth_mode": "client_credentials"}, "oauth_client_secret"),
        ({"api_url": "http://x", "auth_mode": "refresh_token"}, "refresh_token_file: required"),
        ({"api_url": "http://x", "auth_mode": "static_token"}, "token: required"),
    ],
)
def test_missing_requirements(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.validate(values).require_api()


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    assert config.read_secret(None, secret, "x") == "s3cr3t"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config.read_secret(None, tmp_path / "empty", "x")


def test_redacted_hides_every_secret() -> None:
    s = config.validate({"oauth_client_secret": "hunter2", "token": "tok-123"})
    text = repr(s.redacted()) + repr(s) + str(s)
    assert "hunter2" not in text and "tok-123" not in text
    assert s.redacted()["oauth_client_secret"] == "<redacted>"


@pytest.mark.parametrize("name", ["oauth_client_secret_file", "token_file", "refresh_token_file"])
def test_unreadable_credential_file_fails_at_start_up(tmp_path: Path, name: str) -> None:
    values = {"api_url": "http://x", name: str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match=f"^{name}: cannot read"):
        config.validate(values).require_api()
    (tmp_path / "empty").write_text("\n")
    values[name] = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match=f"^{name}: .* is empty"):
        config.validate(values).require_api()


def test_userinfo_passwords_are_redacted_where_urls_are_shown() -> None:
    """In the settings shown (check-config, the landing page); the CLI's output: integration."""
    settings = config.validate({"api_url": "https://bob:hunter2@api.example.org", "token": "t"})
    assert settings.redacted()["api_url"] == "https://bob:<redacted>@api.example.org"
    assert config.redact_url("https://api.example.org/x") == "https://api.example.org/x"
