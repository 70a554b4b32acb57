package mqtt

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve/internal/gateway/driver"
)

// These tests feed the driver's message handler directly: no broker.

func testSession(t *testing.T, settings map[string]string) (*session, *syncBuffer) {
	t.Helper()
	cfg, err := parseSettings(settings)
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	s := newSession(cfg, driver.App{UUID: "app1"}, slog.New(slog.NewTextHandler(out, nil)))
	t.Cleanup(s.cancel)
	return s, out
}

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func TestHandleStatus(t *testing.T) {
	s, _ := testSession(t, nil)
	s.handle("reeve/app1/dev-a/status", []byte(`{"online":true,"commit":"c1","device_type":"esp32","info":{"model":"m"}}`), true, t0)
	s.handle("reeve/app1/dev-b/status", []byte(`{"online":true}`), true, t0)
	a, b := s.devices["dev-a"], s.devices["dev-b"]
	if a == nil || !a.online || a.commit != "c1" || a.deviceType != "esp32" || a.info["model"] != "m" {
		t.Fatalf("dev-a %+v", a)
	}
	if b == nil || !b.online || b.commit != "" {
		t.Fatalf("dev-b %+v", b)
	}
	// The will changes only what it carries.
	s.handle("reeve/app1/dev-a/status", []byte(`{"online":false}`), false, t0)
	if a.online || a.commit != "c1" || a.deviceType != "esp32" {
		t.Fatalf("dev-a after its will %+v", a)
	}
	// An online status is the whole account: what it leaves out is gone.
	s.handle("reeve/app1/dev-a/status", []byte(`{"online":true,"commit":"c2"}`), false, t0)
	if !a.online || a.commit != "c2" || a.deviceType != "" || a.info != nil {
		t.Fatalf("dev-a back %+v", a)
	}
	// Live changes are system log lines; retained ones (on subscribing) not.
	lines := a.logs.drain(t0)
	if len(lines) != 2 || lines[0].Message != "offline" || lines[1].Message != "online, running c2" || !lines[1].System {
		t.Fatalf("dev-a's system lines %+v", lines)
	}
	if lines := b.logs.drain(t0); lines != nil {
		t.Fatalf("dev-b's lines %+v", lines)
	}
	// A deleted status removes the device.
	s.handle("reeve/app1/dev-b/status", nil, true, t0)
	if _, ok := s.devices["dev-b"]; ok {
		t.Fatal("dev-b still there")
	}
}

// Bad input is logged with the device it names and ignored; the others go
// on as before.
func TestHandleBadInput(t *testing.T) {
	s, out := testSession(t, nil)
	s.handle("reeve/app1/dev-a/status", []byte(`{"online":true,"commit":"c1"}`), true, t0)
	s.handle("reeve/app1/dev-b/status", []byte(`{"online":true,"commit":"c1"}`), true, t0)
	for _, m := range []struct{ topic, payload, log string }{
		{"reeve/app1/dev-a/bogus", `{}`, `device=dev-a`},
		{"reeve/app1/dev-a/status", `{"online":tru`, `device=dev-a`},
		{"reeve/app1/dev-a/status", `{"online":false,"commit":7}`, `device=dev-a`},
		{"reeve/app1/dev-a/logs", "\x00\x01", `device=dev-a`},
		{"reeve/app1/dev-a/ack", `{"commit":"c2","chunk":0,"crc32":1,"next":1}`, `no update is in progress (nothing was sent)" device=dev-a`},
		{"reeve/app1/dev-a/ack", `{"chunk":0}`, `device=dev-a`},
		{"reeve/app1/dev-a/result", `{"ok":1}`, `device=dev-a`},
		{"reeve/app1/nobody/logs", `{"message":"hi"}`, `device=nobody`},
		{"reeve/app1/nobody/ack", `{"commit":"c2","next":0}`, `device=nobody`},
		{"reeve/app1/nobody/result", `{"commit":"c2","ok":false}`, `device=nobody`},
		{"reeve/app2/dev-a/status", `{"online":false}`, `not under reeve/app1/`},
	} {
		before := out.String()
		s.handle(m.topic, []byte(m.payload), false, t0)
		logged := strings.TrimPrefix(out.String(), before)
		if !strings.Contains(logged, "level=WARN") || !strings.Contains(logged, m.log) {
			t.Errorf("%s %q: logged %q, want a warning with %q", m.topic, m.payload, logged, m.log)
		}
	}
	if _, ok := s.devices["nobody"]; ok {
		t.Error("a device with no status was made from its other messages")
	}
	for _, id := range []string{"dev-a", "dev-b"} {
		d := s.devices[id]
		if !d.online || d.commit != "c1" {
			t.Errorf("%s after bad input: %+v", id, d)
		}
	}
	// Our own kinds, heard from another client, are not warned about.
	before := out.String()
	s.handle("reeve/app1/dev-a/cmd", []byte(`{"cmd":"restart"}`), false, t0)
	s.handle("reeve/app1/dev-a/fw/3", []byte{1, 2, 3}, false, t0)
	if out.String() != before {
		t.Errorf("logged %q", strings.TrimPrefix(out.String(), before))
	}
	// dev-b's logs still flow.
	s.handle("reeve/app1/dev-b/logs", []byte(`{"message":"fine"}`), false, t0)
	if l := s.devices["dev-b"].logs.drain(t0); len(l) != 1 || l[0].Message != "fine" {
		t.Errorf("dev-b's logs %+v", l)
	}
}

