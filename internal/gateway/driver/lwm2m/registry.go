package lwm2m

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
)

// defaultLifetime is the lifetime of a registration that gives none
// (OMA LwM2M 1.0 §5.3.1).
const defaultLifetime = 86400 * time.Second

// infoSettle lets a client that registered finish its exchange (some
// switch sockets once the 2.01 arrives) before the first read; a read that
// comes too early is retried anyway.
const infoSettle = 200 * time.Millisecond

// regError is a refused registration request: the response code and why.
type regError struct {
	code codes.Code
	err  error
}

func refuse(code codes.Code, format string, args ...any) *regError {
	return &regError{code: code, err: fmt.Errorf(format, args...)}
}

func isRequest(m *mux.Message) bool {
	return m.Code() >= codes.GET && m.Code() <= codes.DELETE
}

func respond(w mux.ResponseWriter, code codes.Code, opts ...message.Option) {
	// The only error is a No-Response option asking for silence.
	_ = w.SetResponse(code, message.TextPlain, nil, opts...)
}

func remoteAddr(w mux.ResponseWriter) *net.UDPAddr {
	a, _ := w.Conn().RemoteAddr().(*net.UDPAddr)
	return a
}

// queries reads the Uri-Query options: "ep=x" → ep: x, "Q" → Q: "".
// The first of repeated names wins.
func queries(m *mux.Message) map[string]string {
	out := map[string]string{}
	qs, _ := m.Queries() // no queries is no error here
	for _, q := range qs {
		k, v, _ := strings.Cut(q, "=")
		if _, ok := out[k]; !ok {
			out[k] = v
		}
	}
	return out
}

func (d *Driver) notFound(w mux.ResponseWriter, m *mux.Message) {
	if !isRequest(m) {
		return // a late response or an empty message: nothing to answer
	}
	p, _ := m.Path()
	d.log.Debug("lwm2m: no such resource", "path", p, "addr", remoteAddr(w))
	respond(w, codes.NotFound)
}

// register handles POST /rd: a device registers, or registers again.
func (d *Driver) register(s *session, w mux.ResponseWriter, m *mux.Message) {
	if !isRequest(m) {
		return
	}
	addr := remoteAddr(w)
	q := queries(m)
	reg, rerr := d.parseRegistration(m, q)
	if rerr != nil {
		d.refused(w, "registration", q["ep"], addr, rerr)
		return
	}
	reg.addr = addr
	ep := q["ep"]
	d.mu.Lock()
	if d.sess != s {
		d.mu.Unlock()
		respond(w, codes.ServiceUnavailable)
		return
	}
	id, err := d.newRegID()
	if err != nil {
		d.mu.Unlock()
		d.refused(w, "registration", ep, addr, &regError{codes.InternalServerError, err})
		return
	}
	reg.id = id
	dev := d.devices[ep]
	if dev == nil {
		dev = &device{ep: ep, updating: make(chan struct{}, 1)}
		d.devices[ep] = dev
	}
	if dev.reg != nil {
		delete(d.byReg, dev.reg.id)
	}
	dev.reg = reg
	d.byReg[id] = dev
	d.kickInfo(s, dev)
	d.mu.Unlock()
	respond(w, codes.Created,
		message.Option{ID: message.LocationPath, Value: []byte("rd")},
		message.Option{ID: message.LocationPath, Value: []byte(id)})
	d.log.Info("lwm2m: registered", "endpoint", ep, "addr", addr.String(), "id", id,
		"lifetime", reg.lifetime, "lwm2m", reg.version, "binding", reg.binding, "objects", strings.Join(reg.objects, ","))
}

