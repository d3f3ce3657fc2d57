package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// The control endpoint (/lab/...): the tests' and the demo's handle on the lab
// (list VMs, settle CBT state, inject faults, end sessions).

type diskJSON struct {
	Key       int32  `json:"key"`
	Capacity  int64  `json:"capacity"`
	File      string `json:"file"`
	Datastore string `json:"datastore"`
	FlatPath  string `json:"flat_path"`
	ChangeID  string `json:"change_id"`
}

type vmJSON struct {
	Name       string     `json:"name"`
	Moref      string     `json:"moref"`
	UUID       string     `json:"uuid"`
	Host       string     `json:"host"`
	Cluster    *string    `json:"cluster"`
	Datacenter string     `json:"datacenter"`
	CBT        bool       `json:"cbt"`
	Disks      []diskJSON `json:"disks"`
}

type injectRequest struct {
	FailSnapshotVM *string         `json:"fail_snapshot_vm"`
	FailRemoveVM   *string         `json:"fail_remove_vm"`
	FailRelocateVM *string         `json:"fail_relocate_vm"` // any VM, created ones included
	ResetCBT       *[2]interface{} `json:"reset_cbt"`
	GrowDisk       *[3]interface{} `json:"grow_disk"`
	SlowSOAPms     *int            `json:"slow_soap_ms"`
	SlowMethod     *string         `json:"slow_soap_method"`
	ExpireSessions bool            `json:"expire_sessions"`
	// [VM name or moref, runtime.connectionState]: a VM whose host is down
	// ("disconnected"), whose files are gone ("orphaned", "inaccessible"), or back.
	VMConnectionState *[2]string `json:"vm_connection_state"`
}

