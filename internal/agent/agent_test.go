package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// fakeRuntime keeps containers in memory. The real runtime is exercised by
// the end-to-end tests in internal/agentd; this one lets the agent's own
// rules (locks, backoff, persistence) be tested quickly and exactly.
type fakeRuntime struct {
	mu         sync.Mutex
	images     map[string]bool
	containers map[string]reeve.ServiceState
	networks   map[string]reeve.NetworkState
	fetchErr   map[string]error
	fetches    map[string]int
	killed     []string
	next       int
	capacity   int // images the disk holds; 0: no limit
}

func newFake() *fakeRuntime {
	return &fakeRuntime{images: map[string]bool{}, containers: map[string]reeve.ServiceState{},
		networks: map[string]reeve.NetworkState{}, fetchErr: map[string]error{}, fetches: map[string]int{}}
}

func (f *fakeRuntime) Name() string                  { return "fake" }
func (f *fakeRuntime) Ping(context.Context) error    { return nil }
func (f *fakeRuntime) Cleanup(context.Context) error { return nil }
func (f *fakeRuntime) ExportDir(context.Context, string, string, io.Writer) error {
	return runtime.ErrNotFound
}
func (f *fakeRuntime) Logs(ctx context.Context, _ string, _ time.Time, _ func(runtime.LogEntry) error) error {
	<-ctx.Done()
	return ctx.Err()
}
func (f *fakeRuntime) Snapshot(context.Context) (reeve.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s reeve.Snapshot
	for ref := range f.images {
		s.Images = append(s.Images, reeve.ImageState{ID: ref, Refs: []string{ref}})
	}
	for _, c := range f.containers {
		s.Containers = append(s.Containers, c)
	}
	for _, n := range f.networks {
		s.Networks = append(s.Networks, n)
	}
	return s, nil
}
func (f *fakeRuntime) Fetch(_ context.Context, image string, progress func(runtime.Progress)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fetches[image]++
	if err := f.fetchErr[image]; err != nil {
		return err
	}
	if f.capacity > 0 && !f.images[image] && len(f.images) >= f.capacity {
		return fmt.Errorf("fetch %s: %w: the disk is full", image, runtime.ErrNoSpace)
	}
	f.images[image] = true
	return nil
}
func (f *fakeRuntime) RemoveImage(_ context.Context, image string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.images, image)
	return nil
}
func (f *fakeRuntime) Create(_ context.Context, spec reeve.ServiceSpec) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	id := fmt.Sprintf("c%d", f.next)
	img, _ := reeve.NormalizeImage(spec.Service.Image)
	var nets []string
	for n := range spec.Service.Composition.Networks {
		nets = append(nets, n)
	}
	f.containers[id] = reeve.ServiceState{ID: id, AppUUID: spec.AppUUID, AppID: spec.AppID, ServiceName: spec.ServiceName,
		Commit: spec.Commit, Image: img, ConfigHash: spec.Service.ConfigHash(), Status: reeve.StatusCreated,
		Networks: nets, CreatedAt: time.Now()}
	return id, nil
}
func (f *fakeRuntime) set(id string, fn func(*reeve.ServiceState)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return fmt.Errorf("container %s: %w", id, runtime.ErrNotFound)
	}
	fn(&c)
	f.containers[id] = c
	return nil
}
func (f *fakeRuntime) Start(_ context.Context, id string) error {
	return f.set(id, func(c *reeve.ServiceState) { c.Status = reeve.StatusRunning; c.StartedAt = time.Now() })
}
func (f *fakeRuntime) Stop(_ context.Context, id string, _ time.Duration) error {
	return f.set(id, func(c *reeve.ServiceState) { c.Status = reeve.StatusExited })
}
func (f *fakeRuntime) Remove(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.containers[id]; ok {
		f.killed = append(f.killed, c.ServiceName+"@"+c.Commit)
	}
	delete(f.containers, id)
	return nil
}
func (f *fakeRuntime) UpdateMetadata(_ context.Context, id string, spec reeve.ServiceSpec) error {
	return f.set(id, func(c *reeve.ServiceState) { c.Commit = spec.Commit })
}
func (f *fakeRuntime) CreateNetwork(_ context.Context, spec reeve.NetworkSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.networks[spec.AppUUID+"/"+spec.Name] = reeve.NetworkState{AppUUID: spec.AppUUID, Name: spec.Name, ConfigHash: spec.Network.ConfigHash()}
	return nil
}
func (f *fakeRuntime) RemoveNetwork(_ context.Context, app, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.networks, app+"/"+name)
	return nil
}
func (f *fakeRuntime) CreateVolume(context.Context, reeve.VolumeSpec) error  { return nil }
func (f *fakeRuntime) ReplaceVolume(context.Context, reeve.VolumeSpec) error { return nil }
func (f *fakeRuntime) RemoveVolume(context.Context, string, string) error    { return nil }

