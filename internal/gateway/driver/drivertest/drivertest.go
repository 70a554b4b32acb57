// Package drivertest is the conformance suite every gateway driver passes:
// what the gateway relies on, checked through driver.Driver only, against
// real devices on the other end of the link (a Peer) — simulated boards,
// an LwM2M client, an MQTT client through a real broker.
//
//	func TestConformance(t *testing.T) {
//		drivertest.Run(t, func(t *testing.T) drivertest.Setup { … })
//	}
package drivertest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve/internal/gateway/driver"
)

// Peer is the devices on the other end of a driver's link, as a driver's
// test makes them. Its methods read the devices' own state, never the
// driver's.
type Peer interface {
	// Add brings up a device with that local ID, running commit ("" for
	// none), and returns once it is up (booted, registered, connected).
	Add(t testing.TB, localID, commit string)
	// Remove takes the device away (powered off, de-registered).
	Remove(t testing.TB, localID string)
	// Running is the commit the device runs, by its own account.
	Running(t testing.TB, localID string) string
	// Restarts counts the device's reboots.
	Restarts(t testing.TB, localID string) int
	// Identified counts the times it was asked to show itself.
	Identified(t testing.TB, localID string) int
	// Configured returns the environment and config it got last.
	Configured(t testing.TB, localID string) (env, config map[string]string)
	// Log makes the device log a line.
	Log(t testing.TB, localID, message string)
}

// Setup is one driver under test: opened by the suite with App, and
// closed by it.
type Setup struct {
	Driver driver.Driver
	Peer   Peer
	App    driver.App
	// Unsupported names what the link cannot do, each case skipped:
	// "logs", "identify", "configure".
	Unsupported []string
}

// Run runs the suite; setup makes a fresh driver and peer for each case
// (and registers their cleanup with t).
func Run(t *testing.T, setup func(t *testing.T) Setup) {
	cases := []struct {
		name string
		need string
		fn   func(t *testing.T, s *suite)
	}{
		{"ScanFindsDevices", "", testScan},
		{"UpdateInstallsFirmware", "", testUpdate},
		{"UpdateSeveralAtOnce", "", testUpdateConcurrent},
		{"UnknownDevice", "", testUnknown},
		{"Restart", "", testRestart},
		{"Identify", "identify", testIdentify},
		{"Configure", "configure", testConfigure},
		{"Logs", "logs", testLogs},
		{"CloseReleasesAndOpenResumes", "", testReopen},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := setup(t)
			if c.need != "" && slices.Contains(st.Unsupported, c.need) {
				t.Skipf("the %s driver's link has no %s", st.Driver.Name(), c.need)
			}
			s := &suite{Setup: st, ctx: t.Context()}
			if err := st.Driver.Open(s.ctx, st.App); err != nil {
				t.Fatalf("open: %v", err)
			}
			t.Cleanup(func() {
				if err := st.Driver.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			c.fn(t, s)
		})
	}
}

type suite struct {
	Setup
	ctx context.Context
}

// Timeout bounds every wait of the suite: drivers learn of devices at
// their link's pace.
const Timeout = 60 * time.Second

