package lwm2m

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/gateway/driver/drivertest"
)

// These tests drive the driver with a small LwM2M client written here on
// go-coap (fakeDevice): it answers Object 3 reads in TLV, as many real
// clients do, and runs without node. The conformance suite runs against
// a client no one here wrote (conformance_test.go).

// logBuffer collects what the driver logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// openDriver makes and opens a driver on a free loopback port.
func openDriver(t *testing.T, settings map[string]string) (*Driver, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	all := map[string]string{"listen": "127.0.0.1:0", "poll": "100ms", "timeout": "3s"}
	for k, v := range settings {
		all[k] = v
	}
	d, err := NewDriver(all, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Open(t.Context(), driver.App{UUID: "app-1", Name: "app"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if t.Failed() {
			t.Logf("driver log:\n%s", logs)
		}
	})
	return d, logs
}

// fakeDevice is a minimal LwM2M client.
type fakeDevice struct {
	t    testing.TB
	conn *udpclient.Conn

	mu       sync.Mutex
	values   map[string]string // resource path → value
	restarts int
	failWith int  // Update Result to fail a download with; 0: succeed
	stall    bool // a download that never ends
	pending  string
	location string
}

func newFake(t testing.TB, d *Driver, values map[string]string) *fakeDevice {
	t.Helper()
	f := &fakeDevice{t: t, values: map[string]string{"/5/0/3": "0", "/5/0/5": "0"}}
	for k, v := range values {
		f.values[k] = v
	}
	r := mux.NewRouter()
	r.DefaultHandleFunc(f.serve)
	conn, err := udp.Dial(d.Addr().String(), options.WithMux(r))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	f.conn = conn
	return f
}

func (f *fakeDevice) serve(w mux.ResponseWriter, m *mux.Message) {
	p, _ := m.Path()
	body, _ := m.ReadBody()
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case m.Code() == codes.GET && p == "/3/0":
		var ts []TLV
		for _, id := range deviceInfoFields {
			if v, ok := f.values[fmt.Sprintf("/3/0/%d", id)]; ok {
				ts = append(ts, TLV{Type: TLVResource, ID: id, Value: []byte(v)})
			}
		}
		b, _ := EncodeTLV(ts)
		_ = w.SetResponse(codes.Content, message.AppLwm2mTLV, bytes.NewReader(b))
	case m.Code() == codes.GET:
		if v, ok := f.values[p]; ok {
			_ = w.SetResponse(codes.Content, message.TextPlain, strings.NewReader(v))
			return
		}
		_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
	case m.Code() == codes.POST && p == "/3/0/4":
		f.restarts++
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	case m.Code() == codes.PUT && p == "/5/0/1":
		uri := string(body)
		f.values["/5/0/1"] = uri
		switch {
		case uri == "":
			f.values["/5/0/3"], f.values["/5/0/5"] = "0", "0"
		case f.failWith != 0:
			f.values["/5/0/3"], f.values["/5/0/5"] = "0", fmt.Sprint(f.failWith)
		case f.stall:
			f.values["/5/0/3"], f.values["/5/0/5"] = "1", "0"
		default:
			f.values["/5/0/3"], f.values["/5/0/5"] = "1", "0"
			go f.download(uri)
		}
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	case m.Code() == codes.POST && p == "/5/0/2":
		if f.values["/5/0/3"] != "2" {
			_ = w.SetResponse(codes.MethodNotAllowed, message.TextPlain, nil)
			return
		}
		f.values["/5/0/3"], f.values["/5/0/5"], f.values["/3/0/3"] = "0", "1", f.pending
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	default:
		_ = w.SetResponse(codes.MethodNotAllowed, message.TextPlain, nil)
	}
}

func (f *fakeDevice) download(uri string) {
	commit, err := fetchFirmware(context.Background(), uri)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.values["/5/0/3"], f.values["/5/0/5"] = "0", "4"
		return
	}
	f.pending = commit
	f.values["/5/0/3"] = "2"
}

