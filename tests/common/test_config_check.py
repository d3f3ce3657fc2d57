"""`vmbackup config check` and every role's start share one validation: every problem of
a file at once, each named by its key path, the cross-references the roles rely on
included, and the example config passes it as shipped with comments that show the
real defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from common.config import describe
from vmbackup.config_schema import Config, check_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vmbackup.toml"

VC = (
    '[[vcenters]]\nname = "{name}"\nurl = "https://{name}.example/sdk"\n'
    'user = "u"\npassword = "p"\n'
)


def vmb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VMBACKUP_", "VC1_"))}
    return subprocess.run(
        [sys.executable, "-m", "vmbackup", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vmbackup.toml"
    p.write_text(text)
    return p


def keys(path: Path, env: dict[str, str] | None = None, **kw: Any) -> list[str]:
    return [p.key for p in check_config(path, env=env or {}, **kw).problems]


def test_two_policies_with_one_name_are_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path, VC.format(name="vc1") + '[[policies]]\nname = "p"\n' * 2)
    r = vmb("config", "check", "--config", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{cfg}: policies[1].name: 'p' is also the name of policies[0]" in r.stderr


def test_a_policy_naming_an_unknown_vcenter_is_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path, VC.format(name="vc1") + '[[policies]]\nname = "p"\nvcenters = ["nope"]\n')
    r = vmb("config", "check", "--config", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        f"{cfg}: policies[0].vcenters[0]: no [[vcenters]] named 'nope' (configured: vc1)"
        in r.stderr
    )


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    text = (
        "[broker]\ndelivery_limit = 0\nconfirm_window = 0\n"  # two in one table
        "[metrics]\nport = 'x'\n"  # a wrong type
        "[writer]\nprefetch = 999\nshards = '0-99'\n"  # a range; beyond broker.n_shards
        "[proxy]\nbogus = 1\n"  # an unknown key
        + VC.format(name="vc1")
        + VC.format(name="vc1")  # a name twice
        + '[[vcenters]]\nname = "vc3"\n'  # required keys missing
        + '[[policies]]\nname = "p"\nrouting = "rack"\nvcenters = ["vc9"]\n'
        + "[policies.window]\nstart = '25:00'\nend = '06:00'\n"
    )
    r = vmb("config", "check", "--config", str(write(tmp_path, text)), "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert (doc["ok"], doc["exit"], doc["error"]["cause"]) == (False, 2, "config")
    out = doc["result"]
    assert all(set(e) == {"key", "error"} for e in out["errors"])
    assert [e["key"] for e in out["errors"]] == [
        "broker.delivery_limit",
        "broker.confirm_window",
        "metrics.port",
        "writer.prefetch",
        "proxy.bogus",
        "vcenters[2].url",
        "vcenters[2].user",
        "vcenters[2].password",
        "policies[0].routing",
        "policies[0].window.start",
    ], out


def test_cross_references_are_checked_once_the_tables_are_valid(tmp_path: Path) -> None:
    text = (
        "[writer]\nshards = '0-99'\n"
        f"[proxy.nbd]\nvddk_thumbprints = {{ vc7 = '{'ab' * 20}' }}\n"
        + VC.format(name="vc1")
        + VC.format(name="vc1")
        + '[[policies]]\nname = "p"\nvcenters = ["vc9"]\n'
    )
    assert keys(write(tmp_path, text)) == [
        "writer.shards",
        "proxy.nbd.vddk_thumbprints.vc7",
        "vcenters[1].name",
        "policies[0].vcenters[0]",
    ]
    # a table that is itself wrong is not cross-checked: its values are not the file's
    text = text.replace("'0-99'", "'0-99'\nprefetch = 0")
    assert keys(write(tmp_path, text))[:2] == ["writer.prefetch", "proxy.nbd.vddk_thumbprints.vc7"]


def test_a_role_check_adds_what_the_role_needs(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[metrics]\nport = 0\n")
    assert keys(cfg) == []
    assert keys(cfg, role="writer") == ["repository.path"]
    assert keys(cfg, role="coordinator") == ["repository.path", "vcenters"]
    assert keys(cfg, role="proxy") == ["proxy.queues"]
    r = vmb("config", "check", "--config", str(cfg), "--role", "writer")
    assert r.returncode == 2
    assert f"{cfg}: repository.path: not set (in the config file, or" in r.stderr


def test_secrets_are_read_for_the_role_given_only(tmp_path: Path) -> None:
    text = (
        '[broker]\npassword = { file = "/nonexistent/broker-pw" }\n'
        '[repository]\npath = "/srv/repo"\n'
        '[proxy]\nqueues = ["host.h1"]\nid_key = { env = "NO_SUCH_VARIABLE_HERE" }\n'
        '[[vcenters]]\nname = "vc1"\nurl = "https://vc1/sdk"\nuser = "u"\n'
        'password = { file = "/nonexistent/vc1-pw" }\n'
    )
    cfg = write(tmp_path, text)
    assert keys(cfg, secrets=False) == []  # the file alone: secrets are where the roles run
    assert vmb("config", "check", "-c", str(cfg)).returncode == 0
    assert keys(cfg, role="writer") == ["broker.password"]
    assert keys(cfg, role="proxy") == ["broker.password", "proxy.id_key", "vcenters[0].password"]
    assert keys(cfg, role="coordinator") == ["broker.password", "vcenters[0].password"]
    assert keys(cfg, role="proxy", secrets=False) == []
    r = vmb("config", "check", "-c", str(cfg), "--role", "proxy", "--json")
    assert r.returncode == 2
    errors = json.loads(r.stdout)["result"]["errors"]
    assert errors[0] == {
        "key": "broker.password",
        "error": "cannot read secret file /nonexistent/broker-pw: No such file or directory",
    }
    assert vmb("config", "check", "-c", str(cfg), "--role", "proxy", "--no-secrets").returncode == 0


def test_a_role_at_start_reports_every_problem_of_the_shared_check(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        '[metrics]\nport = 0\n[broker]\ndelivery_limit = 0\n[writer]\nshards = "0-99"\n',
    )
    r = vmb("writer", "--config", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if "config error" in x]
    assert [x.split(f"{cfg}: ", 1)[1].split(":")[0] for x in lines] == [
        "broker.delivery_limit",
        "repository.path",
    ], r.stderr
    assert '"starting"' not in r.stdout + r.stderr


def test_the_example_config_passes_as_shipped() -> None:
    r = vmb("config", "check", "--config", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{EXAMPLE}: ok")
    r = vmb("config", "check", "--config", str(EXAMPLE), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and (doc["ok"], doc["result"], doc["error"]) == (
        True,
        {"errors": []},
        None,
    )
    for role in ("writer", "proxy", "coordinator"):
        r = vmb("config", "check", "--config", str(EXAMPLE), "--role", role, "--no-secrets")
        assert r.returncode == 0, (role, r.stderr)


def test_the_example_config_passes_for_each_role_with_its_secrets(tmp_path: Path) -> None:
    for name in ("rabbitmq-password", "vc1-password"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "chat-webhook-url").write_text("https://hooks.example.com/services/T/B/x\n")
    text = EXAMPLE.read_text().replace("/run/secrets/vmbackup", str(tmp_path))
    cfg = write(tmp_path, text)
    for role in ("writer", "proxy", "coordinator"):
        assert keys(cfg, env={"VC1_USER": "backup"}, role=role) == [], role
    r = vmb("config", "check", "-c", str(cfg), "--role", "proxy", env={"VC1_USER": "backup"})
    assert r.returncode == 0, r.stderr


def _commented_settings() -> list[tuple[str, str, Any]]:
    """(key, line, value) of each "# key = value" line of the example, unless the line
    marks its value as an example ("# example" after it)."""
    out = []
    table = ""
    arrays: set[str] = set()  # [[policies]]: [policies.window] is policies[].window
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("[["):
            arrays.add(line.strip("[] "))
            table = line.strip("[] ") + "[]"
        elif line.startswith("["):
            first, _, rest = line.strip("[] ").partition(".")
            table = f"{first}[].{rest}" if first in arrays else line.strip("[] ")
        elif line.startswith("# ") and "=" in line:
            setting = line[2:]
            comment = setting.partition(" # ")[2].strip()
            if comment.startswith("example"):
                continue
            ((key, value),) = tomllib.loads(setting).items()
            out.append((f"{table}.{key}" if table else key, line, value))
    return out


def test_the_example_comments_show_the_real_defaults() -> None:
    defaults = {key: default for key, _tp, default, _doc in describe(Config)}
    shown = _commented_settings()
    assert len(shown) > 50  # the parser above did find them
    wrong = [
        f"{line!r}: the default is {defaults.get(key, '(no such key)')}"
        for key, line, value in shown
        if key not in defaults or repr(value) != defaults[key]
    ]
    assert not wrong, "examples/vmbackup.toml:\n" + "\n".join(wrong)


@pytest.mark.parametrize("role", ["writer", "proxy", "coordinator"])
def test_check_and_start_agree_on_a_bad_file(tmp_path: Path, role: str) -> None:
    """A role refuses exactly the problems `config check --role` names (a role needs its
    own keys; each is given here so that only the shared problems remain)."""
    cfg = write(
        tmp_path,
        '[metrics]\nport = 0\n[repository]\npath = "/srv/r"\n[proxy]\nqueues = ["host.h"]\n'
        + VC.format(name="vc1")
        + '[[policies]]\nname = "p"\nvcenters = ["nope"]\n',
    )
    r = vmb("config", "check", "-c", str(cfg), "--role", role)
    assert r.returncode == 2
    checked = [x.split(f"{cfg}: ", 1)[1] for x in r.stderr.splitlines()]
    assert checked == ["policies[0].vcenters[0]: no [[vcenters]] named 'nope' (configured: vc1)"]
    args = ["backup", "--policy", "p"] if role == "coordinator" else [role]
    started = vmb(*args, "--config", str(cfg))
    assert started.returncode == 2
    assert [x.split(f"{cfg}: ", 1)[1] for x in started.stderr.splitlines()] == checked


def test_a_wrong_table_inside_a_policy_hides_no_reference_problem(tmp_path: Path) -> None:
    text = (
        VC.format(name="vc1")
        + '[[policies]]\nname = "p"\nvcenters = ["vc9"]\n[policies.window]\nstart = "x"\n'
        + '[[policies]]\nname = "p"\n'
    )
    assert keys(write(tmp_path, text)) == [
        "policies[0].vcenters[0]",
        "policies[0].window.start",
        "policies[0].window.end",
        "policies[1].name",
    ]


def test_an_s3_repository_is_checked_with_its_s3_config(tmp_path: Path) -> None:
    """repository.path = s3://...: s3_config required, absolute paths, the S3 config file
    and its credentials read for the roles that open the repository (not the proxy)."""
    bad = write(tmp_path, '[repository]\npath = "s3://backups/site-a"\ncache_dir = "cache"\n')
    assert keys(bad) == ["repository.s3_config", "repository.cache_dir"]
    local = tmp_path / "local.toml"
    local.write_text('[repository]\npath = "/srv/repo"\ns3_config = "/etc/s3.toml"\n')
    found = check_config(local, env={}).problems
    assert [(p.key, "only for an s3:// path" in p.error) for p in found] == [
        ("repository.s3_config", True)
    ]
    s3 = tmp_path / "s3.toml"
    s3.write_text('endpoint = "http://127.0.0.1:7480"\ncredentials_file = "/nonexistent/c"\n')
    cfg = write(tmp_path, f'[repository]\npath = "s3://backups/a"\ns3_config = "{s3}"\n')
    r = vmb("config", "check", "--config", str(cfg), "--role", "writer")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "repository.s3_config: S3 credentials file /nonexistent/c: No such file" in r.stderr
    assert "repository.s3_config" not in "".join(keys(cfg, role="proxy"))
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = A\naws_secret_access_key = S\n")
    s3.write_text(f'endpoint = "http://127.0.0.1:7480"\ncredentials_file = "{creds}"\n')
    assert keys(cfg, role="writer") == []
