"""docker/: the production stack, checked without a Docker engine.

No Docker engine runs where this project is built, so the stack is checked statically: the
compose file interpolates and is valid against the Compose Specification (compose-spec, the
bindings of the compose_spec parser), every file it references exists, every environment variable
it gives the listener is a real setting (and every listener setting is wired), every service the
listener needs is declared, and the Dockerfiles install what the code imports, from
pyproject.toml.  No database here: the parts that run against the test cluster (the postgres
image's init script, the wheel the image installs) are in tests/cli/test_docker_image.py.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from compose_spec import PyCompose
from dockerfile_parse import DockerfileParser

from study_embed.settings import SETTINGS, Settings
from study_embed_dev.localdb import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SECRETS = {"POSTGRES_PASSWORD": "pw0", "LISTENER_DB_PASSWORD": "pw1"}

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class Unset(Exception):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation: ${X}, ${X:-default}, ${X-default}, ${X:?err}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        have = env.get(name)
        empty = have is None or (have == "" and op and op.startswith(":"))
        if op in ("-", ":-"):
            return arg if empty else have
        if op in ("?", ":?"):
            if empty:
                raise Unset(f"{name}: {arg}")
            return have
        return have or ""

    return _VAR.sub(one, value)


def compose(env: dict[str, str] | None = None) -> dict:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(raw, {**SECRETS, **(env or {})})


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, value) of a Dockerfile, continuation lines joined (dockerfile-parse)."""
    return [
        (i["instruction"], i["value"])
        for i in DockerfileParser(path=str(path)).structure
        if i["instruction"] != "COMMENT"
    ]


def listener_settings(command: str) -> set[str]:
    return {s.env for s in SETTINGS if command in s.commands}


# -- the compose file --------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification():
    doc = compose()
    spec = PyCompose.from_json(
        json.dumps(doc)
    )  # the compose_spec parser: raises on any invalid key
    assert set(spec.service_names()) == set(doc["services"])
    assert {"postgres", "migrate", "tei", "tei-gpu", "ollama", "listener"} <= set(doc["services"])
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, name
        for vol in svc.get("volumes", []):  # named volumes are declared
            source = vol.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in doc["volumes"], (name, source)


def test_the_specification_check_refuses_a_misspelt_key():
    doc = compose()
    doc["services"]["listener"]["depend_on"] = doc["services"]["listener"].pop("depends_on")
    with pytest.raises(ValueError, match="depend_on"):
        PyCompose.from_json(json.dumps(doc))
    doc = compose()
    doc["services"]["listener"]["depends_on"]["migrate"]["condition"] = "service_done"
    with pytest.raises(ValueError, match="service_done"):
        PyCompose.from_json(json.dumps(doc))


def test_the_passwords_must_be_set():
    with pytest.raises(Unset, match="POSTGRES_PASSWORD"):
        compose({"POSTGRES_PASSWORD": ""})
    with pytest.raises(Unset, match="LISTENER_DB_PASSWORD"):
        compose({"LISTENER_DB_PASSWORD": ""})


def test_every_referenced_file_exists():
    doc = compose()
    for name, svc in doc["services"].items():
        build = svc.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (DOCKER / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), (name, dockerfile)
        for op, rest in dockerfile_instructions(dockerfile):
            if op == "COPY" and "--from=" not in rest:
                *sources, _dest = rest.split()
                for src in sources:
                    assert (context / src).exists(), (name, src)
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), (name, source)


def test_images_are_pinned():
    images = [svc["image"] for svc in compose()["services"].values() if "image" in svc]
    for dockerfile in DOCKER.rglob("Dockerfile"):
        images += [
            rest.split()[0] for op, rest in dockerfile_instructions(dockerfile) if op == "FROM"
        ]
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), image


def test_listener_gets_every_setting_and_nothing_else(monkeypatch):
    svc = compose()["services"]["listener"]
    env = env_of(svc)
    assert set(env) == listener_settings("listen")
    assert set(env_of(compose()["services"]["migrate"])) <= listener_settings("migrate")
    # the values the stack gives it are valid settings (an empty value means the default)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    resolved = Settings.resolve(argparse.Namespace(), "listen")
    assert resolved.embedding_api == "tei"
    assert resolved.embedding_model == "BAAI/bge-m3"
    assert resolved.embedding_timeout == 15.0  # the listener's own default comes through


def test_a_setting_given_to_compose_reaches_the_listener():
    env = env_of(compose({"BATCH_SIZE": "32", "EMBEDDING_API": "ollama"})["services"]["listener"])
    assert env["BATCH_SIZE"] == "32" and env["EMBEDDING_API"] == "ollama"