// register sends a registration with the query parameters given.
func (f *fakeDevice) register(query ...string) codes.Code {
	f.t.Helper()
	var opts []message.Option
	for _, q := range query {
		opts = append(opts, message.Option{ID: message.URIQuery, Value: []byte(q)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), drivertest.Timeout)
	defer cancel()
	resp, err := f.conn.Post(ctx, "/rd", message.AppLinkFormat, strings.NewReader("</3/0>,</5/0>"), opts...)
	if err != nil {
		f.t.Fatalf("register: %v", err)
	}
	defer f.conn.ReleaseMessage(resp)
	if loc, err := resp.Options().LocationPath(); err == nil {
		f.location = loc
	}
	return resp.Code()
}

// send sends a request to the registration's location.
func (f *fakeDevice) send(method codes.Code, query ...string) codes.Code {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), drivertest.Timeout)
	defer cancel()
	req, err := f.conn.NewPostRequest(ctx, f.location, message.AppLinkFormat, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	defer f.conn.ReleaseMessage(req)
	req.SetCode(method)
	for _, q := range query {
		req.AddQuery(q)
	}
	resp, err := f.conn.Do(req)
	if err != nil {
		f.t.Fatalf("%v %s: %v", method, f.location, err)
	}
	defer f.conn.ReleaseMessage(resp)
	return resp.Code()
}

func (f *fakeDevice) restartCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restarts
}

// eventually waits, as drivertest does, for f to return "".
func eventually(t testing.TB, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(drivertest.Timeout)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s (after %s)", what, msg, drivertest.Timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitScan waits until Scan shows localID as ok says.
func waitScan(t testing.TB, d driver.Driver, localID, what string, ok func(driver.Device, bool) bool) driver.Device {
	t.Helper()
	var got driver.Device
	eventually(t, what, func() string {
		devs, err := d.Scan(context.Background())
		if err != nil {
			return err.Error()
		}
		found := false
		got = driver.Device{}
		for _, dev := range devs {
			if dev.LocalID == localID {
				got, found = dev, true
			}
		}
		if ok(got, found) {
			return ""
		}
		return fmt.Sprintf("scan shows %+v (found %v)", got, found)
	})
	return got
}

func deviceValues(commit string) map[string]string {
	return map[string]string{"/3/0/0": "Reeve", "/3/0/1": "fake", "/3/0/2": "SN-1", "/3/0/3": commit, "/3/0/17": "esp32"}
}

func TestRegistrationInterface(t *testing.T) {
	d, logs := openDriver(t, nil)
	f := newFake(t, d, deviceValues("c1"))
	if code := f.register("ep=fake-1", "lt=60", "lwm2m=1.1", "b=U"); code != codes.Created {
		t.Fatalf("register: %v", code)
	}
	if !strings.HasPrefix(f.location, "/rd/") || len(f.location) <= len("/rd/") {
		t.Fatalf("location %q, want /rd/<id>", f.location)
	}
	dev := waitScan(t, d, "fake-1", "fake-1 online with c1", func(dev driver.Device, found bool) bool {
		return found && dev.Online && dev.Commit == "c1"
	})
	if dev.DeviceType != "esp32" || dev.Info["manufacturer"] != "Reeve" || dev.Info["serial_number"] != "SN-1" || dev.Info["lwm2m_version"] != "1.1" {
		t.Errorf("device %+v", dev)
	}
	// An update refreshes the registration and reads Object 3 again.
	f.mu.Lock()
	f.values["/3/0/3"] = "c2"
	f.mu.Unlock()
	if code := f.send(codes.POST, "lt=120"); code != codes.Changed {
		t.Fatalf("update: %v", code)
	}
	waitScan(t, d, "fake-1", "fake-1 reports c2 after its update", func(dev driver.Device, found bool) bool {
		return found && dev.Online && dev.Commit == "c2"
	})
	if code := f.send(codes.POST, "lt=soon"); code != codes.BadRequest {
		t.Errorf("update with a bad lifetime: %v, want 4.00", code)
	}
	if code := f.send(codes.PUT); code != codes.MethodNotAllowed {
		t.Errorf("PUT on a registration: %v, want 4.05", code)
	}
	if code := f.send(codes.DELETE); code != codes.Deleted {
		t.Fatalf("de-register: %v", code)
	}
	waitScan(t, d, "fake-1", "fake-1 gone", func(_ driver.Device, found bool) bool { return !found })
	if code := f.send(codes.DELETE); code != codes.NotFound {
		t.Errorf("second de-register: %v, want 4.04", code)
	}
	if err := d.Restart(t.Context(), "fake-1"); !errors.Is(err, driver.ErrOffline) {
		t.Errorf("restart of a de-registered device: %v, want ErrOffline", err)
	}
	// Bad registrations, each answered and logged.
	for _, c := range []struct {
		query []string
		code  codes.Code
	}{
		{[]string{"lt=60"}, codes.BadRequest},
		{[]string{"ep="}, codes.BadRequest},
		{[]string{"ep=bad-lt", "lt=-5"}, codes.BadRequest},
		{[]string{"ep=bad-lt", "lt=0"}, codes.BadRequest},
		{[]string{"ep=bad-b", "b=S"}, codes.BadRequest},
		{[]string{"ep=bad-version", "lwm2m=2.0"}, codes.PreconditionFailed},
		{[]string{"ep=bad\x01name"}, codes.BadRequest},
	} {
		if code := f.register(c.query...); code != c.code {
			t.Errorf("register %q: %v, want %v", c.query, code, c.code)
		}
	}
	log := logs.String()
	for _, want := range []string{"no endpoint name", "endpoint=bad-lt", "endpoint=bad-b", "endpoint=bad-version", "code=PreconditionFailed"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log does not say %q:\n%s", want, log)
		}
	}
	// A device that registers again replaces its registration.
	if code := f.register("ep=fake-1", "lt=60"); code != codes.Created {
		t.Fatalf("register again: %v", code)
	}
	waitScan(t, d, "fake-1", "fake-1 back", func(dev driver.Device, found bool) bool { return found && dev.Online })
}

