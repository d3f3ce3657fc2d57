"""The coordinator's configuration section: vCenters, policies, limits, webhooks.

Loaded through :mod:`common.config` (strict TOML + ``VMBACKUP_`` overrides). Each table
reports every problem it finds (``Checks``), the key first; the loader prefixes the
table's key path (``policies[1].routing``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from common.config import Secret
from common.config_problems import Checks, FieldProblem
from common.redact import redact_url
from coordinator.copy_settings import CopySettings

MiB = 1024 * 1024
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass
class VCenterSettings:
    """One vCenter (or ESXi host) the coordinator talks to."""

    name: str = field(metadata=_doc("short name used in task routing, reports and metrics"))
    url: str = field(metadata=_doc("SDK endpoint, e.g. https://vc.example.com/sdk"))
    user: Secret = field(metadata=_doc('user name: inline, {env = "NAME"} or {file = "PATH"}'))
    password: Secret = field(metadata=_doc('password: {env = "NAME"} or {file = "PATH"}'))
    ca_bundle: str = field(default="", metadata=_doc("PEM CA bundle to verify vCenter's TLS"))
    thumbprint: str = field(
        default="", metadata=_doc("SHA-256 thumbprint pin of vCenter's certificate (hex)")
    )
    insecure: bool = field(
        default=False, metadata=_doc("turn TLS verification off (logged as a warning)")
    )
    timeout_s: float = field(default=120.0, metadata=_doc("timeout of every SOAP call"))
    keepalive_s: float = field(default=600.0, metadata=_doc("session keep-alive period"))
    retries: int = field(default=4, metadata=_doc("retries of a call on transient faults"))
    backoff_s: float = field(default=0.5, metadata=_doc("first retry delay (doubles)"))
    page_size: int = field(default=1000, metadata=_doc("objects per inventory page"))

    def __post_init__(self) -> None:
        c = Checks()
        if not _NAME.match(self.name):
            c.fail("name", f"{self.name!r}: letters, digits, '.', '_', '-'")
        if not self.url.startswith(("https://", "http://")):
            c.fail("url", f"{redact_url(self.url)!r}: must start with https://")
        if self.thumbprint:
            hexpart = self.thumbprint.replace(":", "").lower()
            if not re.fullmatch(r"[0-9a-f]{64}", hexpart):
                c.fail("thumbprint", "expected a SHA-256 thumbprint (64 hex)")
        if self.insecure and (self.thumbprint or self.ca_bundle):
            c.fail("insecure", "cannot be combined with thumbprint/ca_bundle")
        for key in ("timeout_s", "keepalive_s"):
            if getattr(self, key) <= 0:
                c.fail(key, "must be > 0")
        if self.retries < 0:
            c.fail("retries", "must be >= 0")
        if self.page_size < 1:
            c.fail("page_size", "must be >= 1")
        c.done()


@dataclass
class WindowSettings:
    """A daily backup window: new VMs start only inside it."""

    start: str = field(default="", metadata=_doc('"HH:MM" local time; empty = always open'))
    end: str = field(default="", metadata=_doc('"HH:MM"; may be past midnight (e.g. 22:00-06:00)'))
    on_end: str = field(
        default="finish", metadata=_doc('"finish" running VMs or "cancel" them at the end')
    )

    def __post_init__(self) -> None:
        c = Checks()
        if bool(self.start) != bool(self.end):
            c.fail("end" if self.start else "start", "set both start and end, or neither")
        for key in ("start", "end"):
            v = getattr(self, key)
            if v and not _HHMM.match(v):
                c.fail(key, f"{v!r}: expected HH:MM")
        if self.on_end not in ("finish", "cancel"):
            c.fail("on_end", f"{self.on_end!r}: expected finish or cancel")
        c.done()


RETENTION_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass
class RetentionSettings:
    """GFS retention of the policy's points (docs/operations.md "Retention"): a writer
    applies it after each of the policy's jobs. All zero = keep every point."""

    last: int = field(default=0, metadata=_doc("keep the N newest points (of each VM disk)"))
    hourly: int = field(
        default=0, metadata=_doc("keep the newest point of each of the N newest hours with one")
    )
    daily: int = field(default=0, metadata=_doc("the same per day"))
    weekly: int = field(default=0, metadata=_doc("the same per ISO week"))
    monthly: int = field(default=0, metadata=_doc("the same per month"))
    yearly: int = field(default=0, metadata=_doc("the same per year (all periods in UTC)"))
    dry_run: bool = field(
        default=False, metadata=_doc("log what retention would remove, remove nothing")
    )

    def __post_init__(self) -> None:
        for k in RETENTION_RULES:
            if getattr(self, k) < 0:
                raise ValueError(f"policies.retention.{k} must be >= 0")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, k) for k in RETENTION_RULES)

    def describe(self) -> str:
        """E.g. "last 3, daily 7"."""
        return ", ".join(f"{k} {getattr(self, k)}" for k in RETENTION_RULES if getattr(self, k))