// parseRegistration checks a registration request.
func (d *Driver) parseRegistration(m *mux.Message, q map[string]string) (*registration, *regError) {
	if m.Code() != codes.POST {
		return nil, refuse(codes.MethodNotAllowed, "%v on /rd", m.Code())
	}
	ep, ok := q["ep"]
	if !ok || ep == "" {
		return nil, refuse(codes.BadRequest, "no endpoint name (ep)")
	}
	if len(ep) > 255 || !utf8.ValidString(ep) || strings.ContainsFunc(ep, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return nil, refuse(codes.BadRequest, "bad endpoint name %q", ep)
	}
	reg := &registration{lifetime: defaultLifetime, version: "1.0", binding: "U", renewed: time.Now()}
	if v, ok := q["lwm2m"]; ok && v != "" {
		if major, _, _ := strings.Cut(v, "."); major != "1" {
			return nil, refuse(codes.PreconditionFailed, "LwM2M version %q is not supported", v)
		}
		reg.version = v
	}
	if rerr := applyParams(reg, q); rerr != nil {
		return nil, rerr
	}
	if rerr := applyPayload(reg, m, true); rerr != nil {
		return nil, rerr
	}
	return reg, nil
}

// applyParams reads the parameters a registration and its updates share.
func applyParams(reg *registration, q map[string]string) *regError {
	if v, ok := q["lt"]; ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return refuse(codes.BadRequest, "bad lifetime %q", v)
		}
		reg.lifetime = time.Duration(n) * time.Second
	}
	if v, ok := q["b"]; ok {
		if v == "" || strings.Trim(v, "UMHTSNQ") != "" || !strings.Contains(v, "U") {
			return refuse(codes.BadRequest, "binding %q has no UDP (U)", v)
		}
		reg.binding = v
	}
	return nil
}

// applyPayload reads the objects of a registration (required) or of an
// update (optional).
func applyPayload(reg *registration, m *mux.Message, required bool) *regError {
	if cf, err := m.ContentFormat(); err == nil && cf != message.AppLinkFormat && cf != message.TextPlain {
		return refuse(codes.UnsupportedMediaType, "payload in content format %d, want link format", cf)
	}
	body, err := m.ReadBody()
	if err != nil {
		return refuse(codes.BadRequest, "payload: %v", err)
	}
	if len(body) == 0 && !required {
		return nil
	}
	root, objs, err := registeredObjects(string(body))
	if err != nil {
		return refuse(codes.BadRequest, "objects: %v", err)
	}
	reg.root, reg.objects = root, objs
	return nil
}

// updateOrDelete handles POST /rd/<id> (update) and DELETE /rd/<id>
// (de-register).
func (d *Driver) updateOrDelete(s *session, w mux.ResponseWriter, m *mux.Message, id string) {
	if !isRequest(m) {
		return
	}
	addr := remoteAddr(w)
	d.mu.Lock()
	if d.sess != s {
		d.mu.Unlock()
		respond(w, codes.ServiceUnavailable)
		return
	}
	dev := d.byReg[id]
	if dev == nil {
		d.mu.Unlock()
		d.refused(w, "registration update", "", addr, refuse(codes.NotFound, "no registration %q", id))
		return
	}
	old := dev.reg
	switch m.Code() {
	case codes.DELETE:
		dev.reg = nil
		delete(d.byReg, id)
		d.mu.Unlock()
		respond(w, codes.Deleted)
		d.log.Info("lwm2m: de-registered", "endpoint", dev.ep, "addr", addr.String(), "id", id)
	case codes.POST:
		reg := *old
		reg.addr, reg.renewed = addr, time.Now()
		rerr := applyParams(&reg, queries(m))
		if rerr == nil {
			rerr = applyPayload(&reg, m, false)
		}
		if rerr != nil {
			d.mu.Unlock()
			d.refused(w, "registration update", dev.ep, addr, rerr)
			return
		}
		dev.reg = &reg
		d.kickInfo(s, dev)
		d.mu.Unlock()
		respond(w, codes.Changed)
		d.log.Debug("lwm2m: registration updated", "endpoint", dev.ep, "addr", addr.String(), "id", id, "lifetime", reg.lifetime)
	default:
		d.mu.Unlock()
		d.refused(w, "registration update", dev.ep, addr, refuse(codes.MethodNotAllowed, "%v on /rd/%s", m.Code(), id))
	}
}

