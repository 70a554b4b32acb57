package mqtt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"reeve.dev/reeve/internal/gateway/driver"
)

// The driver's own cases, beyond the conformance suite: failures, resume,
// retries, floods and bad input, through a real broker.

const waitTimeout = 60 * time.Second

// waitFor retries f until it returns "" or waitTimeout passes.
func waitFor(t testing.TB, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s (after %s)", what, msg, waitTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type rig struct {
	b    *testBroker
	app  driver.App
	d    *Driver
	peer *simPeer
	logs *syncBuffer // what the driver logged
	ctx  context.Context
}

// newRig starts a broker, opens a driver with settings (and the broker) on
// a fresh app, and makes simulated devices for it.
func newRig(t *testing.T, settings map[string]string) *rig {
	t.Helper()
	b := newBroker(t)
	r := &rig{b: b, app: driver.App{ID: 7, UUID: newUUID(), Name: "sensors"}, logs: &syncBuffer{}, ctx: t.Context()}
	s := map[string]string{"broker": b.url}
	for k, v := range settings {
		s[k] = v
	}
	drv, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	r.d = drv.(*Driver)
	r.d.log = slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	prefix := s["prefix"]
	if prefix == "" {
		prefix = DefaultPrefix
	}
	r.peer = newPeer(t, b, prefix, r.app.UUID)
	if err := r.d.Open(r.ctx, r.app); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.d.Close() })
	return r
}

// add brings a device up and waits until the driver sees it online.
func (r *rig) add(t *testing.T, id, commit string) *simDevice {
	t.Helper()
	r.peer.Add(t, id, commit)
	r.waitDevice(t, id, func(d driver.Device, ok bool) bool { return ok && d.Online && d.Commit == commit })
	return r.peer.get(t, id)
}

func (r *rig) waitDevice(t *testing.T, id string, ok func(driver.Device, bool) bool) driver.Device {
	t.Helper()
	var got driver.Device
	waitFor(t, "scan of "+id, func() string {
		devs, err := r.d.Scan(r.ctx)
		if err != nil {
			return err.Error()
		}
		var found bool
		for _, d := range devs {
			if d.LocalID == id {
				got, found = d, true
			}
		}
		if ok(got, found) {
			return ""
		}
		return fmt.Sprintf("%+v (found %v)", got, found)
	})
	return got
}

// waitLog waits until the driver logged a line holding every part.
func (r *rig) waitLog(t *testing.T, parts ...string) {
	t.Helper()
	waitFor(t, "driver log", func() string {
		for l := range strings.SplitSeq(r.logs.String(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(l, p)
			}
			if all {
				return ""
			}
		}
		return fmt.Sprintf("no line with %q in:\n%s", parts, r.logs.String())
	})
}

// firmware writes a release's firmware file.
func firmware(t *testing.T, commit string, size int) driver.Firmware {
	t.Helper()
	dir := t.TempDir()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*13 + len(commit))
	}
	if err := os.WriteFile(filepath.Join(dir, "fw.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return driver.Firmware{Commit: commit, Dir: dir, File: "fw.bin", Size: int64(size), SHA256: hex.EncodeToString(sum[:])}
}

// progressLog records what Update told.
type progressLog struct {
	mu  sync.Mutex
	pcs []int
}

func (p *progressLog) fn(pc int) { p.mu.Lock(); p.pcs = append(p.pcs, pc); p.mu.Unlock() }

func (p *progressLog) get() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.pcs)
}

func TestUpdateRefusedIsUpdateError(t *testing.T) {
	r := newRig(t, nil)
	dev := r.add(t, "dev-a", "c1")
	dev.mu.Lock()
	dev.refuse = "firmware is for another board"
	dev.mu.Unlock()
	err := r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 5000), nil)
	var ue *driver.UpdateError
	if !errors.As(err, &ue) || ue.Reason != "firmware is for another board" || ue.LocalID != "dev-a" {
		t.Fatalf("update: %v, want an UpdateError with the device's reason", err)
	}
	if got := r.peer.Running(t, "dev-a"); got != "c1" {
		t.Fatalf("runs %q", got)
	}
}

