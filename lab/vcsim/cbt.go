package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type diskID struct {
	vm  string
	key int32
}

// diskState is the CBT view of one VM disk: its current file and the content
// digests recorded at each changeId of its tracking epoch (uuid).
type diskState struct {
	vm       types.ManagedObjectReference
	key      int32
	fileName string // "[ds] dir/x.vmdk"
	flatPath string
	capacity int64
	tracking bool
	uuid     string
	seq      int
	points   map[int][]uint64
	order    []int       // seqs in points, oldest first
	memo     *digestMemo // digests of the file as last frozen, while it is unchanged
}

// snapDisk is one disk frozen by a snapshot.
type snapDisk struct {
	key      int32
	fileName string
	flatPath string
	descPath string
	capacity int64
	uuid     string
	seq      int // 0: no changeId (CBT was off)
	broken   string
}

type snapState struct {
	ref   types.ManagedObjectReference
	vm    types.ManagedObjectReference
	disks map[int32]*snapDisk
	event int
}

type snapEvent struct {
	VM        string   `json:"vm"`
	VMRef     string   `json:"moref"`
	Host      string   `json:"host"`
	Snapshot  string   `json:"snapshot"`
	CreatedAt float64  `json:"created_at"`
	RemovedAt *float64 `json:"removed_at"`
}

type faultState struct {
	failSnapshotVM string
	failRemoveVM   string
	failRelocateVM string // RelocateVM_Task of this VM (name or moref) fails (instant.go)
	slowMs         int
	slowMethod     string
}

// lab holds the CBT layer's state. It is registered with the simulator's
// registry as a RegisterObject handler, so it sees snapshots, tasks and
// property updates as the simulator makes them.
type lab struct {
	cfg   *config
	inv   *inventory
	ready readyLine

	serverURL interface{ String() string }

	dsMu     sync.RWMutex // guards inv.datastoreDirs, which clients add to (instant.go)
	mu       sync.Mutex
	disks    map[diskID]*diskState
	snaps    map[string]*snapState
	events   []snapEvent
	faults   faultState
	sessions map[string]bool
	expired  map[string]bool
}

func newLab(cfg *config, inv *inventory) *lab {
	return &lab{
		cfg:      cfg,
		inv:      inv,
		disks:    map[diskID]*diskState{},
		snaps:    map[string]*snapState{},
		faults:   faultState{failSnapshotVM: cfg.failSnapshotVM, slowMs: cfg.slowSOAPms},
		sessions: map[string]bool{},
		expired:  map[string]bool{},
	}
}

// Reference makes the lab a RegisterObject for simulator.Map.AddHandler.
func (l *lab) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "LabChangeTracker", Value: "lab-cbt"}
}

func nowSeconds() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// newChangeUUID makes the uuid part of a changeId in VMware's printed form,
// e.g. "52 3c 8d 1f 0a 4c 12 6e-3d 0e 44 4a 8e 2d 90 77".
func newChangeUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] = 0x52
	parts := make([]string, 16)
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

func diskCapacity(d *types.VirtualDisk) int64 {
	c := d.CapacityInKB * 1024
	if d.CapacityInBytes > c {
		c = d.CapacityInBytes
	}
	return c
}

// flatPath maps "[ds] dir/x.vmdk" to the local path of "dir/x-flat.vmdk".
func (l *lab) flatPath(fileName string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(fileName) {
		return "", fmt.Errorf("not a datastore path: %q", fileName)
	}
	dir, ok := l.datastoreDir(p.Datastore)
	if !ok {
		return "", fmt.Errorf("unknown datastore %q in %q", p.Datastore, fileName)
	}
	return filepath.Join(dir, strings.TrimSuffix(p.Path, ".vmdk")+"-flat.vmdk"), nil
}

func vmDisks(vm *simulator.VirtualMachine) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	if vm.Config == nil {
		return out
	}
	for _, dev := range vm.Config.Hardware.Device {
		if d, ok := dev.(*types.VirtualDisk); ok {
			if _, ok := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				out = append(out, d)
			}
		}
	}
	return out
}

func (st *diskState) reset() {
	st.uuid = newChangeUUID()
	st.seq = 0
	st.points = map[int][]uint64{}
	st.order = nil
}

