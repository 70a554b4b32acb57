package server

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
	"reeve.dev/reeve/internal/store/sqlite"
)

// depEnv is a server on real SQLite files with a gateway fleet
// ("gateways", two gateways), a dependent fleet under it ("sensors") and
// another fleet ("lobby", with one device) whose devices carry nothing.
type depEnv struct {
	s               *Server
	st              *countingStore
	l               *Logs
	ls              *gatedLogStore
	clock           *fakeClock
	gateways        reeve.Fleet
	sensors         reeve.Fleet
	lobby           reeve.Fleet
	gw1, gw2, kiosk reeve.Device
}

// countingStore counts the devices read by ID.
type countingStore struct {
	store.Store
	byID atomic.Int64
}

func (c *countingStore) DeviceByID(ctx context.Context, id int64) (reeve.Device, error) {
	c.byID.Add(1)
	return c.Store.DeviceByID(ctx, id)
}

const composeFirmware = "services:\n  firmware:\n    image: registry.example.com/sensor-fw:1\n    environment:\n      RATE: compose\n"

func newDepEnv(t *testing.T) *depEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.New(t.Context(), filepath.Join(dir, "server.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lst, err := sqlite.NewLogStore(t.Context(), filepath.Join(dir, "logs.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lst.Close() })
	e := &depEnv{st: &countingStore{Store: st}, ls: &gatedLogStore{LogStore: lst}, clock: &fakeClock{t: time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC)}}
	quiet := slog.New(slog.DiscardHandler)
	e.l = NewLogs(LogOptions{Store: e.ls, Now: e.clock.now, Logger: quiet, PruneInterval: time.Hour})
	e.s = New(Options{Store: e.st, Logs: e.l, Now: e.clock.now, Logger: quiet})
	e.gateways = e.fleet(t, CreateFleetRequest{Name: "gateways", DeviceType: "raspberrypi4-64"})
	e.sensors = e.fleet(t, CreateFleetRequest{Name: "sensors", DeviceType: "esp32", Parent: "gateways"})
	e.lobby = e.fleet(t, CreateFleetRequest{Name: "lobby"})
	e.gw1 = e.device(t, e.gateways, "gw-1", 1)
	e.gw2 = e.device(t, e.gateways, "gw-2", 2)
	e.kiosk = e.device(t, e.lobby, "kiosk", 3)
	return e
}

func (e *depEnv) fleet(t *testing.T, req CreateFleetRequest) reeve.Fleet {
	t.Helper()
	f, err := e.s.CreateFleet(t.Context(), req)
	if err != nil {
		t.Fatalf("create fleet %s: %v", req.Name, err)
	}
	return f
}

func (e *depEnv) device(t *testing.T, f reeve.Fleet, name string, n byte) reeve.Device {
	t.Helper()
	d, err := e.st.CreateDevice(t.Context(), reeve.Device{
		UUID: strings.Repeat(string("0123456789abcdef"[n]), 32), Name: name, FleetID: f.ID, DeviceType: f.DeviceType,
		KeyHash: Hash(name), CreatedAt: e.clock.now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// dependent registers a dependent device of gw in the sensors fleet.
func (e *depEnv) dependent(t *testing.T, gw reeve.Device, uuid, name string) reeve.Device {
	t.Helper()
	d, err := e.s.RegisterDependent(t.Context(), gw, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "esp32", UUID: uuid, Name: name, LocalID: "serial-" + name})
	if err != nil {
		t.Fatalf("register dependent %s: %v", name, err)
	}
	return d
}

func (e *depEnv) push(t *testing.T, fleet, compose string) reeve.FleetRelease {
	t.Helper()
	r, _, err := e.s.Push(t.Context(), fleet, []byte(compose))
	if err != nil {
		t.Fatalf("push to %s: %v", fleet, err)
	}
	return r
}

// target polls dev's target and parses it as an agent does.
func (e *depEnv) target(t *testing.T, dev reeve.Device) (reeve.TargetState, Target) {
	t.Helper()
	tg, err := e.s.Poll(t.Context(), dev)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := reeve.ParseTargetState(tg.Body)
	if err != nil {
		t.Fatalf("the served target does not validate: %v\n%s", err, tg.Body)
	}
	return ts, tg
}

func wantCode(t *testing.T, err error, code string, mentions ...string) {
	t.Helper()
	if got := reeve.ErrorCode(err); err == nil || got != code {
		t.Errorf("error %v (code %s), want code %s", err, got, code)
		return
	}
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not say %q", err, m)
		}
	}
}