func TestUpdateBadImageIsUpdateError(t *testing.T) {
	r := newRig(t, map[string]string{"chunk_size": "512"})
	dev := r.add(t, "dev-a", "c1")
	dev.mu.Lock()
	dev.corrupt = true
	dev.mu.Unlock()
	err := r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 3000), nil)
	var ue *driver.UpdateError
	if !errors.As(err, &ue) || !strings.Contains(ue.Reason, "sha256") {
		t.Fatalf("update: %v, want an UpdateError about the sha256", err)
	}
}

func TestUpdateRollbackIsUpdateError(t *testing.T) {
	r := newRig(t, map[string]string{"chunk_size": "512"})
	dev := r.add(t, "dev-a", "c1")
	dev.mu.Lock()
	dev.rollback = true
	dev.mu.Unlock()
	err := r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 3000), nil)
	var ue *driver.UpdateError
	if !errors.As(err, &ue) || !strings.Contains(ue.Reason, `"c1"`) {
		t.Fatalf("update: %v, want an UpdateError saying it came back with c1", err)
	}
}

// A device that goes away mid-transfer fails the Update with ErrOffline;
// the next Update goes on from the chunk after the last one it acknowledged.
func TestUpdateOfflineThenResume(t *testing.T) {
	r := newRig(t, map[string]string{"chunk_size": "1000"})
	dev := r.add(t, "dev-a", "c1")
	dev.mu.Lock()
	dev.dieAfter = 9 // holds chunks 0…9 when it dies
	dev.mu.Unlock()
	fw := firmware(t, "c2", 25_500) // 26 chunks

	var first progressLog
	err := r.d.Update(r.ctx, "dev-a", fw, first.fn)
	if !errors.Is(err, driver.ErrOffline) {
		t.Fatalf("update of a device that went away: %v, want ErrOffline", err)
	}
	if pcs := first.get(); len(pcs) == 0 || pcs[len(pcs)-1] >= 100 {
		t.Fatalf("progress %v of a broken transfer", pcs)
	}
	r.waitDevice(t, "dev-a", func(d driver.Device, ok bool) bool { return ok && !d.Online })

	r.add(t, "dev-a", "c1")
	dev.mu.Lock()
	before := len(dev.received)
	dev.mu.Unlock()
	var second progressLog
	if err := r.d.Update(r.ctx, "dev-a", fw, second.fn); err != nil {
		t.Fatalf("update again: %v", err)
	}
	if got := r.peer.Running(t, "dev-a"); got != "c2" {
		t.Fatalf("runs %q, want c2", got)
	}
	dev.mu.Lock()
	starts, again := slices.Clone(dev.starts), slices.Clone(dev.received[before:])
	dev.mu.Unlock()
	if !slices.Equal(starts, []int{0, 10}) {
		t.Errorf("the device answered the update commands with %v, want [0 10]", starts)
	}
	if len(again) == 0 || again[0] != 10 || slices.Contains(again, 9) {
		t.Errorf("chunks sent the second time: %v, want 10 on", again)
	}
	if pcs := second.get(); len(pcs) == 0 || pcs[len(pcs)-1] != 100 || pcs[0] != 0 || !slices.IsSorted(pcs) {
		t.Errorf("progress %v", pcs)
	}
}

// An acknowledgement that does not come makes the gateway send the chunk
// again; a wrong crc32 too.
func TestUpdateRetriesLostAndBadChunks(t *testing.T) {
	r := newRig(t, map[string]string{"chunk_size": "256", "ack_timeout": "300ms"})
	dev := r.add(t, "dev-a", "c1")
	dev.mu.Lock()
	dev.dropAcks = map[int]int{3: 1, 7: 2}
	dev.badCRC = map[int]int{5: 1}
	dev.mu.Unlock()
	if err := r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 2560), nil); err != nil {
		t.Fatalf("update: %v", err)
	}
	dev.mu.Lock()
	got := slices.Clone(dev.received)
	dev.mu.Unlock()
	count := func(n int) int {
		c := 0
		for _, x := range got {
			if x == n {
				c++
			}
		}
		return c
	}
	if count(3) != 2 || count(7) != 3 || count(5) != 2 || count(4) != 1 {
		t.Errorf("chunks received %v: want 3 twice, 7 three times, 5 twice, others once", got)
	}
	r.waitLog(t, "crc32", "device=dev-a")
}

