package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

const sessionCookie = "vmware_soap_session"

// methodName finds the SOAP method (first element inside Body) without decoding
// the whole request; only the few methods the lab answers are fully decoded.
var methodName = regexp.MustCompile(`<(?:[\w.-]+:)?Body[^>]*>\s*<(?:[\w.-]+:)?([A-Za-z_]\w*)`)

// thisRef finds the request's _this (the object the method is called on).
var thisRef = regexp.MustCompile(`<(?:[\w.-]+:)?_this[^>]*\btype="(\w+)"[^>]*>([^<]*)<`)

func notAuthenticated(head []byte) *types.NotAuthenticated {
	obj := types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}
	if m := thisRef.FindSubmatch(head); m != nil {
		obj = types.ManagedObjectReference{Type: string(m[1]), Value: string(m[2])}
	}
	return &types.NotAuthenticated{NoPermission: types.NoPermission{Object: obj, PrivilegeId: "System.View"}}
}

// loginMethods work without a session (also on a real vCenter).
var loginMethods = map[string]bool{
	"RetrieveServiceContent": true, "Login": true, "LoginByToken": true,
	"LoginExtensionByCertificate": true, "CloneSession": true,
}

// frontHandler sits in front of the simulator's own mux.
func (l *lab) frontHandler(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/lab/") {
			l.serveControl(w, r)
			return
		}
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
			inner.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		name := ""
		head := body
		if len(head) > 4096 {
			head = head[:4096]
		}
		if m := methodName.FindSubmatch(head); m != nil {
			name = string(m[1])
		}
		session := ""
		if c, err := r.Cookie(sessionCookie); err == nil {
			session = c.Value
		}

		if !l.cfg.plain {
			l.mu.Lock()
			f := l.faults
			expired := l.expired[session]
			l.mu.Unlock()
			if f.slowMs > 0 && (f.slowMethod == "" || f.slowMethod == name) {
				time.Sleep(time.Duration(f.slowMs) * time.Millisecond)
			}
			if expired && !loginMethods[name] {
				writeFault(w, "The session is not authenticated.", notAuthenticated(head))
				return
			}
			switch name {
			case "QueryChangedDiskAreas":
				l.serveQueryChangedDiskAreas(w, body, session, head)
				return
			case "CreateSnapshot_Task":
				if l.serveFailingSnapshot(w, body, f.failSnapshotVM) {
					return
				}
			case "RemoveSnapshot_Task":
				if l.serveFailingRemove(w, body, f.failRemoveVM) {
					return
				}
			case "CreateNasDatastore":
				if l.serveCreateNasDatastore(w, r, inner, body) {
					return
				}
			case "RemoveDatastore":
				l.serveRemoveDatastore(w, body)
				return
			case "RelocateVM_Task":
				if l.serveRelocate(w, body, f.failRelocateVM) {
					return
				}
			case "RetrievePropertiesEx":
				if l.serveRetrievePropertiesEx(w, r, inner, body, session) {
					return
				}
			case "ContinueRetrievePropertiesEx":
				l.serveContinueRetrievePropertiesEx(w, body, session)
				return
			case "CancelRetrievePropertiesEx":
				l.serveCancelRetrievePropertiesEx(w, body, session)
				return
			}
		}
		rec := &cookieRecorder{ResponseWriter: w}
		if l.cfg.plain {
			inner.ServeHTTP(rec, r)
		} else if !serveRecovering(inner, rec, r, name) {
			return
		}
		if key := rec.sessionKey(); key != "" {
			l.mu.Lock()
			l.sessions[key] = true
			l.mu.Unlock()
		}
	})
}

// serveRecovering passes a request on to the simulator and turns a panic into
// a SOAP reply. vcsim 0.24 panics in Fetch (pyVmomi's single-property read) when
// the property is unset, e.g. vm.snapshot of a VM without snapshots; vCenter
// answers "unset" then. Reports whether the simulator answered.
func serveRecovering(inner http.Handler, w http.ResponseWriter, r *http.Request, name string) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			ok = false
			if name == "Fetch" {
				writeXML(w, http.StatusOK, fetchUnset{})
				return
			}
			writeFault(w, fmt.Sprintf("simulator failure in %s: %v", name, p), &types.SystemError{})
		}
	}()
	inner.ServeHTTP(w, r)
	return true
}

// fetchUnset is a FetchResponse without returnval: the property is unset.
type fetchUnset struct{}

func (fetchUnset) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	el := xml.StartElement{Name: xml.Name{Space: "urn:vim25", Local: "FetchResponse"}}
	if err := e.EncodeToken(el); err != nil {
		return err
	}
	if err := e.EncodeToken(el.End()); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

// cookieRecorder notes the session cookie the simulator hands out at login.
type cookieRecorder struct {
	http.ResponseWriter
}

