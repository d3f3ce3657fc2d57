"""``vmbackup restore-vm``: recreate a VM from a restore point on a vCenter.

Steps: read the point's saved configuration, find the target (datacenter of the
datastore, a connected host that mounts it, its resource pool, a folder, networks
by name), create the VM with CreateVM_Task (CPU, memory, guest, firmware,
controllers with their bus numbers, thin disks at their unit numbers, NICs whose
network exists on the target), then stream each disk from the repository into its
flat file with one HTTP PUT on /folder (every chunk checked against its id on the
way). The VM is left registered and powered off. If anything fails after the VM
was created, the half-restored VM is destroyed so that nothing plausible-looking
but wrong is left behind.

Modules, in the order of the steps: target (where the VM goes), spec (the ConfigSpec of
the new VM), upload (one disk into its flat file), recreate (the whole restore, and
the clean-up when it fails), result (what was restored), cli (the subcommand).

``--in-place`` rolls an existing VM back instead, writing only the chunks CBT says changed
since the point: rollback_plan (which VM, matching disks, which chunks), rollback (power
off, snapshot, ask CBT, remove the snapshot, write through nbd_write, check),
rollback_result (each disk's state), rollback_cli (its options and the confirmation).
"""
