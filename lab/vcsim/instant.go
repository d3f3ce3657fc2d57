package main

// What instant VM recovery needs from a host that vcsim 0.24 lacks:
//
//   - CreateNasDatastore mounts "remoteHost:remotePath" on a host. vcsim takes
//     spec.localPath for a local directory and names the datastore after its last
//     element; vSphere takes localPath for the datastore's name. When remoteHost is
//     this machine (127.0.0.1, ::1, localhost), the lab mounts remotePath itself
//     (the host sees the NFS export's directory as it is), under the name in localPath:
//     the request goes on to vcsim as CreateLocalDatastore, which also records the
//     host mount that Datastore.Destroy and the host's datastore list need.
//   - RemoveDatastore (HostDatastoreSystem) is missing: the lab unmounts the datastore
//     from every host (ResourceInUse while VMs use it, as vSphere).
//   - RelocateVM_Task to another datastore changes only the VM's "datastore" property
//     in vcsim: no file moves. A host copies the VM's home files and disks to the
//     target, points the VM at the copies and deletes the source files (Storage
//     vMotion); the lab does the same, keeping holes (blocks of zeros are not written).
//     fail_relocate_vm (inject) makes the task fail before anything is copied.

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

var loopbackHosts = map[string]bool{"127.0.0.1": true, "::1": true, "localhost": true}

// datastoreDir is the local directory of a datastore, those created by clients included.
func (l *lab) datastoreDir(name string) (string, bool) {
	l.dsMu.RLock()
	defer l.dsMu.RUnlock()
	dir, ok := l.inv.datastoreDirs[name]
	return dir, ok
}