func TestBadInputLeavesDevicesAlone(t *testing.T) {
	d, logs := openDriver(t, nil)
	f := newFake(t, d, deviceValues("c1"))
	if code := f.register("ep=steady", "lt=300", "lwm2m=1.0", "b=U"); code != codes.Created {
		t.Fatalf("register: %v", code)
	}
	waitScan(t, d, "steady", "steady online with c1", func(dev driver.Device, found bool) bool { return found && dev.Online && dev.Commit == "c1" })

	raw, err := net.DialUDP("udp", nil, d.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	garbage := make([]byte, 64)
	_, _ = rand.Read(garbage)
	garbage[0] = 0xff // CoAP version 3: no CoAP at all
	for _, b := range [][]byte{garbage, {0x40}, []byte("GET /rd HTTP/1.1\r\n\r\n")} {
		if _, err := raw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	// A confirmable POST /rd?lt=60 without ep, written by hand.
	req := []byte{0x41, 0x02, 0x12, 0x34, 0xab, 0xb2, 'r', 'd', 0x45, 'l', 't', '=', '6', '0', 0xff}
	req = append(req, "</3/0>"...)
	if _, err := raw.Write(req); err != nil {
		t.Fatal(err)
	}
	if err := raw.SetReadDeadline(time.Now().Add(drivertest.Timeout)); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, 1500)
	for {
		n, err := raw.Read(resp)
		if err != nil {
			t.Fatalf("no answer to a registration without ep: %v", err)
		}
		// The answer to our message ID: an ACK (type 2) carrying 4.00.
		if n >= 4 && resp[2] == 0x12 && resp[3] == 0x34 {
			if typ, code := resp[0]>>4&3, codes.Code(resp[1]); typ != 2 || code != codes.BadRequest {
				t.Fatalf("answer type %d code %v, want ACK 4.00", typ, code)
			}
			break
		}
	}
	eventually(t, "the bad datagrams logged", func() string {
		log := logs.String()
		if !strings.Contains(log, "lwm2m: coap") || !strings.Contains(log, "no endpoint name") {
			return "not yet:\n" + log
		}
		return ""
	})
	// The registered device is untouched.
	waitScan(t, d, "steady", "steady still online", func(dev driver.Device, found bool) bool { return found && dev.Online && dev.Commit == "c1" })
	if err := d.Restart(t.Context(), "steady"); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if n := f.restartCount(); n != 1 {
		t.Fatalf("%d restarts, want 1", n)
	}
}

// firmwareServer serves a reeve firmware file for commit, as drivertest
// makes them: its first line names the release.
func firmwareServer(t *testing.T, commit string) driver.Firmware {
	t.Helper()
	data := []byte("reeve firmware " + commit + "\n" + strings.Repeat("x", 5000))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(data) }))
	t.Cleanup(srv.Close)
	return driver.Firmware{Commit: commit, URL: srv.URL + "/firmware.bin", Size: int64(len(data)), SHA256: sha256Hex(data)}
}

