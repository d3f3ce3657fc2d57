package main

// PropertyCollector paging. vcsim 0.24 answers RetrievePropertiesEx in one page and
// has no ContinueRetrievePropertiesEx. vCenter returns at most options.maxObjects
// objects and a token for the rest. Here vcsim still computes the result (its own
// filter, traversal and property code); the lab only cuts the answer into pages and
// serves the following ones for the token, per session, as vCenter does.

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

type pendingResult struct {
	session string
	size    int
	rest    []types.ObjectContent
}

type pager struct {
	mu      sync.Mutex
	next    int
	pending map[string]*pendingResult
}

var lp = &pager{pending: map[string]*pendingResult{}}

// page keeps what does not fit in “size“ objects under a new token.
func (p *pager) page(session string, size int, objects []types.ObjectContent) types.RetrieveResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(objects) <= size {
		return types.RetrieveResult{Objects: objects}
	}
	p.next++
	token := fmt.Sprintf("lab-page-%d", p.next)
	p.pending[token] = &pendingResult{session: session, size: size, rest: objects[size:]}
	return types.RetrieveResult{Token: token, Objects: objects[:size]}
}

func (p *pager) cont(session, token string) (types.RetrieveResult, bool) {
	p.mu.Lock()
	pr, ok := p.pending[token]
	if ok && pr.session == session {
		delete(p.pending, token)
	}
	p.mu.Unlock()
	if !ok || pr.session != session {
		return types.RetrieveResult{}, false
	}
	return p.page(session, pr.size, pr.rest), true
}

func (p *pager) cancel(session, token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr, ok := p.pending[token]; ok && pr.session == session {
		delete(p.pending, token)
	}
}

// serveRetrievePropertiesEx handles a paged request; false = the simulator answers
// it unchanged (no maxObjects, or it failed).
func (l *lab) serveRetrievePropertiesEx(w http.ResponseWriter, r *http.Request, inner http.Handler, body []byte, session string) bool {
	method, err := decodeRequest(body)
	if err != nil {
		return false
	}
	req, ok := method.Body.(*types.RetrievePropertiesEx)
	if !ok || req.Options.MaxObjects <= 0 {
		return false
	}
	rec := httptest.NewRecorder()
	r.Body = io.NopCloser(bytes.NewReader(body))
	if !serveRecovering(inner, rec, r, "RetrievePropertiesEx") {
		copyRecorded(w, rec)
		return true
	}
	res := &methods.RetrievePropertiesExBody{}
	env := soap.Envelope{Body: res}
	dec := xml.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.TypeFunc = types.TypeFunc()
	if err := dec.Decode(&env); err != nil || res.Res == nil {
		copyRecorded(w, rec) // a fault, or something we cannot read: as vcsim said it
		return true
	}
	page := lp.page(session, int(req.Options.MaxObjects), res.Res.Returnval.Objects)
	writeResponse(w, &methods.RetrievePropertiesExBody{Res: &types.RetrievePropertiesExResponse{Returnval: &page}})
	return true
}

func (l *lab) serveContinueRetrievePropertiesEx(w http.ResponseWriter, body []byte, session string) {
	method, err := decodeRequest(body)
	if err != nil {
		writeFault(w, err.Error(), &types.InvalidRequest{})
		return
	}
	req, ok := method.Body.(*types.ContinueRetrievePropertiesEx)
	if !ok {
		writeFault(w, "unexpected request body", &types.InvalidRequest{})
		return
	}
	page, ok := lp.cont(session, req.Token)
	if !ok {
		writeFault(w, "A specified parameter was not correct: token", &types.InvalidArgument{InvalidProperty: "token"})
		return
	}
	writeResponse(w, &methods.ContinueRetrievePropertiesExBody{Res: &types.ContinueRetrievePropertiesExResponse{Returnval: page}})
}

func (l *lab) serveCancelRetrievePropertiesEx(w http.ResponseWriter, body []byte, session string) {
	method, err := decodeRequest(body)
	if err != nil {
		writeFault(w, err.Error(), &types.InvalidRequest{})
		return
	}
	req, ok := method.Body.(*types.CancelRetrievePropertiesEx)
	if !ok {
		writeFault(w, "unexpected request body", &types.InvalidRequest{})
		return
	}
	lp.cancel(session, req.Token)
	writeResponse(w, &methods.CancelRetrievePropertiesExBody{Res: &types.CancelRetrievePropertiesExResponse{}})
}

func copyRecorded(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, vs := range rec.Header() {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}