// A device that never answers the update command is offline to the gateway.
func TestUpdateNoAnswerIsOffline(t *testing.T) {
	r := newRig(t, map[string]string{"ack_timeout": "100ms", "retries": "2"})
	dev := r.add(t, "dev-a", "c1")
	dev.mu.Lock()
	dev.deaf = true
	dev.mu.Unlock()
	err := r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 100), nil)
	if !errors.Is(err, driver.ErrOffline) || !strings.Contains(err.Error(), "update command") {
		t.Fatalf("update: %v, want ErrOffline", err)
	}
}

func TestUpdateOfRunningCommitSendsNothing(t *testing.T) {
	r := newRig(t, nil)
	dev := r.add(t, "dev-a", "c2")
	var p progressLog
	if err := r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 100), p.fn); err != nil {
		t.Fatal(err)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if len(dev.starts) != 0 || !slices.Equal(p.get(), []int{100}) {
		t.Fatalf("update commands %v, progress %v", dev.starts, p.get())
	}
}

func TestUpdateChecksTheFile(t *testing.T) {
	r := newRig(t, nil)
	r.add(t, "dev-a", "c1")
	fw := firmware(t, "c2", 100)
	fw.SHA256 = strings.Repeat("0", 64)
	if err := r.d.Update(r.ctx, "dev-a", fw, nil); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("update with a wrong digest: %v", err)
	}
	fw = firmware(t, "c2", 100)
	fw.File = "../../etc/passwd"
	if err := r.d.Update(r.ctx, "dev-a", fw, nil); err == nil {
		t.Fatal("update of a file outside the assets worked")
	}
}

// A device that logs more than the buffer holds loses its oldest lines,
// counted.
func TestLogsFloodDropsOldest(t *testing.T) {
	r := newRig(t, map[string]string{"log_buffer": "5"})
	dev := r.add(t, "dev-a", "c1")
	if _, err := r.d.Logs(r.ctx, "dev-a"); err != nil { // the "online" system line
		t.Fatal(err)
	}
	var payload []byte
	for i := range 12 {
		payload = fmt.Appendf(payload, `{"ts":%d,"message":"line %d"}`+"\n", 1_700_000_000+i, i)
	}
	dev.mu.Lock()
	if err := dev.publish(r.peer.topics.logs("dev-a"), payload, false); err != nil {
		t.Fatal(err)
	}
	dev.mu.Unlock()
	var got []driver.LogLine
	waitFor(t, "logs", func() string {
		lines, err := r.d.Logs(r.ctx, "dev-a")
		if err != nil {
			return err.Error()
		}
		got = append(got, lines...)
		if len(got) == 0 {
			return "none yet"
		}
		return ""
	})
	var msgs []string
	for _, l := range got {
		msgs = append(msgs, l.Message)
	}
	want := []string{"7 log lines dropped: the device logged faster than the gateway read them", "line 7", "line 8", "line 9", "line 10", "line 11"}
	if !slices.Equal(msgs, want) || !got[0].System || got[1].System {
		t.Fatalf("logs %q, want %q", msgs, want)
	}
	if !got[5].Time.Equal(time.Unix(1_700_000_011, 0)) {
		t.Errorf("time %v, want the device's", got[5].Time)
	}
}