func problemPaths(err error) []string {
	var ve *reeve.ValidationError
	if !errors.As(err, &ve) {
		return nil
	}
	var out []string
	for _, p := range ve.Problems {
		out = append(out, p.Path)
	}
	return out
}

func TestCreateFleetWithParent(t *testing.T) {
	e := newDepEnv(t)
	if e.gateways.Class != reeve.ClassFleet || e.gateways.ParentID != 0 {
		t.Errorf("a fleet made without parent: class %q parent %d", e.gateways.Class, e.gateways.ParentID)
	}
	if e.sensors.Class != reeve.ClassDependent || e.sensors.ParentID != e.gateways.ID || e.sensors.DeviceType != "esp32" {
		t.Errorf("a fleet made with a parent: %+v", e.sensors)
	}
	byID := e.fleet(t, CreateFleetRequest{Name: "lights", Parent: "1"})
	if !byID.Dependent() || byID.ParentID != 1 || byID.DeviceType != reeve.DeviceTypeAny {
		t.Errorf("a fleet made with its parent's id: %+v", byID)
	}
	for _, tc := range []struct {
		name  string
		req   CreateFleetRequest
		paths []string
		says  string
	}{
		{"unknown parent", CreateFleetRequest{Name: "x", Parent: "nowhere"}, []string{"parent"}, `no fleet "nowhere"`},
		{"dependent parent", CreateFleetRequest{Name: "x", Parent: "sensors"}, []string{"parent"}, "itself a fleet of dependent devices"},
		{"every problem at once", CreateFleetRequest{Name: "bad name", UpdateStrategy: "yolo", Parent: "nowhere"}, []string{"name", "update_strategy", "parent"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.s.CreateFleet(t.Context(), tc.req)
			wantCode(t, err, reeve.CodeInvalid, tc.says)
			if diff := cmp.Diff(tc.paths, problemPaths(err)); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
	fs, err := e.s.Fleets(t.Context())
	if err != nil || len(fs) != 4 {
		t.Errorf("fleets after refusals: %d (%v), want 4", len(fs), err)
	}

	// A dependent fleet takes no provisioning key; its parent cannot go
	// before it.
	_, _, err = e.s.CreateProvisioningKey(t.Context(), "sensors", "", time.Time{})
	wantCode(t, err, reeve.CodeInvalid, "sensors", "gateway")
	if err := e.s.DeleteFleet(t.Context(), "lights"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.s.DeleteFleet(t.Context(), "gateways"), reeve.CodeConflict)
}

func TestPushToDependentFleet(t *testing.T) {
	e := newDepEnv(t)
	_, _, err := e.s.Push(t.Context(), "sensors", []byte("services:\n  fw:\n    image: a/fw:1\n  helper:\n    image: a/helper:1\n"))
	wantCode(t, err, reeve.CodeInvalid, "exactly one service", "/assets", "found 2")
	if diff := cmp.Diff([]string{"services"}, problemPaths(err)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	rels, err := e.s.Releases(t.Context(), "sensors")
	if err != nil || len(rels) != 0 {
		t.Fatalf("a refused release was stored: %v %v", rels, err)
	}
	r := e.push(t, "sensors", composeFirmware)
	if n := len(r.Release.Services); n != 1 {
		t.Fatalf("pushed release has %d services", n)
	}
	// A normal fleet still takes several services.
	e.push(t, "lobby", "services:\n  a:\n    image: a/a:1\n  b:\n    image: a/b:1\n")
}

func TestRegisterDependent(t *testing.T) {
	e := newDepEnv(t)
	lights := e.fleet(t, CreateFleetRequest{Name: "lights", Parent: "lobby", DeviceType: reeve.DeviceTypeAny})
	uuid := strings.Repeat("d", 32)
	d, err := e.s.RegisterDependent(t.Context(), e.gw1, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "esp32", UUID: uuid, LocalID: "urn:dev:mac:0024befffe804ff1"})
	if err != nil {
		t.Fatal(err)
	}
	want := reeve.Device{ID: d.ID, UUID: uuid, Name: uuid[:7], FleetID: e.sensors.ID, DeviceType: "esp32", GatewayID: e.gw1.ID,
		LocalID: "urn:dev:mac:0024befffe804ff1", CreatedAt: e.clock.now()}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("registered dependent device (-want +got):\n%s", diff)
	}
	made, err := e.s.RegisterDependent(t.Context(), e.gw2, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "esp32", Name: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	if !reeve.ValidUUID(made.UUID) || made.Name != "probe" || made.GatewayID != e.gw2.ID || made.KeyHash != "" {
		t.Errorf("a dependent device registered without UUID: %+v", made)
	}

	for _, tc := range []struct {
		name string
		gw   reeve.Device
		req  RegisterDependentRequest
		code string
		says []string
	}{
		{"unknown app", e.gw1, RegisterDependentRequest{AppID: 999, DeviceType: "esp32"}, reeve.CodeNotFound, []string{"no dependent app 999"}},
		{"not a dependent app", e.gw1, RegisterDependentRequest{AppID: e.lobby.ID, DeviceType: "esp32"}, reeve.CodeForbidden, []string{`"lobby"`, `"gateways"`}},
		{"another fleet's dependent app", e.gw1, RegisterDependentRequest{AppID: lights.ID, DeviceType: "esp32"}, reeve.CodeForbidden, []string{`"lights"`, `"gateways"`}},
		{"a gateway of no dependent app", e.kiosk, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "esp32"}, reeve.CodeForbidden, []string{`"sensors"`, `"lobby"`}},
		{"invalid uuid", e.gw1, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "esp32", UUID: "not-a-uuid"}, reeve.CodeInvalid, []string{"uuid"}},
		{"no device type", e.gw1, RegisterDependentRequest{AppID: e.sensors.ID}, reeve.CodeInvalid, []string{"device_type"}},
		{"wrong device type", e.gw1, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "nrf52"}, reeve.CodeInvalid, []string{"nrf52", "esp32"}},
		{"no app id", e.gw1, RegisterDependentRequest{DeviceType: "esp32"}, reeve.CodeInvalid, []string{"app_id"}},
		{"duplicate uuid of this gateway", e.gw1, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "esp32", UUID: uuid}, reeve.CodeConflict, []string{uuid, "this gateway"}},
		{"duplicate uuid of another device", e.gw1, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "esp32", UUID: e.kiosk.UUID}, reeve.CodeConflict, []string{e.kiosk.UUID}},
		{"long local id", e.gw1, RegisterDependentRequest{AppID: e.sensors.ID, DeviceType: "esp32", LocalID: strings.Repeat("x", 257)}, reeve.CodeInvalid, []string{"local_id"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.s.RegisterDependent(t.Context(), tc.gw, tc.req)
			wantCode(t, err, tc.code, tc.says...)
		})
	}
	devs, err := e.s.Devices(t.Context(), "sensors")
	if err != nil || len(devs) != 2 {
		t.Fatalf("dependent devices after refusals: %d (%v), want 2", len(devs), err)
	}
	// The lights fleet's device type is any: it takes every type.
	if _, err := e.s.RegisterDependent(t.Context(), e.kiosk, RegisterDependentRequest{AppID: lights.ID, DeviceType: "nrf52"}); err != nil {
		t.Errorf("a fleet of any type refused a device: %v", err)
	}
	// A gateway that carries devices cannot be removed.
	wantCode(t, e.s.DeleteDevice(t.Context(), e.gw1.UUID), reeve.CodeConflict, "remove them first")
}