func newTestAgent(t *testing.T, rt runtime.Runtime, dir string) *Agent {
	t.Helper()
	a, err := New(context.Background(), Config{DataDir: dir, Runtime: rt, NoopDelay: 10 * time.Millisecond,
		ReconcileInterval: 20 * time.Millisecond, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		FetchBackoffMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func target(a *Agent, commit, image string, config map[string]string) reeve.TargetState {
	return reeve.TargetState{a.UUID(): {Name: "pi", Config: config, Apps: map[string]reeve.App{"app1": {
		ID: 1, Name: "app", Releases: map[string]reeve.Release{commit: {
			Services: map[string]reeve.Service{"web": {Image: image, Running: true}},
		}},
	}}}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTargetSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	rt := newFake()
	a := newTestAgent(t, rt, dir)
	uuid := a.UUID()
	v, err := a.SetTarget(context.Background(), target(a, "c1", "registry.example.com/web:1", nil))
	if err != nil || v != 1 {
		t.Fatalf("SetTarget = %d, %v", v, err)
	}
	a.Close()
	b := newTestAgent(t, rt, dir)
	defer b.Close()
	ts, v := b.Target()
	if b.UUID() != uuid || v != 1 || ts[uuid].Apps["app1"].Releases["c1"].Services["web"].Image != "registry.example.com/web:1" {
		t.Fatalf("after restart: uuid %s (was %s), version %d, target %+v", b.UUID(), uuid, v, ts)
	}
}

func TestSetTargetRefusesOtherDevice(t *testing.T) {
	a := newTestAgent(t, newFake(), t.TempDir())
	defer a.Close()
	ts := reeve.TargetState{"someone-else": {Apps: map[string]reeve.App{}}}
	_, err := a.SetTarget(context.Background(), ts)
	var ve *reeve.ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), a.UUID()) {
		t.Fatalf("want a validation error naming this device's UUID, got %v", err)
	}
	if _, v := a.Target(); v != 0 {
		t.Fatal("a refused target was stored")
	}
}

func TestSetTargetTakesOnlyDependentDevicesBesideItsOwn(t *testing.T) {
	a := newTestAgent(t, newFake(), t.TempDir())
	defer a.Close()
	dep := func(class string) reeve.App {
		return reeve.App{ID: 5, Class: class, Releases: map[string]reeve.Release{"fw1": {Services: map[string]reeve.Service{"fw": {Image: "fw:1"}}}}}
	}
	own := reeve.DeviceTarget{Apps: map[string]reeve.App{"sensors": dep(reeve.ClassDependent)}}
	for name, tc := range map[string]struct {
		ts   reeve.TargetState
		want string
	}{
		"another device's fleet app": {reeve.TargetState{a.UUID(): own, "dev2": {Apps: map[string]reeve.App{"other": dep(reeve.ClassFleet)}}},
			"must be a dependent device"},
		"a dependent app this device does not carry": {reeve.TargetState{a.UUID(): {Apps: map[string]reeve.App{}}, "dev2": {Apps: map[string]reeve.App{"sensors": dep(reeve.ClassDependent)}}},
			"not a dependent app of this device"},
		"dependent apps without a dependent-device store": {reeve.TargetState{a.UUID(): own, "dev2": {Apps: map[string]reeve.App{"sensors": dep(reeve.ClassDependent)}}},
			"carries no dependent devices"},
	} {
		_, err := a.SetTarget(context.Background(), tc.ts)
		var ve *reeve.ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a validation error saying %q", name, err, tc.want)
		}
	}
	if _, v := a.Target(); v != 0 {
		t.Fatal("a refused target was stored")
	}
}

func TestFailedDownloadRetriedWithBackoffAndShown(t *testing.T) {
	rt := newFake()
	rt.fetchErr["registry.example.com/web:1"] = errors.New("manifest unknown")
	a := newTestAgent(t, rt, t.TempDir())
	defer a.Close()
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetTarget(context.Background(), target(a, "c1", "registry.example.com/web:1", nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the download error in status", func() bool {
		st := a.Status()
		return len(st.Services) == 1 && strings.Contains(st.Services[0].Error, "manifest unknown")
	})
	waitFor(t, "retries", func() bool {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		return rt.fetches["registry.example.com/web:1"] >= 3
	})
	// Once the registry has it, the service comes up and the error goes.
	rt.mu.Lock()
	delete(rt.fetchErr, "registry.example.com/web:1")
	rt.mu.Unlock()
	waitFor(t, "convergence", func() bool {
		st := a.Status()
		return st.AppState == AppStateApplied && len(st.Services) == 1 && st.Services[0].Status == SvcRunning && st.Services[0].Error == ""
	})
}

func TestUserLockHoldsUpdateUntilReleasedOrOverridden(t *testing.T) {
	rt := newFake()
	dir := t.TempDir()
	a := newTestAgent(t, rt, dir)
	defer a.Close()
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	v, err := a.SetTarget(ctx, target(a, "c1", "registry.example.com/web:1", nil))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "install", func() bool { st := a.Status(); return st.TargetVersion == v && st.AppState == AppStateApplied })
	// No lock is left behind by the install or the update.
	if _, err := os.Stat(filepath.Join(a.lockDir("app1", "web"), lockFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock file after install: %v", err)
	}

	// The service takes its lock; an update downloads but does not kill.
	lock := filepath.Join(a.lockDir("app1", "web"), lockFile)
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetTarget(ctx, target(a, "c2", "registry.example.com/web:2", nil)); err != nil {
		t.Fatal(err)
	}
	// The download goes on while the update waits for the lock.
	waitFor(t, "locked state with the new image downloaded", func() bool {
		rt.mu.Lock()
		downloaded := rt.images["registry.example.com/web:2"]
		rt.mu.Unlock()
		return downloaded && a.Status().AppState == AppStateLocked
	})
	rt.mu.Lock()
	killed := len(rt.killed)
	rt.mu.Unlock()
	if killed != 0 {
		t.Fatalf("while locked: killed %d; want no kill", killed)
	}
	// The override in the device config lets the update through; the
	// service's own lock file is not the agent's to remove.
	if _, err := a.SetTarget(ctx, target(a, "c2", "registry.example.com/web:2", map[string]string{"REEVE_SUPERVISOR_OVERRIDE_LOCK": "1"})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "update with override", func() bool {
		st := a.Status()
		return st.AppState == AppStateApplied && len(st.Services) == 1 && st.Services[0].CurrentCommit == "c2"
	})
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.killed) != 1 || rt.killed[0] != "web@c1" {
		t.Fatalf("killed %v, want the old web once", rt.killed)
	}
	if _, err := os.Stat(lock); err != nil {
		t.Fatalf("the service's lock file was removed: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 7: 64 * time.Second, 8: 2 * time.Minute, 50: 2 * time.Minute} {
		if got := backoff(time.Second, 2*time.Minute, n); got != want {
			t.Errorf("backoff(%d) = %s, want %s", n, got, want)
		}
	}
}

// An image the engine will not remove (a container reeve does not own uses
// it) must not hold up a delete-then-download update for ever.
func TestUnremovableImageDoesNotStallUpdates(t *testing.T) {
	rt := &refusingRemove{fakeRuntime: newFake()}
	a := newTestAgent(t, rt, t.TempDir())
	defer a.Close()
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// An owned image nothing uses: what delete-then-download clears first.
	if err := a.db.addOwnedImage(ctx, "registry.example.com/other:1"); err != nil {
		t.Fatal(err)
	}
	rt.mu.Lock()
	rt.images["registry.example.com/other:1"] = true
	rt.mu.Unlock()
	ts := target(a, "c1", "registry.example.com/web:1", nil)
	app := ts[a.UUID()].Apps["app1"]
	svc := app.Releases["c1"].Services["web"]
	svc.Labels = map[string]string{reeve.LabelUpdateStrategy: reeve.StrategyDeleteThenDownload}
	app.Releases["c1"].Services["web"] = svc
	v, err := a.SetTarget(ctx, ts)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "convergence despite the unremovable image", func() bool {
		st := a.Status()
		return st.TargetVersion == v && st.AppState == AppStateApplied
	})
	owned, err := a.db.ownedImages(ctx)
	if err != nil || owned["registry.example.com/other:1"] {
		t.Fatalf("the unremovable image is still treated as the agent's (%v)", err)
	}
}

