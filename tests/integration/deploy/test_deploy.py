"""Deployment artefacts run by the tools that consume them: the image, kustomize, compose, systemd.

Each artefact is checked with the real tool (kubectl kustomize plus Kubernetes schemas, a compose
implementation, systemd-analyze, openssl). No Docker engine is needed: the Dockerfile's build
stage is executed outside Docker instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from iceprod_exporter import __version__, config
from tests.support import deploy as support
from tests.support.debian import refuse_in_unit_tier
from tests.support.deploy import DEPLOY, KUBERNETES, NAMESPACE, REPO, describe, find, run
from tests.support.deploy_files import SYSTEMD_UNIT, unit_values
from tests.support.exporter import free_port, http_get

COMPOSE = DEPLOY / "compose"


#: Oldest Kubernetes the manifests are written for (the pod-index label is on from 1.28).
K8S_VERSIONS = ("1.28.0", "1.37.0")


SECRET_VALUE = "not-a-real-secret-0123456789"


def _overlays() -> list[Path]:
    return sorted(path.parent for path in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))


@pytest.fixture(scope="module")
def built_image(
    dockerfile: support.Dockerfile, tmp_path_factory: pytest.TempPathFactory
) -> support.EmulatedBuild:
    """The Dockerfile's build stage, run on this machine with the same RUN commands."""
    python_bin = Path(sys.base_prefix) / "bin"
    version = run([python_bin / "python", "-c", "import sys; print(sys.version_info[:2])"])
    assert version.stdout.strip() == "(3, 12)", "the image is Python 3.12; so must the test be"
    return support.emulate_stage(
        dockerfile, "build", REPO, tmp_path_factory.mktemp("image"), python_bin
    )


@pytest.fixture
def image_env() -> dict[str, str]:
    """An environment like the container's: no settings from the developer's shell."""
    env = support.clean_environ()
    for name in list(env):
        if name.startswith("ICEPROD_EXPORTER_") or name in config.ICEPROD_ENV_ALIASES:
            del env[name]
    return env


@pytest.fixture
def demo_exporter(
    built_image: support.EmulatedBuild, image_env: dict[str, str], tmp_path: Path
) -> Iterator[int]:
    """Compose's default command, run from the installed venv on a free local port."""
    port = free_port()
    exe = Path(built_image.env["VIRTUAL_ENV"]) / "bin" / "iceprod-exporter"
    command = [exe, "demo", "--listen-address", "127.0.0.1", "--port", str(port)]
    command += ["--poll-interval", "1", "--datasets", "3"]
    log = tmp_path / "demo.log"
    # The log goes to a file: an unread pipe would fill up and block the exporter.
    with (
        log.open("w") as sink,
        subprocess.Popen(
            [str(part) for part in command], env=image_env, stdout=sink, stderr=sink
        ) as process,
    ):
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None:
                if http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"demo never became ready:\n{log.read_text()[-3000:]}")
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization rendered by kubectl, keyed by its directory under kubernetes/."""
    directories = [KUBERNETES / "base", *_overlays()]
    return {
        path.relative_to(KUBERNETES).as_posix(): support.kustomize(path) for path in directories
    }


def _check_service_monitor(obj: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    spec = obj["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    service = find(objects, "Service", "iceprod-exporter")
    assert support.labels_match(spec["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert spec["endpoints"], "a ServiceMonitor needs at least one endpoint"
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in port_names
        keys = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels"}
        keys |= {"tlsConfig", "basicAuth"}  # the tls overlay
        assert set(endpoint) <= keys
        # the operator's `endpoint` target label must not rename the exporter's `endpoint` label
        assert endpoint["honorLabels"] is True


def _check_prometheus_rule(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    groups = obj["spec"]["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    group_keys = {"name", "interval", "rules", "limit", "query_offset", "labels"}
    rule_keys = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    for group in groups:
        assert set(group) <= group_keys and isinstance(group["rules"], list)
        for rule in group["rules"]:
            assert set(rule) <= rule_keys, rule
            assert ("record" in rule) != ("alert" in rule) and rule["expr"], rule
            assert all(isinstance(value, str) for value in rule.get("labels", {}).values())


def _mounts(template: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Map each container mount path to (mount, volume)."""
    volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
    container = template["spec"]["containers"][0]
    return {
        mount["mountPath"]: (mount, volumes[mount["name"]]) for mount in container["volumeMounts"]
    }