func TestAddDependentsShape(t *testing.T) {
	gwFleet := reeve.Fleet{ID: 1, UUID: strings.Repeat("1", 32), Name: "gateways", Class: reeve.ClassFleet}
	sensors := reeve.Fleet{ID: 2, UUID: strings.Repeat("2", 32), Name: "sensors", Class: reeve.ClassDependent, ParentID: 1}
	lights := reeve.Fleet{ID: 3, UUID: strings.Repeat("3", 32), Name: "lights", Class: reeve.ClassDependent, ParentID: 1}
	gw := reeve.Device{ID: 10, UUID: strings.Repeat("a", 32), Name: "gw", FleetID: 1}
	probe := reeve.Device{ID: 11, UUID: strings.Repeat("b", 32), Name: "probe", FleetID: 2, GatewayID: 10}
	pinned := reeve.Device{ID: 12, UUID: strings.Repeat("c", 32), Name: "pinned", FleetID: 2, GatewayID: 10, PinnedRelease: "c1"}
	stray := reeve.Device{ID: 13, UUID: strings.Repeat("e", 32), Name: "stray", FleetID: 9, GatewayID: 10}
	fw := func(id int64, image string) *reeve.FleetRelease {
		return &reeve.FleetRelease{ID: id, FleetID: 2, Commit: "c" + string(rune('0'+id)), Release: reeve.Release{Services: map[string]reeve.Service{
			"firmware": {ID: 1, ImageID: 1, Image: image, Running: true, Environment: map[string]string{"RATE": "compose"}},
		}}}
	}
	rel1, rel2 := fw(1, "registry.example.com/fw:1"), fw(2, "registry.example.com/fw:2")
	fleetEnv := []reeve.Variable{
		{Kind: reeve.VarEnv, FleetID: 2, Service: "firmware", Name: "RATE", Value: "service"},
		{Kind: reeve.VarEnv, FleetID: 2, Name: "MODE", Value: "fleet"},
	}
	fleetCfg := []reeve.Variable{{Kind: reeve.VarConfig, FleetID: 2, Name: "REEVE_HOST_TYPE", Value: "esp32"}}
	probeEnv := append(fleetEnv[:2:2], reeve.Variable{Kind: reeve.VarEnv, DeviceID: 11, Name: "MODE", Value: "device"})
	probeCfg := append(fleetCfg[:1:1], reeve.Variable{Kind: reeve.VarConfig, DeviceID: 11, Name: "REEVE_HOST_TYPE", Value: "esp32-s3"})

	ts := BuildTarget(gwFleet, gw, nil, nil, nil)
	AddDependents(ts, gw.UUID,
		[]DependentFleet{{Fleet: sensors, Release: rel2, Env: fleetEnv, Config: fleetCfg}, {Fleet: lights}},
		[]DependentDevice{
			{Device: probe, Release: rel2, Env: probeEnv, Config: probeCfg},
			{Device: pinned, Release: rel1, Env: fleetEnv, Config: fleetCfg},
			{Device: stray, Release: rel1},
		})

	svc := func(image string, env map[string]string) map[string]reeve.Service {
		return map[string]reeve.Service{"firmware": {ID: 1, ImageID: 1, Image: image, Running: true, Environment: env}}
	}
	fleetEnvWant := map[string]string{"RATE": "service", "MODE": "fleet"}
	want := reeve.TargetState{
		gw.UUID: {Name: "gw", Apps: map[string]reeve.App{
			gwFleet.UUID: {ID: 1, Name: "gateways", Class: reeve.ClassFleet, Releases: map[string]reeve.Release{}},
			sensors.UUID: {ID: 2, Name: "sensors", Class: reeve.ClassDependent, Config: map[string]string{"REEVE_HOST_TYPE": "esp32"},
				Releases: map[string]reeve.Release{"c2": {ID: 2, Services: svc("registry.example.com/fw:2", fleetEnvWant)}}},
			lights.UUID: {ID: 3, Name: "lights", Class: reeve.ClassDependent, Releases: map[string]reeve.Release{}},
		}},
		probe.UUID: {Name: "probe", Config: map[string]string{"REEVE_HOST_TYPE": "esp32-s3"}, Apps: map[string]reeve.App{
			sensors.UUID: {ID: 2, Name: "sensors", Class: reeve.ClassDependent,
				Releases: map[string]reeve.Release{"c2": {ID: 2, Services: svc("registry.example.com/fw:2", map[string]string{"RATE": "service", "MODE": "device"})}}},
		}},
		pinned.UUID: {Name: "pinned", Config: map[string]string{"REEVE_HOST_TYPE": "esp32"}, Apps: map[string]reeve.App{
			sensors.UUID: {ID: 2, Name: "sensors", Class: reeve.ClassDependent,
				Releases: map[string]reeve.Release{"c1": {ID: 1, Services: svc("registry.example.com/fw:1", fleetEnvWant)}}},
		}},
	}
	if diff := cmp.Diff(want, ts); diff != "" {
		t.Fatalf("gateway target (-want +got):\n%s", diff)
	}
	if rel2.Release.Services["firmware"].Environment["RATE"] != "compose" {
		t.Error("AddDependents changed the release it was given")
	}

	// What is served is what the agent reads.
	b, _ := json.Marshal(ts)
	parsed, err := reeve.ParseTargetState(b)
	if err != nil {
		t.Fatalf("the target does not validate: %v", err)
	}
	if err := parsed.CheckDependents(gw.UUID); err != nil {
		t.Fatalf("the agent refuses the dependent entries: %v", err)
	}
	apps := parsed.DependentApps(gw.UUID)
	got := apps[sensors.UUID]
	if got.Commit != "c2" || got.Image != "registry.example.com/fw:2" || got.Config["REEVE_HOST_TYPE"] != "esp32" || len(got.Devices) != 2 {
		t.Errorf("the agent reads the sensors app as %+v", got)
	}
	if p := got.Devices[pinned.UUID]; p.Commit != "c1" || p.Name != "pinned" {
		t.Errorf("the agent reads the pinned device as %+v", p)
	}
	if len(apps[lights.UUID].Devices) != 0 || apps[lights.UUID].Commit != "" {
		t.Errorf("the agent reads the empty lights app as %+v", apps[lights.UUID])
	}

	// The same inputs give the same bytes.
	for range 10 {
		again := BuildTarget(gwFleet, gw, nil, nil, nil)
		AddDependents(again, gw.UUID,
			[]DependentFleet{{Fleet: lights}, {Fleet: sensors, Release: rel2, Env: fleetEnv, Config: fleetCfg}},
			[]DependentDevice{{Device: pinned, Release: rel1, Env: fleetEnv, Config: fleetCfg}, {Device: probe, Release: rel2, Env: probeEnv, Config: probeCfg}})
		if b2, _ := json.Marshal(again); string(b2) != string(b) {
			t.Fatal("the same inputs gave different bytes: the ETag would change without a change")
		}
	}
}