var vmConnectionStates = map[string]bool{
	"connected": true, "disconnected": true, "orphaned": true, "inaccessible": true, "invalid": true,
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func jsonError(w http.ResponseWriter, status int, format string, args ...interface{}) {
	writeJSON(w, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

func (l *lab) serveControl(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/lab/info" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, l.ready)
	case r.URL.Path == "/lab/vms" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, l.listVMs())
	case r.URL.Path == "/lab/snapshot-events" && r.Method == http.MethodGet:
		l.mu.Lock()
		events := append([]snapEvent{}, l.events...)
		l.mu.Unlock()
		writeJSON(w, http.StatusOK, events)
	case r.URL.Path == "/lab/inject" && r.Method == http.MethodPost:
		l.serveInject(w, r)
	case r.URL.Path == "/lab/settle" && r.Method == http.MethodPost:
		l.serveSettle(w)
	default:
		jsonError(w, http.StatusNotFound, "no control call %s %s", r.Method, r.URL.Path)
	}
}

func (l *lab) findVM(nameOrRef string) *simulator.VirtualMachine {
	for _, v := range l.inv.vms {
		if v.name == nameOrRef || v.ref.Value == nameOrRef {
			if vm, ok := simulator.Map.Get(v.ref).(*simulator.VirtualMachine); ok {
				return vm
			}
		}
	}
	return nil
}

func (l *lab) listVMs() []vmJSON {
	out := make([]vmJSON, 0, len(l.inv.vms))
	for _, v := range l.inv.vms {
		vm, ok := simulator.Map.Get(v.ref).(*simulator.VirtualMachine)
		if !ok {
			continue // destroyed by a client
		}
		var item vmJSON
		simulator.Map.WithLock(vm, func() {
			item = vmJSON{Name: vm.Name, Moref: v.ref.Value, Host: v.host, Datacenter: v.datacenter}
			if v.cluster != "" {
				c := v.cluster
				item.Cluster = &c
			}
			if vm.Runtime.Host != nil {
				if h, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok {
					item.Host = h.Name
				}
			}
			if vm.Config != nil {
				item.UUID = vm.Config.Uuid
				item.CBT = vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
			}
			for _, d := range vmDisks(vm) {
				b := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
				ds := ""
				if b.Datastore != nil {
					if e, ok := simulator.Map.Get(*b.Datastore).(*simulator.Datastore); ok {
						ds = e.Name
					}
				}
				flat, _ := l.flatPath(b.FileName)
				item.Disks = append(item.Disks, diskJSON{
					Key: d.Key, Capacity: diskCapacity(d), File: b.FileName, Datastore: ds,
					FlatPath: flat, ChangeID: b.ChangeId,
				})
			}
		})
		sort.Slice(item.Disks, func(i, j int) bool { return item.Disks[i].Key < item.Disks[j].Key })
		out = append(out, item)
	}
	return out
}

func asString(v interface{}) (string, bool) {
	s, ok := v.(string)
	return s, ok
}

func asInt(v interface{}) (int64, bool) {
	f, ok := v.(float64)
	if !ok || f != float64(int64(f)) {
		return 0, false
	}
	return int64(f), true
}

// diskOf resolves a (vm, key) pair given in a control call.
func (l *lab) diskOf(vmArg, keyArg interface{}) (*simulator.VirtualMachine, *types.VirtualDisk, error) {
	name, ok := asString(vmArg)
	if !ok {
		return nil, nil, fmt.Errorf("VM must be a name or moref string, got %v", vmArg)
	}
	key, ok := asInt(keyArg)
	if !ok {
		return nil, nil, fmt.Errorf("disk key must be an integer, got %v", keyArg)
	}
	vm := l.findVM(name)
	if vm == nil {
		return nil, nil, fmt.Errorf("no VM named %q", name)
	}
	for _, d := range vmDisks(vm) {
		if int64(d.Key) == key {
			return vm, d, nil
		}
	}
	return nil, nil, fmt.Errorf("VM %q has no disk with key %d", name, key)
}

// serveSettle settles every disk's CBT state now (settleDisk), two disks at a time.
func (l *lab) serveSettle(w http.ResponseWriter) {
	if l.cfg.plain {
		jsonError(w, http.StatusConflict, "the plain simulator has no CBT to settle")
		return
	}
	l.mu.Lock()
	disks := make([]*diskState, 0, len(l.disks))
	for _, st := range l.disks {
		disks = append(disks, st)
	}
	l.mu.Unlock()
	start := time.Now()
	work := make(chan *diskState)
	errs := make(chan string, len(disks))
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for st := range work {
				l.mu.Lock()
				memo := st.memo
				l.mu.Unlock()
				memo, err := settleDisk(st.flatPath, st.capacity, l.cfg.granularity, memo)
				l.mu.Lock()
				st.memo = memo
				l.mu.Unlock()
				if err != nil {
					errs <- fmt.Sprintf("%s: %v", st.fileName, err)
				}
			}
		}()
	}
	for _, st := range disks {
		work <- st
	}
	close(work)
	wg.Wait()
	close(errs)
	var failed []string
	for e := range errs {
		failed = append(failed, e)
	}
	if len(failed) > 0 {
		jsonError(w, http.StatusInternalServerError, "settle: %s", strings.Join(failed, "; "))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"disks": len(disks), "seconds": time.Since(start).Seconds()})
}