def _compose_config(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    command = support.compose_command()
    args: list[str | Path] = [*command]
    for name in files:
        args += ["-f", COMPOSE / name]
    result = run([*args, "config"], cwd=COMPOSE, env={**os.environ, **(env or {})})
    assert result.returncode == 0 and result.stdout, describe(result)
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Map the container paths of a resolved service's bind mounts to their host paths."""
    binds: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # compose v1 prints short syntax
            source, target = volume.split(":")[:2]
            if source.startswith("/"):
                binds[target] = Path(source)
        elif volume.get("type") == "bind":
            binds[volume["target"]] = Path(volume["source"])
    return binds


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file-system root holding the unit, the system units and a stub ExecStart binary.

    ``systemd-analyze verify`` insists that ExecStart= is executable and resolves dependencies
    such as network-online.target; ``--root`` points both at this tree instead of the host.
    """
    refuse_in_unit_tier("systemd-analyze")
    root = tmp_path_factory.mktemp("systemd-root")
    system_units = next(
        path
        for path in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
        if path.is_dir()
    )
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    executable = unit_values(SYSTEMD_UNIT)["ExecStart"][0].split()[0]
    stub = root / executable.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(SYSTEMD_UNIT, root / "etc/systemd/system" / SYSTEMD_UNIT.name)
    return root


TLS_OVERLAY = KUBERNETES / "overlays" / "tls"


def test_image_install_runs_the_cli(
    built_image: support.EmulatedBuild, image_env: dict[str, str], tmp_path: Path
) -> None:
    venv = Path(built_image.env["VIRTUAL_ENV"])
    exe = venv / "bin" / "iceprod-exporter"
    # pip ran from outside the venv: none of it (or a cache) ends up in the image.
    assert not list(venv.glob("lib/python*/site-packages/pip"))
    assert not (venv / "bin" / "pip").exists()

    result = run([exe, "--version"], env=image_env)
    assert result.returncode == 0 and __version__ in result.stdout + result.stderr, describe(result)

    # check-config the way the Kubernetes Deployment configures the container.
    secret = tmp_path / "client-secret"
    secret.write_text(SECRET_VALUE)
    env = {
        **image_env,
        "ICEPROD_EXPORTER_CONFIG_FILE": str(KUBERNETES / "base" / "config.yaml"),
        "ICEPROD_EXPORTER_OAUTH_CLIENT_SECRET_FILE": str(secret),
    }
    result = run([exe, "check-config"], env=env)
    assert result.returncode == 0, describe(result)
    assert SECRET_VALUE not in result.stdout + result.stderr

    # and with IceProd's own environment names only, as compose's iceprod.env does
    env = {**image_env, **support.read_env_file(COMPOSE / "iceprod.env.example")}
    result = run([exe, "check-config"], env=env)
    assert result.returncode == 0, describe(result)
    assert env["OAUTH_CLIENT_SECRET"] not in result.stdout


def test_image_demo_serves_and_healthcheck_passes(
    demo_exporter: int,
    built_image: support.EmulatedBuild,
    dockerfile: support.Dockerfile,
    image_env: dict[str, str],
) -> None:
    port = demo_exporter
    assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and b"iceprod_up 1.0" in body

    # The HEALTHCHECK exactly as written, run by the image's python.
    _, rest = dockerfile.stage(None).one("HEALTHCHECK").flags()
    command = support.Instruction("CMD", rest.removeprefix("CMD ").strip(), 0).exec_form()
    assert command is not None
    python = Path(built_image.env["VIRTUAL_ENV"]) / "bin" / command[0]
    check: list[str | Path] = [python, *command[1:]]
    healthy = run(check, env={**image_env, "ICEPROD_EXPORTER_PORT": str(port)}, timeout=30)
    assert healthy.returncode == 0, describe(healthy)
    dead = run(check, env={**image_env, "PROMETHEUS_PORT": str(free_port())}, timeout=30)
    assert dead.returncode != 0, describe(dead)


def test_every_overlay_is_rendered(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert set(rendered) >= {
        "base",
        "overlays/prometheus-operator",
        "overlays/sharded",
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_validate(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    validator = support.kubernetes_validate()
    for directory, objects in rendered.items():
        for obj in objects:
            where = f"{directory}: {obj['kind']}/{obj['metadata']['name']}"
            if obj["kind"] == "ServiceMonitor":
                _check_service_monitor(obj, objects)
            elif obj["kind"] == "PrometheusRule":
                _check_prometheus_rule(obj)
            else:
                try:
                    validator.validate(obj, version, strict=True)
                except Exception as exc:  # the library's errors share no useful base class
                    pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc}")
            # Everything lands in one namespace, whichever overlay is applied.
            assert obj["metadata"].get("namespace") == NAMESPACE, where


def test_secret_example_is_valid_but_not_deployed(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    example = yaml.safe_load((KUBERNETES / "base" / "secret.example.yaml").read_text())
    support.kubernetes_validate().validate(example, K8S_VERSIONS[0], strict=True)
    assert "REPLACE" in example["stringData"]["client-secret"]
    for objects in rendered.values():
        assert not [obj for obj in objects if obj["kind"] == "Secret"]
    volume = next(
        volume
        for volume in find(rendered["base"], "Deployment")["spec"]["template"]["spec"]["volumes"]
        if "secret" in volume
    )
    assert volume["secret"]["secretName"] == example["metadata"]["name"]
    assert {item["key"] for item in volume["secret"]["items"]} <= set(example["stringData"])


@pytest.mark.parametrize("directory", ["base", "overlays/prometheus-operator", "overlays/sharded"])
def test_pods_are_locked_down(rendered: dict[str, list[dict[str, Any]]], directory: str) -> None:
    objects = rendered[directory]
    templates = support.pod_templates(objects)
    assert len(templates) == 1
    template = templates[0]
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert find(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]

    assert container["ports"] == [
        {"name": "metrics", "containerPort": config.DEFAULT_PORT, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    # The settings the pod is given resolve to files the pod has mounted.
    env = {item["name"]: item.get("value") for item in container["env"]}
    config_path = env["ICEPROD_EXPORTER_CONFIG_FILE"]
    mounts = _mounts(template)
    mount, volume = mounts[config_path]
    configmap = find(objects, "ConfigMap", volume["configMap"]["name"])
    settings = yaml.safe_load(configmap["data"][mount["subPath"]])
    secret_file = Path(settings["oauth_client_secret_file"])
    _, secret_volume = mounts[str(secret_file.parent)]
    assert secret_file.name in {item["path"] for item in secret_volume["secret"]["items"]}

    service = find(objects, "Service")
    assert support.labels_match(service["spec"]["selector"], template["metadata"]["labels"])
    assert service["spec"]["ports"][0]["name"] == "metrics"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"

    policy = find(objects, "NetworkPolicy")["spec"]
    assert support.labels_match(
        policy["podSelector"]["matchLabels"], template["metadata"]["labels"]
    )
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_images_agree_across_overlays(rendered: dict[str, list[dict[str, Any]]]) -> None:
    images = {
        container["image"]
        for objects in rendered.values()
        for template in support.pod_templates(objects)
        for container in template["spec"]["containers"]
    }
    assert len(images) == 1 and ":" in images.pop()


def test_sharded_statefulset_matches_the_deployment(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["overlays/sharded"]
    assert not [obj for obj in objects if obj["kind"] == "Deployment"]
    statefulset = find(objects, "StatefulSet")
    service = find(objects, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]

    template = json.loads(json.dumps(statefulset["spec"]["template"]))
    container = template["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    shard = env.pop("ICEPROD_EXPORTER_SHARD")
    assert shard["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    total = env.pop("ICEPROD_EXPORTER_TOTAL_SHARDS")
    assert int(total["value"]) == statefulset["spec"]["replicas"] >= 2
    container["env"] = list(env.values())
    # Apart from the sharding variables, the pods are the base Deployment's pods.
    assert template == find(rendered["base"], "Deployment")["spec"]["template"]


def test_operator_overlay_carries_rules_and_dashboards(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["overlays/prometheus-operator"]
    rule = find(objects, "PrometheusRule")
    sources = [DEPLOY / "prometheus" / name for name in ("recording.yaml", "alerts.yaml")]
    expected = [
        group["name"]
        for path in sources
        if path.is_file()
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    assert [group["name"] for group in rule["spec"]["groups"]] == expected

    dashboards = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
    configmaps = [
        obj
        for obj in objects
        if obj["kind"] == "ConfigMap" and obj["metadata"]["labels"].get("grafana_dashboard")
    ]
    assert len(configmaps) == len(dashboards)
    for configmap, path in zip(configmaps, dashboards, strict=True):
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())

    # The alerts select up{job="iceprod-exporter"}; the operator names the job after the Service.
    assert find(objects, "Service")["metadata"]["name"] == "iceprod-exporter"


def test_compose_config_demo_mode() -> None:
    resolved = _compose_config("compose.yaml")
    services = resolved["services"]
    assert set(services) == {"iceprod-exporter", "prometheus", "alertmanager", "grafana"}
    exporter = services["iceprod-exporter"]
    assert exporter["command"] == ["demo", "--listen-address", "0.0.0.0"]
    assert Path(exporter["build"]["context"]).resolve() == REPO
    for name, service in services.items():
        for target, source in _binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert source.resolve().is_relative_to(REPO), f"{name}: {source} is outside the repo"
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else port.get("host_ip", "")
            assert str(published).startswith("127.0.0.1"), f"{name}: {port} is public"


def test_compose_prometheus_scrapes_the_stack(tmp_path: Path) -> None:
    services = _compose_config("compose.yaml")["services"]
    binds = _binds(services["prometheus"])
    config_path = "/etc/prometheus/prometheus.yml"
    prometheus = yaml.safe_load(binds[config_path].read_text())
    # Relative rule files resolve against the config file's directory in the container.
    for rule_file in prometheus["rule_files"]:
        target = str(Path(config_path).parent / rule_file)
        assert target in binds, f"rule file {rule_file} is not mounted into prometheus"
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = [
        target
        for static in jobs["iceprod-exporter"]["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"iceprod-exporter:{config.DEFAULT_PORT}"]
    for alertmanager in prometheus["alerting"]["alertmanagers"]:
        for static in alertmanager["static_configs"]:
            for target in static["targets"]:
                assert target.split(":")[0] in services

    # promtool sees the files as Prometheus in the container does.
    from tests.support.monitoring import tool

    for target, source in binds.items():
        if target.startswith("/etc/prometheus/"):
            shutil.copy(source, tmp_path / Path(target).name)
    result = run([tool("promtool"), "check", "config", tmp_path / "prometheus.yml"])
    assert result.returncode == 0, describe(result)


def test_compose_grafana_provisioning_fits_the_mounts() -> None:
    services = _compose_config("compose.yaml")["services"]
    binds = _binds(services["grafana"])
    provisioning = binds["/etc/grafana/provisioning"]
    dashboards_target = next(
        target for target, source in binds.items() if source.name == "dashboards"
    )
    paths = [
        provider["options"]["path"]
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text()).get("providers", [])
    ]
    assert paths, "grafana/provisioning/dashboards has no dashboard provider"
    # Grafana scans a provider's path recursively: the mounted dashboards must lie under it.
    assert any(Path(dashboards_target).is_relative_to(path) for path in paths), paths
    urls = [
        source.get("url")
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text()).get("datasources", [])
        if source.get("type") == "prometheus"
    ]
    assert "http://prometheus:9090" in urls, urls


def test_compose_real_iceprod_override() -> None:
    resolved = _compose_config(
        "compose.yaml",
        "compose.iceprod.yaml",
        env={"ICEPROD_ENV_FILE": "iceprod.env.example"},
    )
    exporter = resolved["services"]["iceprod-exporter"]
    assert exporter["command"] == ["run"]
    environment = {key: str(value) for key, value in exporter["environment"].items()}
    settings = config.load({}, environ=environment)
    settings.require_api()
    assert "iceprod.env" in (COMPOSE / ".gitignore").read_text().split()


def test_systemd_analyze_verify(unit_root: Path) -> None:
    result = run(["systemd-analyze", "verify", f"--root={unit_root}", SYSTEMD_UNIT.name])
    # verify exits 0 on unknown keys and only warns: any output is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), describe(result)


def test_systemd_exposure_is_low(unit_root: Path) -> None:
    result = run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--root={unit_root}",
            "--threshold=20",
            SYSTEMD_UNIT.name,
        ]
    )
    assert result.returncode == 0, describe(result)


def test_tls_overlay_serves_https_with_basic_auth(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from iceprod_exporter.http import web_config
    from tests.support.http import make_pki

    objects = rendered["overlays/tls"]
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {
        "name": "iceprod-exporter-tls",
        "key": "ca.crt",
    }
    assert endpoint["tlsConfig"]["serverName"] == "iceprod-exporter.iceprod-exporter.svc"
    assert set(endpoint["basicAuth"]) == {"username", "password"}
    (template,) = support.pod_templates(objects)
    (container,) = template["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    web_file = Path(env["ICEPROD_EXPORTER_WEB_CONFIG_FILE"])
    mounts = _mounts(template)
    _, volume = mounts[str(web_file.parent)]
    projected = {
        item["path"]
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert projected == {web_file.name, "tls.crt", "tls.key", "ca.crt"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    # the example web config loads, with real certificates under the projected names
    pki = make_pki(tmp_path / "pki")
    for src, dst in ((pki.server_cert, "tls.crt"), (pki.server_key, "tls.key"), (pki.ca, "ca.crt")):
        (tmp_path / dst).write_bytes(src.read_bytes())
    example = tmp_path / web_file.name
    example.write_text((TLS_OVERLAY / "web-config.example.yml").read_text())
    loaded = web_config.load(example)
    assert loaded.tls is not None and loaded.users
    # kubelet probes present no client certificate
    assert loaded.tls.client_auth_type != "RequireAndVerifyClientCert"


def test_compose_tls_variant(tmp_path: Path) -> None:
    from iceprod_exporter.http import web_config

    services = _compose_config("compose.yaml", "compose.tls.yaml")["services"]
    exporter = services["iceprod-exporter"]
    web_file = Path(exporter["environment"]["ICEPROD_EXPORTER_WEB_CONFIG_FILE"])
    binds = _binds(exporter)
    assert binds[str(web_file.parent)].resolve() == (COMPOSE / "tls").resolve()
    prometheus_binds = _binds(services["prometheus"])
    assert prometheus_binds["/etc/prometheus/prometheus.yml"].name == "prometheus-tls.yml"
    # the TLS Prometheus config is the shipped one plus https and basic auth
    plain = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    tls = yaml.safe_load((COMPOSE / "tls" / "prometheus-tls.yml").read_text())
    job = next(j for j in tls["scrape_configs"] if j["job_name"] == "iceprod-exporter")
    assert job.pop("scheme") == "https" and job.pop("tls_config") and job.pop("basic_auth")
    assert tls == plain
    # make-certs.sh with the real openssl yields a web config the exporter loads
    work = tmp_path / "tls"
    shutil.copytree(COMPOSE / "tls", work)
    done = run(["sh", work / "make-certs.sh"], timeout=60)
    assert done.returncode == 0, describe(done)
    loaded = web_config.load(work / "web-config.yml")
    assert loaded.tls is not None and set(loaded.users) == {"prometheus"}
    assert (work / "scrape-password").read_text() == "change-me"
    nofile = exporter["ulimits"]["nofile"]
    assert min(nofile["soft"], nofile["hard"]) >= 1000 + 128


def test_systemd_tls_drop_in_verifies(unit_root: Path) -> None:
    drop_in = DEPLOY / "systemd" / "iceprod-exporter.service.d" / "tls.conf"
    target = unit_root / "etc/systemd/system/iceprod-exporter.service.d"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(drop_in, target / "tls.conf")
    try:
        result = run(["systemd-analyze", "verify", f"--root={unit_root}", SYSTEMD_UNIT.name])
        assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), describe(
            result
        )
    finally:
        shutil.rmtree(target)
    values = unit_values(drop_in)
    names = {c.split(":")[0] for c in values["LoadCredential"]}
    web = next(e for e in values["Environment"] if e.startswith("ICEPROD_EXPORTER_WEB_CONFIG_FILE"))
    assert web.split("%d/")[1] in names and {"tls.crt", "tls.key"} <= names
    (limit,) = unit_values(SYSTEMD_UNIT)["LimitNOFILE"]
    assert int(limit) >= 1000 + 128, "the connection cap plus the exporter's own files"


GENERATE = (sys.executable, "-m", "grafana.mixin.generate")  # what make generate runs


def test_dockerignore_keeps_the_context_small() -> None:
    rules = support.dockerignore(REPO / ".dockerignore")
    files = support.context_files(REPO, rules)
    assert "pyproject.toml" in files and "iceprod_exporter/__init__.py" in files
    for name in files:
        assert not name.startswith(("tests/", "deploy/", "grafana/", ".git", ".venv"))
        assert "__pycache__" not in name and not name.endswith(".pyc")


def test_generated_manifests_are_current() -> None:
    result = run([*GENERATE, "--check"], cwd=REPO)
    assert result.returncode == 0, describe(result)


def test_generator_reports_drift(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "deploy", root / "deploy", ignore=ignore)
    shutil.copytree(REPO / "grafana", root / "grafana", ignore=ignore)
    output = root / "deploy/kubernetes/components/prometheus-operator/prometheusrule.yaml"
    output.write_text(output.read_text() + "# hand edit\n")
    command: list[str | Path] = [*GENERATE, "--root", root]
    stale = run([*command, "--check"], cwd=root)
    assert stale.returncode == 1 and "hand edit" in stale.stdout, describe(stale)
    assert run(command, cwd=root).returncode == 0
    assert run([*command, "--check"], cwd=root).returncode == 0
