"""Lab start-up time and memory for 100 and 5,000 VMs, against the plain simulator.

Baseline: the unmodified simulator (--plain) with the same inventory, started in
the same run. Measured per size and mode (median of --repeat runs): seconds from
process start to the ready line, resident memory after ready and its peak, and
the time to read name + host of every VM with one PropertyCollector pass
(container view, pages of 1,000; median of 3 passes), which is the coordinator's
inventory call.

    .venv/bin/python -m bench.lab_startup [--sizes 100,5000] [--repeat 3] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from pyVim.connect import Disconnect
from pyVmomi import vim, vmodl

from bench.procmem import proc_memory
from lab import Lab, LabSpec
from lab.build import build

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Lab"


def spec_for(vms: int) -> LabSpec:
    """Hosts of 100 VMs (20 below 1,000), 10 hosts per cluster."""
    per_host = 100 if vms >= 1000 else 20
    hosts = max(1, vms // per_host)
    per_cluster = min(10, hosts)
    if hosts % per_cluster:
        raise SystemExit(f"--sizes: {vms} VMs do not split into clusters of {per_cluster} hosts")
    return LabSpec(
        clusters=hosts // per_cluster,
        hosts_per_cluster=per_cluster,
        vms_per_host=per_host,
        disk_sizes=[64 * 2**20],
    )


def inventory_pass(lab: Lab) -> tuple[float, int]:
    si = lab.connect()
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        pc = content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="v", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.VirtualMachine, pathSet=["name", "runtime.host"]
                )
            ],
        )
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=1000)
        began = time.perf_counter()
        result = pc.RetrievePropertiesEx([spec], options)
        count = len(result.objects)
        while result.token:
            result = pc.ContinueRetrievePropertiesEx(result.token)
            count += len(result.objects)
        return time.perf_counter() - began, count
    finally:
        Disconnect(si)


def measure(spec: LabSpec, plain: bool) -> dict[str, float]:
    began = time.perf_counter()
    with Lab.start(spec, plain=plain, timeout=900) as lab:
        ready = time.perf_counter() - began
        mem = proc_memory(lab.pid)
        passes = [inventory_pass(lab) for _ in range(3)]
        if any(count != spec.vm_count for _, count in passes):
            raise SystemExit(f"an inventory pass missed VMs (expected {spec.vm_count})")
        seconds = statistics.median(s for s, _ in passes)
    return {"ready_s": ready, "rss": mem["VmRSS"], "peak": mem["VmHWM"], "inventory_s": seconds}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,5000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--write", action="store_true", help="replace the Lab section of RESULTS.md"
    )
    args = parser.parse_args()
    build()
    rows: list[str] = []
    for size in (int(s) for s in args.sizes.split(",")):
        spec = spec_for(size)
        results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for rep in range(args.repeat):
            # Interleaved, alternating which goes first, so load and caches hit both alike.
            for plain in (True, False) if rep % 2 == 0 else (False, True):
                results[plain].append(measure(spec, plain))
        base, lab = median_of(results[True]), median_of(results[False])
        mib = 2**20
        rows.append(
            f"| {size} | {base['ready_s']:.2f} | {lab['ready_s']:.2f} | "
            f"{lab['ready_s'] / base['ready_s']:.2f} | {base['rss'] / mib:.0f} | "
            f"{lab['rss'] / mib:.0f} | {lab['rss'] / base['rss']:.2f} | "
            f"{lab['peak'] / mib:.0f} | {base['inventory_s']:.2f} | {lab['inventory_s']:.2f} | "
            f"{lab['inventory_s'] / base['inventory_s']:.2f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| VMs | plain ready s | lab ready s | ratio | plain RSS MiB | lab RSS MiB | ratio "
            "| lab peak MiB | plain inventory s | lab inventory s | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_section(table, args)


def write_section(table: str, args: argparse.Namespace) -> None:
    command = f".venv/bin/python -m bench.lab_startup --sizes {args.sizes} --repeat {args.repeat}"
    body = (
        f"{SECTION}\n\n"
        "Start-up of the vSphere lab (vcsim + CBT layer) against the unmodified simulator\n"
        "(`--plain`, same inventory) in the same run; medians of "
        f"{args.repeat} interleaved runs (alternating which starts first).\n"
        "Hosts of 100 VMs (20 for the 100-VM lab), 10 hosts per cluster, one 64 MiB disk per VM.\n"
        '"inventory" is one PropertyCollector pass (name, runtime.host) over all VMs\n'
        "(median of 3 passes per start).\n\n"
        f"Command: `{command}`\n\n{table}\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(SECTION + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
