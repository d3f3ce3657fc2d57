"""Config: strict validation with one-line errors, env overrides, secrets, docs in sync."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.config import ConfigError, Secret, apply_env_overrides, load
from vmbackup.config_schema import load_config

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Inner:
    host: str
    port: int = 443
    password: Secret = field(default_factory=lambda: Secret("", "default"))


@dataclass(frozen=True)
class Schema:
    name: str = "x"
    ratio: float = 1.0
    on: bool = False
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=lambda: Inner("h"))
    items: list[Inner] = field(default_factory=list)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 3\n", "c.toml: name: expected a string, got int"),
        ("ratio = true\n", "c.toml: ratio: expected a number, got bool"),
        ("bogus = 1\n", "c.toml: bogus: unknown key"),
        ("[inner]\nport = 1\n", "c.toml: inner.host: required key is missing"),
        ('[inner]\nhost = "a"\nwhat = 1\n', "c.toml: inner.what: unknown key"),
        ('[[items]]\nhost = "a"\nport = "b"\n', "c.toml: items[0].port: expected an integer"),
        ('tags = ["a", 1]\n', "c.toml: tags[1]: expected a string, got int"),
        ("name = \n", "c.toml: not valid TOML"),
        ('[inner]\nhost = "a"\npassword = {env = "NOPE_NOT_SET"}\n', "variable NOPE_NOT_SET"),
        ('[inner]\nhost = "a"\npassword = {file = "/nonexistent/x"}\n', "cannot read secret file"),
        ('[inner]\nhost = "a"\npassword = 5\n', "inner.password: expected a string, {file"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(Schema, write(tmp_path, text), env={})
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_secrets_from_file_env_and_inline(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    text = f'[inner]\nhost = "a"\npassword = {{file = "{secret_file}"}}\n'
    cfg = load(Schema, write(tmp_path, text), env={})
    assert cfg.inner.password.value == "s3cret"
    assert "s3cret" not in repr(cfg)
    cfg = load(Schema, write(tmp_path, '[inner]\nhost="a"\npassword={env="PW"}\n'), env={"PW": "e"})
    assert cfg.inner.password == Secret("e", "env PW")


def test_env_overrides_types_and_lists(tmp_path: Path) -> None:
    env = {
        "VMBACKUP_NAME": "ignored-no-double-underscore",
        "VMBACKUP_INNER__PORT": "8443",
        "VMBACKUP_INNER__HOST": "vc.example.com",
        "VMBACKUP_ITEMS__1__HOST": "second",
        "VMBACKUP_ITEMS__0__HOST": "first",
        "VMBACKUP_TAGS": '["a", "b"]',
    }
    data = apply_env_overrides({}, {k: v for k, v in env.items() if k != "VMBACKUP_TAGS"})
    assert data["inner"] == {"port": 8443, "host": "vc.example.com"}
    cfg = load(Schema, write(tmp_path, "ratio = 2\n"), env=env)
    assert cfg.inner == Inner("vc.example.com", 8443)
    assert [i.host for i in cfg.items] == ["first", "second"]
    assert cfg.ratio == 2.0


def test_env_override_with_wrong_type_names_the_key(tmp_path: Path) -> None:
    env = {"VMBACKUP_INNER__PORT": "many", "VMBACKUP_INNER__HOST": "h"}
    with pytest.raises(ConfigError, match=r"inner\.port: expected an integer, got str"):
        load(Schema, write(tmp_path, ""), env=env)


def test_whole_config_validates_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"broker\.delivery_limit: must be >= 1"):
        load_config(write(tmp_path, "[broker]\ndelivery_limit = 0\n"))
    cfg = load_config(write(tmp_path, "[broker]\nn_shards = 4\n"))
    assert cfg.broker.n_shards == 4


def test_cli_config_check_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "[metrics]\nport = 'x'\n")
    res = subprocess.run(
        [sys.executable, "-m", "vmbackup", "config", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"vmbackup config check: config error: {bad}: metrics.port: expected an integer, got str"
    ]


def test_configuration_doc_is_generated_from_the_schema() -> None:
    from scripts.gen_config_docs import render

    current = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == render(), "docs/configuration.md is stale: run make docs"


def _uncommented_example() -> str:
    lines = []
    for line in (ROOT / "examples" / "vmbackup.toml").read_text().splitlines():
        if line.startswith("# "):
            line = line[2:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_example_config_is_valid_and_shows_every_key(tmp_path: Path) -> None:
    import tomllib

    from common.config import describe
    from vmbackup.config_schema import Config

    for name in ("rabbitmq-password", "vc1-password"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "chat-webhook-url").write_text("https://hooks.example.com/services/T/B/x\n")
    text = (
        (ROOT / "examples" / "vmbackup.toml")
        .read_text()
        .replace("/run/secrets/vmbackup", str(tmp_path))
    )
    env = {"VC1_USER": "backup@vsphere.local"}
    load(Config, write(tmp_path, text), env=env)  # as shipped

    full = tomllib.loads(_uncommented_example())  # with every optional key shown
    missing = []
    for key, *_ in describe(Config):
        node = full
        for part in key.split("."):
            if part.endswith("[]"):
                node = node.get(part[:-2], [{}])[0]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                missing.append(key)
                break
    assert not missing, f"examples/vmbackup.toml does not show: {missing}"


def test_metrics_doc_is_generated_from_the_declarations() -> None:
    from scripts.gen_metrics_docs import render

    current = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert current == render(), "docs/metrics.md is stale: run make docs"
