"""A proxy with no task queue to take says so and exits 2 before it logs "starting"."""

from __future__ import annotations

from pathlib import Path

from tests.repository.test_writer_startup import vmb


def test_proxy_without_queues_fails_before_starting(tmp_path: Path) -> None:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text('[proxy]\nname = "p1"\nqueues = []\n[metrics]\nport = 0\n')
    r = vmb("proxy", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"vmbackup proxy: config error: {cfg}: proxy.queues: empty" in r.stderr, r.stderr
    assert '"starting"' not in r.stdout + r.stderr