// Messages that do not fit the scheme are logged, naming the device, and
// change nothing; the other devices work on.
func TestBadInputIsLoggedAndIgnored(t *testing.T) {
	r := newRig(t, nil)
	r.add(t, "dev-a", "c1")
	r.add(t, "dev-b", "c1")

	raw := rawClient(t, r.b)
	base := DefaultPrefix + "/" + r.app.UUID
	for _, m := range []struct{ topic, payload string }{
		{base + "/dev-a/bogus", `{"x":1}`},
		{base + "/dev-a/fw/ack", `{}`},
		{base + "/dev-b/status", `not json`},
		{base + "/dev-a/status", `{"commit":"c9"}`}, // no "online"
		{base + "/dev-a/ack", `{"commit":"c2","chunk":3,"crc32":1,"next":4}`},
		{base + "/dev-a/result", `{"commit":"c2","ok":false,"reason":"brown-out"}`},
		{base + "/dev-a/logs", `{"message":"good line"}` + "\n" + `{"message":` + "\n" + `[1,2]`},
		{base + "/ghost/logs", `{"message":"who am I"}`},
		{base + "/ghost/ack", `{"commit":"c2","next":0}`},
		{base + "/dev-a", `{"online":true}`},
	} {
		if _, err := raw.Publish(r.ctx, &paho.Publish{Topic: m.topic, Payload: []byte(m.payload), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	r.waitLog(t, "device=dev-a", "outside the scheme", "bogus")
	r.waitLog(t, "device=dev-a", "outside the scheme", "fw/ack")
	r.waitLog(t, "device=dev-b", "ignored a status", "not a JSON object")
	r.waitLog(t, "device=dev-a", "ignored a status", "online")
	r.waitLog(t, "device=dev-a", "firmware acknowledgement", "nothing was sent")
	r.waitLog(t, "device=dev-a", "failed install", "brown-out")
	r.waitLog(t, "device=dev-a", "ignored a log line", "line 2")
	r.waitLog(t, "device=dev-a", "ignored a log line", "line 3")
	r.waitLog(t, "device=ghost", "logs of a device that has no status")
	r.waitLog(t, "device=ghost", "firmware acknowledgement", "no status")
	r.waitLog(t, "device=dev-a", "outside the scheme", "nothing after the device")

	devs, err := r.d.Scan(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || !devs[0].Online || !devs[1].Online || devs[0].Commit != "c1" || devs[1].Commit != "c1" {
		t.Fatalf("scan after bad input: %+v", devs)
	}
	if _, err := r.d.Logs(r.ctx, "ghost"); !errors.Is(err, driver.ErrUnknownDevice) {
		t.Errorf("logs of ghost: %v", err)
	}
	var msgs []string
	waitFor(t, "dev-a's good line", func() string {
		lines, _ := r.d.Logs(r.ctx, "dev-a")
		for _, l := range lines {
			if !l.System {
				msgs = append(msgs, l.Message)
			}
		}
		if len(msgs) == 0 {
			return "none"
		}
		return ""
	})
	if !slices.Equal(msgs, []string{"good line"}) {
		t.Errorf("dev-a's lines %q", msgs)
	}
	// Both still take commands and firmware.
	if err := r.d.Restart(r.ctx, "dev-b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dev-b restarted", func() string {
		if n := r.peer.Restarts(t, "dev-b"); n != 1 {
			return fmt.Sprint(n)
		}
		return ""
	})
	if err := r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 3000), nil); err != nil {
		t.Fatal(err)
	}
}

func rawClient(t *testing.T, b *testBroker) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	cli := paho.NewClient(paho.ClientConfig{Conn: conn})
	if _, err := cli.Connect(t.Context(), &paho.Connect{ClientID: "raw-" + newUUID()[:8], CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Disconnect(&paho.Disconnect{}) })
	return cli
}

func TestRemovedStatusRemovesTheDevice(t *testing.T) {
	r := newRig(t, nil)
	r.add(t, "dev-a", "c1")
	r.peer.Remove(t, "dev-a")
	raw := rawClient(t, r.b)
	if _, err := raw.Publish(r.ctx, &paho.Publish{Topic: r.peer.topics.status("dev-a"), Retain: true, QoS: 1}); err != nil {
		t.Fatal(err)
	}
	r.waitDevice(t, "dev-a", func(_ driver.Device, found bool) bool { return !found })
	if err := r.d.Restart(r.ctx, "dev-a"); !errors.Is(err, driver.ErrUnknownDevice) {
		t.Fatalf("restart of a removed device: %v", err)
	}
}

func TestCommandsToAnOfflineDevice(t *testing.T) {
	r := newRig(t, nil)
	r.add(t, "dev-a", "c1")
	r.peer.Remove(t, "dev-a")
	d := r.waitDevice(t, "dev-a", func(d driver.Device, found bool) bool { return found && !d.Online })
	if d.Commit != "c1" || d.DeviceType != "esp32" || d.Info["model"] != "sim" || d.Info["rssi"] != "-60" {
		t.Errorf("an offline device keeps what it said: %+v", d)
	}
	for name, err := range map[string]error{
		"restart":   r.d.Restart(r.ctx, "dev-a"),
		"identify":  r.d.Identify(r.ctx, "dev-a"),
		"configure": r.d.Configure(r.ctx, "dev-a", nil, nil),
		"update":    r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 10), nil),
	} {
		if !errors.Is(err, driver.ErrOffline) {
			t.Errorf("%s: %v, want ErrOffline", name, err)
		}
	}
}