func TestUpdateWithFake(t *testing.T) {
	d, _ := openDriver(t, nil)
	f := newFake(t, d, deviceValues("c1"))
	if code := f.register("ep=fake-up", "lt=300"); code != codes.Created {
		t.Fatalf("register: %v", code)
	}
	waitScan(t, d, "fake-up", "online", func(dev driver.Device, found bool) bool { return found && dev.Online && dev.Commit == "c1" })
	fw := firmwareServer(t, "c9")
	var pcs []int
	if err := d.Update(t.Context(), "fake-up", fw, func(p int) { pcs = append(pcs, p) }); err != nil {
		t.Fatalf("update: %v", err)
	}
	if len(pcs) == 0 || pcs[0] != 0 || pcs[len(pcs)-1] != 100 {
		t.Errorf("progress %v, want 0 … 100", pcs)
	}
	waitScan(t, d, "fake-up", "reports c9", func(dev driver.Device, found bool) bool { return found && dev.Commit == "c9" })
	// Again: it runs c9 already.
	if err := d.Update(t.Context(), "fake-up", fw, func(int) {}); err != nil {
		t.Fatalf("update to what it runs: %v", err)
	}
	// A device whose download fails the integrity check.
	f.mu.Lock()
	f.failWith = 5
	f.mu.Unlock()
	err := d.Update(t.Context(), "fake-up", firmwareServer(t, "c10"), func(int) {})
	var ue *driver.UpdateError
	if !errors.As(err, &ue) || ue.LocalID != "fake-up" || !strings.Contains(ue.Reason, "integrity check failure") {
		t.Fatalf("failed update: %v, want an UpdateError saying integrity check failure", err)
	}
	// The next try starts over from the stale failure.
	f.mu.Lock()
	f.failWith = 0
	f.mu.Unlock()
	if err := d.Update(t.Context(), "fake-up", firmwareServer(t, "c11"), func(int) {}); err != nil {
		t.Fatalf("update after a failed one: %v", err)
	}
	// A cancelled update stops.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := d.Update(ctx, "fake-up", firmwareServer(t, "c12"), func(int) {}); !errors.Is(err, context.Canceled) {
		t.Errorf("update with an ended context: %v, want context.Canceled", err)
	}
}