type refusingRemove struct{ *fakeRuntime }

func (r *refusingRemove) RemoveImage(_ context.Context, image string) error {
	if image == "registry.example.com/other:1" {
		return errors.New("conflict: unable to remove repository reference (must force) - container 1234 is using its referenced image")
	}
	return r.fakeRuntime.RemoveImage(context.Background(), image)
}

// Without a valid target the agent touches nothing: an empty plan would
// remove every app it finds (a wiped or unreadable database must not wipe
// the device).
func TestNoTargetTouchesNothing(t *testing.T) {
	rt := newFake()
	rt.containers["c1"] = reeve.ServiceState{ID: "c1", AppUUID: "app1", ServiceName: "web", Commit: "c1", Status: reeve.StatusRunning}
	dir := t.TempDir()
	// A stored target this agent cannot read.
	a := newTestAgent(t, rt, dir)
	if _, err := a.db.sql.Exec(`INSERT INTO target (id, version, body, updated_at) VALUES (1, 4, '{"x": {"apps": {"A B": {}}}}', 'now')`); err != nil {
		t.Fatal(err)
	}
	a.Close()

	a = newTestAgent(t, rt, dir)
	defer a.Close()
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a few rounds", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return !a.loopAlive.IsZero()
	})
	time.Sleep(100 * time.Millisecond) // several reconcile rounds at 20 ms
	rt.mu.Lock()
	_, still := rt.containers["c1"]
	rt.mu.Unlock()
	if !still {
		t.Fatal("a container was removed while the agent had no valid target")
	}
	if st := a.Status(); !strings.Contains(st.LastError, "not valid") {
		t.Fatalf("status does not say the stored target is unusable: %+v", st)
	}
	// A new target is taken, with a version above the stored one.
	v, err := a.SetTarget(context.Background(), target(a, "c2", "registry.example.com/web:1", nil))
	if err != nil || v != 5 {
		t.Fatalf("SetTarget = %d, %v", v, err)
	}
}