// Messages for an Update in progress reach its inbox, and only its device's.
func TestHandleToUpdate(t *testing.T) {
	s, _ := testSession(t, nil)
	s.handle("reeve/app1/dev-a/status", []byte(`{"online":true,"commit":"c1"}`), true, t0)
	s.handle("reeve/app1/dev-b/status", []byte(`{"online":true,"commit":"c1"}`), true, t0)
	in, running, err := s.begin("dev-a")
	if err != nil || running != "c1" {
		t.Fatal(running, err)
	}
	if _, _, err := s.begin("dev-a"); err == nil {
		t.Fatal("a second update of the same device began")
	}
	s.handle("reeve/app1/dev-a/ack", []byte(`{"commit":"c2","next":0}`), false, t0)
	s.handle("reeve/app1/dev-b/ack", []byte(`{"commit":"c2","next":0}`), false, t0)
	s.handle("reeve/app1/dev-a/result", []byte(`{"commit":"c2","ok":false,"reason":"no"}`), false, t0)
	s.handle("reeve/app1/dev-a/status", []byte(`{"online":false}`), false, t0)
	ev := in.take()
	if len(ev) != 3 || ev[0].ack == nil || ev[1].result == nil || ev[2].status == nil || ev[2].status.Online || deref(ev[2].status.Commit) != "c1" {
		t.Fatalf("events %+v", ev)
	}
	select {
	case <-in.wake:
	default:
		t.Fatal("no wake-up")
	}
	s.end("dev-a", in)
	if s.devices["dev-a"].xfer != nil {
		t.Fatal("update still marked")
	}
	if _, _, err := s.begin("dev-a"); err == nil || !strings.Contains(err.Error(), "offline") {
		t.Fatalf("update of an offline device began: %v", err)
	}
}

func TestInboxBounded(t *testing.T) {
	in := newInbox()
	for range maxInbox + 10 {
		in.push(event{removed: true})
	}
	if len(in.take()) != maxInbox || in.dropped != 10 {
		t.Fatalf("dropped %d", in.dropped)
	}
}

func TestLogRing(t *testing.T) {
	var r logRing
	if r.drain(t0) != nil {
		t.Fatal("lines from an empty ring")
	}
	for i := range 3 {
		r.push(driver.LogLine{Message: fmt.Sprint(i)}, 5)
	}
	if got := messages(r.drain(t0)); got != "0 1 2" {
		t.Fatalf("lines %q", got)
	}
	for i := range 13 {
		r.push(driver.LogLine{Time: t0.Add(time.Duration(i) * time.Second), Message: fmt.Sprint(i)}, 5)
	}
	lines := r.drain(t0)
	if got := messages(lines); got != "8 log lines dropped: the device logged faster than the gateway read them 8 9 10 11 12" {
		t.Fatalf("lines %q", got)
	}
	if !lines[0].System || !lines[0].Time.Equal(t0.Add(8*time.Second)) {
		t.Fatalf("dropped line %+v", lines[0])
	}
	r.push(driver.LogLine{Message: "after"}, 5)
	if got := messages(r.drain(t0)); got != "after" {
		t.Fatalf("lines after a drain %q", got)
	}
}

func messages(lines []driver.LogLine) string {
	var m []string
	for _, l := range lines {
		m = append(m, l.Message)
	}
	return strings.Join(m, " ")
}

func TestWarnLimiter(t *testing.T) {
	var w warnLimiter
	n := 0
	for range 100 {
		if ok, _ := w.allow("dev-a", t0); ok {
			n++
		}
	}
	if ok, _ := w.allow("dev-b", t0); !ok || n != warnBurst {
		t.Fatalf("allowed %d of dev-a's; dev-b's %v", n, ok)
	}
	ok, suppressed := w.allow("dev-a", t0.Add(warnWindow+time.Second))
	if !ok || suppressed != 100-warnBurst {
		t.Fatalf("next window: %v, %d suppressed", ok, suppressed)
	}
}

func TestSettings(t *testing.T) {
	c, err := parseSettings(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "127.0.0.1:1883" || c.prefix != "reeve" || c.chunkSize != 1024 || c.tls != nil || c.ackTimeout != 10*time.Second || c.logBuffer != 1000 {
		t.Errorf("defaults %+v", c)
	}
	c, err = parseSettings(map[string]string{"broker": "mqtts://broker.example", "prefix": "site/3", "chunk_size": "4096",
		"ack_timeout": "2s", "retries": "0", "listen": "ignored"})
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "broker.example:8883" || c.tls == nil || c.tls.ServerName != "broker.example" || c.prefix != "site/3" || c.chunkSize != 4096 || c.retries != 0 {
		t.Errorf("settings %+v", c)
	}
	for k, v := range map[string]string{
		"broker":      "http://x",
		"prefix":      "a/+",
		"chunk_size":  "8",
		"ack_timeout": "soon",
		"retries":     "-1",
		"log_buffer":  "0",
		"ca_file":     "/nonexistent",
	} {
		s := map[string]string{k: v}
		if k == "ca_file" {
			s["broker"] = "tls://x"
		}
		if _, err := New(s); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%q: %v", k, v, err)
		}
	}
}
