// Package runtimetest is the conformance suite every runtime.Runtime passes
// (docker now, process later): what reeve's agent relies on, checked through
// the interface only.
//
//	func TestConformance(t *testing.T) {
//		rt := ... // a runtime on a real engine
//		runtimetest.Run(t, rt, runtimetest.Images{V1: v1, V2: v2, Missing: missing})
//	}
//
// The images run testprog (reeve.dev/reeve/internal/testimage/testprog),
// whose behaviour the suite drives through environment variables and
// commands. The suite's apps have UUIDs starting with AppPrefix; every
// subtest removes what it created, also when it fails.
//
// Conventions the suite holds every runtime to, beyond the interface's doc:
//   - a process killed after its stop grace reports exit code 137 (128+9),
//     as a shell and the Docker Engine do;
//   - Snapshot reports Labels as exactly the release's labels;
//   - Fetch's last progress report has Current == Total > 0.
package runtimetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// AppPrefix starts the UUID of every app the suite creates.
const AppPrefix = "rtt-"

// Images are what the suite runs. V1 and V2 are two different testprog
// images ("/version" v1 and v2) that can be fetched; no other reference
// may point at the same image IDs (RemoveImage is checked on V2). Missing
// is a reference that cannot be fetched.
type Images struct {
	V1, V2, Missing string
}

type suite struct {
	rt      runtime.Runtime
	images  Images
	run     string          // random, in every app UUID of this run
	fetched map[string]bool // images this run has fetched
}

// Run runs the conformance suite against rt.
func Run(t *testing.T, rt runtime.Runtime, images Images) {
	s := &suite{rt: rt, images: images, run: randomHex(4), fetched: map[string]bool{}}

	t.Run("Ping", s.testPing)
	t.Run("Fetch", s.testFetch)
	t.Run("FetchMissing", s.testFetchMissing)
	if t.Failed() {
		t.Fatal("cannot fetch the test images: the other tests need them")
	}
	t.Run("CreateStartSnapshot", s.testCreateStartSnapshot)
	t.Run("CreateIsIdempotent", s.testCreateIdempotent)
	t.Run("StopStart", s.testStopStart)
	t.Run("StopKillsAfterGrace", s.testStopKills)
	t.Run("ExitCode", s.testExitCode)
	t.Run("RestartPolicy", s.testRestartPolicy)
	t.Run("Health", s.testHealth)
	t.Run("UpdateMetadata", s.testUpdateMetadata)
	t.Run("Networks", s.testNetworks)
	t.Run("Volumes", s.testVolumes)
	t.Run("ReplaceVolumeKeepsData", s.testReplaceVolume)
	t.Run("ReplaceVolumeInterrupted", s.testReplaceVolumeInterrupted)
	t.Run("RemoveWhatIsGone", s.testRemoveGone)
	t.Run("LogsInOrder", s.testLogsInOrder)
	t.Run("LogsSince", s.testLogsSince)
	t.Run("LogsFollow", s.testLogsFollow)
	t.Run("LogsAcrossRestart", s.testLogsAcrossRestart)
	t.Run("LogsAcrossRestartPolicy", s.testLogsRestartPolicy)
	t.Run("LogsNotFound", s.testLogsNotFound)
	t.Run("LogsLongLine", s.testLogsLongLine)
	t.Run("LogsCancel", s.testLogsCancel)
	t.Run("ExportDir", s.testExportDir)
	t.Run("RemoveImage", s.testRemoveImage)
	t.Run("Cleanup", s.testCleanup)
}