// A lock record left by a crash must not make a service's own lock look like
// the agent's: the service keeps its lock and its container.
func TestStaleLockRecordDoesNotOverrideServiceLock(t *testing.T) {
	rt := newFake()
	a := newTestAgent(t, rt, t.TempDir())
	defer a.Close()
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := a.SetTarget(ctx, target(a, "c1", "registry.example.com/web:1", nil))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "install", func() bool { st := a.Status(); return st.TargetVersion == v && st.AppState == AppStateApplied })
	if err := a.db.addAgentLock(ctx, "app1", "web"); err != nil { // as a crash would leave it
		t.Fatal(err)
	}
	lock := filepath.Join(a.lockDir("app1", "web"), lockFile)
	if err := os.WriteFile(lock, []byte("held by the service\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetTarget(ctx, target(a, "c2", "registry.example.com/web:2", nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "locked state", func() bool { return a.Status().AppState == AppStateLocked })
	time.Sleep(100 * time.Millisecond)
	rt.mu.Lock()
	killed := len(rt.killed)
	rt.mu.Unlock()
	if killed != 0 {
		t.Fatal("the service was killed inside its lock")
	}
	if b, err := os.ReadFile(lock); err != nil || string(b) != "held by the service\n" {
		t.Fatalf("the service's lock file was touched: %q %v", b, err)
	}
}

// A step that keeps failing for one app waits out its own backoff; another
// app's update goes on meanwhile.
func TestFailingStepDoesNotHoldUpOtherApps(t *testing.T) {
	rt := &failingStart{fakeRuntime: newFake(), service: "bad"}
	a, err := New(context.Background(), Config{DataDir: t.TempDir(), Runtime: rt, NoopDelay: 10 * time.Millisecond,
		ReconcileInterval: 20 * time.Millisecond, BackoffMin: time.Minute, BackoffMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ts := target(a, "c1", "registry.example.com/web:1", nil)
	dev := ts[a.UUID()]
	dev.Apps["app2"] = reeve.App{ID: 2, Name: "broken", Releases: map[string]reeve.Release{"c1": {
		Services: map[string]reeve.Service{"bad": {Image: "registry.example.com/bad:1", Running: true}}}}}
	ts[a.UUID()] = dev
	if _, err := a.SetTarget(context.Background(), ts); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the good app running while the broken one fails", func() bool {
		st := a.Status()
		var good, bad bool
		for _, s := range st.Services {
			good = good || (s.Service == "web" && s.Status == SvcRunning)
			bad = bad || (s.Service == "bad" && strings.Contains(s.Error, "refuses to start"))
		}
		return good && bad && st.AppState == AppStateError && strings.Contains(st.LastError, "refuses to start")
	})
}

type failingStart struct {
	*fakeRuntime
	service string
}

func (f *failingStart) Start(ctx context.Context, id string) error {
	f.mu.Lock()
	c := f.containers[id]
	f.mu.Unlock()
	if c.ServiceName == f.service {
		return errors.New("the engine refuses to start it: bind source path does not exist")
	}
	return f.fakeRuntime.Start(ctx, id)
}

func TestTakeLockWritesTokenAndRespectsServiceLock(t *testing.T) {
	a := newTestAgent(t, newFake(), t.TempDir())
	defer a.Close()
	ctx := context.Background()
	if err := a.takeLock(ctx, "app1", []string{"web", "db"}, false); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"web", "db"} {
		dir := a.lockDir("app1", svc)
		if held, ours := a.lockHolder(dir); !held || !ours {
			t.Fatalf("%s: held %v ours %v after takeLock", svc, held, ours)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Fatalf("%s: lock directory holds %d entries, want only %s", svc, len(entries), lockFile)
		}
	}
	if err := a.releaseLock(ctx, "app1"); err != nil {
		t.Fatal(err)
	}
	// A service holding its own lock stops the agent, and keeps its file;
	// what the agent took on the way is given back.
	if err := os.WriteFile(filepath.Join(a.lockDir("app1", "web"), lockFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := a.takeLock(ctx, "app1", []string{"db", "web"}, false)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("want ErrLocked, got %v", err)
	}
	if held, _ := a.lockHolder(a.lockDir("app1", "db")); held {
		t.Fatal("the agent kept db's lock after failing to take web's")
	}
	if held, ours := a.lockHolder(a.lockDir("app1", "web")); !held || ours {
		t.Fatal("the service's own lock file was touched")
	}
	locks, _ := a.db.agentLocks(ctx)
	if len(locks["app1"]) != 0 {
		t.Fatalf("lock records left: %v", locks)
	}
}

// A device config value the agent cannot use is shown in its status; the
// default applies and the apps run.
func TestConfigWarningsInStatus(t *testing.T) {
	rt := newFake()
	a := newTestAgent(t, rt, t.TempDir())
	defer a.Close()
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]string{"REEVE_SUPERVISOR_OVERRIDE_LOCK": "maybe", "BALENA_SUPERVISOR_POLL_INTERVAL": "often"}
	if _, err := a.SetTarget(context.Background(), target(a, "c1", "registry.example.com/web:1", cfg)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the warnings in status, and the app running", func() bool {
		st := a.Status()
		return st.AppState == AppStateApplied && len(st.ConfigWarnings) == 2 &&
			strings.Contains(st.ConfigWarnings[0], "BALENA_SUPERVISOR_POLL_INTERVAL") &&
			strings.Contains(st.ConfigWarnings[1], "REEVE_SUPERVISOR_OVERRIDE_LOCK")
	})
	if overrideLock(cfg) {
		t.Error("an unreadable override-lock value overrides locks")
	}
}