func TestClosedDriver(t *testing.T) {
	r := newRig(t, nil)
	r.add(t, "dev-a", "c1")
	if err := r.d.Open(r.ctx, r.app); err == nil {
		t.Error("open of an open driver worked")
	}
	if err := r.d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.d.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	_, scanErr := r.d.Scan(r.ctx)
	_, logsErr := r.d.Logs(r.ctx, "dev-a")
	for name, err := range map[string]error{
		"scan":      scanErr,
		"logs":      logsErr,
		"restart":   r.d.Restart(r.ctx, "dev-a"),
		"identify":  r.d.Identify(r.ctx, "dev-a"),
		"configure": r.d.Configure(r.ctx, "dev-a", nil, nil),
		"update":    r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 10), nil),
	} {
		if !errors.Is(err, driver.ErrNotOpen) {
			t.Errorf("%s: %v, want ErrNotOpen", name, err)
		}
	}
}

// Close during an Update ends it with ErrNotOpen.
func TestCloseDuringUpdate(t *testing.T) {
	r := newRig(t, map[string]string{"ack_timeout": "1h"})
	dev := r.add(t, "dev-a", "c1")
	dev.mu.Lock()
	dev.deaf = true
	dev.mu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- r.d.Update(r.ctx, "dev-a", firmware(t, "c2", 10), nil) }()
	waitFor(t, "the update command sent", func() string {
		r.d.mu.Lock()
		s := r.d.s
		r.d.mu.Unlock()
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.devices["dev-a"].xfer == nil {
			return "no update in progress"
		}
		return ""
	})
	if err := r.d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, driver.ErrNotOpen) {
		t.Fatalf("update when closed: %v, want ErrNotOpen", err)
	}
}

// The driver keeps its link: a broker that restarts is reconnected to, and
// while it is away every device shows offline.
func TestReconnectsAfterBrokerRestart(t *testing.T) {
	r := newRig(t, nil)
	r.add(t, "dev-a", "c1")
	r.b.restart(t) // forgets retained messages: the device must say itself again
	r.waitDevice(t, "dev-a", func(d driver.Device, found bool) bool { return found && !d.Online })
	r.peer.Add(t, "dev-a", "c1")
	r.waitDevice(t, "dev-a", func(d driver.Device, found bool) bool { return found && d.Online })
	waitFor(t, "restart after the broker came back", func() string {
		if err := r.d.Restart(r.ctx, "dev-a"); err != nil {
			return err.Error()
		}
		return ""
	})
	r.waitLog(t, "broker link lost")
	r.waitLog(t, "broker link up again")
}

// Open fails when no broker answers.
func TestOpenWithoutBroker(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	drv, err := New(map[string]string{"broker": fmt.Sprintf("tcp://127.0.0.1:%d", port), "connect_timeout": "2s"})
	if err != nil {
		t.Fatal(err)
	}
	if err := drv.Open(t.Context(), driver.App{UUID: newUUID()}); err == nil {
		drv.Close()
		t.Fatal("open without a broker worked")
	}
	if _, err := drv.Scan(t.Context()); !errors.Is(err, driver.ErrNotOpen) {
		t.Fatalf("scan after a failed open: %v", err)
	}
}

// Close leaves no goroutine of the driver's (nor of its MQTT client)
// behind, and a reopened driver works.
func TestCloseStopsGoroutines(t *testing.T) {
	b := newBroker(t)
	drv, err := New(map[string]string{"broker": b.url})
	if err != nil {
		t.Fatal(err)
	}
	app := driver.App{UUID: newUUID()}
	for range 2 {
		if err := drv.Open(t.Context(), app); err != nil {
			t.Fatal(err)
		}
		if _, err := drv.Scan(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := drv.Close(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "goroutines gone", func() string {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "paho.golang") || strings.Contains(g, "mqtt.(*session)") {
				return "still running:\n" + g
			}
		}
		return ""
	})
}