def test_the_listener_depends_on_what_it_needs():
    services = compose()["services"]
    listener = services["listener"]
    deps = listener["depends_on"]
    for dep in deps:
        assert dep in services, dep
    assert deps["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["migrate"]
    assert listener["command"] == ["listen"]

    # DATABASE_URL: the postgres service, its database, the login role its init script makes
    pg_env = env_of(services["postgres"])
    db = urlsplit(env_of(listener)["DATABASE_URL"])
    assert db.hostname == "postgres" and db.path == "/" + pg_env["POSTGRES_DB"]
    assert db.username == pg_env["LISTENER_DB_USER"]
    assert db.password == SECRETS["LISTENER_DB_PASSWORD"]
    mig = urlsplit(env_of(services["migrate"])["DATABASE_URL"])
    assert (mig.hostname, mig.username) == ("postgres", pg_env["POSTGRES_USER"])

    # whichever embedding profile runs, the listener's EMBEDDING_URL names a service there,
    # and the listener waits for it to be healthy (or its model pulled)
    def serving(profile: str, env: dict[str, str]) -> None:
        doc = compose({"COMPOSE_PROFILES": profile, **env})
        running = {
            n: s
            for n, s in doc["services"].items()
            if not s.get("profiles") or profile in s["profiles"]
        }
        lenv = env_of(doc["services"]["listener"])
        host = urlsplit(lenv["EMBEDDING_URL"]).hostname
        names = {
            n
            for n, s in running.items()
            for n in [n, *s.get("networks", {}).get("default", {}).get("aliases", [])]
        }
        assert host in names, (profile, host)
        waited = [d for d in deps if d in running and d not in ("migrate", "postgres")]
        assert waited, profile
        assert all(deps[d].get("required") is False for d in waited)
        assert {"postgres", "migrate", "listener"} <= set(running)

    serving("cpu", {})
    serving("gpu", {})
    serving(
        "ollama",
        {
            "EMBEDDING_API": "ollama",
            "EMBEDDING_URL": "http://ollama:11434",
            "EMBEDDING_MODEL": "bge-m3",
        },
    )
    gpu = services["tei-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "cpu" in services["tei"]["image"].rsplit(":", 1)[1]
    assert "cpu" not in services["tei-gpu"]["image"].rsplit(":", 1)[1]


def test_embedding_servers_serve_bge_m3_with_health_checks_and_cached_models():
    services = compose()["services"]
    for name in ("tei", "tei-gpu"):
        svc = services[name]
        assert svc["command"][svc["command"].index("--model-id") + 1] == "BAAI/bge-m3"
        assert any(v.endswith(":/data") for v in svc["volumes"])
        hc = svc["healthcheck"]
        assert "/health" in " ".join(hc["test"])
        # the port refuses connections until bge-m3 is downloaded and loaded
        assert hc["start_period"].endswith("m") and int(hc["start_period"][:-1]) >= 10
    assert services["ollama-pull"]["entrypoint"][-1] == "bge-m3"
    assert services["ollama"]["environment"]["OLLAMA_CONTEXT_LENGTH"] == "8192"
    assert any(v.endswith(":/root/.ollama") for v in services["ollama"]["volumes"])


def test_postgres_preloads_pg_cron_for_the_application_database():
    svc = compose({"POSTGRES_DB": "bank"})["services"]["postgres"]
    assert svc["command"][0] == "postgres"
    pairs = list(zip(svc["command"][1::2], svc["command"][2::2], strict=True))
    assert all(flag == "-c" for flag, _ in pairs)
    settings = dict(value.split("=", 1) for _, value in pairs)
    assert "pg_cron" in settings["shared_preload_libraries"].split(",")
    assert settings["cron.database_name"] == env_of(svc)["POSTGRES_DB"] == "bank"
    assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    # the image: pgvector for PostgreSQL N, and pg_cron built for the same N
    ins = dockerfile_instructions(DOCKER / "postgres" / "Dockerfile")
    base = next(rest for op, rest in ins if op == "FROM")
    major = re.search(r"pg(\d+)", base).group(1)
    assert base.startswith("pgvector/pgvector:")
    assert any(op == "RUN" and f"postgresql-{major}-cron" in rest for op, rest in ins)


# -- the listener image ------------------------------------------------------------------------


def _third_party_imports() -> dict[str, str]:
    """Every third-party module the package imports -> "core", or "ui" where only the `ui`
    extra needs it (the ui subpackage, and imports guarded by `except ImportError`), or
    "alembic" where only the `alembic` extra does (study_embed.alembic, which an Alembic
    project imports)."""
    package = ROOT / "glue" / "study_embed"
    found: dict[str, str] = {}

    def add(module: str, where: str) -> None:
        if module not in sys.stdlib_module_names and module != "study_embed":
            found[module] = "core" if "core" in (where, found.get(module)) else where

    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        guarded = {
            id(n)
            for t in ast.walk(tree)
            if isinstance(t, ast.Try)
            and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in t.handlers)
            for stmt in t.body
            for n in ast.walk(stmt)
        }
        in_ui = "ui" in path.relative_to(package).parts
        extra = "alembic" if path.relative_to(package).parts == ("alembic.py",) else "ui"
        for node in ast.walk(tree):
            where = extra if in_ui or extra == "alembic" or id(node) in guarded else "core"
            if isinstance(node, ast.Import):
                for a in node.names:
                    add(a.name.split(".")[0], where)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                add(node.module.split(".")[0], where)
    return found


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_declares_everything_the_package_imports():
    core = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = {
        name: {_requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"][name]}
        for name in ("ui", "alembic")
    }
    dists = packages_distributions()
    imported = _third_party_imports()
    assert imported, "the scan found no imports"
    assert {"jinja2", "starlette", "uvicorn"} <= {m for m, w in imported.items() if w == "ui"}
    for module, where in imported.items():
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        declared = core if where == "core" else core | extras[where]
        assert names & declared, f"{module} is imported ({where}) but not in pyproject"


def test_listener_image_installs_the_project_from_pyproject_as_non_root():
    ins = dockerfile_instructions(DOCKER / "listener" / "Dockerfile")
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    copies = [rest for op, rest in ins if op == "COPY"]
    # the project itself, by pyproject.toml: no dependency is listed by hand
    assert re.search(r"pip install \.(\s|$)", runs)
    assert any(c.split()[0] == "pyproject.toml" for c in copies)
    for dep in PYPROJECT["project"]["dependencies"]:
        assert _requirement_name(dep) not in runs.lower(), f"{dep} listed by hand"
    # the package data the code reads at run time (db/) goes into the wheel
    assert (
        PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]["db"]
        == "study_embed/db"
    )
    # `study-embed migrate` runs psql
    assert "postgresql-client" in runs
    user = [rest for op, rest in ins if op == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert [rest for op, rest in ins if op == "ENTRYPOINT"] == ['["study-embed"]']
    assert [rest for op, rest in ins if op == "CMD"][-1] == '["listen"]'
    assert [rest for op, rest in ins if op == "STOPSIGNAL"] == ["SIGTERM"]
    # the build context sends what the COPY lines need and nothing else
    ignore = (DOCKER / "listener" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"
    for c in copies:
        if "--from=" not in c:
            for src in c.split()[:-1]:
                assert f"!{src}" in ignore, src


# -- operating it: health check, Prometheus, alerts --------------------------------------------

PROMETHEUS = DOCKER / "prometheus"


def test_the_listener_is_healthy_only_when_ready_and_exposes_its_metrics():
    listener = compose()["services"]["listener"]
    env = env_of(listener)
    assert env["METRICS_PORT"] == "9108" and env["METRICS_HOST"] == "0.0.0.0"
    assert listener["expose"] == ["9108"] and "ports" not in listener  # compose network only
    test = listener["healthcheck"]["test"]
    assert test[0] == "CMD" and "/readyz" in test[-1] and "METRICS_PORT" in test[-1]
    # the health check's command runs: against a port where nothing listens it fails
    r = subprocess.run(
        [sys.executable, *test[2:]],
        env={**os.environ, "METRICS_PORT": str(free_port())},
        capture_output=True,
    )
    assert r.returncode != 0
    ins = dockerfile_instructions(DOCKER / "listener" / "Dockerfile")
    assert ("EXPOSE", "9108") in ins
    assert any(op == "ENV" and "METRICS_HOST=0.0.0.0" in rest for op, rest in ins)


def test_the_prometheus_profile_scrapes_the_listener_with_a_pinned_image():
    services = compose()["services"]
    prom = services["prometheus"]
    assert prom["profiles"] == ["prometheus"]
    name, _, tag = prom["image"].rpartition(":")
    assert name == "prom/prometheus" and tag.startswith("v") and tag != "latest"
    mounts = {v.split(":")[1] for v in prom["volumes"] if v.startswith("./")}
    assert mounts == {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"}
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [
        f"listener:{env_of(services['listener'])['METRICS_PORT']}"
    ]


def _metric_names() -> set[str]:
    from study_embed.metrics import Stats

    names = {"study_embed_database_up", "study_embed_rows", "study_embed_oldest_waiting_seconds"}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    for family in Stats().registry.collect():
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def test_the_alert_rules_cover_what_an_operator_must_hear_and_use_real_metrics():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    [group] = rules["groups"]
    by_name = {r["alert"]: r for r in group["rules"]}
    assert set(by_name) >= {
        "StudyEmbedListenerDown",
        "StudyEmbedQueueStale",
        "StudyEmbedFailuresRising",
        "StudyEmbedBreakerOpen",
    }
    known = _metric_names() | {"up"}
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        used = set(re.findall(r"\b(study_embed_\w+|up)\b(?=[\[{\s)=<>]|$)", rule["expr"]))
        assert used and used <= known, (name, used - known)
    if shutil.which("promtool"):
        r = subprocess.run(
            ["promtool", "check", "rules", str(PROMETHEUS / "alerts.yml")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
