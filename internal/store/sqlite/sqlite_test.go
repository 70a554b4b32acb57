package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
	"reeve.dev/reeve/internal/store/storetest"
)

func newStore(t testing.TB, readers int) *Store {
	t.Helper()
	s, err := open(t.Context(), filepath.Join(t.TempDir(), "server.db"), readers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := New(t.Context(), filepath.Join(t.TempDir(), "server.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("close store: %v", err)
			}
		})
		return s
	})
}

// TestStoreWithoutReaders runs the suite with every read on the writer's
// connection, the configuration the benchmarks compare against.
func TestStoreWithoutReaders(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return newStore(t, 0) })
}

func TestReopenKeepsData(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "server.db")
	s, err := New(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.CreateFleet(ctx, reeve.Fleet{UUID: strings.Repeat("a", 32), Name: "lobby", DeviceType: reeve.DeviceTypeAny, UpdateStrategy: reeve.StrategyHandOver})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.CreateDevice(ctx, reeve.Device{UUID: strings.Repeat("b", 32), Name: "kiosk", FleetID: f.ID, KeyHash: "dk", Tags: reeve.Tags{"floor": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	d, err = s.UpdateDevice(ctx, d.UUID, func(d *reeve.Device) error {
		status := "Idle"
		d.State.Status = &status
		d.LastSeen = time.Now()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.CreateRelease(ctx, reeve.FleetRelease{FleetID: f.ID, Commit: "c1", Compose: "services: {}", Release: reeve.Release{Services: map[string]reeve.Service{"web": {Image: "nginx"}}}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.SetVar(ctx, reeve.Variable{Kind: reeve.VarEnv, DeviceID: d.ID, Name: "A", Value: "1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Opening again applies no migration twice and finds everything.
	s, err = New(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	gotF, err := s.Fleet(ctx, f.ID)
	if err != nil {
		t.Fatal(err)
	}
	gotD, err := s.Device(ctx, d.UUID)
	if err != nil {
		t.Fatal(err)
	}
	gotR, err := s.LatestRelease(ctx, f.ID)
	if err != nil {
		t.Fatal(err)
	}
	gotV, err := s.DeviceVars(ctx, reeve.VarEnv, f.ID, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what      string
		want, got any
	}{
		{"fleet", f, gotF}, {"device", d, gotD}, {"release", r, gotR}, {"variables", []reeve.Variable{v}, gotV},
	} {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("%s after reopening (-want +got):\n%s", c.what, diff)
		}
	}
}

// TestMigrateToDependentDevices opens a database made before dependent
// devices existed (001 only) with every migration: its fleets and devices
// come back as normal ones, and can then carry dependent devices.
func TestMigrateToDependentDevices(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "server.db")
	initial, err := fs.ReadFile(migrationFiles, "migrations/001_init.sql")
	if err != nil {
		t.Fatal(err)
	}
	w, r, err := openDBs(ctx, path, fstest.MapFS{"m/001_init.sql": {Data: initial}}, "m", 0)
	if err != nil {
		t.Fatal(err)
	}
	old := &Store{w: w, r: r}
	if _, err := old.w.ExecContext(ctx, `INSERT INTO fleets (uuid, name, device_type, update_strategy, pinned_release, created_at)
		VALUES (?, 'lobby', 'any', 'hand-over', '', 0)`, strings.Repeat("a", 32)); err != nil {
		t.Fatal(err)
	}
	if _, err := old.w.ExecContext(ctx, `INSERT INTO devices (uuid, name, fleet_id, device_type, key_hash, pinned_release, tags, created_at, state)
		VALUES (?, 'kiosk', 1, 'rpi', 'dk', '', 'null', 0, '{}')`, strings.Repeat("b", 32)); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := New(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f, err := s.FleetByName(ctx, "lobby")
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != reeve.ClassFleet || f.ParentID != 0 {
		t.Errorf("a fleet from before the migration has class %q and parent %d, want %q and 0", f.Class, f.ParentID, reeve.ClassFleet)
	}
	d, err := s.Device(ctx, strings.Repeat("b", 32))
	if err != nil {
		t.Fatal(err)
	}
	if d.GatewayID != 0 || d.LocalID != "" || d.KeyHash != "dk" {
		t.Errorf("a device from before the migration: gateway %d, local ID %q, key hash %q", d.GatewayID, d.LocalID, d.KeyHash)
	}
	dep, err := s.CreateFleet(ctx, reeve.Fleet{UUID: strings.Repeat("c", 32), Name: "sensors", Class: reeve.ClassDependent, ParentID: f.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateDevice(ctx, reeve.Device{UUID: strings.Repeat("d", 32), Name: "probe", FleetID: dep.ID, GatewayID: d.ID}); err != nil {
		t.Fatal(err)
	}
	deps, err := s.DependentDevices(ctx, d.ID)
	if err != nil || len(deps) != 1 {
		t.Fatalf("dependent devices of the migrated device: %v %v", deps, err)
	}
}

// TestReadsDuringWrite reads through the store while UpdateDevice holds the
// writer: the readers see the last committed state instead of waiting (with
// reads on the writer's connection this would never return).
func TestReadsDuringWrite(t *testing.T) {
	ctx := t.Context()
	s := newStore(t, 2)
	f, err := s.CreateFleet(ctx, reeve.Fleet{UUID: strings.Repeat("a", 32), Name: "lobby", DeviceType: reeve.DeviceTypeAny})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.CreateDevice(ctx, reeve.Device{UUID: strings.Repeat("b", 32), Name: "before", FleetID: f.ID})
	if err != nil {
		t.Fatal(err)
	}
	var during reeve.Device
	_, err = s.UpdateDevice(ctx, d.UUID, func(dev *reeve.Device) error {
		dev.Name = "after"
		var err error
		during, err = s.Device(ctx, d.UUID)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if during.Name != "before" {
		t.Errorf("a read during the update saw name %q, want the committed %q", during.Name, "before")
	}
	got, err := s.Device(ctx, d.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "after" {
		t.Errorf("a read after the update saw name %q, want %q", got.Name, "after")
	}
}

func TestReadersCannotWrite(t *testing.T) {
	s := newStore(t, 1)
	_, err := s.r.ExecContext(t.Context(), `INSERT INTO tokens (name, hash, created_at) VALUES ('x', 'y', 0)`)
	if err == nil {
		t.Fatal("the read pool accepted an INSERT")
	}
	n, err := s.CountTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d tokens after a refused INSERT, want 0", n)
	}
}

// TestTouchDevicesInBatches touches more devices than one batch holds.
func TestTouchDevicesInBatches(t *testing.T) {
	s := newStore(t, 1)
	uuids := seed(t, s, 2*touchBatch+1)
	before, err := s.Devices(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	later := before[0].LastSeen.Add(time.Hour)
	seen := map[string]time.Time{}
	for i, u := range uuids {
		if i%3 != 0 { // every third device is left alone
			seen[u] = later
		}
	}
	if err := s.TouchDevices(t.Context(), seen); err != nil {
		t.Fatal(err)
	}
	after, err := s.Devices(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range after {
		want := before[i]
		if _, ok := seen[d.UUID]; ok {
			want.LastSeen = later
		}
		if diff := cmp.Diff(want, d); diff != "" {
			t.Errorf("device %s (-want +got):\n%s", d.UUID, diff)
		}
	}
}

// Benchmarks. They run on a store of benchDevices devices, with reads on
// the read pool ("readers") and, for comparison, on the writer's one
// connection ("writer-only").

const benchDevices = 10_000

func benchConfigs() []struct {
	name    string
	readers int
} {
	return []struct {
		name    string
		readers int
	}{
		{"readers", max(4, runtime.NumCPU())},
		{"writer-only", 0},
	}
}

// seed stores a fleet of n devices in one transaction and returns their UUIDs.
func seed(b testing.TB, s *Store, n int) []string {
	b.Helper()
	ctx := b.Context()
	f, err := s.CreateFleet(ctx, reeve.Fleet{UUID: strings.Repeat("f", 32), Name: "bench", DeviceType: reeve.DeviceTypeAny})
	if err != nil {
		b.Fatal(err)
	}
	status, commit := "Idle", "9f86d081"
	uuids := make([]string, n)
	err = s.inTx(ctx, "seed", func(tx *sql.Tx) error {
		for i := range n {
			uuids[i] = fmt.Sprintf("%032x", i)
			_, err := createDevice(ctx, tx, reeve.Device{
				UUID: uuids[i], Name: fmt.Sprint("device-", i), FleetID: f.ID, DeviceType: "raspberrypi4-64",
				KeyHash: fmt.Sprint("key-", i), Tags: reeve.Tags{"site": "bench"},
				State: reeve.DeviceReport{Status: &status, Commit: &commit}, LastSeen: time.Now(),
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return uuids
}

func BenchmarkDevice(b *testing.B) {
	for _, c := range benchConfigs() {
		b.Run(c.name, func(b *testing.B) {
			s := newStore(b, c.readers)
			uuids := seed(b, s, benchDevices)
			b.SetParallelism(4) // several polls at once per CPU
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(len(uuids))
				for pb.Next() {
					if _, err := s.Device(b.Context(), uuids[i%len(uuids)]); err != nil {
						b.Error(err)
						return
					}
					i += 7919
				}
			})
		})
	}
}

// BenchmarkDeviceWhileWriting reads devices in parallel while one goroutine
// keeps updating devices, as a server does while devices report.
func BenchmarkDeviceWhileWriting(b *testing.B) {
	for _, c := range benchConfigs() {
		b.Run(c.name, func(b *testing.B) {
			s := newStore(b, c.readers)
			uuids := seed(b, s, benchDevices)
			ctx, cancel := context.WithCancel(b.Context())
			var writes atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; ctx.Err() == nil; i++ {
					_, err := s.UpdateDevice(ctx, uuids[(i*104729)%len(uuids)], func(d *reeve.Device) error {
						d.LastSeen = time.Now()
						return nil
					})
					if err != nil && ctx.Err() == nil {
						b.Error(err)
						return
					}
					writes.Add(1)
				}
			}()
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(len(uuids))
				for pb.Next() {
					if _, err := s.Device(b.Context(), uuids[i%len(uuids)]); err != nil {
						b.Error(err)
						return
					}
					i += 7919
				}
			})
			b.StopTimer()
			cancel()
			<-done
			b.ReportMetric(float64(writes.Load())/float64(b.N), "writes/read")
		})
	}
}

func BenchmarkUpdateDevice(b *testing.B) {
	s := newStore(b, max(4, runtime.NumCPU()))
	uuids := seed(b, s, benchDevices)
	b.ResetTimer()
	for i := range b.N {
		_, err := s.UpdateDevice(b.Context(), uuids[(i*104729)%len(uuids)], func(d *reeve.Device) error {
			d.LastSeen = time.Now()
			d.Tags["n"] = fmt.Sprint(i)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTouchDevices touches every device of the store in one call.
func BenchmarkTouchDevices(b *testing.B) {
	s := newStore(b, max(4, runtime.NumCPU()))
	uuids := seed(b, s, benchDevices)
	start := time.Now()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		seen := make(map[string]time.Time, len(uuids))
		t := start.Add(time.Duration(i+1) * time.Second) // always later: every row is written
		for _, u := range uuids {
			seen[u] = t
		}
		b.StartTimer()
		if err := s.TouchDevices(b.Context(), seen); err != nil {
			b.Fatal(err)
		}
	}
}