func TestGatewayTargetFromTheStore(t *testing.T) {
	e := newDepEnv(t)
	ctx := t.Context()
	ts, _ := e.target(t, e.gw1)
	if app := ts[e.gw1.UUID].Apps[e.sensors.UUID]; app.Class != reeve.ClassDependent || len(app.Releases) != 0 {
		t.Fatalf("a dependent fleet without releases: %+v", app)
	}
	r1 := e.push(t, "sensors", composeFirmware)
	r2 := e.push(t, "sensors", strings.Replace(composeFirmware, "fw:1", "fw:2", 1))
	a := e.dependent(t, e.gw1, strings.Repeat("d", 32), "a")
	b := e.dependent(t, e.gw1, strings.Repeat("e", 32), "b")
	other := e.dependent(t, e.gw2, strings.Repeat("f", 32), "other")
	if _, err := e.s.UpdateDevice(ctx, b.UUID, nil, &r1.Commit); err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct {
		kind string
		sc   VarScope
		name string
	}{
		{reeve.VarEnv, VarScope{Fleet: "sensors"}, "fleet"},
		{reeve.VarEnv, VarScope{Device: a.UUID, Service: "firmware"}, "device+service"},
		{reeve.VarConfig, VarScope{Fleet: "sensors"}, "fleet"},
		{reeve.VarConfig, VarScope{Device: a.UUID}, "device"},
	} {
		if _, err := e.s.SetVar(ctx, v.kind, v.sc, "LEVEL", v.name); err != nil {
			t.Fatal(err)
		}
	}

	ts, tg := e.target(t, e.gw1)
	if len(ts) != 3 {
		t.Fatalf("gw-1's target has %d entries, want its own and its two dependent devices': %s", len(ts), tg.Body)
	}
	if _, ok := ts[other.UUID]; ok {
		t.Error("gw-1's target holds a device gw-2 carries")
	}
	app := ts[e.gw1.UUID].Apps[e.sensors.UUID]
	if _, ok := app.Releases[r2.Commit]; !ok || app.Config["LEVEL"] != "fleet" {
		t.Errorf("the sensors app in gw-1's entry: %+v", app)
	}
	if env := app.Releases[r2.Commit].Services["firmware"].Environment; env["LEVEL"] != "fleet" || env["RATE"] != "compose" {
		t.Errorf("the sensors app's environment: %v", env)
	}
	da := ts[a.UUID]
	if env := da.Apps[e.sensors.UUID].Releases[r2.Commit].Services["firmware"].Environment; env["LEVEL"] != "device+service" || da.Config["LEVEL"] != "device" || da.Name != "a" {
		t.Errorf("device a's entry: %+v", da)
	}
	if _, ok := ts[b.UUID].Apps[e.sensors.UUID].Releases[r1.Commit]; !ok {
		t.Errorf("device b, pinned to %s: %+v", r1.Commit, ts[b.UUID])
	}
	if tg.Commit != "" {
		t.Errorf("the gateway's own commit is %q: its fleet has no release", tg.Commit)
	}
	// A device of a fleet with no dependent fleet gets its own entry alone.
	if ts, _ := e.target(t, e.kiosk); len(ts) != 1 || len(ts[e.kiosk.UUID].Apps) != 1 {
		t.Errorf("kiosk's target: %+v", ts)
	}

	// A removed dependent device leaves its gateway's target.
	if err := e.s.DeleteDevice(ctx, b.UUID); err != nil {
		t.Fatal(err)
	}
	if ts, _ := e.target(t, e.gw1); len(ts) != 2 || ts[b.UUID].Apps != nil {
		t.Errorf("gw-1's target after b was removed: %v entries", len(ts))
	}
}