// syncVM brings the lab's disk states in line with the VM's configuration:
// new disks get a sparse flat file of their capacity, grown disks get a larger
// file and a new tracking epoch, and CBT on/off is applied (off forgets every
// changeId). The caller holds the VM's lock (or runs before serving).
func (l *lab) syncVM(vm *simulator.VirtualMachine) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	cbtOn := vm.Config != nil && vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	seen := map[int32]bool{}
	var firstErr error
	for _, d := range vmDisks(vm) {
		b := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		capacity := diskCapacity(d)
		d.CapacityInBytes = capacity
		d.CapacityInKB = capacity / 1024
		flat, err := l.flatPath(b.FileName)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if fi, err := os.Stat(flat); err != nil || fi.Size() < capacity {
			if err := ensureSize(flat, capacity); err != nil && firstErr == nil {
				firstErr = err
			}
		}
		id := diskID{vm.Self.Value, d.Key}
		seen[d.Key] = true
		st := l.disks[id]
		if st == nil || st.fileName != b.FileName {
			st = &diskState{vm: vm.Self, key: d.Key, fileName: b.FileName}
			st.reset()
			l.disks[id] = st
		} else if capacity > st.capacity {
			st.reset() // a grown disk invalidates its changeIds, as on ESXi
		}
		st.flatPath = flat
		st.capacity = capacity
		switch {
		case !cbtOn:
			st.tracking = false
			st.reset()
			b.ChangeId = ""
		case !st.tracking:
			st.tracking = true
			st.reset()
		}
	}
	for id := range l.disks {
		if id.vm == vm.Self.Value && !seen[id.key] {
			delete(l.disks, id)
		}
	}
	return firstErr
}

func ensureSize(path string, size int64) error {
	// A live snapshot shares the file (freezeDisk): grow a private copy, not the snapshot.
	if err := makePrivate(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

func (l *lab) trackDisksAtStart() error {
	for _, v := range l.inv.vms {
		vm := simulator.Map.Get(v.ref).(*simulator.VirtualMachine)
		if err := l.syncVM(vm); err != nil {
			return err
		}
	}
	return nil
}

// PutObject sees every object the simulator registers.
func (l *lab) PutObject(obj mo.Reference) {
	switch o := obj.(type) {
	case *simulator.VirtualMachineSnapshot:
		l.onSnapshotCreated(o)
	case *simulator.Task:
		// vcsim names the snapshot as a snapshot task's entity; TaskInfo.entity is
		// a ManagedEntity, which a snapshot is not (pyvmomi rejects it). vCenter
		// names the VM, so do that.
		if e := o.Info.Entity; e != nil && e.Type == "VirtualMachineSnapshot" {
			if s, ok := simulator.Map.Get(*e).(*simulator.VirtualMachineSnapshot); ok {
				vmRef := s.Vm
				o.Info.Entity = &vmRef
				if vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine); ok {
					o.Info.EntityName = vm.Name
				}
			}
		}
	}
}

// UpdateObject sees property changes; a finished ReconfigVM_Task is when CBT
// may have been switched or disks added or grown, a finished CreateVM_Task when
// a new VM's disks need their flat files (of their capacity, as on a datastore:
// restore-vm writes into them through NBD).
func (l *lab) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	t, ok := obj.(*mo.Task)
	if !ok || t.Info.Entity == nil {
		return
	}
	success := false
	var result types.ManagedObjectReference
	for _, c := range changes {
		switch c.Name {
		case "info.state":
			success = fmt.Sprint(c.Val) == string(types.TaskInfoStateSuccess)
		case "info.result":
			if r, ok := c.Val.(types.ManagedObjectReference); ok {
				result = r
			}
		}
	}
	if !success {
		return
	}
	var ref types.ManagedObjectReference
	switch t.Info.DescriptionId {
	case "VirtualMachine.reconfigVm":
		ref = *t.Info.Entity
	case "Folder.createVm":
		ref = result
	default:
		return
	}
	if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
		if err := l.syncVM(vm); err != nil {
			fmt.Fprintf(os.Stderr, "vcsim-lab: after %s of %s: %v\n", t.Info.DescriptionId, vm.Name, err)
		}
	}
}

// RemoveObject sees objects leaving the registry: removed snapshots lose their
// frozen files.
func (l *lab) RemoveObject(ref types.ManagedObjectReference) {
	if ref.Type != "VirtualMachineSnapshot" {
		return
	}
	l.mu.Lock()
	s := l.snaps[ref.Value]
	delete(l.snaps, ref.Value)
	if s != nil {
		t := nowSeconds()
		l.events[s.event].RemovedAt = &t
	}
	l.mu.Unlock()
	if s == nil {
		return
	}
	for _, d := range s.disks {
		_ = os.Remove(d.flatPath)
		_ = os.Remove(d.descPath)
	}
}

// descriptor is a minimal monolithic-flat VMDK descriptor for a frozen disk.