// ---- helpers ----

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// app fetches the test images if needed and returns a new app UUID whose containers, networks and volumes (those
// in Snapshot, and the volumes named in vols) are removed when t ends.
func (s *suite) app(t *testing.T, vols ...string) string {
	t.Helper()
	s.need(t)
	uuid := AppPrefix + s.run + "-" + randomHex(3)
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		snap, err := s.rt.Snapshot(c)
		if err != nil {
			t.Errorf("cleanup of app %s: %v", uuid, err)
			return
		}
		for _, ctr := range snap.Containers {
			if ctr.AppUUID == uuid {
				if err := s.rt.Remove(c, ctr.ID); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
		for _, n := range snap.Networks {
			if n.AppUUID == uuid {
				if err := s.rt.RemoveNetwork(c, uuid, n.Name); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
		names := slices.Clone(vols)
		for _, v := range snap.Volumes {
			if v.AppUUID == uuid {
				names = append(names, v.Name)
			}
		}
		for _, name := range names {
			if err := s.rt.RemoveVolume(c, uuid, name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return uuid
}

// spec is a service of app at commit running image with env.
func spec(app, service, commit, image string, env map[string]string) reeve.ServiceSpec {
	return reeve.ServiceSpec{
		AppUUID:     app,
		AppID:       42,
		AppName:     "conformance",
		Commit:      commit,
		ReleaseID:   7,
		ServiceName: service,
		Service: reeve.Service{
			ID:          1,
			ImageID:     2,
			Image:       image,
			Running:     true,
			Environment: env,
			Composition: reeve.Composition{Restart: "no"},
		},
	}
}

func (s *suite) create(t *testing.T, sp reeve.ServiceSpec) string {
	t.Helper()
	id, err := s.rt.Create(ctx(t), sp)
	if err != nil {
		t.Fatalf("Create(%s): %v", sp.ServiceName, err)
	}
	if id == "" {
		t.Fatalf("Create(%s) returned an empty ID", sp.ServiceName)
	}
	return id
}

func (s *suite) start(t *testing.T, id string) {
	t.Helper()
	if err := s.rt.Start(ctx(t), id); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

func (s *suite) snapshot(t *testing.T) reeve.Snapshot {
	t.Helper()
	snap, err := s.rt.Snapshot(ctx(t))
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return snap
}

// state returns the container id from a fresh Snapshot.
func (s *suite) state(t *testing.T, id string) (reeve.ServiceState, bool) {
	t.Helper()
	for _, c := range s.snapshot(t).Containers {
		if c.ID == id {
			return c, true
		}
	}
	return reeve.ServiceState{}, false
}

// waitState polls Snapshot until the container satisfies cond.
func (s *suite) waitState(t *testing.T, id, what string, cond func(reeve.ServiceState) bool) reeve.ServiceState {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last reeve.ServiceState
	for {
		st, ok := s.state(t, id)
		if ok && cond(st) {
			return st
		}
		last = st
		if time.Now().After(deadline) {
			t.Fatalf("container %s: not %s within 30 s; last state: found=%v status=%q exit=%d health=%q restarts=%d",
				id, what, ok, last.Status, last.ExitCode, last.Health, last.RestartCount)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func running(st reeve.ServiceState) bool { return st.Status == reeve.StatusRunning }

func exited(st reeve.ServiceState) bool {
	return st.Status == reeve.StatusExited || st.Status == reeve.StatusDead
}

// runOnce runs a one-shot container of app and returns its exit code; the
// container is removed.
func (s *suite) runOnce(t *testing.T, sp reeve.ServiceSpec) int {
	t.Helper()
	id := s.create(t, sp)
	defer func() {
		if err := s.rt.Remove(context.WithoutCancel(ctx(t)), id); err != nil {
			t.Errorf("Remove: %v", err)
		}
	}()
	s.start(t, id)
	st := s.waitState(t, id, "exited", exited)
	return st.ExitCode
}

func (s *suite) fetch(t *testing.T, image string) {
	t.Helper()
	if err := s.rt.Fetch(ctx(t), image, nil); err != nil {
		t.Fatalf("Fetch(%s): %v", image, err)
	}
	s.fetched[image] = true
}

// need fetches the test images unless this run did (so that a subtest runs
// alone with -run).
func (s *suite) need(t *testing.T) {
	t.Helper()
	for _, image := range []string{s.images.V1, s.images.V2} {
		if !s.fetched[image] {
			s.fetch(t, image)
		}
	}
}

func normalized(t *testing.T, ref string) string {
	t.Helper()
	n, err := reeve.NormalizeImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ---- tests ----

func (s *suite) testPing(t *testing.T) {
	if err := s.rt.Ping(ctx(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if s.rt.Name() == "" {
		t.Error("Name() is empty")
	}
}

func (s *suite) testFetch(t *testing.T) {
	for _, image := range []string{s.images.V1, s.images.V2} {
		var reports []runtime.Progress
		err := s.rt.Fetch(ctx(t), image, func(p runtime.Progress) { reports = append(reports, p) })
		if err != nil {
			t.Fatalf("Fetch(%s): %v", image, err)
		}
		s.fetched[image] = true
		if len(reports) == 0 {
			t.Fatalf("Fetch(%s) reported no progress", image)
		}
		last := reports[len(reports)-1]
		t.Logf("Fetch(%s): %d progress reports, last %+v", image, len(reports), last)
		if last.Total <= 0 || last.Current != last.Total || last.Percent() != 100 {
			t.Errorf("Fetch(%s): last progress %+v, want Current == Total > 0", image, last)
		}
		for i, p := range reports {
			if p.Current < 0 || (p.Total > 0 && p.Current > p.Total) {
				t.Errorf("Fetch(%s): progress %d is %+v", image, i, p)
			}
		}
		want := normalized(t, image)
		found := false
		for _, img := range s.snapshot(t).Images {
			found = found || slices.Contains(img.Refs, want)
		}
		if !found {
			t.Errorf("after Fetch(%s), no image in Snapshot has ref %s", image, want)
		}
		// Fetching what is there is fine too.
		if err := s.rt.Fetch(ctx(t), image, nil); err != nil {
			t.Errorf("second Fetch(%s): %v", image, err)
		}
	}
}

func (s *suite) testFetchMissing(t *testing.T) {
	err := s.rt.Fetch(ctx(t), s.images.Missing, nil)
	if err == nil {
		t.Fatalf("Fetch(%s) succeeded, want an error", s.images.Missing)
	}
	t.Logf("Fetch(%s): %v", s.images.Missing, err)
	if !strings.Contains(err.Error(), s.images.Missing) && !strings.Contains(err.Error(), normalized(t, s.images.Missing)) {
		t.Errorf("Fetch(%s) error %q does not name the image", s.images.Missing, err)
	}
}

func (s *suite) testCreateStartSnapshot(t *testing.T) {
	app := s.app(t, "data")
	c := ctx(t)
	if err := s.rt.CreateNetwork(c, reeve.NetworkSpec{AppUUID: app, Name: "front"}); err != nil {
		t.Fatalf("CreateNetwork: %v", err)
	}
	if err := s.rt.CreateVolume(c, reeve.VolumeSpec{AppUUID: app, Name: "data"}); err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	sp := spec(app, "web_api", "c0ffee1", s.images.V1, map[string]string{"GREETING": "hello"})
	sp.Service.Labels = map[string]string{"com.example.role": "web", reeve.LabelUpdateStrategy: reeve.StrategyKillThenDownload}
	sp.Service.Composition.Networks = map[string]reeve.ServiceNetwork{"front": {}}
	sp.Service.Composition.Volumes = []reeve.Mount{{Type: reeve.MountVolume, Source: "data", Target: "/data"}}
	sp.ExtraEnv = map[string]string{"REEVE_DEVICE_UUID": "dev-1"}

	before := time.Now().Add(-2 * time.Second) // engine clocks may differ slightly
	id := s.create(t, sp)
	st, ok := s.state(t, id)
	if !ok {
		t.Fatalf("created container %s is not in Snapshot", id)
	}
	if st.Status != reeve.StatusCreated {
		t.Errorf("status after Create = %q, want %q", st.Status, reeve.StatusCreated)
	}
	s.start(t, id)
	st = s.waitState(t, id, "running", running)

	check := func(field string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", field, got, want)
		}
	}
	check("AppUUID", st.AppUUID, app)
	check("AppID", st.AppID, sp.AppID)
	check("ServiceName", st.ServiceName, "web_api")
	check("Commit", st.Commit, "c0ffee1")
	check("Image", st.Image, normalized(t, s.images.V1))
	check("ConfigHash", st.ConfigHash, sp.Service.ConfigHash())
	check("Status", st.Status, reeve.StatusRunning)
	check("ExitCode", st.ExitCode, 0)
	check("Health", st.Health, reeve.HealthNone)
	check("Networks", st.Networks, []string{"front"})
	check("Volumes", st.Volumes, []string{"data"})
	check("RestartCount", st.RestartCount, 0)
	if !maps.Equal(st.Labels, sp.Service.Labels) {
		t.Errorf("Labels = %v, want exactly the release's %v", st.Labels, sp.Service.Labels)
	}
	if st.CreatedAt.Before(before) || st.CreatedAt.After(time.Now().Add(2*time.Second)) {
		t.Errorf("CreatedAt = %v, want about now", st.CreatedAt)
	}
	if st.StartedAt.Before(st.CreatedAt) {
		t.Errorf("StartedAt = %v, before CreatedAt %v", st.StartedAt, st.CreatedAt)
	}
	if !st.FinishedAt.IsZero() {
		t.Errorf("FinishedAt = %v for a container that never stopped", st.FinishedAt)
	}
	if !st.IsRunning() {
		t.Error("IsRunning() = false")
	}
}

func (s *suite) testCreateIdempotent(t *testing.T) {
	app := s.app(t)
	sp := spec(app, "web", "c1", s.images.V1, nil)
	id1 := s.create(t, sp)
	id2 := s.create(t, sp)
	if id1 != id2 {
		t.Errorf("second Create returned %s, want the first container %s", id2, id1)
	}
	s.start(t, id1)
	s.waitState(t, id1, "running", running)
	if id3 := s.create(t, sp); id3 != id1 {
		t.Errorf("Create of a running service returned %s, want %s", id3, id1)
	}
	n := 0
	for _, c := range s.snapshot(t).Containers {
		if c.AppUUID == app {
			n++
		}
	}
	if n != 1 {
		t.Errorf("Snapshot has %d containers of the app, want 1", n)
	}
	// Another definition is another container.
	sp2 := sp
	sp2.Service.Environment = map[string]string{"X": "1"}
	if id4 := s.create(t, sp2); id4 == id1 {
		t.Error("Create with another environment returned the same container")
	}
}

func (s *suite) testStopStart(t *testing.T) {
	app := s.app(t)
	id := s.create(t, spec(app, "web", "c1", s.images.V1, nil))
	s.start(t, id)
	first := s.waitState(t, id, "running", running)
	s.waitStarted(t, id)

	// It handles SIGTERM: exit 0, not the kill after the grace (137).
	if err := s.rt.Stop(ctx(t), id, 10*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	st, _ := s.state(t, id)
	if st.Status != reeve.StatusExited || st.ExitCode != 0 || st.FinishedAt.IsZero() || st.IsRunning() {
		t.Errorf("after Stop: status %q exit %d finished %v, want exited 0 with FinishedAt", st.Status, st.ExitCode, st.FinishedAt)
	}
	if err := s.rt.Stop(ctx(t), id, time.Second); err != nil {
		t.Errorf("Stop of a stopped container: %v", err)
	}
	s.start(t, id)
	st = s.waitState(t, id, "running again", running)
	if !st.StartedAt.After(first.StartedAt) {
		t.Errorf("StartedAt after restart = %v, want after %v", st.StartedAt, first.StartedAt)
	}
	if err := s.rt.Start(ctx(t), id); err != nil {
		t.Errorf("Start of a running container: %v", err)
	}
}

func (s *suite) testStopKills(t *testing.T) {
	app := s.app(t)
	id := s.create(t, spec(app, "stubborn", "c1", s.images.V1, map[string]string{"TESTPROG_IGNORE_TERM": "1"}))
	s.start(t, id)
	s.waitState(t, id, "running", running)
	s.waitStarted(t, id)

	began := time.Now()
	if err := s.rt.Stop(ctx(t), id, time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	// The grace is waited out before the kill (a lower bound is
	// behaviour, not speed); the exit code says it was killed.
	if d := time.Since(began); d < 900*time.Millisecond {
		t.Errorf("Stop with grace 1s of a process ignoring SIGTERM took only %v: the grace was not given", d)
	}
	st, _ := s.state(t, id)
	if st.Status != reeve.StatusExited || st.ExitCode != 137 {
		t.Errorf("after Stop: status %q exit code %d, want exited 137 (killed)", st.Status, st.ExitCode)
	}
}

func (s *suite) testExitCode(t *testing.T) {
	app := s.app(t)
	id := s.create(t, spec(app, "job", "c1", s.images.V1, map[string]string{"TESTPROG_EXIT": "3", "TESTPROG_EXIT_AFTER": "200ms"}))
	s.start(t, id)
	st := s.waitState(t, id, "exited", exited)
	if st.ExitCode != 3 {
		t.Errorf("ExitCode = %d, want 3", st.ExitCode)
	}
	if st.FinishedAt.IsZero() || st.FinishedAt.Before(st.StartedAt) {
		t.Errorf("FinishedAt = %v, StartedAt = %v", st.FinishedAt, st.StartedAt)
	}
	if st.IsRunning() {
		t.Error("IsRunning() = true for an exited container")
	}
}

func (s *suite) testRestartPolicy(t *testing.T) {
	app := s.app(t)
	sp := spec(app, "flaky", "c1", s.images.V1, map[string]string{"TESTPROG_EXIT": "1"})
	sp.Service.Composition.Restart = "on-failure:2"
	id := s.create(t, sp)
	s.start(t, id)
	st := s.waitState(t, id, "exited after 2 restarts", func(st reeve.ServiceState) bool {
		return exited(st) && st.RestartCount == 2
	})
	if st.ExitCode != 1 {
		t.Errorf("ExitCode = %d, want 1", st.ExitCode)
	}
	time.Sleep(time.Second)
	if st, _ := s.state(t, id); st.RestartCount != 2 || !exited(st) {
		t.Errorf("restarted beyond on-failure:2: status %q restarts %d", st.Status, st.RestartCount)
	}
}

func (s *suite) testHealth(t *testing.T) {
	app := s.app(t)
	sp := spec(app, "checked", "c1", s.images.V1, map[string]string{"TESTPROG_HEALTHY_AFTER": "1s"})
	sp.Service.Composition.Healthcheck = &reeve.Healthcheck{
		Test:     []string{"CMD", "/testprog", "health"},
		Interval: reeve.Duration(200 * time.Millisecond),
		Timeout:  reeve.Duration(2 * time.Second),
		Retries:  50,
	}
	id := s.create(t, sp)
	s.start(t, id)
	st := s.waitState(t, id, "running", running)
	if st.Health != reeve.HealthStarting && st.Health != reeve.HealthHealthy {
		t.Errorf("Health right after start = %q, want starting", st.Health)
	}
	s.waitState(t, id, "healthy", func(st reeve.ServiceState) bool { return st.Health == reeve.HealthHealthy })

	// Disabled: no health.
	sp2 := spec(app, "unchecked", "c1", s.images.V1, nil)
	sp2.Service.Composition.Healthcheck = &reeve.Healthcheck{Disable: true}
	id2 := s.create(t, sp2)
	s.start(t, id2)
	if st := s.waitState(t, id2, "running", running); st.Health != reeve.HealthNone {
		t.Errorf("Health with the healthcheck disabled = %q, want none", st.Health)
	}
}

func (s *suite) testUpdateMetadata(t *testing.T) {
	app := s.app(t)
	sp := spec(app, "web_api", "c1", s.images.V1, map[string]string{"A": "1"})
	id := s.create(t, sp)
	s.start(t, id)
	before := s.waitState(t, id, "running", running)

	sp2 := sp
	sp2.Commit = "c2"
	sp2.ReleaseID = 8
	if err := s.rt.UpdateMetadata(ctx(t), id, sp2); err != nil {
		t.Fatalf("UpdateMetadata: %v", err)
	}
	after, ok := s.state(t, id)
	if !ok {
		t.Fatalf("container %s is gone after UpdateMetadata", id)
	}
	if after.Commit != "c2" {
		t.Errorf("Commit = %q, want c2", after.Commit)
	}
	if after.Status != reeve.StatusRunning || !after.StartedAt.Equal(before.StartedAt) {
		t.Errorf("after UpdateMetadata: status %q started %v, want still running since %v", after.Status, after.StartedAt, before.StartedAt)
	}
	want := before
	want.Commit = "c2"
	if fmt.Sprint(after) != fmt.Sprint(want) {
		t.Errorf("UpdateMetadata changed more than the commit:\nbefore %+v\nafter  %+v", before, after)
	}
	if err := s.rt.UpdateMetadata(ctx(t), id, sp2); err != nil {
		t.Errorf("UpdateMetadata again: %v", err)
	}
	// The same container is what Create finds for the new commit.
	if id2 := s.create(t, sp2); id2 != id {
		t.Errorf("Create at the new commit returned %s, want the renamed %s", id2, id)
	}
	// Another definition cannot be moved to: it needs a new container.
	sp3 := sp2
	sp3.Service.Environment = map[string]string{"A": "2"}
	if err := s.rt.UpdateMetadata(ctx(t), id, sp3); err == nil {
		t.Error("UpdateMetadata to another definition succeeded, want an error")
	}
}

func (s *suite) testNetworks(t *testing.T) {
	app := s.app(t)
	c := ctx(t)
	ns := reeve.NetworkSpec{AppUUID: app, Name: "backend", Network: reeve.Network{Labels: map[string]string{"com.example": "x"}}}
	for i := range 2 {
		if err := s.rt.CreateNetwork(c, ns); err != nil {
			t.Fatalf("CreateNetwork #%d: %v", i+1, err)
		}
	}
	var found []reeve.NetworkState
	for _, n := range s.snapshot(t).Networks {
		if n.AppUUID == app {
			found = append(found, n)
		}
	}
	if len(found) != 1 || found[0].Name != "backend" || found[0].ConfigHash != ns.Network.ConfigHash() || found[0].ID == "" {
		t.Fatalf("Snapshot networks of the app = %+v, want one backend with hash %s", found, ns.Network.ConfigHash())
	}
	// A service on it.
	sp := spec(app, "api", "c1", s.images.V1, nil)
	sp.Service.Composition.Networks = map[string]reeve.ServiceNetwork{"backend": {Aliases: []string{"api-alias"}}}
	id := s.create(t, sp)
	s.start(t, id)
	s.waitState(t, id, "running", running)
	if err := s.rt.Remove(c, id); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for i := range 2 {
		if err := s.rt.RemoveNetwork(c, app, "backend"); err != nil {
			t.Fatalf("RemoveNetwork #%d: %v", i+1, err)
		}
	}
	for _, n := range s.snapshot(t).Networks {
		if n.AppUUID == app {
			t.Errorf("network %+v still in Snapshot after RemoveNetwork", n)
		}
	}
}

func (s *suite) testVolumes(t *testing.T) {
	app := s.app(t, "store")
	c := ctx(t)
	vs := reeve.VolumeSpec{AppUUID: app, Name: "store", Volume: reeve.Volume{Labels: map[string]string{"com.example": "x"}}}
	for i := range 2 {
		if err := s.rt.CreateVolume(c, vs); err != nil {
			t.Fatalf("CreateVolume #%d: %v", i+1, err)
		}
	}
	var found []reeve.VolumeState
	for _, v := range s.snapshot(t).Volumes {
		if v.AppUUID == app {
			found = append(found, v)
		}
	}
	want := []reeve.VolumeState{{AppUUID: app, Name: "store", ConfigHash: vs.Volume.ConfigHash()}}
	if !slices.Equal(found, want) {
		t.Fatalf("Snapshot volumes of the app = %+v, want %+v", found, want)
	}
	for i := range 2 {
		if err := s.rt.RemoveVolume(c, app, "store"); err != nil {
			t.Fatalf("RemoveVolume #%d: %v", i+1, err)
		}
	}
	for _, v := range s.snapshot(t).Volumes {
		if v.AppUUID == app {
			t.Errorf("volume %+v still in Snapshot after RemoveVolume", v)
		}
	}
}

// writeFile writes content to file in volume vol of app, through a
// container.
func (s *suite) writeFile(t *testing.T, app, vol, file, content string) {
	t.Helper()
	sp := spec(app, "writer", "c1", s.images.V1, map[string]string{
		"TESTPROG_WRITE": "/data/" + file + "=" + content,
		"TESTPROG_EXIT":  "0",
	})
	sp.Service.Composition.Volumes = []reeve.Mount{{Type: reeve.MountVolume, Source: vol, Target: "/data"}}
	if code := s.runOnce(t, sp); code != 0 {
		t.Fatalf("writing /data/%s into volume %s: exit code %d", file, vol, code)
	}
}

// fileExists reports whether file is in volume vol of app, by running
// `testprog cat` on it.
func (s *suite) fileExists(t *testing.T, app, vol, file string) bool {
	t.Helper()
	sp := spec(app, "reader", "c1", s.images.V1, nil)
	sp.Service.Composition.Command = []string{"cat", "/data/" + file}
	sp.Service.Composition.Volumes = []reeve.Mount{{Type: reeve.MountVolume, Source: vol, Target: "/data"}}
	switch code := s.runOnce(t, sp); code {
	case 0:
		return true
	case 1:
		return false
	default:
		t.Fatalf("testprog cat /data/%s: exit code %d", file, code)
		return false
	}
}

func (s *suite) volumeHash(t *testing.T, app, name string) (string, bool) {
	t.Helper()
	for _, v := range s.snapshot(t).Volumes {
		if v.AppUUID == app && v.Name == name {
			return v.ConfigHash, true
		}
	}
	return "", false
}

func (s *suite) testReplaceVolume(t *testing.T) {
	app := s.app(t, "data")
	c := ctx(t)
	v1 := reeve.VolumeSpec{AppUUID: app, Name: "data", Volume: reeve.Volume{Labels: map[string]string{"generation": "1"}}}
	v2 := reeve.VolumeSpec{AppUUID: app, Name: "data", Volume: reeve.Volume{Labels: map[string]string{"generation": "2"}}}
	if err := s.rt.CreateVolume(c, v1); err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	token := "kept-" + randomHex(4)
	s.writeFile(t, app, "data", token, "precious")
	if !s.fileExists(t, app, "data", token) {
		t.Fatal("the file written is not there before ReplaceVolume")
	}
	if s.fileExists(t, app, "data", "never-written") {
		t.Fatal("testprog cat finds a file never written: the check is broken")
	}

	if err := s.rt.ReplaceVolume(c, v2); err != nil {
		t.Fatalf("ReplaceVolume: %v", err)
	}
	if h, ok := s.volumeHash(t, app, "data"); !ok || h != v2.Volume.ConfigHash() {
		t.Errorf("after ReplaceVolume the volume's hash is %q (present %v), want %s", h, ok, v2.Volume.ConfigHash())
	}
	if !s.fileExists(t, app, "data", token) {
		t.Error("the volume's data did not survive ReplaceVolume")
	}
	// Replacing with the definition it has changes nothing.
	if err := s.rt.ReplaceVolume(c, v2); err != nil {
		t.Fatalf("ReplaceVolume with the same definition: %v", err)
	}
	if !s.fileExists(t, app, "data", token) {
		t.Error("the volume's data did not survive a second ReplaceVolume")
	}
	// CreateVolume of what is there with another definition refuses.
	if err := s.rt.CreateVolume(c, v1); err == nil {
		t.Error("CreateVolume over a volume with another definition succeeded, want an error")
	}
}

// testReplaceVolumeInterrupted interrupts ReplaceVolume at ever later
// points (context deadlines), recovers the way the agent does (Snapshot:
// volume missing → CreateVolume; other definition → ReplaceVolume), and
// checks the data is still there at the end.
func (s *suite) testReplaceVolumeInterrupted(t *testing.T) {
	app := s.app(t, "data")
	c := ctx(t)
	def := func(gen int) reeve.VolumeSpec {
		return reeve.VolumeSpec{AppUUID: app, Name: "data", Volume: reeve.Volume{Labels: map[string]string{"generation": fmt.Sprint(gen)}}}
	}
	if err := s.rt.CreateVolume(c, def(0)); err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	token := "kept-" + randomHex(4)
	s.writeFile(t, app, "data", token, "precious")

	interrupted := 0
	gen := 0
	for delay := time.Millisecond; ; delay = delay * 3 / 2 {
		gen++
		target := def(gen)
		ic, cancel := context.WithTimeout(c, delay)
		err := s.rt.ReplaceVolume(ic, target)
		cancel()
		if err == nil {
			break // the whole replace fits in delay: every step was tried
		}
		interrupted++
		if delay > time.Minute {
			t.Fatalf("ReplaceVolume fails without interruption: %v", err)
		}
		// Recover like the agent.
		for attempt := 0; ; attempt++ {
			h, ok := s.volumeHash(t, app, "data")
			if ok && h == target.Volume.ConfigHash() {
				break
			}
			if attempt == 3 {
				t.Fatalf("after interrupting at %v, recovery does not converge (volume present %v hash %s)", delay, ok, h)
			}
			if !ok {
				t.Logf("interrupted after %v (%v): volume not listed: CreateVolume", delay, err)
				err = s.rt.CreateVolume(c, target)
			} else {
				t.Logf("interrupted after %v (%v): volume listed with hash %s: ReplaceVolume", delay, err, h)
				err = s.rt.ReplaceVolume(c, target)
			}
			if err != nil {
				t.Fatalf("recovery after interrupting at %v: %v", delay, err)
			}
		}
	}
	t.Logf("ReplaceVolume interrupted %d times before it completed", interrupted)
	if interrupted == 0 {
		t.Error("no interruption happened: the test checked nothing")
	}
	if h, ok := s.volumeHash(t, app, "data"); !ok || h != def(gen).Volume.ConfigHash() {
		t.Errorf("final volume hash %q (present %v), want %s", h, ok, def(gen).Volume.ConfigHash())
	}
	if !s.fileExists(t, app, "data", token) {
		t.Error("data lost after interrupted ReplaceVolume calls")
	}
}

func (s *suite) testRemoveGone(t *testing.T) {
	app := s.app(t)
	c := ctx(t)
	id := s.create(t, spec(app, "gone", "c1", s.images.V1, nil))
	s.start(t, id)
	s.waitState(t, id, "running", running)
	for i := range 2 {
		if err := s.rt.Remove(c, id); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if _, ok := s.state(t, id); ok {
		t.Error("removed container still in Snapshot")
	}
	if err := s.rt.Stop(c, id, time.Second); err != nil {
		t.Errorf("Stop of a removed container: %v", err)
	}
	if err := s.rt.Start(c, id); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Start of a removed container: %v, want runtime.ErrNotFound", err)
	}
	if err := s.rt.UpdateMetadata(c, id, spec(app, "gone", "c2", s.images.V1, nil)); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("UpdateMetadata of a removed container: %v, want runtime.ErrNotFound", err)
	}
	if err := s.rt.RemoveNetwork(c, app, "never-created"); err != nil {
		t.Errorf("RemoveNetwork of a missing network: %v", err)
	}
	if err := s.rt.RemoveVolume(c, app, "never-created"); err != nil {
		t.Errorf("RemoveVolume of a missing volume: %v", err)
	}
	if err := s.rt.RemoveImage(c, s.images.Missing); err != nil {
		t.Errorf("RemoveImage of a missing image: %v", err)
	}
}

func (s *suite) testRemoveImage(t *testing.T) {
	app := s.app(t)
	c := ctx(t)
	s.fetch(t, s.images.V2)
	id := s.create(t, spec(app, "user", "c1", s.images.V2, nil))
	if err := s.rt.RemoveImage(c, s.images.V2); err == nil {
		t.Error("RemoveImage of an image a container uses succeeded, want an error")
	}
	if err := s.rt.Remove(c, id); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := s.rt.RemoveImage(c, s.images.V2); err != nil {
		t.Fatalf("RemoveImage: %v", err)
	}
	want := normalized(t, s.images.V2)
	for _, img := range s.snapshot(t).Images {
		if slices.Contains(img.Refs, want) {
			t.Errorf("image %s still in Snapshot after RemoveImage: %+v", want, img)
		}
	}
	if err := s.rt.RemoveImage(c, s.images.V2); err != nil {
		t.Errorf("RemoveImage again: %v", err)
	}
	// Fetch it back: what the suite's caller pushed stays usable.
	s.fetch(t, s.images.V2)
}

func (s *suite) testCleanup(t *testing.T) {
	if err := s.rt.Cleanup(ctx(t)); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if err := s.rt.Cleanup(ctx(t)); err != nil {
		t.Fatalf("Cleanup again: %v", err)
	}
	// What reeve runs is untouched.
	app := s.app(t)
	id := s.create(t, spec(app, "survivor", "c1", s.images.V1, nil))
	if err := s.rt.Cleanup(ctx(t)); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if _, ok := s.state(t, id); !ok {
		t.Error("Cleanup removed a service container")
	}
}