// TestDependentChangesEndGatewayLongPoll: every change of a dependent
// fleet or device answers a long poll of its gateway at once.
func TestDependentChangesEndGatewayLongPoll(t *testing.T) {
	e := newDepEnv(t)
	ctx := t.Context()
	var (
		dep   reeve.Device
		first reeve.FleetRelease
	)
	for _, tc := range []struct {
		name   string
		change func(t *testing.T)
	}{
		{"push", func(t *testing.T) { first = e.push(t, "sensors", composeFirmware) }},
		{"register", func(t *testing.T) { dep = e.dependent(t, e.gw1, strings.Repeat("d", 32), "probe") }},
		{"fleet variable", func(t *testing.T) {
			if _, err := e.s.SetVar(ctx, reeve.VarConfig, VarScope{Fleet: "sensors"}, "REEVE_HOST_TYPE", "esp32"); err != nil {
				t.Fatal(err)
			}
		}},
		{"device variable", func(t *testing.T) {
			if _, err := e.s.SetVar(ctx, reeve.VarEnv, VarScope{Device: dep.UUID}, "RATE", "9"); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename", func(t *testing.T) {
			name := "renamed"
			if _, err := e.s.UpdateDevice(ctx, dep.UUID, &name, nil); err != nil {
				t.Fatal(err)
			}
		}},
		{"push again", func(t *testing.T) { e.push(t, "sensors", strings.Replace(composeFirmware, "fw:1", "fw:2", 1)) }},
		{"pin the fleet to the first release", func(t *testing.T) {
			if _, err := e.s.UpdateFleet(ctx, "sensors", nil, &first.Commit); err != nil {
				t.Fatal(err)
			}
		}},
		{"remove the device", func(t *testing.T) {
			if err := e.s.DeleteDevice(ctx, dep.UUID); err != nil {
				t.Fatal(err)
			}
		}},
		{"new dependent fleet", func(t *testing.T) { e.fleet(t, CreateFleetRequest{Name: "lights", Parent: "gateways"}) }},
		{"remove a dependent fleet", func(t *testing.T) {
			if err := e.s.DeleteFleet(ctx, "lights"); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, before := e.target(t, e.gw1)
			got := make(chan Target, 1)
			go func() {
				tg, changed, err := e.s.WaitTarget(ctx, e.gw1, before.ETag, 2*time.Minute)
				if err != nil || !changed {
					t.Errorf("long poll ended with changed=%v err=%v", changed, err)
				}
				got <- tg
			}()
			tc.change(t)
			if tg := <-got; tg.ETag == before.ETag {
				t.Error("the long poll answered the target it had")
			}
		})
	}
}