// refused answers a refused registration request and logs why.
func (d *Driver) refused(w mux.ResponseWriter, what, ep string, addr *net.UDPAddr, rerr *regError) {
	attrs := []any{"code", rerr.code.String(), "addr", addr.String(), "err", rerr.err}
	if ep != "" {
		attrs = append(attrs, "endpoint", ep)
	}
	d.log.Warn("lwm2m: "+what+" refused", attrs...)
	respond(w, rerr.code)
}

// newRegID makes a registration ID no registration has; d.mu is held.
func (d *Driver) newRegID() (string, error) {
	for {
		b := make([]byte, 6)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		id := hex.EncodeToString(b)
		if _, ok := d.byReg[id]; !ok {
			return id, nil
		}
	}
}

// kickInfo has Object 3 read again, by one goroutine per device at most;
// d.mu is held.
func (d *Driver) kickInfo(s *session, dev *device) {
	dev.infoWanted = true
	if dev.infoRunning || d.sess != s || s.ctx.Err() != nil {
		return
	}
	dev.infoRunning = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		d.infoLoop(s, dev)
	}()
}

// infoLoop reads Object 3 for as long as a new read is wanted, retrying a
// device that does not answer while its registration lasts.
func (d *Driver) infoLoop(s *session, dev *device) {
	defer func() {
		d.mu.Lock()
		dev.infoRunning = false
		d.mu.Unlock()
	}()
	for {
		d.mu.Lock()
		if !dev.infoWanted || d.sess != s {
			d.mu.Unlock()
			return
		}
		dev.infoWanted = false
		reg := dev.reg
		d.mu.Unlock()
		if reg == nil {
			continue
		}
		wait := infoSettle
		for attempt := 0; ; attempt++ {
			if !sleep(s.ctx, wait) {
				return
			}
			info, err := d.readInfo(s.ctx, s, reg)
			d.mu.Lock()
			again := dev.infoWanted || dev.reg == nil || dev.reg.id != reg.id
			if err == nil && dev.reg != nil && dev.reg.id == reg.id {
				dev.info, dev.known = info, true
			}
			d.mu.Unlock()
			if err == nil || again {
				break
			}
			if s.ctx.Err() != nil {
				return
			}
			if attempt == 5 {
				d.log.Warn("lwm2m: device info unread", "endpoint", dev.ep, "err", err)
				d.mu.Lock()
				dev.known = true
				d.mu.Unlock()
				break
			}
			d.log.Debug("lwm2m: device info read failed, retrying", "endpoint", dev.ep, "err", err)
			wait = time.Second << attempt
		}
	}
}

// readInfo reads Object 3: the instance at once when the device answers
// in a multi-resource format, else resource by resource.
func (d *Driver) readInfo(ctx context.Context, s *session, reg *registration) (deviceInfo, error) {
	info := deviceInfo{fields: map[string]string{}}
	set := func(id uint16, v string) {
		info.fields[deviceInfoKeys[id]] = v
		switch id {
		case 3:
			info.commit = v
		case 17:
			info.deviceType = v
		}
	}
	rep, err := d.request(ctx, s, reg, codes.GET, pathDevice, nil, -1)
	if err != nil {
		return info, err
	}
	if rep.code == codes.Content && rep.hasCF {
		if vals, err := decodeResources(rep.cf, rep.body, pathDevice); err == nil {
			for _, id := range deviceInfoFields {
				if v, ok := vals[id]; ok {
					set(id, v.String())
				}
			}
			return info, nil
		}
	}
	for _, id := range deviceInfoFields {
		v, found, err := d.readResource(ctx, s, reg, append(path{}, 3, 0, id))
		if err != nil {
			return info, err
		}
		if found {
			set(id, v.String())
		}
	}
	return info, nil
}

// sleep waits for t or ctx, saying whether t passed.
func sleep(ctx context.Context, t time.Duration) bool {
	timer := time.NewTimer(t)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
