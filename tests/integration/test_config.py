"""Settings through the real command line: each case runs ``iceprod-exporter`` in a subprocess."""

from __future__ import annotations

from tests.support.exporter import cli


def test_check_config_never_prints_a_userinfo_password() -> None:
    result = cli(
        "check-config",
        env={"API_URL": "https://bob:hunter2@h.example", "ICEPROD_EXPORTER_TOKEN": "t"},
    )
    assert result.returncode == 0 and "hunter2" not in result.stdout + result.stderr


def test_argument_errors_never_echo_values() -> None:
    result = cli("run", "--oauth-client-secret=s3cr3t", "--no-such-flag=s3cr3t", "s3cr3t")
    assert result.returncode == 2
    assert "s3cr3t" not in result.stderr
    assert "unrecognized arguments: --no-such-flag VALUE" in result.stderr
    result = cli("demo", "--datasets", "s3cr3t")
    assert result.returncode == 2 and "s3cr3t" not in result.stderr


def test_cli_bad_setting_is_one_line_and_exit_2() -> None:
    result = cli(
        "check-config",
        "--api-url",
        "http://x",
        "--poll-interval",
        "soon",
        env={"OAUTH_CLIENT_SECRET": "hunter2"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "iceprod-exporter: error: poll_interval: Input should be a valid number, "
        "unable to parse string as a number"
    ]
    assert "hunter2" not in result.stderr + result.stdout


def test_cli_check_config_prints_redacted_settings() -> None:
    result = cli(
        "check-config", env={"API_URL": "http://iceprod", "OAUTH_CLIENT_SECRET": "hunter2"}
    )
    assert result.returncode == 0, result.stderr
    assert "oauth_client_secret: <redacted>" in result.stdout
    assert "api_url: http://iceprod" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_cli_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("iceprod-exporter 0.")


def test_cli_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = cli(
            "run",
            "--api-url",
            "http://127.0.0.1:9",
            "--token",
            "t",
            "--listen-address",
            "127.0.0.1",
            "--port",
            port,
        )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"port: port {port} is already in use on 127.0.0.1")


def test_cli_an_address_not_on_this_host_names_listen_address() -> None:
    result = cli(
        "run", "--api-url", "http://127.0.0.1:9", "--token", "t",
        "--listen-address", "192.0.2.1", "--port", "0",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("iceprod-exporter: error: listen_address:")
    assert "Traceback" not in result.stderr