// A download that does not fit makes room by removing images the agent
// fetched that nothing uses; the running release's image stays, and when
// that is not enough the download fails with the reason in the status
// while the old release runs on.
func TestNoSpaceMakesRoomWithUnusedImages(t *testing.T) {
	ctx := context.Background()
	rt := newFake()
	a := newTestAgent(t, rt, t.TempDir())
	defer a.Close()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetTarget(ctx, target(a, "c1", "registry.example.com/web:1", nil)); err != nil {
		t.Fatal(err)
	}
	running := func(image string) bool {
		st := a.Status()
		return st.AppState == AppStateApplied && len(st.Services) == 1 && st.Services[0].Status == SvcRunning && st.Services[0].Image == image
	}
	waitFor(t, "v1 running", func() bool { return running("registry.example.com/web:1") })
	// An old image of the agent's that nothing uses, and a full disk.
	rt.mu.Lock()
	rt.images["registry.example.com/old:1"] = true
	rt.capacity = 2
	rt.mu.Unlock()
	if err := a.db.addOwnedImage(ctx, "registry.example.com/old:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetTarget(ctx, target(a, "c2", "registry.example.com/web:2", nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "v2 running after making room", func() bool { return running("registry.example.com/web:2") })
	rt.mu.Lock()
	old := rt.images["registry.example.com/old:1"]
	rt.mu.Unlock()
	if old {
		t.Fatal("the unused image was not removed to make room")
	}

	// Now only the running release's image is there and it cannot go.
	rt.mu.Lock()
	rt.capacity = len(rt.images)
	rt.mu.Unlock()
	if _, err := a.SetTarget(ctx, target(a, "c3", "registry.example.com/web:3", nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reason in the status", func() bool {
		st := a.Status()
		return len(st.Services) == 1 && strings.Contains(st.Services[0].Error, "not enough disk space")
	})
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var alive bool
	for _, c := range rt.containers {
		alive = alive || (c.Image == "registry.example.com/web:2" && c.Status == reeve.StatusRunning)
	}
	if !alive || !rt.images["registry.example.com/web:2"] {
		t.Fatal("the running release was stopped or its image removed for a download that does not fit")
	}
}
