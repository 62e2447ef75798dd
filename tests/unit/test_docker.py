"""docker/ is kept correct by parsing: no Docker engine runs here.

The compose file must run the whole stack (every worker profile, one beat, Flower, the
emulator, the monitoring of monitoring/), every mailrelay command in it must be a real one
with real options, every mounted file must exist and land where its server reads it, and
the image must stay multi-stage, slim, pinned and non-root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from mailrelay.cli import cli as main

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
IMAGE = "mailrelay:latest"
# The servers besides mailrelay's own, each from a pinned image.
SERVERS = {"postgres", "redis", "prometheus", "alertmanager", "pushgateway", "grafana"}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def services() -> dict[str, Any]:
    return dict(compose()["services"])


def mailrelay_services() -> dict[str, list[str]]:
    """Services running the mailrelay image (its entry point is `mailrelay`), by command."""
    return {name: service["command"] for name, service in services().items()
            if service.get("image") == IMAGE}


def test_the_whole_stack_is_there() -> None:
    import workers

    names = set(services())
    assert names >= SERVERS
    assert {"migrate", "beat", "flower", "emulator"} <= names
    assert set(workers.names()) <= names  # a service per profile, named after it


def test_exactly_one_beat_runs() -> None:
    beats = [name for name, command in mailrelay_services().items() if command[:1] == ["beat"]]
    assert beats == ["beat"]
    assert services()["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_every_worker_profile_has_a_service_and_every_worker_service_a_profile() -> None:
    import workers

    served = {}
    for name, command in mailrelay_services().items():
        if command[0] == "worker":
            served[command[command.index("--profile") + 1]] = name
    assert set(served) == set(workers.names())
    # The ones not for every installation are behind a compose profile, off by default.
    assert services()[served["all"]].get("profiles") and services()[served["sink"]].get("profiles")
    default = [p for p, name in served.items() if not services()[name].get("profiles")]
    assert sorted(default) == ["control", "gmail", "intake", "microsoft", "smtp"]


def _resolve(words: list[str]) -> tuple[click.Command, list[str], str]:
    """The (sub)command ``words`` name at every level of the CLI's groups, and its arguments."""
    found: click.Command = main
    path = "mailrelay"
    while isinstance(found, click.Group):
        if found.invoke_without_command and (not words or words[0].startswith("-")):
            break  # a group that runs on its own (`mailrelay emulator --port N`)
        assert words, f"`{path}` needs a subcommand"
        sub = found.get_command(click.Context(found), words[0])
        assert sub is not None, f"no `{path} {words[0]}`"
        path, found, words = f"{path} {words[0]}", sub, words[1:]
    return found, words, path


def _unknown_options(command: click.Command, args: list[str]) -> list[str]:
    """The options in ``args`` that ``command`` does not declare. Parsing alone misses them
    where a command passes what it does not know on (`worker` hands it to celery)."""
    known = {opt for param in command.get_params(click.Context(command))
             for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}
    unknown = []
    for word in args:
        if word == "--":
            break
        if word.startswith("-") and word.partition("=")[0] not in known:
            unknown.append(word)
    return unknown


@pytest.mark.parametrize("name", sorted(mailrelay_services()))
def test_every_mailrelay_service_runs_a_real_command_with_real_options(name: str) -> None:
    command, args, path = _resolve(list(mailrelay_services()[name]))
    assert not _unknown_options(command, args), f"{name}: `{path}` has no {_unknown_options(command, args)}"
    try:
        # Parses every argument and option as the CLI would (types, choices, required).
        command.make_context(path, list(args))
    except click.UsageError as err:
        pytest.fail(f"{name}: `{path} {' '.join(args)}`: {err.format_message()}")


def test_the_command_check_sees_every_level_and_every_option() -> None:
    # What the test above relies on: a wrong word at any level, or an option the command
    # would pass on unparsed, is caught.
    with pytest.raises(AssertionError):
        _resolve(["db", "upgrad"])
    with pytest.raises(AssertionError):
        _resolve(["db"])
    command, args, _path = _resolve(["worker", "--profile", "gmail", "--concurency", "2"])
    assert _unknown_options(command, args) == ["--concurency"]
    command, args, _path = _resolve(["emulator", "--port=8443", "--state-dir", "/x"])
    assert _unknown_options(command, args) == []