@dataclass
class PolicySettings:
    """Which VMs to back up, when, and how."""

    name: str = field(metadata=_doc("policy name (vmbackup backup --policy NAME)"))
    vcenters: list[str] = field(default_factory=list, metadata=_doc("vCenter names; [] = all"))
    datacenters: list[str] = field(default_factory=list, metadata=_doc("[] = all"))
    clusters: list[str] = field(default_factory=list, metadata=_doc("[] = all"))
    folders: list[str] = field(
        default_factory=list, metadata=_doc("VM folder paths under the datacenter (prefix)")
    )
    names: list[str] = field(default_factory=list, metadata=_doc("glob patterns; [] = all"))
    exclude: list[str] = field(
        default_factory=list, metadata=_doc("glob patterns of names, or exact UUIDs, left out")
    )
    schedule: str = field(default="", metadata=_doc('cron expression, e.g. "0 22 * * *"'))
    quiesce: bool = field(default=False, metadata=_doc("ask VMware Tools for a quiesced snapshot"))
    quiesce_fallback: str = field(
        default="crash", metadata=_doc('"crash" = retry crash-consistent, "fail" = fail the VM')
    )
    full_every_days: int = field(
        default=0, metadata=_doc("force a full when the last full is older; 0 = never")
    )
    routing: str = field(default="host", metadata=_doc('route tasks by "host" or "datastore"'))
    window: WindowSettings = field(default_factory=WindowSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    copy: CopySettings = field(default_factory=CopySettings)

    def __post_init__(self) -> None:
        c = Checks()
        if not _NAME.match(self.name):
            c.fail("name", f"{self.name!r}: letters, digits, '.', '_', '-'")
        if self.quiesce_fallback not in ("crash", "fail"):
            c.fail("quiesce_fallback", f"{self.quiesce_fallback!r}: crash|fail")
        if self.routing not in ("host", "datastore"):
            c.fail("routing", f"{self.routing!r}: host|datastore")
        if self.full_every_days < 0:
            c.fail("full_every_days", "must be >= 0")
        if self.schedule:
            from croniter import croniter

            if not croniter.is_valid(self.schedule):
                c.fail("schedule", f"{self.schedule!r}: not a cron expression")
        c.done()


@dataclass
class LimitSettings:
    """Load control: what keeps production hosts responsive."""

    snapshots_per_host: int = field(default=2, metadata=_doc("VMs snapshotted at once per host"))
    snapshots_per_datastore: int = field(
        default=4, metadata=_doc("VMs snapshotted at once per datastore")
    )
    tasks_per_host: int = field(default=8, metadata=_doc("tasks in flight per host"))
    jobs: int = field(default=2, metadata=_doc("jobs (policy runs) at once"))
    vms: int = field(default=16, metadata=_doc("VMs in progress at once per job"))

    def __post_init__(self) -> None:
        c = Checks()
        for k in ("snapshots_per_host", "snapshots_per_datastore", "tasks_per_host", "jobs", "vms"):
            if getattr(self, k) < 1:
                c.fail(k, "must be >= 1")
        c.done()


JOB_STATUSES = ("ok", "partial", "failed")  # coordinator/report.py, a job's status
WEBHOOK_FORMATS = ("json", "slack")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass
class WebhookSettings:
    """One receiver of job notifications (docs/operations.md "Notifications"): a POST of
    the job's report after each job whose status is in ``on``."""

    name: str = field(metadata=_doc("short name, in logs and the notifications metric"))
    url: Secret = field(
        metadata=_doc(
            'the receiver\'s http(s) URL: inline, {file = "PATH"} or {env = "NAME"} (a'
            " Slack or Mattermost incoming webhook's URL is its secret)"
        )
    )
    on: list[str] = field(
        default_factory=lambda: list(JOB_STATUSES),
        metadata=_doc('the job statuses that notify: "ok", "partial", "failed"'),
    )
    format: str = field(
        default="json",
        metadata=_doc(
            '"json": the job report; "slack": {"text": ...} for a Slack or Mattermost'
            " incoming webhook"
        ),
    )
    token: Secret | None = field(
        default=None,
        metadata=_doc(
            "sent as the value of header, and the key of the body's HMAC-SHA256 in"
            ' X-Vmbackup-Signature: {file = "PATH"} or {env = "NAME"}; unset = neither'
        ),
    )
    header: str = field(default="X-Vmbackup-Token", metadata=_doc("the header token goes in"))
    ca_file: str = field(
        default="", metadata=_doc('PEM CA bundle to verify the receiver\'s TLS; "" = system CAs')
    )
    timeout_s: float = field(default=10.0, metadata=_doc("timeout of each attempt"))
    retries: int = field(
        default=3,
        metadata=_doc("attempts after the first, on no connection, a timeout, 429 or 5xx"),
    )
    backoff_s: float = field(default=1.0, metadata=_doc("first retry delay (doubles)"))

    def __post_init__(self) -> None:
        from urllib.parse import urlsplit

        c = Checks()
        if not _NAME.match(self.name):
            c.fail("name", f"{self.name!r}: letters, digits, '.', '_', '-'")
        url = self.url.value
        if url or not self.url.source.startswith("unread"):  # unread: where it runs
            try:
                parts = urlsplit(url)
                host = parts.hostname or ""
            except ValueError:
                parts, host = None, ""
            if parts is None or parts.scheme not in ("http", "https") or not host:
                c.fail("url", "expected an http:// or https:// URL with a host")
            elif parts.scheme == "http" and self.token is not None and host not in _LOOPBACK:
                c.fail(
                    "url",
                    f"http:// to {host}: the token would cross the network in clear; use https://",
                    depends=("url", "token"),
                )
        bad = [e for e in self.on if e not in JOB_STATUSES]
        if bad or not self.on:
            c.fail("on", f"{bad or self.on}: expected some of {', '.join(JOB_STATUSES)}")
        if self.format not in WEBHOOK_FORMATS:
            c.fail("format", f"{self.format!r}: {' or '.join(WEBHOOK_FORMATS)}")
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", self.header):
            c.fail("header", f"{self.header!r}: not an HTTP header name")
        if self.timeout_s <= 0:
            c.fail("timeout_s", "must be > 0")
        if not 0 <= self.retries <= 10:
            c.fail("retries", "must be 0 .. 10")
        if self.backoff_s < 0:
            c.fail("backoff_s", "must be >= 0")
        c.done()


@dataclass
class CoordinatorSettings:
    """The ``[coordinator]`` section (vCenters and policies are top-level lists)."""

    id: str = field(default="coord-1", metadata=_doc("coordinator id (results queue name)"))
    limits: LimitSettings = field(default_factory=LimitSettings)
    snapshot_prefix: str = field(default="vmbackup", metadata=_doc("our snapshots' name prefix"))
    task_max_bytes: int = field(default=64 * MiB, metadata=_doc("max bytes per block-range task"))
    task_timeout_s: float = field(
        default=3600.0, metadata=_doc("a task with no result after this fails its disk")
    )
    commit_timeout_s: float = field(default=600.0, metadata=_doc("wait for a CommitReply"))
    snapshot_timeout_s: float = field(default=1800.0, metadata=_doc("snapshot create/remove"))
    orphan_sweep_s: float = field(default=3600.0, metadata=_doc("orphan sweep period (daemon)"))
    orphan_min_age_s: float = field(
        default=86400.0,
        metadata=_doc("snapshots of other coordinators count as orphans after this age"),
    )
    report_dir: str = field(default="", metadata=_doc("write job reports (JSON + text) here"))
    commit_part_entries: int = field(
        default=131072,
        metadata=_doc(
            "a disk with more commit entries sends them in staged parts of this many"
            " (about 32 bytes each; keeps every message far below the 64 MiB limit)"
        ),
    )
    webhooks: list[WebhookSettings] = field(
        default_factory=list,
        metadata=_doc("receivers of a notification after each job ([[coordinator.webhooks]])"),
    )

    def __post_init__(self) -> None:
        c = Checks()
        if not _NAME.match(self.id):
            c.fail("id", f"{self.id!r}: letters, digits, '.', '_', '-'")
        if not re.fullmatch(r"[A-Za-z0-9_.]{1,32}", self.snapshot_prefix):
            c.fail("snapshot_prefix", f"{self.snapshot_prefix!r}: [A-Za-z0-9_.], at most 32")
        if self.task_max_bytes < MiB:
            c.fail("task_max_bytes", "must be >= 1 MiB")
        if not 1 <= self.commit_part_entries <= 1_000_000:
            c.fail("commit_part_entries", "must be 1 .. 1000000")
        first: dict[str, int] = {}
        for i, w in enumerate(self.webhooks):
            if w.name in first:
                c.fail(
                    f"webhooks[{i}].name",
                    f"{w.name!r} is also the name of webhooks[{first[w.name]}]",
                    depends=(f"webhooks[{i}].name", f"webhooks[{first[w.name]}].name"),
                )
            first.setdefault(w.name, i)
        c.done()


def reference_problems(
    vcenters: list[VCenterSettings], policies: list[PolicySettings]
) -> list[FieldProblem]:
    """What the tables cannot check alone: names used once, policies naming configured
    vCenters (a job would otherwise select nothing there, or the wrong policy)."""
    out = []
    names = [v.name for v in vcenters]
    for kind, used in (("vcenters", names), ("policies", [p.name for p in policies])):
        first: dict[str, int] = {}
        for i, name in enumerate(used):
            if name in first:
                out.append(
                    FieldProblem(
                        f"{kind}[{i}].name",
                        f"{name!r} is also the name of {kind}[{first[name]}]",
                        depends=(f"{kind}[{i}].name", f"{kind}[{first[name]}].name"),
                    )
                )
            first.setdefault(name, i)
    known = ", ".join(names) or "none"
    for i, p in enumerate(policies):
        for j, vc in enumerate(p.vcenters):
            if vc not in names:
                out.append(
                    FieldProblem(
                        f"policies[{i}].vcenters[{j}]",
                        f"no [[vcenters]] named {vc!r} (configured: {known})",
                        depends=(f"policies[{i}].vcenters", "vcenters"),
                    )
                )
    return out


def find_policy(policies: list[PolicySettings], name: str) -> PolicySettings:
    for p in policies:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in policies) or "none"
    raise KeyError(f"no policy named {name!r} (configured: {known})")


def vcenters_for(vcenters: list[VCenterSettings], policy: PolicySettings) -> list[VCenterSettings]:
    if not policy.vcenters:
        return list(vcenters)
    return [v for v in vcenters if v.name in policy.vcenters]
