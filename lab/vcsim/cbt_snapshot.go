package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// What a snapshot does to CBT state: a new point per disk (its digest vector and
// changeId), the snapshot's frozen files, and pruning of points no snapshot needs.

func descriptor(capacity int64, flatName string) string {
	sectors := (capacity + 511) / 512
	return fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"+
		"createType=\"vmfs\"\n\n# Extent description\nRW %d VMFS \"%s\"\n", sectors, flatName)
}

func (l *lab) onSnapshotCreated(snap *simulator.VirtualMachineSnapshot) {
	vm, ok := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	// CreateSnapshot_Task runs under the VM's lock, so the VM is ours to read.
	if err := l.syncVM(vm); err != nil {
		fmt.Fprintf(os.Stderr, "vcsim-lab: snapshot of %s: %v\n", vm.Name, err)
	}
	// vcsim's snapshot config shares device objects with the VM; give the snapshot
	// its own disk devices so its backings can name the frozen files.
	devs := make([]types.BaseVirtualDevice, len(snap.Config.Hardware.Device))
	copy(devs, snap.Config.Hardware.Device)
	snap.Config.Hardware.Device = devs

	state := &snapState{ref: snap.Self, vm: vm.Self, disks: map[int32]*snapDisk{}}
	current := map[int32]*types.VirtualDisk{}
	for _, d := range vmDisks(vm) {
		current[d.Key] = d
	}
	for i, dev := range devs {
		d, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b, ok := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		dc := *d
		bc := *b
		dc.Backing = &bc
		devs[i] = &dc

		sd := &snapDisk{key: d.Key, capacity: diskCapacity(d)}
		bc.FileName = strings.TrimSuffix(b.FileName, ".vmdk") + "-" + snap.Self.Value + ".vmdk"
		sd.fileName = bc.FileName
		state.disks[d.Key] = sd

		l.mu.Lock()
		st := l.disks[diskID{vm.Self.Value, d.Key}]
		l.mu.Unlock()
		if st == nil {
			sd.broken = "disk not tracked by the lab"
			continue
		}
		flat, err := l.flatPath(bc.FileName)
		if err != nil {
			sd.broken = err.Error()
			continue
		}
		sd.flatPath = flat
		sd.descPath = strings.TrimSuffix(flat, "-flat.vmdk") + ".vmdk"
		l.mu.Lock()
		memo := st.memo
		l.mu.Unlock()
		digests, memo, err := freezeDisk(st.flatPath, flat, sd.capacity, l.cfg.granularity, memo)
		l.mu.Lock()
		st.memo = memo
		l.mu.Unlock()
		if err != nil {
			sd.broken = err.Error()
			fmt.Fprintf(os.Stderr, "vcsim-lab: freezing %s: %v\n", b.FileName, err)
			continue
		}
		_ = os.WriteFile(sd.descPath, []byte(descriptor(sd.capacity, filepath.Base(flat))), 0o644)

		l.mu.Lock()
		if st.tracking {
			st.seq++
			st.points[st.seq] = digests
			st.order = append(st.order, st.seq)
			sd.uuid, sd.seq = st.uuid, st.seq
			changeID := fmt.Sprintf("%s/%d", st.uuid, st.seq)
			bc.ChangeId = changeID
			if cur := current[d.Key]; cur != nil {
				cur.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ChangeId = changeID
			}
			l.prunePoints(st)
		} else {
			bc.ChangeId = ""
		}
		l.mu.Unlock()
	}

	host := ""
	if vm.Runtime.Host != nil {
		if h, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok {
			host = h.Name
		}
	}
	l.mu.Lock()
	state.event = len(l.events)
	l.events = append(l.events, snapEvent{
		VM: vm.Name, VMRef: vm.Self.Value, Host: host, Snapshot: snap.Self.Value, CreatedAt: nowSeconds(),
	})
	l.snaps[snap.Self.Value] = state
	l.mu.Unlock()
}

// prunePoints keeps the newest cfg.keepPoints changeIds of a disk, plus any a
// live snapshot still names. Caller holds l.mu.
func (l *lab) prunePoints(st *diskState) {
	if len(st.order) <= l.cfg.keepPoints {
		return
	}
	pinned := map[int]bool{}
	for _, s := range l.snaps {
		if s.vm == st.vm {
			if d := s.disks[st.key]; d != nil && d.uuid == st.uuid {
				pinned[d.seq] = true
			}
		}
	}
	drop := len(st.order) - l.cfg.keepPoints
	var kept []int
	for i, seq := range st.order {
		if i < drop && !pinned[seq] {
			delete(st.points, seq)
			continue
		}
		kept = append(kept, seq)
	}
	st.order = kept
}

// area is a changed or allocated byte range [start, end).
