"""docker-compose.yml cannot run here (no Docker): check what it promises, statically."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _image_tag(service: dict[str, Any]) -> tuple[str, str]:
    image, _, tag = service["image"].partition(":")
    return image, tag


def test_db_is_pgvector_on_a_current_postgres_with_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    db = compose["services"]["db"]
    image, tag = _image_tag(db)
    assert image == "pgvector/pgvector"
    major = int(re.search(r"pg(\d+)$", tag).group(1))  # type: ignore[union-attr]
    assert major >= 17
    # 18+ images keep PGDATA in /var/lib/postgresql/<major>/docker and refuse a mount at .../data.
    expected_mount = "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"
    mounts = {v.split(":", 1)[1]: v.split(":", 1)[0] for v in db["volumes"]}
    assert mounts.get(expected_mount) in compose["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert db["ports"] and all(p.startswith("127.0.0.1:") for p in db["ports"])
    assert "${POSTGRES_PASSWORD" in db["environment"]["POSTGRES_PASSWORD"]


def test_ollama_serves_and_nomic_embed_text_is_pulled_before_reembed_runs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ollama = services["ollama"]
    assert _image_tag(ollama)[0] == "ollama/ollama"
    assert ollama["healthcheck"]["test"]
    assert any(v.split(":", 1)[0] in compose["volumes"] and v.endswith(":/root/.ollama") for v in ollama["volumes"])
    pull = services["ollama-pull"]
    assert _image_tag(pull)[0] == "ollama/ollama"
    assert " ".join(pull["entrypoint"]) == "ollama pull nomic-embed-text"
    assert pull["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    assert "ollama" in pull["depends_on"] and pull["restart"] == "on-failure"  # until the server listens
    # ollama is healthy only once the model is there, and that is what reembed waits for.
    assert ollama["healthcheck"]["test"] == ["CMD", "ollama", "show", "nomic-embed-text"]
    assert services["reembed"]["depends_on"]["ollama"]["condition"] == "service_healthy"


def test_a_reembed_run_does_not_start_the_one_shot_pull_again(compose: dict[str, Any]) -> None:
    # `docker compose run reembed` starts what reembed depends on, transitively: the one-shot must
    # not be among them, or every command pulls again.
    services = compose["services"]

    def dependencies(name: str) -> set[str]:
        direct = set(services[name].get("depends_on", {}))
        return direct.union(*(dependencies(d) for d in direct)) if direct else set()

    assert "ollama-pull" not in dependencies("reembed")
    assert dependencies("reembed") == {"db", "ollama"}
    assert "profiles" not in services["ollama-pull"]  # `docker compose up` does run it once


def test_images_are_pinned_to_versions(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "image" not in service:
            continue
        _, tag = _image_tag(service)
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), (name, service["image"])
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base and re.search(r":\d+\.\d+", base.group(1)), "the Dockerfile's base image is pinned too"


def test_reembed_service_points_at_the_db_service_and_takes_keys_from_env(compose: dict[str, Any]) -> None:
    services = compose["services"]
    reembed = services["reembed"]
    env = reembed["environment"]
    match = re.match(r"postgresql://[^@]+@(?P<host>[^:/]+):(?P<port>\d+)/", env["DATABASE_URL"])
    assert match and match["host"] == "db" and match["port"] == "5432"
    assert "${POSTGRES_PASSWORD" in env["DATABASE_URL"]  # never a literal password in the file
    assert env["OLLAMA_HOST"] == "http://ollama:11434"
    assert env["GOOGLE_API_KEY"].startswith("${GOOGLE_API_KEY")
    assert reembed["depends_on"]["db"]["condition"] == "service_healthy"
    assert reembed["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    assert 'ENTRYPOINT ["reembed"]' in (ROOT / "Dockerfile").read_text()


def test_every_variable_the_compose_file_reads_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
    assert used and used <= documented, f"undocumented: {sorted(used - documented)}"
    assert re.search(r"^GOOGLE_API_KEY=$", example, re.MULTILINE), "the example must not carry a key"
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_long_running_services_have_health_checks_and_no_secrets_are_inline(compose: dict[str, Any]) -> None:
    for name in ("db", "ollama"):
        check = compose["services"][name]["healthcheck"]
        assert check["test"] and check["interval"] and check["retries"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"AIza[0-9A-Za-z_-]{20,}", text)
    assert "change-me" not in text
