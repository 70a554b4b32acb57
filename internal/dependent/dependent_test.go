package dependent

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

const (
	appUUID = "dep0app0"
	devA    = "aaaa0000aaaa0000aaaa0000aaaa0000"
	devB    = "bbbb0000bbbb0000bbbb0000bbbb0000"
)

// hookRecorder is a gateway application's hook receiver: it records each
// hook and answers with the status code status returns.
type hookRecorder struct {
	mu     sync.Mutex
	hooks  []recordedHook
	status func(method, uuid string) int
	hang   chan struct{} // when set, requests wait for it to close
}

type recordedHook struct {
	Method string
	UUID   string
	Body   HookBody
}

func (h *hookRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.hang != nil {
		select {
		case <-h.hang:
		case <-r.Context().Done():
			return
		}
	}
	var b HookBody
	if r.Method == http.MethodPut {
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
	}
	uuid := r.URL.Path[len("/v1/devices/"):]
	h.mu.Lock()
	h.hooks = append(h.hooks, recordedHook{r.Method, uuid, b})
	h.mu.Unlock()
	code := http.StatusOK
	if h.status != nil {
		code = h.status(r.Method, uuid)
	}
	w.WriteHeader(code)
}

func (h *hookRecorder) take() []recordedHook {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.hooks
	h.hooks = nil
	return out
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	m     *Manager
	clock *clock
	hooks *hookRecorder
	lines []reeve.LogLine
	mu    sync.Mutex
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureIn(t, t.TempDir())
}