def test_the_workers_start_after_the_migration() -> None:
    assert mailrelay_services()["migrate"] == ["db", "upgrade"]
    assert services()["migrate"]["restart"] == "no"  # one-shot
    for name, command in mailrelay_services().items():
        if command[0] in ("worker", "beat"):
            after = services()[name]["depends_on"]
            assert after["migrate"]["condition"] == "service_completed_successfully", name
            assert after["redis"]["condition"] == "service_healthy", name
            assert after["postgres"]["condition"] == "service_healthy", name


def test_every_server_image_is_pinned_to_a_version() -> None:
    for name in SERVERS:
        image = services()[name]["image"]
        _repository, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image}"


def _volumes(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each of a service's volumes, short or long syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append((str(volume.get("source", "")), str(volume["target"]),
                          bool(volume.get("read_only"))))
        else:
            source, target, *mode = str(volume).split(":")
            found.append((source, target, "ro" in "".join(mode).split(",")))
    return found


def _mounts() -> list[tuple[str, Path, str]]:
    """(service, host path, container path) of every bind mount."""
    found = []
    for name, service in services().items():
        for source, target, _read_only in _volumes(service):
            if source.startswith((".", "/")):
                found.append((name, (DOCKER / source).resolve(), target))
    return found


def test_every_mounted_file_and_build_path_exists() -> None:
    mounts = _mounts()
    assert len(mounts) >= 4
    for name, host, _target in mounts:
        assert host.exists(), f"{name}: {host} does not exist"
        assert host.is_relative_to(ROOT), f"{name}: {host} is outside the repository"
    for name, service in services().items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: the build context is not the repository root"
            assert (context / service["build"]["dockerfile"]).is_file(), name
    named = set(compose()["volumes"])
    for name, service in services().items():
        for source, _target, _read_only in _volumes(service):
            if not source.startswith((".", "/")):
                assert source in named, f"{name}: volume {source} is not declared"


def test_monitoring_s_files_are_mounted_read_only() -> None:
    for name, service in services().items():
        for source, target, read_only in _volumes(service):
            if source.startswith((".", "/")):
                assert read_only, f"{name}: {source} is mounted writable at {target}"


def _target_of(service: str, folder: Path) -> str:
    return next(t for name, s, t in _mounts() if name == service and s == folder.resolve())


def _named_volume_targets(service: str) -> set[str]:
    return {target for source, target, _ro in _volumes(services()[service])
            if not source.startswith((".", "/"))}


def _flags(words: list[str]) -> dict[str, str]:
    return {flag: value for flag, _, value in (word.partition("=") for word in words)}


def _prometheus_config() -> tuple[Path, dict[str, Any]]:
    prometheus = ROOT / "monitoring" / "prometheus"
    inside = _target_of("prometheus", prometheus)
    config = _flags(services()["prometheus"]["command"])["--config.file"]
    assert config.startswith(inside + "/"), config
    on_disk = prometheus / config.removeprefix(inside + "/")
    return on_disk, dict(yaml.safe_load(on_disk.read_text()))


def _scrape_job(job_name: str) -> dict[str, Any]:
    return dict(next(job for job in _prometheus_config()[1]["scrape_configs"]
                     if job["job_name"] == job_name))


def test_prometheus_reads_monitoring_s_config_and_rules_where_it_looks() -> None:
    # prom/prometheus: ENTRYPOINT /bin/prometheus, so `command` is its flags.
    assert "entrypoint" not in services()["prometheus"]
    on_disk, config = _prometheus_config()
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        assert (on_disk.parent / rule_file).is_file(), rule_file  # relative to the config
    flags = _flags(services()["prometheus"]["command"])
    assert flags["--storage.tsdb.path"] in _named_volume_targets("prometheus")
    # Flower's password file is the compose secret of that name.
    secret = Path(_scrape_job("flower")["basic_auth"]["password_file"])
    assert secret.parent == Path("/run/secrets")
    assert secret.name in services()["prometheus"]["secrets"]
    assert secret.name in compose()["secrets"]
    # It sends alerts to the alertmanager service.
    for target in config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]:
        assert target == "alertmanager:9093", target