// TestParentLinksComeFromTheStore: a server started on a store that has
// dependent fleets wakes their gateways as the one that made them did.
func TestParentLinksComeFromTheStore(t *testing.T) {
	e := newDepEnv(t)
	again := New(Options{Store: e.st, Now: e.clock.now, Logger: slog.New(slog.DiscardHandler)})
	again.Start(t.Context())
	t.Cleanup(func() { again.Close() })
	before, err := again.Poll(t.Context(), e.gw1)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan bool, 1)
	go func() {
		_, changed, err := again.WaitTarget(t.Context(), e.gw1, before.ETag, 2*time.Minute)
		if err != nil {
			t.Error(err)
		}
		got <- changed
	}()
	if _, _, err := again.Push(t.Context(), "sensors", []byte(composeFirmware)); err != nil {
		t.Fatal(err)
	}
	if !<-got {
		t.Error("a push to a dependent fleet did not end its gateway's long poll")
	}
}

func TestReportWithDependents(t *testing.T) {
	for _, batching := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "batched"}[batching], func(t *testing.T) {
			e := newDepEnv(t)
			if batching {
				e.s.Start(t.Context())
				t.Cleanup(func() { e.s.Close() })
			}
			ctx := t.Context()
			a := e.dependent(t, e.gw1, strings.Repeat("d", 32), "a")
			theirs := e.dependent(t, e.gw2, strings.Repeat("e", 32), "theirs")
			read := func(uuid string) reeve.Device {
				t.Helper()
				d, err := e.st.Device(ctx, uuid)
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
			yes, idle, commit := true, "Idle", "c0ffee00c0ffee00"
			unknown := strings.Repeat("9", 32)
			err := e.s.Report(ctx, e.gw1, reeve.CurrentState{
				e.gw1.UUID:  {Status: &idle},
				a.UUID:      {Status: &idle, IsOnline: &yes, Commit: &commit, Environment: map[string]string{"RATE": "9"}, Config: map[string]string{"HOST": "esp32"}},
				theirs.UUID: {Status: &idle},
				unknown:     {Status: &idle},
			})
			if err != nil {
				t.Fatal(err)
			}
			got := read(a.UUID)
			want := reeve.DeviceReport{Status: &idle, IsOnline: &yes, Commit: &commit, Environment: map[string]string{"RATE": "9"}, Config: map[string]string{"HOST": "esp32"}}
			if diff := cmp.Diff(want, got.State); diff != "" {
				t.Errorf("dependent state (-want +got):\n%s", diff)
			}
			if !got.LastSeen.Equal(e.clock.now()) || !got.ReportedAt.Equal(e.clock.now()) {
				t.Errorf("a dependent reported online: last seen %v, reported %v; want now", got.LastSeen, got.ReportedAt)
			}
			if gw := read(e.gw1.UUID); gw.State.Status == nil || *gw.State.Status != "Idle" {
				t.Errorf("the gateway's own entry: %+v", gw.State)
			}
			if th := read(theirs.UUID); th.State.Status != nil {
				t.Errorf("gw-1 reported for a device gw-2 carries: %+v", th.State)
			}
			if _, err := e.st.Device(ctx, unknown); reeve.ErrorCode(err) != reeve.CodeNotFound {
				t.Errorf("an unknown entry made a device: %v", err)
			}

			// Offline: LastSeen stays.
			e.clock.add(time.Minute)
			no := false
			if err := e.s.Report(ctx, e.gw1, reeve.CurrentState{e.gw1.UUID: {}, a.UUID: {IsOnline: &no}}); err != nil {
				t.Fatal(err)
			}
			if got := read(a.UUID); !got.LastSeen.Equal(e.clock.now().Add(-time.Minute)) || *got.State.IsOnline {
				t.Errorf("a dependent reported offline: last seen %v, online %v", got.LastSeen, *got.State.IsOnline)
			}

			// Refused reports change nothing, the gateway's entry neither.
			busy := "Busy"
			before := read(e.gw1.UUID)
			for _, tc := range []struct {
				name  string
				cs    reeve.CurrentState
				code  string
				paths []string
			}{
				{"a field a dependent does not report", reeve.CurrentState{e.gw1.UUID: {Status: &busy}, a.UUID: {Status: &busy, CPUUsage: new(float64), Apps: map[string]reeve.AppReport{}}},
					reeve.CodeInvalid, []string{a.UUID + ".cpu_usage"}},
				{"not a UUID", reeve.CurrentState{e.gw1.UUID: {Status: &busy}, "kitchen": {Status: &busy}}, reeve.CodeInvalid, []string{"kitchen"}},
				{"no own entry", reeve.CurrentState{a.UUID: {Status: &busy}}, reeve.CodeForbidden, nil},
			} {
				t.Run(tc.name, func(t *testing.T) {
					err := e.s.Report(ctx, e.gw1, tc.cs)
					wantCode(t, err, tc.code)
					if diff := cmp.Diff(tc.paths, problemPaths(err)); diff != "" {
						t.Errorf("problems (-want +got):\n%s", diff)
					}
				})
			}
			if diff := cmp.Diff(before, read(e.gw1.UUID)); diff != "" {
				t.Errorf("a refused report changed the gateway (-before +after):\n%s", diff)
			}
			if got := read(a.UUID); *got.State.Status != "Idle" {
				t.Errorf("a refused report changed the dependent: %+v", got.State)
			}

			// A gateway removed meanwhile: nothing of its report is written.
			if err := e.s.DeleteDevice(ctx, theirs.UUID); err != nil {
				t.Fatal(err)
			}
			if err := e.st.Store.DeleteDevice(ctx, e.gw2.UUID); err != nil {
				t.Fatal(err)
			}
			b := e.dependent(t, e.gw1, strings.Repeat("b", 32), "b")
			err = e.s.Report(ctx, e.gw2, reeve.CurrentState{e.gw2.UUID: {Status: &busy}, b.UUID: {Status: &busy}})
			wantCode(t, err, reeve.CodeNotFound)
			if got := read(b.UUID); got.State.Status != nil {
				t.Errorf("the report of a removed gateway was written: %+v", got.State)
			}
		})
	}
}