// eventually retries f until it returns "" or Timeout passes.
func eventually(t testing.TB, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s (after %s)", what, msg, Timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scanFor waits until Scan shows the device as ok says.
func (s *suite) scanFor(t testing.TB, localID, what string, ok func(driver.Device, bool) bool) driver.Device {
	t.Helper()
	var got driver.Device
	eventually(t, what, func() string {
		devs, err := s.Driver.Scan(s.ctx)
		if err != nil {
			return fmt.Sprintf("scan: %v", err)
		}
		var found bool
		for _, d := range devs {
			if d.LocalID == localID {
				got, found = d, true
			}
		}
		if ok(got, found) {
			return ""
		}
		return fmt.Sprintf("scan shows %+v (found %v)", got, found)
	})
	return got
}

// firmware makes a release's firmware: one file served over HTTP.
func firmware(t testing.TB, commit string, size int) driver.Firmware {
	t.Helper()
	dir := t.TempDir()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + len(commit))
	}
	copy(data, "reeve firmware "+commit+"\n")
	if err := os.WriteFile(filepath.Join(dir, "firmware.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(data)
	return driver.Firmware{Commit: commit, Dir: dir, File: "firmware.bin", Size: int64(size),
		SHA256: hex.EncodeToString(sum[:]), URL: srv.URL + "/firmware.bin"}
}

func testScan(t *testing.T, s *suite) {
	s.Peer.Add(t, "dev-a", "c1")
	s.Peer.Add(t, "dev-b", "")
	a := s.scanFor(t, "dev-a", "dev-a online with c1", func(d driver.Device, found bool) bool { return found && d.Online && d.Commit == "c1" })
	if a.LocalID != "dev-a" {
		t.Fatalf("scan: %+v", a)
	}
	s.scanFor(t, "dev-b", "dev-b online without a commit", func(d driver.Device, found bool) bool { return found && d.Online && d.Commit == "" })
	s.Peer.Remove(t, "dev-b")
	s.scanFor(t, "dev-b", "dev-b gone or offline", func(d driver.Device, found bool) bool { return !found || !d.Online })
	s.scanFor(t, "dev-a", "dev-a still online", func(d driver.Device, found bool) bool { return found && d.Online })
}

func testUpdate(t *testing.T, s *suite) {
	s.Peer.Add(t, "dev-a", "c1")
	s.scanFor(t, "dev-a", "dev-a online", func(d driver.Device, found bool) bool { return found && d.Online })
	fw := firmware(t, "c2", 200_000)
	var (
		mu  sync.Mutex
		pcs []int
	)
	err := s.Driver.Update(s.ctx, "dev-a", fw, func(p int) {
		mu.Lock()
		pcs = append(pcs, p)
		mu.Unlock()
	})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if got := s.Peer.Running(t, "dev-a"); got != "c2" {
		t.Fatalf("the device runs %q after the update, want c2", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(pcs) == 0 || pcs[len(pcs)-1] != 100 {
		t.Errorf("progress %v: want it to end at 100", pcs)
	}
	for i := 1; i < len(pcs); i++ {
		if pcs[i] < pcs[i-1] || pcs[i] < 0 || pcs[i] > 100 {
			t.Errorf("progress %v: want 0..100, never going back", pcs)
			break
		}
	}
	s.scanFor(t, "dev-a", "dev-a reports c2", func(d driver.Device, found bool) bool { return found && d.Online && d.Commit == "c2" })
}

func testUpdateConcurrent(t *testing.T, s *suite) {
	ids := []string{"dev-1", "dev-2", "dev-3", "dev-4", "dev-5"}
	for _, id := range ids {
		s.Peer.Add(t, id, "c1")
	}
	for _, id := range ids {
		s.scanFor(t, id, id+" online", func(d driver.Device, found bool) bool { return found && d.Online })
	}
	fw := firmware(t, "c3", 50_000)
	errs := make(chan error, len(ids))
	for _, id := range ids {
		go func() { errs <- s.Driver.Update(s.ctx, id, fw, func(int) {}) }()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Errorf("update: %v", err)
		}
	}
	for _, id := range ids {
		if got := s.Peer.Running(t, id); got != "c3" {
			t.Errorf("%s runs %q, want c3", id, got)
		}
	}
}

func testUnknown(t *testing.T, s *suite) {
	fw := firmware(t, "c2", 1000)
	for name, err := range map[string]error{
		"update":  s.Driver.Update(s.ctx, "nobody", fw, func(int) {}),
		"restart": s.Driver.Restart(s.ctx, "nobody"),
	} {
		if !errors.Is(err, driver.ErrUnknownDevice) {
			t.Errorf("%s of an unknown device: %v, want ErrUnknownDevice", name, err)
		}
	}
}

func testRestart(t *testing.T, s *suite) {
	s.Peer.Add(t, "dev-a", "c1")
	s.scanFor(t, "dev-a", "dev-a online", func(d driver.Device, found bool) bool { return found && d.Online })
	before := s.Peer.Restarts(t, "dev-a")
	if err := s.Driver.Restart(s.ctx, "dev-a"); err != nil {
		t.Fatalf("restart: %v", err)
	}
	eventually(t, "the device restarted", func() string {
		if n := s.Peer.Restarts(t, "dev-a"); n != before+1 {
			return fmt.Sprintf("%d restarts, want %d", n, before+1)
		}
		return ""
	})
	s.scanFor(t, "dev-a", "dev-a back online with c1", func(d driver.Device, found bool) bool { return found && d.Online && d.Commit == "c1" })
}

func testIdentify(t *testing.T, s *suite) {
	s.Peer.Add(t, "dev-a", "c1")
	s.scanFor(t, "dev-a", "dev-a online", func(d driver.Device, found bool) bool { return found && d.Online })
	if err := s.Driver.Identify(s.ctx, "dev-a"); err != nil {
		t.Fatalf("identify: %v", err)
	}
	eventually(t, "the device showed itself", func() string {
		if n := s.Peer.Identified(t, "dev-a"); n != 1 {
			return fmt.Sprintf("identified %d times", n)
		}
		return ""
	})
}

func testConfigure(t *testing.T, s *suite) {
	s.Peer.Add(t, "dev-a", "c1")
	s.scanFor(t, "dev-a", "dev-a online", func(d driver.Device, found bool) bool { return found && d.Online })
	env, cfg := map[string]string{"RATE": "5", "UNIT": "°C"}, map[string]string{"REEVE_HOST_TYPE": "esp32"}
	if err := s.Driver.Configure(s.ctx, "dev-a", env, cfg); err != nil {
		t.Fatalf("configure: %v", err)
	}
	eventually(t, "the device configured", func() string {
		gotEnv, gotCfg := s.Peer.Configured(t, "dev-a")
		if !sameMap(gotEnv, env) || !sameMap(gotCfg, cfg) {
			return fmt.Sprintf("env %v config %v", gotEnv, gotCfg)
		}
		return ""
	})
}

func testLogs(t *testing.T, s *suite) {
	s.Peer.Add(t, "dev-a", "c1")
	s.scanFor(t, "dev-a", "dev-a online", func(d driver.Device, found bool) bool { return found && d.Online })
	s.Peer.Log(t, "dev-a", "reading 21.5")
	s.Peer.Log(t, "dev-a", "reading 21.6")
	var got []string
	eventually(t, "the device's lines", func() string {
		lines, err := s.Driver.Logs(s.ctx, "dev-a")
		if err != nil {
			return err.Error()
		}
		for _, l := range lines {
			if !l.System {
				got = append(got, l.Message)
			}
		}
		if len(got) >= 2 {
			return ""
		}
		return fmt.Sprintf("lines %q", got)
	})
	if !slices.Equal(got, []string{"reading 21.5", "reading 21.6"}) {
		t.Fatalf("lines %q, want both, in order, once", got)
	}
}

func testReopen(t *testing.T, s *suite) {
	s.Peer.Add(t, "dev-a", "c1")
	s.scanFor(t, "dev-a", "dev-a online", func(d driver.Device, found bool) bool { return found && d.Online })
	if err := s.Driver.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := s.Driver.Scan(s.ctx); !errors.Is(err, driver.ErrNotOpen) {
		t.Errorf("scan of a closed driver: %v, want ErrNotOpen", err)
	}
	fw := firmware(t, "c9", 1000)
	for name, err := range map[string]error{
		"update":  s.Driver.Update(s.ctx, "dev-a", fw, func(int) {}),
		"restart": s.Driver.Restart(s.ctx, "dev-a"),
	} {
		if !errors.Is(err, driver.ErrNotOpen) {
			t.Errorf("%s on a closed driver: %v, want ErrNotOpen", name, err)
		}
	}
	if err := s.Driver.Open(s.ctx, s.App); err != nil {
		t.Fatalf("open again: %v", err)
	}
	s.scanFor(t, "dev-a", "dev-a online again", func(d driver.Device, found bool) bool { return found && d.Online && d.Commit == "c1" })
	if err := s.Driver.Restart(s.ctx, "dev-a"); err != nil {
		t.Fatalf("restart after reopening: %v", err)
	}
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