func xmlText(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// serveCreateNasDatastore answers a loopback NFS mount as a local datastore at
// remotePath named localPath (see the file's comment); other servers go to vcsim.
func (l *lab) serveCreateNasDatastore(w http.ResponseWriter, r *http.Request, inner http.Handler, body []byte) bool {
	method, err := decodeRequest(body)
	if err != nil {
		return false
	}
	req, ok := method.Body.(*types.CreateNasDatastore)
	if !ok || !loopbackHosts[req.Spec.RemoteHost] {
		return false
	}
	name := req.Spec.LocalPath
	if name == "" || strings.ContainsAny(name, "/[]") {
		writeFault(w, fmt.Sprintf("localPath %q is not a datastore name", name), &types.InvalidArgument{InvalidProperty: "spec.localPath"})
		return true
	}
	if !filepath.IsAbs(req.Spec.RemotePath) {
		writeFault(w, fmt.Sprintf("remotePath %q is not an absolute path", req.Spec.RemotePath), &types.InvalidArgument{InvalidProperty: "spec.remotePath"})
		return true
	}
	local := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+
		`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">`+
		`<soapenv:Body><CreateLocalDatastore xmlns="urn:vim25">`+
		`<_this type="HostDatastoreSystem">%s</_this><name>%s</name><path>%s</path>`+
		`</CreateLocalDatastore></soapenv:Body></soapenv:Envelope>`,
		xmlText(req.This.Value), xmlText(name), xmlText(req.Spec.RemotePath))
	inReq := r.Clone(r.Context())
	inReq.Body = io.NopCloser(strings.NewReader(local))
	inReq.ContentLength = int64(len(local))
	rec := httptest.NewRecorder()
	if !serveRecovering(inner, rec, inReq, "CreateNasDatastore") {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return true
	}
	out := bytes.ReplaceAll(rec.Body.Bytes(), []byte("CreateLocalDatastoreResponse"), []byte("CreateNasDatastoreResponse"))
	if rec.Code == http.StatusOK {
		l.dsMu.Lock()
		l.inv.datastoreDirs[name] = req.Spec.RemotePath
		l.dsMu.Unlock()
	}
	for k, v := range rec.Header() {
		if k != "Content-Length" {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(out)
	return true
}

// serveRemoveDatastore unmounts a datastore from every host and drops it.
func (l *lab) serveRemoveDatastore(w http.ResponseWriter, body []byte) {
	method, err := decodeRequest(body)
	if err != nil {
		writeFault(w, err.Error(), &types.InvalidRequest{})
		return
	}
	req, ok := method.Body.(*types.RemoveDatastore)
	if !ok {
		writeFault(w, "unexpected request body", &types.InvalidRequest{})
		return
	}
	ds, ok := simulator.Map.Get(req.Datastore).(*simulator.Datastore)
	if !ok {
		writeFault(w, "no such datastore", &types.ManagedObjectNotFound{Obj: req.Datastore})
		return
	}
	if _, ok := simulator.Map.Get(req.This).(*simulator.HostDatastoreSystem); !ok {
		writeFault(w, "not a HostDatastoreSystem", &types.ManagedObjectNotFound{Obj: req.This})
		return
	}
	var vms int
	var mounts []types.DatastoreHostMount
	simulator.Map.WithLock(ds, func() {
		vms = len(ds.Vm)
		mounts = append(mounts, ds.Host...)
	})
	if vms > 0 {
		writeFault(w, fmt.Sprintf("datastore %s is in use by %d VMs", ds.Name, vms), &types.ResourceInUse{Type: "Datastore", Name: ds.Name})
		return
	}
	for _, m := range mounts {
		host, ok := simulator.Map.Get(m.Key).(*simulator.HostSystem)
		if !ok {
			continue
		}
		simulator.Map.RemoveReference(host, &host.Datastore, ds.Self)
		if host.ConfigManager.DatastoreSystem != nil {
			if dss, ok := simulator.Map.Get(*host.ConfigManager.DatastoreSystem).(*simulator.HostDatastoreSystem); ok {
				// vcsim keeps its own list and copies it to the host at the next mount
				simulator.Map.WithLock(dss, func() { simulator.RemoveReference(&dss.Datastore, ds.Self) })
			}
		}
		if host.Parent != nil {
			switch p := simulator.Map.Get(*host.Parent).(type) {
			case *simulator.ClusterComputeResource:
				simulator.Map.RemoveReference(p, &p.Datastore, ds.Self)
			case *mo.ComputeResource:
				simulator.Map.RemoveReference(p, &p.Datastore, ds.Self)
			}
		}
	}
	if ds.Parent != nil {
		if f, ok := simulator.Map.Get(*ds.Parent).(*simulator.Folder); ok {
			simulator.Map.RemoveReference(f, &f.ChildEntity, ds.Self)
		}
	}
	simulator.Map.Remove(ds.Browser)
	simulator.Map.Remove(ds.Self)
	l.dsMu.Lock()
	delete(l.inv.datastoreDirs, ds.Name)
	l.dsMu.Unlock()
	writeResponse(w, &methods.RemoveDatastoreBody{Res: &types.RemoveDatastoreResponse{}})
}

// serveRelocate moves a VM's files when RelocateVM_Task names another datastore;
// anything else goes on to vcsim (false).
func (l *lab) serveRelocate(w http.ResponseWriter, body []byte, failVM string) bool {
	method, err := decodeRequest(body)
	if err != nil {
		return false
	}
	req, ok := method.Body.(*types.RelocateVM_Task)
	if !ok || req.Spec.Datastore == nil {
		return false
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		return false
	}
	task := simulator.CreateTask(vm, "relocateVm", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		target, ok := simulator.Map.Get(*req.Spec.Datastore).(*simulator.Datastore)
		if !ok {
			return nil, &types.ManagedObjectNotFound{Obj: *req.Spec.Datastore}
		}
		if failVM != "" && (vm.Name == failVM || vm.Self.Value == failVM) {
			return nil, &types.NoDiskSpace{FileFault: types.FileFault{File: vm.Config.Files.VmPathName}, Datastore: target.Name}
		}
		var fault types.BaseMethodFault
		simulator.Map.WithLock(vm, func() { fault = l.moveVM(vm, target) })
		if fault != nil {
			return nil, fault
		}
		var changes []types.PropertyChange
		if ref := req.Spec.Host; ref != nil {
			changes = append(changes,
				types.PropertyChange{Name: "runtime.host", Val: ref},
				types.PropertyChange{Name: "summary.runtime.host", Val: ref})
		}
		if ref := req.Spec.Pool; ref != nil {
			changes = append(changes, types.PropertyChange{Name: "resourcePool", Val: ref})
		}
		if len(changes) > 0 {
			simulator.Map.Update(vm, changes)
		}
		return nil, nil
	})
	writeResponse(w, &methods.RelocateVM_TaskBody{Res: &types.RelocateVM_TaskResponse{Returnval: task.Run()}})
	return true
}

type fileMove struct{ src, dst string }

// moveVM copies the VM's home directory and disks to target, repoints the VM and
// deletes the sources (a FUSE-mounted file that cannot be unlinked stays for its
// owner to unmount). The caller holds the VM's lock.
func (l *lab) moveVM(vm *simulator.VirtualMachine, target *simulator.Datastore) types.BaseMethodFault {
	var home object.DatastorePath
	if !home.FromString(vm.Config.Files.VmPathName) {
		return &types.InvalidArgument{InvalidProperty: "config.files.vmPathName"}
	}
	if home.Datastore == target.Name {
		return nil
	}
	srcDir, ok := l.datastoreDir(home.Datastore)
	dstDir, ok2 := l.datastoreDir(target.Name)
	if !ok || !ok2 {
		return &types.InvalidArgument{InvalidProperty: "datastore"}
	}
	homeDir := path.Dir(home.Path)
	if _, err := os.Stat(filepath.Join(dstDir, homeDir)); err == nil {
		return &types.FileAlreadyExists{FileFault: types.FileFault{File: fmt.Sprintf("[%s] %s", target.Name, homeDir)}}
	}
	var moves []fileMove
	entries, err := os.ReadDir(filepath.Join(srcDir, homeDir))
	if err != nil {
		return &types.FileNotFound{FileFault: types.FileFault{File: vm.Config.Files.VmPathName}}
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			moves = append(moves, fileMove{filepath.Join(srcDir, homeDir, e.Name()), filepath.Join(dstDir, homeDir, e.Name())})
		}
	}
	newName := map[string]string{} // old "[ds] x.vmdk" -> new
	for _, d := range vmDisks(vm) {
		b := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		var p object.DatastorePath
		if !p.FromString(b.FileName) {
			continue
		}
		dst := object.DatastorePath{Datastore: target.Name, Path: path.Join(homeDir, path.Base(p.Path))}
		newName[b.FileName] = dst.String()
		if path.Dir(p.Path) != homeDir || p.Datastore != home.Datastore { // a disk outside the home directory
			src, err := l.flatPath(b.FileName)
			if err != nil {
				return &types.FileNotFound{FileFault: types.FileFault{File: b.FileName}}
			}
			moves = append(moves, fileMove{src, filepath.Join(dstDir, strings.TrimSuffix(dst.Path, ".vmdk")+"-flat.vmdk")})
		}
	}
	if err := os.MkdirAll(filepath.Join(dstDir, homeDir), 0o755); err != nil {
		return &types.CannotCreateFile{FileFault: types.FileFault{File: homeDir}}
	}
	for _, m := range moves {
		if err := sparseCopy(m.src, m.dst); err != nil {
			_ = os.RemoveAll(filepath.Join(dstDir, homeDir)) // nothing half-moved stays
			fmt.Fprintf(os.Stderr, "vcsim-lab: relocate %s: %v\n", vm.Name, err)
			return &types.CannotCreateFile{FileFault: types.FileFault{File: m.dst}}
		}
	}
	swap := func(s string) string {
		if strings.HasPrefix(s, "["+home.Datastore+"]") {
			return "[" + target.Name + "]" + strings.TrimPrefix(s, "["+home.Datastore+"]")
		}
		return s
	}
	f := &vm.Config.Files
	f.VmPathName, f.LogDirectory = swap(f.VmPathName), swap(f.LogDirectory)
	f.SnapshotDirectory, f.SuspendDirectory = swap(f.SnapshotDirectory), swap(f.SuspendDirectory)
	vm.Summary.Config.VmPathName = f.VmPathName
	// vcsim resolves every file of the layout by datastore name at the next device
	// change (a Destroy too): none may name the old datastore, which may be gone by then.
	if vm.LayoutEx != nil {
		for i := range vm.LayoutEx.File {
			vm.LayoutEx.File[i].Name = swap(vm.LayoutEx.File[i].Name)
		}
	}
	if vm.Layout != nil {
		vm.Layout.SwapFile = swap(vm.Layout.SwapFile)
		for i := range vm.Layout.Disk {
			for j := range vm.Layout.Disk[i].DiskFile {
				vm.Layout.Disk[i].DiskFile[j] = swap(vm.Layout.Disk[i].DiskFile[j])
			}
		}
	}
	for _, d := range vmDisks(vm) {
		b := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if n, ok := newName[b.FileName]; ok {
			b.FileName = n
			ref := target.Self
			b.Datastore = &ref
		}
	}
	for _, ref := range vm.Datastore {
		if old, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok && ref != target.Self {
			simulator.Map.RemoveReference(old, &old.Vm, vm.Self)
		}
	}
	simulator.Map.AddReference(target, &target.Vm, vm.Self)
	vm.Datastore = []types.ManagedObjectReference{target.Self}
	if err := l.syncVM(vm); err != nil {
		fmt.Fprintf(os.Stderr, "vcsim-lab: after relocating %s: %v\n", vm.Name, err)
	}
	for _, m := range moves {
		_ = os.Remove(m.src) // EBUSY on a mounted file: its owner unmounts it
	}
	_ = os.Remove(filepath.Join(srcDir, homeDir))
	return nil
}

// sparseCopy copies src to dst in 1 MiB blocks, leaving blocks of zeros as holes
// (a thin disk stays thin), then gives dst src's exact size.
func sparseCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 {
			if !bytes.Equal(buf[:n], zero[:n]) {
				if _, werr := out.WriteAt(buf[:n], off); werr != nil {
					out.Close()
					return werr
				}
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			out.Close()
			return err
		}
	}
	if off != fi.Size() {
		out.Close()
		return fmt.Errorf("%s: read %d bytes of %d", src, off, fi.Size())
	}
	if err := out.Truncate(off); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
