package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"strings"
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