func TestDependentOnline(t *testing.T) {
	e := newDepEnv(t)
	ctx := t.Context()
	a := e.dependent(t, e.gw1, strings.Repeat("d", 32), "a")
	b := e.dependent(t, e.gw1, strings.Repeat("e", 32), "b")
	c := e.dependent(t, e.gw2, strings.Repeat("f", 32), "c")
	yes, no := true, false
	report := func(gw reeve.Device, cs reeve.CurrentState) {
		t.Helper()
		if err := e.s.Report(ctx, gw, cs); err != nil {
			t.Fatal(err)
		}
	}
	report(e.gw1, reeve.CurrentState{e.gw1.UUID: {}, a.UUID: {IsOnline: &yes}, b.UUID: {IsOnline: &no}})
	report(e.gw2, reeve.CurrentState{e.gw2.UUID: {}, c.UUID: {IsOnline: &yes}})
	online := func() map[string]bool {
		t.Helper()
		e.st.byID.Store(0)
		devs, err := e.s.Devices(ctx, "sensors")
		if err != nil {
			t.Fatal(err)
		}
		if n := e.st.byID.Load(); n != 2 {
			t.Errorf("listing 3 dependent devices of 2 gateways read %d gateways, want each once", n)
		}
		out := map[string]bool{}
		for _, d := range devs {
			out[d.Name] = d.Online
			if want := map[string]string{"a": e.gw1.UUID, "b": e.gw1.UUID, "c": e.gw2.UUID}[d.Name]; d.Gateway != want {
				t.Errorf("%s shows gateway %q, want %q", d.Name, d.Gateway, want)
			}
		}
		return out
	}
	// Both gateways just reported: online.
	if diff := cmp.Diff(map[string]bool{"a": true, "b": false, "c": true}, online()); diff != "" {
		t.Errorf("online, both gateways online (-want +got):\n%s", diff)
	}
	// gw-2 falls silent; gw-1 keeps polling.
	e.clock.add(10 * time.Minute)
	e.s.Seen(e.gw1.UUID)
	if diff := cmp.Diff(map[string]bool{"a": true, "b": false, "c": false}, online()); diff != "" {
		t.Errorf("online, gw-2 offline (-want +got):\n%s", diff)
	}
	v, err := e.s.Device(ctx, c.UUID)
	if err != nil || v.Online || v.Gateway != e.gw2.UUID || v.LocalID != "serial-c" {
		t.Errorf("device c: %+v (%v)", v, err)
	}
	// A normal device shows no gateway.
	if v, err := e.s.Device(ctx, e.gw1.UUID); err != nil || v.Gateway != "" || !v.Online {
		t.Errorf("gw-1: gateway %q online %v (%v)", v.Gateway, v.Online, err)
	}
}