func TestCloseReleasesThePort(t *testing.T) {
	d, _ := openDriver(t, map[string]string{"identify": "/32769/0/0"})
	addr := d.Addr().String()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"scan":      func() error { _, err := d.Scan(t.Context()); return err }(),
		"update":    d.Update(t.Context(), "x", driver.Firmware{URL: "http://x/"}, func(int) {}),
		"restart":   d.Restart(t.Context(), "x"),
		"identify":  d.Identify(t.Context(), "x"),
		"configure": d.Configure(t.Context(), "x", nil, nil),
		"logs":      func() error { _, err := d.Logs(t.Context(), "x"); return err }(),
	} {
		if !errors.Is(err, driver.ErrNotOpen) {
			t.Errorf("%s of a closed driver: %v, want ErrNotOpen", name, err)
		}
	}
	l, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("the port is still taken after Close: %v", err)
	}
	_ = l.Close()
	if err := d.Open(t.Context(), driver.App{UUID: "app-1"}); err != nil {
		t.Fatalf("open again: %v", err)
	}
	if got := d.Addr().String(); got != addr {
		t.Errorf("reopened on %s, want %s again", got, addr)
	}
	if _, err := d.Logs(t.Context(), "x"); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("logs: %v, want ErrUnsupported", err)
	}
	if err := d.Configure(t.Context(), "x", nil, nil); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("configure without the setting: %v, want ErrUnsupported", err)
	}
	if err := d.Identify(t.Context(), "x"); !errors.Is(err, driver.ErrUnknownDevice) {
		t.Errorf("identify of an unknown device: %v, want ErrUnknownDevice", err)
	}
}

func TestSettings(t *testing.T) {
	if _, err := New(nil); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, bad := range []map[string]string{
		{"listen": "nowhere"},
		{"timeout": "soon"},
		{"poll": "-1s"},
		{"identify": "/3/0"},
		{"configure": "x"},
		{"write_format": "cbor"},
		{"uri_digest": "md5"},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("settings %v accepted", bad)
		}
	}
	d, err := NewDriver(map[string]string{"uri_digest": "sha256", "mqtt_broker": "ignored"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fw := driver.Firmware{URL: "http://gw/fw.bin", SHA256: strings.Repeat("a", 64)}
	if got := d.packageURI(fw); got != fw.URL+"#sha256="+fw.SHA256 {
		t.Errorf("package URI %q", got)
	}
	fw.URL = "http://gw/" + strings.Repeat("p", 200)
	if got := d.packageURI(fw); got != fw.URL {
		t.Errorf("package URI past 255 bytes: %q", got)
	}
}

func TestSlowDeviceBlocksNoOther(t *testing.T) {
	d, _ := openDriver(t, nil)
	slow := newFake(t, d, deviceValues("c1"))
	slow.mu.Lock()
	slow.stall = true
	slow.mu.Unlock()
	fast := newFake(t, d, deviceValues("c1"))
	for ep, f := range map[string]*fakeDevice{"slow": slow, "fast": fast} {
		if code := f.register("ep="+ep, "lt=300"); code != codes.Created {
			t.Fatalf("register %s: %v", ep, code)
		}
		waitScan(t, d, ep, ep+" online", func(dev driver.Device, found bool) bool { return found && dev.Online })
	}
	progress := make(chan int, 100)
	slowDone := make(chan error, 1)
	go func() {
		slowDone <- d.Update(context.Background(), "slow", firmwareServer(t, "c2"), func(p int) { progress <- p })
	}()
	// The slow device is downloading…
	timeout := time.After(drivertest.Timeout)
	for downloading := false; !downloading; {
		select {
		case p := <-progress:
			downloading = p == 10
		case err := <-slowDone:
			t.Fatalf("the stalled update returned: %v", err)
		case <-timeout:
			t.Fatalf("the slow device never said it was downloading (after %s)", drivertest.Timeout)
		}
	}
	// …while the other installs.
	if err := d.Update(t.Context(), "fast", firmwareServer(t, "c2"), func(int) {}); err != nil {
		t.Fatalf("update of the fast device: %v", err)
	}
	select {
	case err := <-slowDone:
		t.Fatalf("the stalled update returned: %v", err)
	default:
	}
	// Close stops the stalled update.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-slowDone; !errors.Is(err, driver.ErrNotOpen) {
		t.Fatalf("update stopped by Close: %v, want ErrNotOpen", err)
	}
}