def test_every_scraped_target_is_a_service_on_its_port() -> None:
    env = compose()["x-mailrelay-env"]
    metrics_port = env["MAILRELAY_METRICS_PORT"]
    pushgateway = env["MAILRELAY_PUSHGATEWAY_URL"].removeprefix("http://")
    scraped = set()
    for job in _prometheus_config()[1]["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            service, _, port = target.partition(":")
            assert service in services(), target
            scraped.add(service)
            command = mailrelay_services().get(service, [""])
            if command[0] in ("worker", "beat"):
                assert port == metrics_port, target
            elif command[0] == "flower":
                assert port == _flower_port(), target
            elif service == "pushgateway":
                assert target == pushgateway
    # Every worker that runs by default, and beat, is scraped (beat's `up` is its alarm).
    default = {name for name, command in mailrelay_services().items()
               if command[0] in ("worker", "beat") and not services()[name].get("profiles")}
    assert default <= scraped, default - scraped


def test_the_workers_and_beat_serve_metrics_where_prometheus_scrapes() -> None:
    env = compose()["x-mailrelay-env"]
    assert env["MAILRELAY_METRICS_PORT"] == "9100"
    assert env["MAILRELAY_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert env["MAILRELAY_PUSHGATEWAY_URL"] == "http://pushgateway:9091"
    for name, command in mailrelay_services().items():
        if command[0] in ("worker", "beat"):
            assert services()[name]["environment"]["MAILRELAY_METRICS_PORT"] == "9100", name


def _flower_port() -> str:
    from mailrelay.config import TABLE

    command = mailrelay_services()["flower"]
    if "--port" in command:
        return str(command[command.index("--port") + 1])
    setting = next(s for s in TABLE if s.attr == "flower_port")
    return str(services()["flower"]["environment"].get(setting.env, setting.default))


def test_prometheus_logs_in_to_flower_as_flower_s_user() -> None:
    command = mailrelay_services()["flower"]
    everywhere = "0.0.0.0"  # noqa: S104  # reachable from prometheus, in its own network
    assert command[command.index("--address") + 1] == everywhere
    auth = services()["flower"]["environment"]["MAILRELAY_FLOWER_AUTH"]
    user, _, password = auth.partition(":")
    scrape = _scrape_job("flower")
    assert user == scrape["basic_auth"]["username"] == "mailrelay"
    # The password Flower checks is the one the secret carries, and it is required.
    variable = re.fullmatch(r"\$\{([A-Z_]+):\?[^}]*\}", password)
    assert variable is not None, password
    secret = Path(scrape["basic_auth"]["password_file"]).name
    assert compose()["secrets"][secret] == {"environment": variable[1]}
    # Flower's own metrics port is its web port; the workers' one stays off in it.
    assert services()["flower"]["environment"]["MAILRELAY_METRICS_PORT"] == "0"
    assert f"{_flower_port()}:{_flower_port()}" in " ".join(services()["flower"]["ports"])


def test_alertmanager_renders_monitoring_s_routes_at_start() -> None:
    alertmanager = ROOT / "monitoring" / "alertmanager"
    inside = _target_of("alertmanager", alertmanager)
    entrypoint = services()["alertmanager"]["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"] and len(entrypoint) == 3
    render, _, start = entrypoint[2].partition(" && exec ")
    script, template, output = render.split()
    assert (script, template) == (f"{inside}/render.sh", f"{inside}/alertmanager.yml")
    assert (alertmanager / "render.sh").is_file() and (alertmanager / "alertmanager.yml").is_file()
    assert os.access(alertmanager / "render.sh", os.X_OK)  # run by path
    # prom/alertmanager's binary, on the rendered file, storing in its volume.
    binary, *flags = start.split()
    assert binary == "/bin/alertmanager"
    assert _flags(flags)["--config.file"] == output
    assert not output.startswith(inside + "/")  # the mount is read-only
    assert _flags(flags)["--storage.path"] in _named_volume_targets("alertmanager")
    needed = set(re.findall(r"\$\{(MAILRELAY_ALERT_[A-Z_]+)\}",
                            (alertmanager / "alertmanager.yml").read_text()))
    assert needed and needed <= set(services()["alertmanager"]["environment"])
    for name in needed:
        assert f"${{{name}:?" in services()["alertmanager"]["environment"][name], name


def test_grafana_loads_monitoring_s_provisioning_and_dashboards() -> None:
    grafana = ROOT / "monitoring" / "grafana"
    assert _target_of("grafana", grafana / "provisioning") == "/etc/grafana/provisioning"
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "mailrelay.yml")
                              .read_text())["providers"][0]
    assert _target_of("grafana", grafana / "dashboards") == provider["options"]["path"]
    source = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml")
                            .read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090"


