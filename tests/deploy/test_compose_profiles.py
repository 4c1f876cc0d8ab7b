"""compose.yaml and the commands the docs give for it agree (issue 18, item 7): what each
documented `docker compose ... up` starts, the GPU profile's own model and queue, the models
folder every tollgate container mounts, and the public URL that follows TOLLGATE_API_PORT.
Resolved by the Compose binary, as in test_compose_file.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from service.models import ModelTable, load_models
from service.settings import Settings
from tests.deploy.artefacts import REQUIRED_ENV, ROOT, command_args, published, services

# Where a reader finds compose commands: the README, every docs page, compose.yaml's header.
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "compose.yaml"]
TOLLGATE_SERVICES = ("migrate", "api", "worker", "flusher", "worker-gpu")


def compose_commands() -> list[tuple[str, list[str], str]]:
    """(where, the words of the command, its trailing `# comment`) of every documented
    `docker compose ... up` line."""
    found = []
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.lstrip("# ") if path.suffix == ".yaml" else line
            match = re.search(r"((?:\w+=\S+\s+)*docker compose\b[^#`]*)(?:#(.*))?", text)
            if match is None or " up" not in match.group(1):
                continue
            where = f"{path.relative_to(ROOT)}:{number}"
            found.append((where, shlex.split(match.group(1)), (match.group(2) or "").strip()))
    return found


def started_by(words: list[str], found: dict[str, dict[str, Any]]) -> set[str]:
    """The services `docker compose [--profile P]... up` starts."""
    profiles = {words[i + 1] for i, word in enumerate(words[:-1]) if word == "--profile"}
    return {name for name, service in found.items()
            if not service.get("profiles") or profiles & set(service["profiles"])}


def env_of(words: list[str]) -> dict[str, str]:
    """The `NAME=value` assignments in front of a command."""
    env = {}
    for word in words:
        if "=" not in word or word.startswith("-"):
            break
        name, value = word.split("=", 1)
        env[name] = value
    return env


def test_every_documented_compose_up_starts_the_services_it_names() -> None:
    """The README once said `docker compose up` starts rq-dashboard, which is in a profile;
    and called `--scale worker=4` more GPU workers, though `worker` reserves no GPU."""
    found = services()
    commands = compose_commands()
    assert len(commands) >= 4, commands  # the default stack, scaling, the gpu profile, more
    for where, words, comment in commands:
        started = started_by(words, found)
        named = {word for word in re.findall(r"[\w-]+", comment) if word in found}
        assert named <= started, f"{where}: {sorted(named - started)} not started by this"
        for scaled in (w.split("=")[0] for w in words if re.fullmatch(r"[\w-]+=\d+", w)):
            assert scaled in started, f"{where}: --scale {scaled}"
            reserves_gpu = "deploy" in found[scaled]
            assert reserves_gpu or "GPU" not in comment, f"{where}: {scaled} has no GPU"
    profiled = {name for name, service in found.items() if service.get("profiles")}
    mentioned = {name for _, words, comment in commands
                 for name in started_by(words, found) & profiled
                 if name in comment or name in " ".join(words)}
    assert {"rq-dashboard", "worker-gpu"} <= mentioned  # each shown with its --profile


def gpu_env() -> dict[str, str]:
    """The variables of the documented commands that start the gpu profile (the same
    wherever one is shown)."""
    shown = {tuple(sorted(env_of(words).items())) for _, words, _ in compose_commands()
             if "worker-gpu" in started_by(words, services())}
    assert len(shown) == 1, shown
    return dict(shown.pop())


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind a container path, through the service's bind mounts."""
    path = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        if volume["type"] == "bind" and path.is_relative_to(volume["target"]):
            return Path(volume["source"]) / path.relative_to(volume["target"])
    raise AssertionError(f"{container_path} is in no bind mount of the service")


def model_table(service: dict[str, Any]) -> ModelTable:
    """The models a tollgate container of this service reads, its models file included."""
    env = {key.removeprefix("TOLLGATE_").lower(): value
           for key, value in service["environment"].items()
           if key.startswith("TOLLGATE_") and value is not None}
    if "models" in env:
        env["models"] = str(host_path(service, env["models"]))
    settings = Settings(**{name: env.get(name) for name in
                           ("models", "processor", "price_per_item", "queue_name")
                           if name in env})
    return load_models(settings)


def served_model(name: str, found: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(queue, processor) of the model a worker service's `--model` names."""
    args = command_args(found[name])
    model = model_table(found[name]).get(args[args.index("--model") + 1])
    return model.queue, model.processor


def test_the_gpu_profile_serves_a_gpu_model_on_a_queue_of_its_own() -> None:
    """worker-gpu and worker both served queue `gpu` with the PIL thumbnailer before."""
    env = {**REQUIRED_ENV, **gpu_env()}
    assert "TOLLGATE_MODELS" in env
    found = services(env)
    gpu_queue, gpu_processor = served_model("worker-gpu", found)
    cpu_queue, cpu_processor = served_model("worker", found)
    assert gpu_processor == "workers.processors.torch_batch:EdgeMaps"
    assert gpu_queue != cpu_queue and cpu_processor != gpu_processor
    assert "torch" not in cpu_processor
    # The API offers both, from the same file the workers read.
    api_models = {model.name: model.queue for model in model_table(found["api"])}
    assert gpu_queue in api_models.values() and cpu_queue in api_models.values()
    # The default stack's thumbnail sits on the queue the gpu profile's file gives it, and
    # no model of the default stack is served on the GPU model's queue.
    default = services()
    assert served_model("worker", default)[0] == cpu_queue
    assert gpu_queue not in model_table(default["api"]).queues()


def test_every_tollgate_container_mounts_the_models_file_it_is_told_to_read() -> None:
    """TOLLGATE_MODELS said "mount it with a volume", and no service mounted one."""
    env = {**REQUIRED_ENV, **gpu_env()}
    found = services(env)
    for name in TOLLGATE_SERVICES:
        models = found[name]["environment"]["TOLLGATE_MODELS"]
        assert host_path(found[name], models).is_file(), name
        mount = next(v for v in found[name]["volumes"] if v["type"] == "bind")
        assert mount.get("read_only") is True, name
    # A folder of one's own replaces the shipped one.
    moved = services({**env, "TOLLGATE_MODELS_DIR": "/srv/models"})["api"]
    assert host_path(moved, "/etc/tollgate/models/gpu.toml") == Path("/srv/models/gpu.toml")


def test_the_public_url_follows_the_api_port() -> None:
    """TOLLGATE_API_PORT moved the published port but left job links on :8000."""
    found = services({**REQUIRED_ENV, "TOLLGATE_API_PORT": "8808"})
    assert ("", "8808", 8000) in published(found["api"])
    for name in TOLLGATE_SERVICES:
        assert found[name]["environment"]["TOLLGATE_PUBLIC_URL"] == "http://localhost:8808"
    assert services()["api"]["environment"]["TOLLGATE_PUBLIC_URL"] == "http://localhost:8000"
    # An explicit public URL (another host, a proxy) still wins.
    chosen = services({**REQUIRED_ENV, "TOLLGATE_API_PORT": "8808",
                       "TOLLGATE_PUBLIC_URL": "https://tg.example"})
    assert chosen["api"]["environment"]["TOLLGATE_PUBLIC_URL"] == "https://tg.example"