func (l *lab) serveInject(w http.ResponseWriter, r *http.Request) {
	var req injectRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		jsonError(w, http.StatusBadRequest, "bad inject request: %v", err)
		return
	}
	if l.cfg.plain && (req.ResetCBT != nil || req.GrowDisk != nil || req.SlowSOAPms != nil || req.FailSnapshotVM != nil || req.FailRemoveVM != nil || req.FailRelocateVM != nil || req.VMConnectionState != nil) {
		jsonError(w, http.StatusConflict, "the plain simulator only supports expire_sessions")
		return
	}
	if req.FailSnapshotVM != nil && *req.FailSnapshotVM != "" && l.findVM(*req.FailSnapshotVM) == nil {
		jsonError(w, http.StatusBadRequest, "fail_snapshot_vm: no VM named %q", *req.FailSnapshotVM)
		return
	}
	if req.FailRemoveVM != nil && *req.FailRemoveVM != "" && l.findVM(*req.FailRemoveVM) == nil {
		jsonError(w, http.StatusBadRequest, "fail_remove_vm: no VM named %q", *req.FailRemoveVM)
		return
	}
	var stateVM *simulator.VirtualMachine
	if req.VMConnectionState != nil {
		stateVM = l.findVM(req.VMConnectionState[0])
		if stateVM == nil {
			jsonError(w, http.StatusBadRequest, "vm_connection_state: no VM named %q", req.VMConnectionState[0])
			return
		}
		if !vmConnectionStates[req.VMConnectionState[1]] {
			jsonError(w, http.StatusBadRequest, "vm_connection_state: %q is not a VirtualMachineConnectionState", req.VMConnectionState[1])
			return
		}
	}
	if req.SlowSOAPms != nil && *req.SlowSOAPms < 0 {
		jsonError(w, http.StatusBadRequest, "slow_soap_ms must be >= 0")
		return
	}
	if req.ResetCBT != nil {
		vm, d, err := l.diskOf(req.ResetCBT[0], req.ResetCBT[1])
		if err != nil {
			jsonError(w, http.StatusBadRequest, "reset_cbt: %v", err)
			return
		}
		l.mu.Lock()
		if st := l.disks[diskID{vm.Self.Value, d.Key}]; st != nil && st.tracking {
			st.reset()
		}
		l.mu.Unlock()
	}
	if req.GrowDisk != nil {
		vm, d, err := l.diskOf(req.GrowDisk[0], req.GrowDisk[1])
		if err != nil {
			jsonError(w, http.StatusBadRequest, "grow_disk: %v", err)
			return
		}
		newCap, ok := asInt(req.GrowDisk[2])
		if !ok || newCap <= diskCapacity(d) {
			jsonError(w, http.StatusBadRequest, "grow_disk: new capacity must be an integer larger than %d", diskCapacity(d))
			return
		}
		var syncErr error
		simulator.Map.WithLock(vm, func() {
			d.CapacityInBytes = newCap
			d.CapacityInKB = newCap / 1024
			syncErr = l.syncVM(vm)
		})
		if syncErr != nil {
			jsonError(w, http.StatusInternalServerError, "grow_disk: %v", syncErr)
			return
		}
	}
	if stateVM != nil {
		state := types.VirtualMachineConnectionState(req.VMConnectionState[1])
		simulator.Map.WithLock(stateVM, func() {
			stateVM.Runtime.ConnectionState = state
			stateVM.Summary.Runtime.ConnectionState = state
		})
	}
	l.mu.Lock()
	if req.FailSnapshotVM != nil {
		l.faults.failSnapshotVM = *req.FailSnapshotVM
	}
	if req.FailRemoveVM != nil {
		l.faults.failRemoveVM = *req.FailRemoveVM
	}
	if req.FailRelocateVM != nil {
		l.faults.failRelocateVM = *req.FailRelocateVM
	}
	if req.SlowSOAPms != nil {
		l.faults.slowMs = *req.SlowSOAPms
	}
	if req.SlowMethod != nil {
		l.faults.slowMethod = *req.SlowMethod
	}
	var keys []string
	if req.ExpireSessions {
		for k := range l.sessions {
			keys = append(keys, k)
			l.expired[k] = true
		}
		l.sessions = map[string]bool{}
	}
	l.mu.Unlock()
	if len(keys) > 0 {
		l.terminateSessions(keys)
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{"ok": true, "expired_sessions": len(keys)})
}

// terminateSessions ends sessions through the simulator's own SessionManager.
func (l *lab) terminateSessions(keys []string) {
	ctx := context.Background()
	sm := *l.inv.client.ServiceContent.SessionManager
	for _, k := range keys {
		// One at a time: a session that already logged out answers NotFound.
		_, _ = methods.TerminateSession(ctx, l.inv.client, &types.TerminateSession{This: sm, SessionId: []string{k}})
	}
}