// newFixtureIn opens a manager on dir (as an agent restarted on its data
// directory does).
func newFixtureIn(t *testing.T, dir string) *fixture {
	t.Helper()
	f := &fixture{clock: &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}, hooks: &hookRecorder{}}
	srv := httptest.NewServer(f.hooks)
	t.Cleanup(srv.Close)
	n := 0
	m, err := Open(t.Context(), Config{
		Dir: dir,
		Provision: func(ctx context.Context, req ProvisionRequest) (reeve.Device, error) {
			n++
			return reeve.Device{UUID: fmt.Sprintf("%032x", n), Name: "sensor", DeviceType: req.DeviceType, LocalID: req.LocalID}, nil
		},
		Log: func(l reeve.LogLine) {
			f.mu.Lock()
			f.lines = append(f.lines, l)
			f.mu.Unlock()
		},
		Export: func(ctx context.Context, image string, w io.Writer) error {
			tw := tar.NewWriter(w)
			body := "firmware of " + image
			tw.WriteHeader(&tar.Header{Name: "fw.bin", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
			io.WriteString(tw, body)
			return tw.Close()
		},
		HookAddress: func() string { return srv.URL },
		HookTimeout: 200 * time.Millisecond,
		Now:         f.clock.now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	f.m = m
	return f
}

func target(commit string, devices map[string]map[string]string) reeve.DependentApp {
	a := reeve.DependentApp{UUID: appUUID, ID: 9, Name: "sensors", Commit: commit, ReleaseID: 3, Image: "fw:" + commit, Devices: map[string]reeve.DependentTarget{}}
	for uuid, env := range devices {
		a.Devices[uuid] = reeve.DependentTarget{Name: "n-" + uuid[:4], Commit: commit, ReleaseID: 3, Image: a.Image, Environment: env}
	}
	return a
}

// store stores tgt and releases its hooks, as the apply loop does once
// the firmware is on the device.
func (f *fixture) store(t *testing.T, tgt reeve.DependentApp) {
	t.Helper()
	ctx := t.Context()
	if err := f.m.UpdateTargets(ctx, tgt); err != nil {
		t.Fatal(err)
	}
	if err := f.m.ReleaseHooks(ctx, tgt.UUID, tgt.Hash()); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) round(t *testing.T) []recordedHook {
	t.Helper()
	f.m.sendDueHooks(t.Context(), map[string]string{})
	return f.hooks.take()
}

func TestHooksGoOnlyOnceTheFirmwareIsThereAndUntilAcknowledged(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	tgt := target("v1", map[string]map[string]string{devA: {"RATE": "5"}})
	if err := f.m.UpdateTargets(ctx, tgt); err != nil {
		t.Fatal(err)
	}
	if got := f.round(t); len(got) != 0 {
		t.Fatalf("hooks before the firmware is on the device: %+v", got)
	}
	if err := f.m.ReleaseHooks(ctx, appUUID, tgt.Hash()); err != nil {
		t.Fatal(err)
	}
	got := f.round(t)
	if len(got) != 1 || got[0].Method != http.MethodPut || got[0].UUID != devA {
		t.Fatalf("hooks %+v, want one PUT for %s", got, devA)
	}
	if b := got[0].Body; b.AppID != 9 || b.Commit != "v1" || b.Environment["RATE"] != "5" || b.Config == nil {
		t.Errorf("hook body %+v", b)
	}
	// Acknowledged (200): no more hooks for that target, however long.
	f.clock.add(time.Hour)
	if got := f.round(t); len(got) != 0 {
		t.Fatalf("hooks after an acknowledged one: %+v", got)
	}
	d, err := f.m.Device(ctx, devA)
	if err != nil || d.Hook != "acknowledged" {
		t.Fatalf("device %+v, %v: want hook acknowledged", d, err)
	}

	// A new release: one hook, but not sooner than 30 s after the last.
	f.clock.t = d.hookAt.Add(10 * time.Second)
	f.store(t, target("v2", map[string]map[string]string{devA: {"RATE": "5"}}))
	if got := f.round(t); len(got) != 0 {
		t.Fatalf("a hook 10 s after the last: %+v", got)
	}
	f.clock.add(25 * time.Second)
	if got := f.round(t); len(got) != 1 || got[0].Body.Commit != "v2" {
		t.Fatalf("hooks %+v, want one for v2", got)
	}
}

func TestNoHookWhenTheDeviceRunsItsTarget(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	f.hooks.status = func(string, string) int { return http.StatusAccepted }
	// Provisioned here, then in the target.
	if _, err := f.m.Provision(ctx, ProvisionRequest{AppID: 9}); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Fatalf("provisioning into an app not stored yet: %v, want not_found", err)
	}
	f.store(t, target("v1", nil))
	dev, err := f.m.Provision(ctx, ProvisionRequest{AppID: 9, DeviceType: "esp32", LocalID: "serial-1"})
	if err != nil {
		t.Fatal(err)
	}
	if dev.AppUUID != appUUID || dev.AppID != 9 || dev.LocalID != "serial-1" {
		t.Fatalf("provisioned %+v", dev)
	}
	// Not in a target yet: no hook, and not marked for deletion by a
	// target stored in between.
	f.store(t, target("v1", nil))
	if _, err := f.m.Device(ctx, dev.UUID); err != nil {
		t.Fatalf("a device just provisioned was dropped: %v", err)
	}
	// The gateway application reports it runs v1 with the target's
	// environment: nothing to tell it.
	commit := "v1"
	if _, err := f.m.Update(ctx, dev.UUID, Patch{Commit: &commit, Environment: map[string]string{"A": "1"}}); err != nil {
		t.Fatal(err)
	}
	f.store(t, target("v1", map[string]map[string]string{dev.UUID: {"A": "1"}}))
	if got := f.round(t); len(got) != 0 {
		t.Fatalf("hooks for a device that runs its target: %+v", got)
	}
	// Its environment changes: a hook, 202 = accepted, not sent again.
	f.store(t, target("v1", map[string]map[string]string{dev.UUID: {"A": "2"}}))
	if got := f.round(t); len(got) != 1 {
		t.Fatalf("hooks %+v, want one", got)
	}
	f.clock.add(time.Minute)
	if got := f.round(t); len(got) != 0 {
		t.Fatalf("a hook accepted (202) was sent again: %+v", got)
	}
}

func TestFailedHooksAreRetriedAfterTheInterval(t *testing.T) {
	f := newFixture(t)
	fail := true
	f.hooks.status = func(string, string) int {
		if fail {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	f.store(t, target("v1", map[string]map[string]string{devA: nil, devB: nil}))
	if got := f.round(t); len(got) != 2 {
		t.Fatalf("hooks %+v, want two", got)
	}
	d, _ := f.m.Device(t.Context(), devA)
	if d.Hook == "" || d.Hook == "acknowledged" {
		t.Fatalf("hook result %q, want the failure", d.Hook)
	}
	f.clock.add(29 * time.Second)
	if got := f.round(t); len(got) != 0 {
		t.Fatalf("retried within 30 s: %+v", got)
	}
	fail = false
	f.clock.add(2 * time.Second)
	if got := f.round(t); len(got) != 2 {
		t.Fatalf("hooks %+v, want both retried", got)
	}
	f.clock.add(time.Minute)
	if got := f.round(t); len(got) != 0 {
		t.Fatalf("hooks after they were acknowledged: %+v", got)
	}
}

func TestHangingHookEndpointTimesOut(t *testing.T) {
	f := newFixture(t)
	f.hooks.hang = make(chan struct{})
	defer close(f.hooks.hang)
	f.store(t, target("v1", map[string]map[string]string{devA: nil}))
	// The endpoint answers only once the test ends (the deferred close):
	// the round returns before that only because the hook timed out.
	f.round(t)
	d, _ := f.m.Device(t.Context(), devA)
	if !strings.Contains(d.Hook, "no answer within") {
		t.Fatalf("hook result %q, want the timeout", d.Hook)
	}
}

func TestRemovedDeviceIsDeletedOnceTheGatewayAcknowledges(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	f.store(t, target("v1", map[string]map[string]string{devA: nil, devB: nil}))
	f.round(t)
	status := http.StatusInternalServerError
	f.hooks.status = func(method, uuid string) int { return status }
	f.store(t, target("v1", map[string]map[string]string{devA: nil}))
	if _, err := f.m.Device(ctx, devB); reeve.ErrorCode(err) != reeve.CodeGone {
		t.Fatalf("a device marked for deletion: %v, want gone", err)
	}
	reps, err := f.m.Reports(ctx)
	if err != nil || len(reps) != 1 {
		t.Fatalf("reports %v, %v: want only the device still in the target", reps, err)
	}
	// The DELETE waits out the interval since the last hook like any.
	if got := f.round(t); len(got) != 0 {
		t.Fatalf("hooks within 30 s of the last: %+v", got)
	}
	f.clock.add(30 * time.Second)
	got := f.round(t)
	if len(got) != 1 || got[0].Method != http.MethodDelete || got[0].UUID != devB {
		t.Fatalf("hooks %+v, want a DELETE of %s", got, devB)
	}
	f.clock.add(31 * time.Second)
	status = http.StatusOK
	if got := f.round(t); len(got) != 1 || got[0].Method != http.MethodDelete {
		t.Fatalf("hooks %+v, want the DELETE again", got)
	}
	if _, err := f.m.Device(ctx, devB); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Fatalf("after the DELETE was acknowledged: %v, want not_found", err)
	}
	// The app leaves: its devices go with it.
	if err := f.m.RemoveApp(ctx, appUUID); err != nil {
		t.Fatal(err)
	}
	if devs, _ := f.m.Devices(ctx); len(devs) != 0 {
		t.Fatalf("devices of a removed app: %+v", devs)
	}
}

func TestUpdateAndLogs(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	f.store(t, target("v1", map[string]map[string]string{devA: nil}))
	if _, err := f.m.Update(ctx, devA, Patch{}); reeve.ErrorCode(err) != reeve.CodeInvalid {
		t.Fatalf("an empty update: %v, want invalid", err)
	}
	if _, err := f.m.Update(ctx, devB, Patch{Status: new("Idle")}); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Fatalf("an unknown device: %v, want not_found", err)
	}
	online := true
	d, err := f.m.Update(ctx, devA, Patch{Status: new("Idle"), IsOnline: &online, Config: map[string]string{"C": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != "Idle" || !d.IsOnline || !d.LastSeen.Equal(f.clock.now()) || d.Config["C"] != "1" {
		t.Fatalf("device after update %+v", d)
	}
	reps, err := f.m.Reports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := reps[devA]
	if r.Status == nil || *r.Status != "Idle" || r.IsOnline == nil || !*r.IsOnline || r.Config["C"] != "1" {
		t.Fatalf("report %+v", r)
	}
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := f.m.Log(ctx, devA, []LogEntry{{Message: "booted", Timestamp: ts}, {Message: "sys", System: true}}); err != nil {
		t.Fatal(err)
	}
	if len(f.lines) != 2 || f.lines[0].Device != devA || !f.lines[0].Timestamp.Equal(ts) || !f.lines[1].System || f.lines[1].Timestamp.IsZero() {
		t.Fatalf("lines %+v", f.lines)
	}
	if err := f.m.Log(ctx, devB, []LogEntry{{Message: "x"}}); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Fatalf("lines of an unknown device: %v, want not_found", err)
	}
}

func TestAssetsOfTheTargetReleaseOnly(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	f.store(t, target("v1", map[string]map[string]string{devA: nil}))
	file, err := f.m.Assets(ctx, 9, "v1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(file)
	file.Close()
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(b))
	h, err := tr.Next()
	if err != nil || h.Name != "fw.bin" {
		t.Fatalf("tar entry %v, %v", h, err)
	}
	body, _ := io.ReadAll(tr)
	if string(body) != "firmware of fw:v1" {
		t.Fatalf("firmware %q", body)
	}
	if _, err := f.m.Assets(ctx, 9, "v0"); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Fatalf("assets of a release not in the target: %v, want not_found", err)
	}
	if _, err := f.m.Assets(ctx, 10, "v1"); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Fatalf("assets of an unknown app: %v, want not_found", err)
	}
}

func TestHookURL(t *testing.T) {
	for addr, want := range map[string]string{
		"":                                  "http://127.0.0.1:1337/v1/devices/u1",
		"http://gw:8080":                    "http://gw:8080/v1/devices/u1",
		"http://gw:8080/":                   "http://gw:8080/v1/devices/u1",
		"http://127.0.0.1:1337/v1/devices/": "http://127.0.0.1:1337/v1/devices/u1",
	} {
		if got, err := hookURL(addr, "u1"); err != nil || got != want {
			t.Errorf("hookURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if _, err := hookURL("ftp://x", "u1"); err == nil {
		t.Error("an ftp address was taken")
	}
}

func TestHookAddressPrecedence(t *testing.T) {
	dev := reeve.DeviceTarget{Config: map[string]string{"REEVE_DEPENDENT_DEVICES_HOOK_ADDRESS": "http://config"}, Apps: map[string]reeve.App{
		"app": {Releases: map[string]reeve.Release{"c": {Services: map[string]reeve.Service{
			"enm": {Image: "enm", Environment: map[string]string{"BALENA_DEPENDENT_DEVICES_HOOK_ADDRESS": "http://service"}},
		}}}},
	}}
	if got := HookAddress(dev); got != "http://service" {
		t.Errorf("with a service's variable: %q", got)
	}
	delete(dev.Apps, "app")
	if got := HookAddress(dev); got != "http://config" {
		t.Errorf("with the config variable: %q", got)
	}
	dev.Config = nil
	if got := HookAddress(dev); got != DefaultHookAddress {
		t.Errorf("with neither: %q", got)
	}
}

func TestFirmwareOfPinnedDevicesStays(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	tgt := target("v2", map[string]map[string]string{devA: nil})
	tgt.Devices[devB] = reeve.DependentTarget{Name: "pinned", Commit: "v1", Image: "fw:v1"}
	f.store(t, tgt)
	paths := map[string]string{}
	for _, c := range []string{"v1", "v2"} {
		file, err := f.m.Assets(ctx, 9, c)
		if err != nil {
			t.Fatal(err)
		}
		paths[c] = file.Name()
		file.Close()
	}
	for c, p := range paths {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the tar of %s, which a device is pinned to, went: %v", c, err)
		}
	}
	// The pin ends and a new release comes: its tar replaces both.
	f.store(t, target("v3", map[string]map[string]string{devA: nil, devB: nil}))
	file, err := f.m.Assets(ctx, 9, "v3")
	if err != nil {
		t.Fatal(err)
	}
	file.Close()
	for c, p := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("the tar of %s stayed after no device needed it: %v", c, err)
		}
	}
}

func TestRestartKeepsDevicesAndWhatWasAcknowledged(t *testing.T) {
	dir := t.TempDir()
	f := newFixtureIn(t, dir)
	f.store(t, target("v1", map[string]map[string]string{devA: {"A": "1"}, devB: nil}))
	online := true
	if _, err := f.m.Update(t.Context(), devA, Patch{IsOnline: &online}); err != nil {
		t.Fatal(err)
	}
	f.hooks.status = func(_, uuid string) int {
		if uuid == devB {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	if got := f.round(t); len(got) != 2 {
		t.Fatalf("hooks %+v, want two", got)
	}
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}

	g := newFixtureIn(t, dir)
	g.clock.t = f.clock.now().Add(time.Minute)
	d, err := g.m.Device(t.Context(), devA)
	if err != nil || !d.IsOnline || d.Hook != "acknowledged" || d.TargetEnvironment["A"] != "1" {
		t.Fatalf("after a restart: %+v, %v", d, err)
	}
	// The acknowledged hook is not sent again; the failed one is.
	got := g.round(t)
	if len(got) != 1 || got[0].UUID != devB {
		t.Fatalf("hooks after a restart %+v, want only %s's again", got, devB)
	}
}

func TestAssetsWhileTheImageDownloadsAreUnavailable(t *testing.T) {
	m, err := Open(t.Context(), Config{Dir: t.TempDir(), Log: func(reeve.LogLine) {},
		Export: func(context.Context, string, io.Writer) error {
			return fmt.Errorf("export: %w (%w)", runtime.ErrImageNotPresent, runtime.ErrNotFound)
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.UpdateTargets(t.Context(), target("v1", nil)); err != nil {
		t.Fatal(err)
	}
	_, err = m.Assets(t.Context(), 9, "v1")
	if reeve.ErrorCode(err) != reeve.CodeUnavailable {
		t.Fatalf("assets of an image not downloaded yet: %v, want unavailable (try again)", err)
	}
}