func (c *cookieRecorder) sessionKey() string {
	for _, v := range c.Header().Values("Set-Cookie") {
		if strings.HasPrefix(v, sessionCookie+"=") {
			v = strings.TrimPrefix(v, sessionCookie+"=")
			if i := strings.IndexByte(v, ';'); i >= 0 {
				v = v[:i]
			}
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

func decodeRequest(body []byte) (*simulator.Method, error) {
	return simulator.UnmarshalBody(types.TypeFunc(), body)
}

func (l *lab) serveQueryChangedDiskAreas(w http.ResponseWriter, body []byte, session string, head []byte) {
	l.mu.Lock()
	known := l.sessions[session]
	l.mu.Unlock()
	if !known {
		writeFault(w, "The session is not authenticated.", notAuthenticated(head))
		return
	}
	method, err := decodeRequest(body)
	if err != nil {
		writeFault(w, err.Error(), &types.InvalidRequest{})
		return
	}
	req, ok := method.Body.(*types.QueryChangedDiskAreas)
	if !ok {
		writeFault(w, "unexpected request body", &types.InvalidRequest{})
		return
	}
	info, msg, fault := l.queryChangedDiskAreas(req)
	if fault != nil {
		writeFault(w, msg, fault)
		return
	}
	writeResponse(w, &methods.QueryChangedDiskAreasBody{Res: &types.QueryChangedDiskAreasResponse{Returnval: *info}})
}

// serveFailingSnapshot answers CreateSnapshot_Task for the VM named by the
// fail-snapshot fault with a task that fails as a failed quiesce does.
func (l *lab) serveFailingSnapshot(w http.ResponseWriter, body []byte, target string) bool {
	if target == "" {
		return false
	}
	method, err := decodeRequest(body)
	if err != nil {
		return false
	}
	req, ok := method.Body.(*types.CreateSnapshot_Task)
	if !ok {
		return false
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok || (vm.Name != target && vm.Self.Value != target) {
		return false
	}
	var fault types.BaseMethodFault
	if req.Quiesce {
		fault = &types.ApplicationQuiesceFault{}
	} else {
		fault = &types.SnapshotFault{}
	}
	task := simulator.CreateTask(vm, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	writeResponse(w, &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: task.Run()}})
	return true
}

// serveFailingRemove fails RemoveSnapshot_Task on the snapshots of one VM (name or
// moref), as a locked delta file does on ESXi; the snapshot stays.
func (l *lab) serveFailingRemove(w http.ResponseWriter, body []byte, target string) bool {
	if target == "" {
		return false
	}
	method, err := decodeRequest(body)
	if err != nil {
		return false
	}
	req, ok := method.Body.(*types.RemoveSnapshot_Task)
	if !ok {
		return false
	}
	snap, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return false
	}
	vm, ok := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
	if !ok || (vm.Name != target && vm.Self.Value != target) {
		return false
	}
	fault := &types.FileLocked{}
	task := simulator.CreateTask(snap, "removeSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	writeResponse(w, &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: task.Run()}})
	return true
}

// SOAP envelope, written the way the simulator writes its own replies.
type envelope struct {
	XMLName xml.Name    `xml:"soapenv:Envelope"`
	Enc     string      `xml:"xmlns:soapenc,attr"`
	Env     string      `xml:"xmlns:soapenv,attr"`
	XSD     string      `xml:"xmlns:xsd,attr"`
	XSI     string      `xml:"xmlns:xsi,attr"`
	Body    interface{} `xml:"soapenv:Body"`
}

func newEnvelope(body interface{}) *envelope {
	return &envelope{
		Enc:  "http://schemas.xmlsoap.org/soap/encoding/",
		Env:  "http://schemas.xmlsoap.org/soap/envelope/",
		XSD:  "http://www.w3.org/2001/XMLSchema",
		XSI:  "http://www.w3.org/2001/XMLSchema-instance",
		Body: body,
	}
}

// resBody wraps a methods.*Body so its Res is encoded as <XxxResponse xmlns="urn:vim25">.
type resBody struct{ body soap.HasFault }

func (r resBody) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	res := reflect.ValueOf(r.body).Elem().FieldByName("Res")
	el := xml.StartElement{Name: xml.Name{Space: "urn:vim25", Local: res.Elem().Type().Name()}}
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	if err := e.EncodeElement(res.Interface(), el); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

type faultDetailXML struct{ fault types.BaseMethodFault }

// MarshalXML names the detail element "<Type>Fault" with xsi:type, as vSphere does.
func (d faultDetailXML) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.fault).Elem().Name()
	start.Name = xml.Name{Local: kind + "Fault"}
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.fault, start)
}

type faultXML struct {
	XMLName xml.Name `xml:"soapenv:Fault"`
	Code    string   `xml:"faultcode"`
	String  string   `xml:"faultstring"`
	Detail  struct {
		Fault faultDetailXML
	} `xml:"detail"`
}

func writeXML(w http.ResponseWriter, status int, body interface{}) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	enc := xml.NewEncoder(&out)
	if err := enc.Encode(newEnvelope(body)); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}

func writeResponse(w http.ResponseWriter, body soap.HasFault) {
	writeXML(w, http.StatusOK, resBody{body})
}

func writeFault(w http.ResponseWriter, msg string, fault types.BaseMethodFault) {
	f := &faultXML{Code: "ServerFaultCode", String: msg}
	f.Detail.Fault = faultDetailXML{fault}
	writeXML(w, http.StatusInternalServerError, struct{ Fault *faultXML }{f})
}

// ---- control endpoint (/lab/...) ----

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