def test_the_emulator_env_file_is_what_the_demo_sets() -> None:
    from mailrelay.devstack import emulator_env
    from mailrelay.emulator.tls import HOSTNAMES

    values = dict(line.split("=", 1) for line in (DOCKER / "emulator.env").read_text().splitlines()
                  if line and not line.startswith("#"))
    expected = emulator_env("https://emulator:8443", values["REQUESTS_CA_BUNDLE"])
    assert values == expected
    assert "emulator" in HOSTNAMES  # its certificate names the service
    # The emulator writes its CA where the bundle is, in the volume the others read.
    emulator = services()["emulator"]
    assert emulator["profiles"] == ["emulator"]  # a local try only, never started by default
    command = mailrelay_services()["emulator"]
    state_dir = command[command.index("--state-dir") + 1]
    assert ("emulator-state", state_dir, False) in _volumes(emulator)
    assert values["REQUESTS_CA_BUNDLE"] == f"{state_dir}/bundle.pem"
    for name, service in services().items():
        if service.get("image") == IMAGE and name != "emulator":
            assert ("emulator-state", state_dir, True) in _volumes(service), name
    # The endpoints name the service on the port it listens on, on every interface.
    assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104
    port = command[command.index("--port") + 1]
    assert values["MAILRELAY_GMAIL_API_URL"] == f"https://emulator:{port}"
    # Every endpoint it sets is substituted into the services' environment.
    env = compose()["x-mailrelay-env"]
    assert all(f"${{{name}:-" in str(env[name]) for name in values)


def test_every_substitution_is_required_or_has_a_default() -> None:
    # A bare ${VAR} or $VAR that is unset becomes "" with only a warning; `$$` is a literal $.
    text = re.sub(r"\$\$", "", "\n".join(line.partition(" #")[0] for line in
                                        COMPOSE.read_text().splitlines()
                                        if not line.lstrip().startswith("#")))
    bare = re.findall(r"\$(?!\{[A-Za-z_][A-Za-z0-9_]*:[?-])\S{0,40}", text)
    assert bare == []


def test_every_required_variable_is_documented() -> None:
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert {"MAILRELAY_SECRET_KEY", "MAILRELAY_FLOWER_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    readme = (DOCKER / "README.md").read_text()
    assert [name for name in sorted(required) if f"`{name}`" not in readme] == []


def _stages() -> list[list[str]]:
    text = (DOCKER / "Dockerfile").read_text()
    stages: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_is_multi_stage_pinned_slim_and_not_root() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base is not None
    # A full patch version on a named Debian release (a digest may follow), never `latest`.
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base[1]), base[1]
    stages = _stages()
    assert len(stages) >= 2
    assert all(stage[0].split()[1] == "${PYTHON_IMAGE}" for stage in stages)
    runtime = "\n".join(line for line in stages[-1] if not line.lstrip().startswith("#"))
    users = re.findall(r"^USER (\S+)$", runtime, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # No compiler and no source tree in the final image: only wheels, bind-mounted.
    assert not re.search(r"\b(gcc|g\+\+|cc|clang|make|build-essential|apt-get|apk|"
                         r"python3?-dev|libpq-dev)\b", runtime)
    assert "COPY mailrelay" not in runtime and "--mount=type=bind,from=builder" in runtime
