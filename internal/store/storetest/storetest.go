// Package storetest is the conformance suite of store.Store: every
// implementation runs it, so that the fleet server behaves the same on each.
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return openEmptyStore(t) })
//	}
package storetest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
)

// Run runs the suite. open returns a new, empty store for each subtest and
// closes it when that test ends (t.Cleanup); subtests run in parallel.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, tc := range []struct {
		name string
		test func(*testing.T, store.Store)
	}{
		{"Tokens", testTokens},
		{"CreatedAtDefaultsToNow", testCreatedAtDefaultsToNow},
		{"Fleets", testFleets},
		{"UpdateFleet", testUpdateFleet},
		{"DeleteFleet", testDeleteFleet},
		{"DeleteFleetWithDevices", testDeleteFleetWithDevices},
		{"DependentFleets", testDependentFleets},
		{"DeleteParentFleet", testDeleteParentFleet},
		{"ProvisioningKeys", testProvisioningKeys},
		{"Devices", testDevices},
		{"DeviceKeyHash", testDeviceKeyHash},
		{"ListDevices", testListDevices},
		{"UpdateDevice", testUpdateDevice},
		{"UpdateDeviceAborts", testUpdateDeviceAborts},
		{"UpdateDeviceConcurrent", testUpdateDeviceConcurrent},
		{"UpdateDevices", testUpdateDevices},
		{"TouchDevices", testTouchDevices},
		{"TouchManyDevices", testTouchManyDevices},
		{"DeleteDevice", testDeleteDevice},
		{"DependentDevices", testDependentDevices},
		{"DeleteGateway", testDeleteGateway},
		{"Releases", testReleases},
		{"Vars", testVars},
		{"SetVarReplaces", testSetVarReplaces},
		{"DeleteVar", testDeleteVar},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.test(t, open(t))
		})
	}
}

// Helpers.

// at returns a time offset from a fixed instant that is neither UTC nor a
// whole millisecond, so that round-trips show normalisation.
func at(offset time.Duration) time.Time {
	return time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.FixedZone("UTC+1", 3600)).Add(offset)
}

// stored is t as a store returns it.
func stored(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Truncate(time.Millisecond).UTC()
}

// uuidFor derives a stable 32-hex-digit UUID from s.
func uuidFor(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

func ptr[T any](v T) *T { return &v }

func same(t *testing.T, what string, want, got any) {
	t.Helper()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}

func ok(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// wantCode checks that err has code and that its message mentions each of
// mentions.
func wantCode(t *testing.T, err error, code string, mentions ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("got no error, want one with code %s", code)
		return
	}
	if got := reeve.ErrorCode(err); got != code {
		t.Errorf("error %q has code %s, want %s", err, got, code)
	}
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
}

// utc checks that every time is in UTC.
func utc(t *testing.T, what string, times ...time.Time) {
	t.Helper()
	for i, tm := range times {
		if tm.Location() != time.UTC {
			t.Errorf("%s: time %d (%v) is in %v, want UTC", what, i, tm, tm.Location())
		}
	}
}

func newFleet(t *testing.T, s store.Store, name string) reeve.Fleet {
	t.Helper()
	f, err := s.CreateFleet(t.Context(), reeve.Fleet{
		UUID: uuidFor("fleet/" + name), Name: name, DeviceType: reeve.DeviceTypeAny,
		UpdateStrategy: reeve.StrategyDownloadThenKill, CreatedAt: at(0),
	})
	ok(t, err, "create fleet "+name)
	return f
}

func newDevice(t *testing.T, s store.Store, fleetID int64, name string) reeve.Device {
	t.Helper()
	d, err := s.CreateDevice(t.Context(), reeve.Device{
		UUID: uuidFor("device/" + name), Name: name, FleetID: fleetID, DeviceType: "raspberrypi4-64",
		KeyHash: "key/" + name, CreatedAt: at(0),
	})
	ok(t, err, "create device "+name)
	return d
}

func newVar(t *testing.T, s store.Store, v reeve.Variable) reeve.Variable {
	t.Helper()
	got, err := s.SetVar(t.Context(), v)
	ok(t, err, "set variable "+v.Name)
	if got.ID == 0 {
		t.Fatalf("variable %s was given no ID", v.Name)
	}
	want := v
	want.ID = got.ID
	same(t, "set variable "+v.Name, want, got)
	return got
}

// fullState is a device report with every field set.
func fullState() reeve.DeviceReport {
	return reeve.DeviceReport{
		Name: ptr("kiosk"), Status: ptr("Idle"), UpdateStatus: ptr("done"), LastError: ptr(""),
		OSVersion: ptr("Debian 13"), AgentVersion: ptr("0.4.1"), DeviceType: ptr("raspberrypi4-64"),
		IPAddress: ptr("10.0.0.7 fd00::7"), MACAddress: ptr("dc:a6:32:00:00:07"), APIPort: ptr(48484),
		Commit: ptr("9f86d081"), CPUUsage: ptr(12.5), CPUTemp: ptr(48.312), MemoryUsage: ptr(int64(812)),
		MemoryTotal: ptr(int64(3792)), StorageUsage: ptr(int64(5120)), StorageTotal: ptr(int64(29000)),
		PollInterval: ptr(reeve.Duration(90 * time.Second)), TargetVersion: ptr(int64(41)),
		Apps: map[string]reeve.AppReport{
			uuidFor("fleet/lobby"): {Releases: map[string]reeve.ReleaseReport{
				"9f86d081": {Services: map[string]reeve.ServiceReport{
					"web": {Image: "nginx:1.27", Status: "Running", RestartCount: 2},
					"db":  {Image: "postgres:17", Status: "Downloading", DownloadProgress: ptr(40)},
					"job": {Image: "busybox", Status: "exited", ExitCode: ptr(1), Error: "exit status 1"},
				}},
			}},
		},
	}
}

// fullRelease is a parsed release that uses most of what a release holds.
func fullRelease(image string) reeve.Release {
	return reeve.Release{
		Services: map[string]reeve.Service{
			"web": {
				ID: 1, ImageID: 11, Image: image, Running: true,
				Environment: map[string]string{"PORT": "8080", "EMPTY": ""},
				Labels:      map[string]string{reeve.LabelUpdateStrategy: reeve.StrategyHandOver},
				Composition: reeve.Composition{
					Command:    []string{"nginx", "-g", "daemon off;"},
					Entrypoint: []string{"/docker-entrypoint.sh"},
					Ports:      []reeve.Port{{Target: 80, Published: 8080, Protocol: "tcp"}, {Target: 53, Protocol: "udp", HostIP: "127.0.0.1"}},
					Restart:    "unless-stopped",
					DependsOn:  map[string]reeve.Dependency{"db": {Condition: reeve.ConditionHealthy}},
					Healthcheck: &reeve.Healthcheck{
						Test: []string{"CMD", "curl", "-f", "http://localhost"}, Interval: reeve.Duration(30 * time.Second),
						Timeout: reeve.Duration(1500 * time.Millisecond), StartPeriod: reeve.Duration(time.Minute), Retries: 3,
					},
					Networks:        map[string]reeve.ServiceNetwork{"front": {Aliases: []string{"www"}, IPv4Address: "172.30.0.10"}},
					Volumes:         []reeve.Mount{{Type: reeve.MountVolume, Source: "data", Target: "/data"}, {Type: reeve.MountBind, Source: "/etc/hosts", Target: "/etc/hosts", ReadOnly: true}},
					Devices:         []reeve.DeviceMapping{{Host: "/dev/ttyUSB0", Container: "/dev/ttyUSB0", Permissions: "rw"}},
					CapAdd:          []string{"NET_ADMIN"},
					CapDrop:         []string{"ALL"},
					WorkingDir:      "/srv",
					User:            "1000:1000",
					StopGracePeriod: reeve.Duration(20 * time.Second),
					Tmpfs:           []string{"/run"},
					Sysctls:         map[string]string{"net.core.somaxconn": "1024"},
					Ulimits:         map[string]reeve.Ulimit{"nofile": {Soft: 1024, Hard: 4096}},
				},
			},
			"db": {ID: 2, ImageID: 12, Image: "postgres:17", Composition: reeve.Composition{Privileged: true, NetworkMode: "host"}},
		},
		Volumes: map[string]reeve.Volume{"data": {Driver: "local", DriverOpts: map[string]string{"o": "bind"}, Labels: map[string]string{"keep": "yes"}}},
		Networks: map[string]reeve.Network{"front": {
			Driver: "bridge", Internal: true, EnableIPv6: true, Labels: map[string]string{"tier": "front"},
			IPAM: &reeve.IPAM{Driver: "default", Config: []reeve.IPAMConfig{{Subnet: "172.30.0.0/24", IPRange: "172.30.0.0/25", Gateway: "172.30.0.1"}}},
		}},
	}
}

// Tests.

func testTokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	n, err := s.CountTokens(ctx)
	ok(t, err, "count tokens")
	if n != 0 {
		t.Errorf("a new store has %d tokens, want 0", n)
	}

	in := reeve.Token{Name: "admin", Hash: "hash-admin", CreatedAt: at(0)}
	got, err := s.CreateToken(ctx, in)
	ok(t, err, "create token")
	if got.ID == 0 {
		t.Error("token was given no ID")
	}
	want := in
	want.ID, want.CreatedAt = got.ID, stored(in.CreatedAt)
	same(t, "created token", want, got)
	utc(t, "created token", got.CreatedAt)

	read, err := s.TokenByHash(ctx, "hash-admin")
	ok(t, err, "token by hash")
	same(t, "token by hash", want, read)
	utc(t, "token by hash", read.CreatedAt)

	_, err = s.TokenByHash(ctx, "hash-nobody")
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.CreateToken(ctx, reeve.Token{Name: "again", Hash: "hash-admin", CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeConflict)

	ci, err := s.CreateToken(ctx, reeve.Token{Name: "ci", Hash: "hash-ci", CreatedAt: at(time.Hour)})
	ok(t, err, "create second token")
	if ci.ID == got.ID {
		t.Errorf("two tokens share ID %d", ci.ID)
	}
	n, err = s.CountTokens(ctx)
	ok(t, err, "count tokens")
	if n != 2 {
		t.Errorf("CountTokens = %d after two tokens (and one refused), want 2", n)
	}
}

func testCreatedAtDefaultsToNow(t *testing.T, s store.Store) {
	ctx := t.Context()
	before := time.Now().Truncate(time.Millisecond)
	tok, err := s.CreateToken(ctx, reeve.Token{Name: "t", Hash: "h"})
	ok(t, err, "create token")
	f, err := s.CreateFleet(ctx, reeve.Fleet{UUID: uuidFor("f"), Name: "f", DeviceType: reeve.DeviceTypeAny})
	ok(t, err, "create fleet")
	k, err := s.CreateProvisioningKey(ctx, reeve.ProvisioningKey{FleetID: f.ID, Hash: "k"})
	ok(t, err, "create provisioning key")
	d, err := s.CreateDevice(ctx, reeve.Device{UUID: uuidFor("d"), Name: "d", FleetID: f.ID})
	ok(t, err, "create device")
	r, err := s.CreateRelease(ctx, reeve.FleetRelease{FleetID: f.ID, Commit: "c"})
	ok(t, err, "create release")
	after := time.Now()

	for what, got := range map[string]time.Time{
		"token": tok.CreatedAt, "fleet": f.CreatedAt, "provisioning key": k.CreatedAt,
		"device": d.CreatedAt, "release": r.CreatedAt,
	} {
		if got.Before(before) || got.After(after) {
			t.Errorf("%s created with no CreatedAt got %v, want the time of the call (between %v and %v)", what, got, before, after)
		}
		utc(t, what, got)
	}
	// A device that was never seen or reported keeps zero times.
	same(t, "LastSeen of a new device", time.Time{}, d.LastSeen)
	same(t, "ReportedAt of a new device", time.Time{}, d.ReportedAt)
	same(t, "ExpiresAt of a key without expiry", time.Time{}, k.ExpiresAt)
	same(t, "RevokedAt of a new key", time.Time{}, k.RevokedAt)
}

func testFleets(t *testing.T, s store.Store) {
	ctx := t.Context()
	all, err := s.Fleets(ctx)
	ok(t, err, "list fleets")
	if len(all) != 0 {
		t.Errorf("a new store has fleets: %v", all)
	}

	in := reeve.Fleet{
		UUID: uuidFor("fleet/lobby"), Name: "lobby", DeviceType: "raspberrypi4-64",
		UpdateStrategy: reeve.StrategyKillThenDownload, PinnedRelease: "9f86d081", CreatedAt: at(0),
	}
	lobby, err := s.CreateFleet(ctx, in)
	ok(t, err, "create fleet")
	if lobby.ID == 0 {
		t.Error("fleet was given no ID")
	}
	want := in
	want.ID, want.CreatedAt = lobby.ID, stored(in.CreatedAt)
	want.Class = reeve.ClassFleet // an empty class is a fleet's
	same(t, "created fleet", want, lobby)
	utc(t, "created fleet", lobby.CreatedAt)

	got, err := s.Fleet(ctx, lobby.ID)
	ok(t, err, "fleet by ID")
	same(t, "fleet by ID", want, got)
	utc(t, "fleet by ID", got.CreatedAt)
	got, err = s.FleetByName(ctx, "lobby")
	ok(t, err, "fleet by name")
	same(t, "fleet by name", want, got)

	_, err = s.Fleet(ctx, lobby.ID+1000)
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(lobby.ID+1000))
	_, err = s.FleetByName(ctx, "cellar")
	wantCode(t, err, reeve.CodeNotFound, "cellar")

	_, err = s.CreateFleet(ctx, reeve.Fleet{UUID: uuidFor("other"), Name: "lobby", DeviceType: reeve.DeviceTypeAny, CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeConflict, "lobby")
	_, err = s.CreateFleet(ctx, reeve.Fleet{UUID: in.UUID, Name: "hall", DeviceType: reeve.DeviceTypeAny, CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeConflict, in.UUID)

	attic := newFleet(t, s, "attic")
	cellar := newFleet(t, s, "cellar")
	all, err = s.Fleets(ctx)
	ok(t, err, "list fleets")
	same(t, "fleets by name", []reeve.Fleet{attic, cellar, want}, all)
}

func testUpdateFleet(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	attic := newFleet(t, s, "attic")

	upd := lobby
	upd.UpdateStrategy = reeve.StrategyHandOver
	upd.DeviceType = "jetson-nano"
	upd.PinnedRelease = "9f86d081"
	// Not written:
	upd.Name = "renamed"
	upd.UUID = uuidFor("renamed")
	upd.CreatedAt = at(time.Hour)
	ok(t, s.UpdateFleet(ctx, upd), "update fleet")

	want := lobby
	want.UpdateStrategy, want.DeviceType, want.PinnedRelease = upd.UpdateStrategy, upd.DeviceType, upd.PinnedRelease
	got, err := s.Fleet(ctx, lobby.ID)
	ok(t, err, "read updated fleet")
	same(t, "updated fleet", want, got)
	_, err = s.FleetByName(ctx, "renamed")
	wantCode(t, err, reeve.CodeNotFound, "renamed")

	want.PinnedRelease = ""
	ok(t, s.UpdateFleet(ctx, want), "unpin fleet")
	got, err = s.Fleet(ctx, lobby.ID)
	ok(t, err, "read unpinned fleet")
	same(t, "unpinned fleet", want, got)

	got, err = s.Fleet(ctx, attic.ID)
	ok(t, err, "read other fleet")
	same(t, "other fleet", attic, got)

	missing := lobby
	missing.ID = attic.ID + 1000
	wantCode(t, s.UpdateFleet(ctx, missing), reeve.CodeNotFound, fmt.Sprint(missing.ID))
}

// fleetContent is what DeleteFleet removes with a fleet.
type fleetContent struct {
	key     reeve.ProvisioningKey
	release reeve.FleetRelease
	vars    []reeve.Variable
}

func fillFleet(t *testing.T, s store.Store, f reeve.Fleet) fleetContent {
	t.Helper()
	k, err := s.CreateProvisioningKey(t.Context(), reeve.ProvisioningKey{FleetID: f.ID, Hash: "pk/" + f.Name, CreatedAt: at(0)})
	ok(t, err, "create provisioning key")
	r, err := s.CreateRelease(t.Context(), reeve.FleetRelease{FleetID: f.ID, Commit: "c1", Compose: "services: {}", CreatedAt: at(0)})
	ok(t, err, "create release")
	return fleetContent{key: k, release: r, vars: []reeve.Variable{
		newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: f.ID, Name: "A", Value: f.Name}),
		newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: f.ID, Service: "web", Name: "A", Value: f.Name}),
		newVar(t, s, reeve.Variable{Kind: reeve.VarConfig, FleetID: f.ID, Name: "A", Value: f.Name}),
	}}
}

func testDeleteFleet(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	attic := newFleet(t, s, "attic")
	gone := fillFleet(t, s, lobby)
	kept := fillFleet(t, s, attic)

	ok(t, s.DeleteFleet(ctx, lobby.ID), "delete fleet")

	_, err := s.Fleet(ctx, lobby.ID)
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.FleetByName(ctx, "lobby")
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.ProvisioningKey(ctx, gone.key.ID)
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.ProvisioningKeyByHash(ctx, gone.key.Hash)
	wantCode(t, err, reeve.CodeNotFound)
	keys, err := s.ProvisioningKeys(ctx, lobby.ID)
	ok(t, err, "list keys of a deleted fleet")
	if len(keys) != 0 {
		t.Errorf("a deleted fleet still has keys: %v", keys)
	}
	_, err = s.ReleaseByID(ctx, gone.release.ID)
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.Release(ctx, lobby.ID, "c1")
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.LatestRelease(ctx, lobby.ID)
	wantCode(t, err, reeve.CodeNotFound)
	rels, err := s.Releases(ctx, lobby.ID)
	ok(t, err, "list releases of a deleted fleet")
	if len(rels) != 0 {
		t.Errorf("a deleted fleet still has releases: %v", rels)
	}
	for _, v := range gone.vars {
		vs, err := s.Vars(ctx, v.Kind, v.FleetID, 0, v.Service)
		ok(t, err, "list variables of a deleted fleet")
		if len(vs) != 0 {
			t.Errorf("a deleted fleet still has variables: %v", vs)
		}
	}

	// The other fleet keeps everything.
	all, err := s.Fleets(ctx)
	ok(t, err, "list fleets")
	same(t, "fleets left", []reeve.Fleet{attic}, all)
	keys, err = s.ProvisioningKeys(ctx, attic.ID)
	ok(t, err, "list keys of the other fleet")
	same(t, "keys of the other fleet", []reeve.ProvisioningKey{kept.key}, keys)
	r, err := s.ReleaseByID(ctx, kept.release.ID)
	ok(t, err, "release of the other fleet")
	same(t, "release of the other fleet", kept.release, r)
	for _, v := range kept.vars {
		vs, err := s.Vars(ctx, v.Kind, v.FleetID, 0, v.Service)
		ok(t, err, "list variables of the other fleet")
		same(t, "variables of the other fleet", []reeve.Variable{v}, vs)
	}

	wantCode(t, s.DeleteFleet(ctx, lobby.ID), reeve.CodeNotFound, fmt.Sprint(lobby.ID))

	// The name can be used again, for a new fleet that inherits nothing.
	again := newFleet(t, s, "lobby")
	if again.ID == lobby.ID {
		t.Errorf("a new fleet got the ID %d of a deleted one", again.ID)
	}
	vs, err := s.DeviceVars(ctx, reeve.VarEnv, again.ID, 0)
	ok(t, err, "variables of the new fleet")
	if len(vs) != 0 {
		t.Errorf("a new fleet has variables: %v", vs)
	}
}

func testDeleteFleetWithDevices(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	attic := newFleet(t, s, "attic")
	content := fillFleet(t, s, lobby)
	d1 := newDevice(t, s, lobby.ID, "kiosk-1")
	d2 := newDevice(t, s, lobby.ID, "kiosk-2")

	wantCode(t, s.DeleteFleet(ctx, lobby.ID), reeve.CodeConflict, "lobby", "2 devices")

	// Nothing was removed.
	got, err := s.Fleet(ctx, lobby.ID)
	ok(t, err, "fleet after a refused delete")
	same(t, "fleet after a refused delete", lobby, got)
	devs, err := s.Devices(ctx, lobby.ID)
	ok(t, err, "devices after a refused delete")
	same(t, "devices after a refused delete", []reeve.Device{d1, d2}, devs)
	keys, err := s.ProvisioningKeys(ctx, lobby.ID)
	ok(t, err, "keys after a refused delete")
	same(t, "keys after a refused delete", []reeve.ProvisioningKey{content.key}, keys)
	r, err := s.LatestRelease(ctx, lobby.ID)
	ok(t, err, "release after a refused delete")
	same(t, "release after a refused delete", content.release, r)
	vs, err := s.Vars(ctx, reeve.VarEnv, lobby.ID, 0, "")
	ok(t, err, "variables after a refused delete")
	same(t, "variables after a refused delete", content.vars[:1], vs)

	// Once its devices are gone, the fleet can go.
	_, err = s.UpdateDevice(ctx, d1.UUID, func(d *reeve.Device) error { d.FleetID = attic.ID; return nil })
	ok(t, err, "move device")
	wantCode(t, s.DeleteFleet(ctx, lobby.ID), reeve.CodeConflict, "lobby", "1 device")
	ok(t, s.DeleteDevice(ctx, d2.UUID), "delete device")
	ok(t, s.DeleteFleet(ctx, lobby.ID), "delete emptied fleet")
	_, err = s.Fleet(ctx, lobby.ID)
	wantCode(t, err, reeve.CodeNotFound)
	got1, err := s.Device(ctx, d1.UUID)
	ok(t, err, "moved device")
	if got1.FleetID != attic.ID {
		t.Errorf("moved device is in fleet %d, want %d", got1.FleetID, attic.ID)
	}
}

func testProvisioningKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	attic := newFleet(t, s, "attic")

	create := func(in reeve.ProvisioningKey) reeve.ProvisioningKey {
		t.Helper()
		got, err := s.CreateProvisioningKey(ctx, in)
		ok(t, err, "create provisioning key")
		if got.ID == 0 {
			t.Error("provisioning key was given no ID")
		}
		want := in
		want.ID = got.ID
		want.ExpiresAt, want.RevokedAt, want.CreatedAt = stored(in.ExpiresAt), stored(in.RevokedAt), stored(in.CreatedAt)
		same(t, "created provisioning key", want, got)
		utc(t, "created provisioning key", got.ExpiresAt, got.RevokedAt, got.CreatedAt)
		return got
	}
	// Created out of age order: the list goes by CreatedAt.
	newest := create(reeve.ProvisioningKey{FleetID: lobby.ID, Name: "factory", Hash: "pk1", ExpiresAt: at(24 * time.Hour), CreatedAt: at(2 * time.Hour)})
	oldest := create(reeve.ProvisioningKey{FleetID: lobby.ID, Hash: "pk2", CreatedAt: at(0)})
	middle := create(reeve.ProvisioningKey{FleetID: lobby.ID, Name: "old", Hash: "pk3", RevokedAt: at(90 * time.Minute), CreatedAt: at(time.Hour)})
	other := create(reeve.ProvisioningKey{FleetID: attic.ID, Hash: "pk4", CreatedAt: at(0)})

	keys, err := s.ProvisioningKeys(ctx, lobby.ID)
	ok(t, err, "list keys")
	same(t, "keys oldest first", []reeve.ProvisioningKey{oldest, middle, newest}, keys)
	keys, err = s.ProvisioningKeys(ctx, attic.ID)
	ok(t, err, "list keys of the other fleet")
	same(t, "keys of the other fleet", []reeve.ProvisioningKey{other}, keys)
	keys, err = s.ProvisioningKeys(ctx, attic.ID+1000)
	ok(t, err, "list keys of an unknown fleet")
	if len(keys) != 0 {
		t.Errorf("an unknown fleet has keys: %v", keys)
	}

	got, err := s.ProvisioningKey(ctx, newest.ID)
	ok(t, err, "key by ID")
	same(t, "key by ID", newest, got)
	utc(t, "key by ID", got.ExpiresAt, got.CreatedAt)
	got, err = s.ProvisioningKeyByHash(ctx, "pk3")
	ok(t, err, "key by hash")
	same(t, "key by hash", middle, got)
	utc(t, "key by hash", got.RevokedAt)

	_, err = s.ProvisioningKey(ctx, other.ID+1000)
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(other.ID+1000))
	_, err = s.ProvisioningKeyByHash(ctx, "pk-nobody")
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.CreateProvisioningKey(ctx, reeve.ProvisioningKey{FleetID: attic.ID, Hash: "pk1", CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeConflict)
	_, err = s.CreateProvisioningKey(ctx, reeve.ProvisioningKey{FleetID: attic.ID + 1000, Hash: "pk5", CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(attic.ID+1000))

	// Revoking sets RevokedAt once; a second revocation keeps the first time.
	ok(t, s.RevokeProvisioningKey(ctx, newest.ID, at(3*time.Hour)), "revoke key")
	ok(t, s.RevokeProvisioningKey(ctx, newest.ID, at(5*time.Hour)), "revoke key again")
	ok(t, s.RevokeProvisioningKey(ctx, middle.ID, at(5*time.Hour)), "revoke a revoked key")
	revoked := newest
	revoked.RevokedAt = stored(at(3 * time.Hour))
	got, err = s.ProvisioningKey(ctx, newest.ID)
	ok(t, err, "read revoked key")
	same(t, "revoked key", revoked, got)
	utc(t, "revoked key", got.RevokedAt)
	got, err = s.ProvisioningKey(ctx, middle.ID)
	ok(t, err, "read key revoked at creation")
	same(t, "key revoked at creation", middle, got)
	got, err = s.ProvisioningKey(ctx, oldest.ID)
	ok(t, err, "read unrevoked key")
	same(t, "unrevoked key", oldest, got)

	wantCode(t, s.RevokeProvisioningKey(ctx, other.ID+1000, at(0)), reeve.CodeNotFound, fmt.Sprint(other.ID+1000))
}

func testDevices(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")

	in := reeve.Device{
		UUID: uuidFor("kiosk-1"), Name: "kiosk-1", FleetID: lobby.ID, DeviceType: "raspberrypi4-64",
		KeyHash: "dk1", PinnedRelease: "9f86d081", Tags: reeve.Tags{"floor": "2", "role": "kiosk", "note": "a \"quoted\" ünïcode value"},
		CreatedAt: at(0), LastSeen: at(time.Hour), State: fullState(), ReportedAt: at(time.Hour + time.Second),
	}
	d, err := s.CreateDevice(ctx, in)
	ok(t, err, "create device")
	if d.ID == 0 {
		t.Error("device was given no ID")
	}
	want := in
	want.ID = d.ID
	want.CreatedAt, want.LastSeen, want.ReportedAt = stored(in.CreatedAt), stored(in.LastSeen), stored(in.ReportedAt)
	same(t, "created device", want, d)
	utc(t, "created device", d.CreatedAt, d.LastSeen, d.ReportedAt)

	got, err := s.Device(ctx, in.UUID)
	ok(t, err, "device by UUID")
	same(t, "device by UUID", want, got)
	utc(t, "device by UUID", got.CreatedAt, got.LastSeen, got.ReportedAt)
	got, err = s.DeviceByID(ctx, d.ID)
	ok(t, err, "device by ID")
	same(t, "device by ID", want, got)
	got, err = s.DeviceByKeyHash(ctx, "dk1")
	ok(t, err, "device by key hash")
	same(t, "device by key hash", want, got)

	// A device with nothing optional keeps its zero values.
	bare := reeve.Device{UUID: uuidFor("bare"), Name: "bare", FleetID: lobby.ID, CreatedAt: at(0)}
	b, err := s.CreateDevice(ctx, bare)
	ok(t, err, "create bare device")
	bare.ID, bare.CreatedAt = b.ID, stored(bare.CreatedAt)
	same(t, "created bare device", bare, b)
	got, err = s.Device(ctx, bare.UUID)
	ok(t, err, "read bare device")
	same(t, "bare device", bare, got)
	if b.ID == d.ID {
		t.Errorf("two devices share ID %d", b.ID)
	}

	missing := uuidFor("missing")
	_, err = s.Device(ctx, missing)
	wantCode(t, err, reeve.CodeNotFound, missing)
	_, err = s.DeviceByID(ctx, b.ID+1000)
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(b.ID+1000))
	_, err = s.DeviceByKeyHash(ctx, "dk-nobody")
	wantCode(t, err, reeve.CodeNotFound)

	_, err = s.CreateDevice(ctx, reeve.Device{UUID: in.UUID, Name: "twin", FleetID: lobby.ID, KeyHash: "dk-twin", CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeConflict, in.UUID)
	_, err = s.CreateDevice(ctx, reeve.Device{UUID: uuidFor("x"), Name: "x", FleetID: lobby.ID + 1000, CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(lobby.ID+1000))

	// The refused creations left nothing behind.
	all, err := s.Devices(ctx, 0)
	ok(t, err, "list devices")
	same(t, "devices", []reeve.Device{b, want}, all)
}

func testDeviceKeyHash(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	d1 := newDevice(t, s, lobby.ID, "kiosk-1")

	// A set key hash is unique, on creation and on update.
	_, err := s.CreateDevice(ctx, reeve.Device{UUID: uuidFor("thief"), Name: "thief", FleetID: lobby.ID, KeyHash: d1.KeyHash, CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeConflict)
	d2 := newDevice(t, s, lobby.ID, "kiosk-2")
	_, err = s.UpdateDevice(ctx, d2.UUID, func(d *reeve.Device) error { d.KeyHash = d1.KeyHash; return nil })
	wantCode(t, err, reeve.CodeConflict)
	got, err := s.Device(ctx, d2.UUID)
	ok(t, err, "read device after a refused update")
	same(t, "device after a refused update", d2, got)

	// Many devices may have no key (revoked); "" finds none of them.
	revoke := func(d *reeve.Device) error { d.KeyHash = ""; return nil }
	_, err = s.UpdateDevice(ctx, d1.UUID, revoke)
	ok(t, err, "revoke key of device 1")
	_, err = s.UpdateDevice(ctx, d2.UUID, revoke)
	ok(t, err, "revoke key of device 2")
	_, err = s.CreateDevice(ctx, reeve.Device{UUID: uuidFor("keyless"), Name: "keyless", FleetID: lobby.ID, CreatedAt: at(0)})
	ok(t, err, "create a third device without key")
	_, err = s.DeviceByKeyHash(ctx, "")
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.DeviceByKeyHash(ctx, d1.KeyHash)
	wantCode(t, err, reeve.CodeNotFound)

	// A revoked key's hash is free again.
	_, err = s.UpdateDevice(ctx, d2.UUID, func(d *reeve.Device) error { d.KeyHash = d1.KeyHash; return nil })
	ok(t, err, "give device 2 the freed key")
	got, err = s.DeviceByKeyHash(ctx, d1.KeyHash)
	ok(t, err, "device by reused key hash")
	if got.UUID != d2.UUID {
		t.Errorf("key hash %q finds device %s, want %s", d1.KeyHash, got.UUID, d2.UUID)
	}
}

func testListDevices(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	attic := newFleet(t, s, "attic")
	empty := newFleet(t, s, "empty")

	var inLobby, inAttic []reeve.Device
	for i, name := range []string{"pi", "alpha", "pi", "zulu", "pi", "alpha"} {
		f := lobby.ID
		if i%2 == 1 {
			f = attic.ID
		}
		d, err := s.CreateDevice(ctx, reeve.Device{
			UUID: uuidFor(fmt.Sprint("list/", i)), Name: name, FleetID: f, KeyHash: fmt.Sprint("key/", i),
			Tags: reeve.Tags{"i": fmt.Sprint(i)}, CreatedAt: at(time.Duration(i) * time.Minute),
		})
		ok(t, err, "create device")
		if f == lobby.ID {
			inLobby = append(inLobby, d)
		} else {
			inAttic = append(inAttic, d)
		}
	}
	byNameThenUUID := func(a, b reeve.Device) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.UUID, b.UUID)
	}
	all := slices.SortedFunc(slices.Values(append(slices.Clone(inLobby), inAttic...)), byNameThenUUID)
	slices.SortFunc(inLobby, byNameThenUUID)
	slices.SortFunc(inAttic, byNameThenUUID)

	got, err := s.Devices(ctx, 0)
	ok(t, err, "list all devices")
	same(t, "all devices", all, got)
	got, err = s.Devices(ctx, lobby.ID)
	ok(t, err, "list devices of a fleet")
	same(t, "devices of a fleet", inLobby, got)
	got, err = s.Devices(ctx, attic.ID)
	ok(t, err, "list devices of the other fleet")
	same(t, "devices of the other fleet", inAttic, got)
	got, err = s.Devices(ctx, empty.ID)
	ok(t, err, "list devices of an empty fleet")
	if len(got) != 0 {
		t.Errorf("an empty fleet has devices: %v", got)
	}
}

func testUpdateDevice(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	attic := newFleet(t, s, "attic")
	before, err := s.CreateDevice(ctx, reeve.Device{
		UUID: uuidFor("kiosk"), Name: "kiosk", FleetID: lobby.ID, DeviceType: "raspberrypi4-64", KeyHash: "dk",
		Tags: reeve.Tags{"floor": "2"}, CreatedAt: at(0), LastSeen: at(time.Minute),
	})
	ok(t, err, "create device")
	other := newDevice(t, s, lobby.ID, "other")

	var seen reeve.Device
	got, err := s.UpdateDevice(ctx, before.UUID, func(d *reeve.Device) error {
		seen = *d
		d.Name = "kiosk-renamed"
		d.FleetID = attic.ID
		d.DeviceType = "raspberrypi5"
		d.KeyHash = "dk-new"
		d.PinnedRelease = "9f86d081"
		d.Tags = reeve.Tags{"floor": "3", "wing": "east"}
		d.LastSeen = at(2 * time.Hour)
		d.State = fullState()
		d.ReportedAt = at(2*time.Hour + time.Second)
		// Not written:
		d.ID = other.ID
		d.UUID = other.UUID
		d.CreatedAt = at(time.Hour)
		return nil
	})
	ok(t, err, "update device")
	same(t, "device fn was given", before, seen)

	want := before
	want.Name, want.FleetID, want.DeviceType, want.KeyHash = "kiosk-renamed", attic.ID, "raspberrypi5", "dk-new"
	want.PinnedRelease, want.Tags, want.State = "9f86d081", reeve.Tags{"floor": "3", "wing": "east"}, fullState()
	want.LastSeen, want.ReportedAt = stored(at(2*time.Hour)), stored(at(2*time.Hour+time.Second))
	same(t, "UpdateDevice result", want, got)
	utc(t, "UpdateDevice result", got.CreatedAt, got.LastSeen, got.ReportedAt)

	read, err := s.Device(ctx, before.UUID)
	ok(t, err, "read updated device")
	same(t, "updated device", want, read)
	utc(t, "updated device", read.CreatedAt, read.LastSeen, read.ReportedAt)
	read, err = s.DeviceByKeyHash(ctx, "dk-new")
	ok(t, err, "updated device by new key hash")
	same(t, "updated device by new key hash", want, read)
	_, err = s.DeviceByKeyHash(ctx, "dk")
	wantCode(t, err, reeve.CodeNotFound)
	read, err = s.Device(ctx, other.UUID)
	ok(t, err, "read the other device")
	same(t, "the other device", other, read)
	devs, err := s.Devices(ctx, attic.ID)
	ok(t, err, "list devices of the new fleet")
	same(t, "devices of the new fleet", []reeve.Device{want}, devs)

	// Fields can be cleared too.
	cleared := want
	cleared.PinnedRelease, cleared.Tags, cleared.State = "", nil, reeve.DeviceReport{}
	cleared.LastSeen, cleared.ReportedAt = time.Time{}, time.Time{}
	got, err = s.UpdateDevice(ctx, before.UUID, func(d *reeve.Device) error {
		d.PinnedRelease, d.Tags, d.State, d.LastSeen, d.ReportedAt = "", nil, reeve.DeviceReport{}, time.Time{}, time.Time{}
		return nil
	})
	ok(t, err, "clear device fields")
	same(t, "cleared device", cleared, got)
	read, err = s.Device(ctx, before.UUID)
	ok(t, err, "read cleared device")
	same(t, "cleared device", cleared, read)

	// Moving the device to a fleet that does not exist fails and changes nothing.
	_, err = s.UpdateDevice(ctx, before.UUID, func(d *reeve.Device) error { d.FleetID = attic.ID + 1000; d.Name = "lost"; return nil })
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(attic.ID+1000))
	read, err = s.Device(ctx, before.UUID)
	ok(t, err, "read device after a refused move")
	same(t, "device after a refused move", cleared, read)

	missing := uuidFor("missing")
	called := false
	_, err = s.UpdateDevice(ctx, missing, func(*reeve.Device) error { called = true; return nil })
	wantCode(t, err, reeve.CodeNotFound, missing)
	if called {
		t.Error("UpdateDevice called fn for a device that does not exist")
	}
}

type fnError struct{ reason string }

func (e *fnError) Error() string { return e.reason }

func testUpdateDeviceAborts(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	before, err := s.CreateDevice(ctx, reeve.Device{
		UUID: uuidFor("kiosk"), Name: "kiosk", FleetID: lobby.ID, KeyHash: "dk",
		Tags: reeve.Tags{"floor": "2"}, State: reeve.DeviceReport{Status: ptr("Idle")}, CreatedAt: at(0),
	})
	ok(t, err, "create device")

	sentinel := errors.New("refused by fn")
	for _, fnErr := range []error{
		sentinel,
		fmt.Errorf("wrapped: %w", sentinel),
		&fnError{reason: "custom"},
		reeve.Errorf(reeve.CodeForbidden, "not your device"),
	} {
		got, err := s.UpdateDevice(ctx, before.UUID, func(d *reeve.Device) error {
			d.Name = "changed"
			d.KeyHash = ""
			d.Tags["floor"] = "9"
			d.State.Status = ptr("Updating")
			d.LastSeen = at(time.Hour)
			return fnErr
		})
		if err != fnErr {
			t.Errorf("UpdateDevice returned %v (%T), want fn's error %v (%T) as is", err, err, fnErr, fnErr)
		}
		if !errors.Is(err, fnErr) {
			t.Errorf("errors.Is(%v, fn's error) = false", err)
		}
		var fe *fnError
		if _, custom := fnErr.(*fnError); custom && !errors.As(err, &fe) {
			t.Errorf("errors.As(%v, *fnError) = false", err)
		}
		if code := reeve.ErrorCode(err); code != reeve.ErrorCode(fnErr) {
			t.Errorf("error code %s, want fn's %s", code, reeve.ErrorCode(fnErr))
		}
		same(t, "device returned with fn's error", reeve.Device{}, got)
		read, err := s.Device(ctx, before.UUID)
		ok(t, err, "read device after an aborted update")
		same(t, "device after an aborted update", before, read)
	}
}

func testUpdateDeviceConcurrent(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	d := newDevice(t, s, lobby.ID, "kiosk")

	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.UpdateDevice(ctx, d.UUID, func(d *reeve.Device) error {
				if d.Tags == nil {
					d.Tags = reeve.Tags{}
				}
				d.Tags[fmt.Sprintf("t%02d", i)] = fmt.Sprint(i)
				v := int64(1)
				if d.State.TargetVersion != nil {
					v = *d.State.TargetVersion + 1
				}
				d.State.TargetVersion = &v
				return nil
			})
		})
	}
	wg.Wait()
	ok(t, errors.Join(errs...), "concurrent updates")

	want := reeve.Tags{}
	for i := range n {
		want[fmt.Sprintf("t%02d", i)] = fmt.Sprint(i)
	}
	got, err := s.Device(ctx, d.UUID)
	ok(t, err, "read device")
	same(t, "tags after concurrent updates", want, got.Tags)
	same(t, "counter after concurrent updates", ptr(int64(n)), got.State.TargetVersion)
}

func testTouchDevices(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	create := func(name string, lastSeen time.Time) reeve.Device {
		t.Helper()
		d, err := s.CreateDevice(ctx, reeve.Device{
			UUID: uuidFor(name), Name: name, FleetID: lobby.ID, KeyHash: "key/" + name, Tags: reeve.Tags{"n": name},
			State: reeve.DeviceReport{Status: ptr("Idle")}, CreatedAt: at(0), LastSeen: lastSeen, ReportedAt: at(time.Minute),
		})
		ok(t, err, "create device "+name)
		return d
	}
	raised := create("raised", at(time.Hour))
	older := create("older", at(time.Hour))
	never := create("never", time.Time{})
	equal := create("equal", at(time.Hour))
	absent := create("absent", at(time.Hour))

	ok(t, s.TouchDevices(ctx, map[string]time.Time{
		raised.UUID:         at(2 * time.Hour),
		older.UUID:          at(30 * time.Minute),
		never.UUID:          at(90 * time.Minute),
		equal.UUID:          at(time.Hour),
		uuidFor("stranger"): at(3 * time.Hour),
	}), "touch devices")

	wantSeen := map[string]time.Time{
		raised.UUID: stored(at(2 * time.Hour)),
		older.UUID:  older.LastSeen, // never lowered
		never.UUID:  stored(at(90 * time.Minute)),
		equal.UUID:  equal.LastSeen,
		absent.UUID: absent.LastSeen,
	}
	for _, d := range []reeve.Device{raised, older, never, equal, absent} {
		want := d
		want.LastSeen = wantSeen[d.UUID]
		got, err := s.Device(ctx, d.UUID)
		ok(t, err, "read device "+d.Name)
		same(t, "device "+d.Name+" after touch", want, got)
		utc(t, "device "+d.Name+" after touch", got.LastSeen)
	}
	_, err := s.Device(ctx, uuidFor("stranger"))
	wantCode(t, err, reeve.CodeNotFound)

	ok(t, s.TouchDevices(ctx, nil), "touch no devices (nil)")
	ok(t, s.TouchDevices(ctx, map[string]time.Time{}), "touch no devices (empty)")
}

func testTouchManyDevices(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	const n = 100
	seen := make(map[string]time.Time, n)
	var devs []reeve.Device
	for i := range n {
		d := newDevice(t, s, lobby.ID, fmt.Sprint("many-", i))
		devs = append(devs, d)
		seen[d.UUID] = at(time.Duration(i) * time.Second)
	}
	ok(t, s.TouchDevices(ctx, seen), "touch many devices")
	got, err := s.Devices(ctx, lobby.ID)
	ok(t, err, "list devices")
	if len(got) != n {
		t.Fatalf("got %d devices, want %d", len(got), n)
	}
	for _, d := range got {
		if want := stored(seen[d.UUID]); !d.LastSeen.Equal(want) {
			t.Errorf("device %s: LastSeen %v, want %v", d.Name, d.LastSeen, want)
		}
	}
}

func testDeleteDevice(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	gone := newDevice(t, s, lobby.ID, "gone")
	kept := newDevice(t, s, lobby.ID, "kept")
	fleetVars := []reeve.Variable{
		newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: lobby.ID, Name: "F", Value: "fleet"}),
		newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: lobby.ID, Service: "web", Name: "S", Value: "service"}),
	}
	newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, DeviceID: gone.ID, Name: "D", Value: "gone"})
	newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, DeviceID: gone.ID, Service: "web", Name: "DS", Value: "gone"})
	newVar(t, s, reeve.Variable{Kind: reeve.VarConfig, DeviceID: gone.ID, Name: "C", Value: "gone"})
	keptVars := []reeve.Variable{
		newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, DeviceID: kept.ID, Name: "D", Value: "kept"}),
		newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, DeviceID: kept.ID, Service: "web", Name: "DS", Value: "kept"}),
	}

	ok(t, s.DeleteDevice(ctx, gone.UUID), "delete device")

	_, err := s.Device(ctx, gone.UUID)
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.DeviceByID(ctx, gone.ID)
	wantCode(t, err, reeve.CodeNotFound)
	_, err = s.DeviceByKeyHash(ctx, gone.KeyHash)
	wantCode(t, err, reeve.CodeNotFound)
	devs, err := s.Devices(ctx, lobby.ID)
	ok(t, err, "list devices")
	same(t, "devices left", []reeve.Device{kept}, devs)
	for _, sc := range []struct {
		kind, service string
	}{{reeve.VarEnv, ""}, {reeve.VarEnv, "web"}, {reeve.VarConfig, ""}} {
		vs, err := s.Vars(ctx, sc.kind, 0, gone.ID, sc.service)
		ok(t, err, "variables of a deleted device")
		if len(vs) != 0 {
			t.Errorf("a deleted device still has %s variables: %v", sc.kind, vs)
		}
	}
	vs, err := s.DeviceVars(ctx, reeve.VarEnv, lobby.ID, gone.ID)
	ok(t, err, "device variables of a deleted device")
	same(t, "device variables of a deleted device", fleetVars, byID(vs))
	vs, err = s.DeviceVars(ctx, reeve.VarEnv, lobby.ID, kept.ID)
	ok(t, err, "device variables of the other device")
	same(t, "device variables of the other device", append(slices.Clone(fleetVars), keptVars...), byID(vs))

	wantCode(t, s.DeleteDevice(ctx, gone.UUID), reeve.CodeNotFound, gone.UUID)

	// The UUID can register again, as a new device without the old variables.
	again := newDevice(t, s, lobby.ID, "gone")
	if again.ID == gone.ID {
		t.Errorf("a new device got the ID %d of a deleted one", again.ID)
	}
	vs, err = s.DeviceVars(ctx, reeve.VarConfig, lobby.ID, again.ID)
	ok(t, err, "variables of the new device")
	if len(vs) != 0 {
		t.Errorf("a new device has the variables of a deleted one: %v", vs)
	}
}

func testReleases(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	attic := newFleet(t, s, "attic")

	_, err := s.LatestRelease(ctx, lobby.ID)
	wantCode(t, err, reeve.CodeNotFound)
	rels, err := s.Releases(ctx, lobby.ID)
	ok(t, err, "list releases of a fleet without any")
	if len(rels) != 0 {
		t.Errorf("a new fleet has releases: %v", rels)
	}

	create := func(in reeve.FleetRelease) reeve.FleetRelease {
		t.Helper()
		got, err := s.CreateRelease(ctx, in)
		ok(t, err, "create release "+in.Commit)
		if got.ID == 0 {
			t.Errorf("release %s was given no ID", in.Commit)
		}
		want := in
		want.ID, want.Release.ID, want.CreatedAt = got.ID, got.ID, stored(in.CreatedAt)
		same(t, "created release "+in.Commit, want, got)
		utc(t, "created release "+in.Commit, got.CreatedAt)
		return got
	}
	compose := "services:\n  web:\n    image: nginx:1.27 # \"quoted\" ünïcode\n"
	r1 := create(reeve.FleetRelease{FleetID: lobby.ID, Commit: "c1", Compose: compose, Release: fullRelease("nginx:1.27"), CreatedAt: at(0)})
	r2 := create(reeve.FleetRelease{FleetID: lobby.ID, Commit: "c2", Compose: compose + "#2\n", Release: fullRelease("nginx:1.28"), CreatedAt: at(time.Hour)})
	r3 := create(reeve.FleetRelease{FleetID: lobby.ID, Commit: "c3", Compose: compose + "#3\n", Release: fullRelease("nginx:1.29"), CreatedAt: at(2 * time.Hour)})
	// The same commit may exist in another fleet.
	o1 := create(reeve.FleetRelease{FleetID: attic.ID, Commit: "c1", Compose: "other", Release: fullRelease("httpd"), CreatedAt: at(0)})

	got, err := s.Release(ctx, lobby.ID, "c2")
	ok(t, err, "release by commit")
	same(t, "release by commit", r2, got)
	utc(t, "release by commit", got.CreatedAt)
	got, err = s.Release(ctx, attic.ID, "c1")
	ok(t, err, "release by commit in the other fleet")
	same(t, "release by commit in the other fleet", o1, got)
	got, err = s.ReleaseByID(ctx, r1.ID)
	ok(t, err, "release by ID")
	same(t, "release by ID", r1, got)
	got, err = s.LatestRelease(ctx, lobby.ID)
	ok(t, err, "latest release")
	same(t, "latest release", r3, got)

	rels, err = s.Releases(ctx, lobby.ID)
	ok(t, err, "list releases")
	var want []reeve.FleetRelease
	for _, r := range []reeve.FleetRelease{r3, r2, r1} {
		r.Compose = ""
		want = append(want, r)
	}
	same(t, "releases newest first, without compose", want, rels)

	_, err = s.Release(ctx, lobby.ID, "nope")
	wantCode(t, err, reeve.CodeNotFound, "nope")
	_, err = s.Release(ctx, attic.ID, "c2")
	wantCode(t, err, reeve.CodeNotFound, "c2")
	_, err = s.ReleaseByID(ctx, o1.ID+1000)
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(o1.ID+1000))
	_, err = s.CreateRelease(ctx, reeve.FleetRelease{FleetID: lobby.ID, Commit: "c2", Compose: "again", CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeConflict, "c2")
	_, err = s.CreateRelease(ctx, reeve.FleetRelease{FleetID: attic.ID + 1000, Commit: "c9", CreatedAt: at(0)})
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(attic.ID+1000))
	got, err = s.Release(ctx, lobby.ID, "c2")
	ok(t, err, "release after a refused duplicate")
	same(t, "release after a refused duplicate", r2, got)

	// The latest release is the last created (highest ID), whatever its CreatedAt.
	r4 := create(reeve.FleetRelease{FleetID: lobby.ID, Commit: "c4", Compose: "4", Release: fullRelease("nginx:1.30"), CreatedAt: at(-time.Hour)})
	got, err = s.LatestRelease(ctx, lobby.ID)
	ok(t, err, "latest release")
	same(t, "latest release after a backdated one", r4, got)
	got, err = s.LatestRelease(ctx, attic.ID)
	ok(t, err, "latest release of the other fleet")
	same(t, "latest release of the other fleet", o1, got)
}

// byID sorts variables by ID: DeviceVars promises no order.
func byID(vs []reeve.Variable) []reeve.Variable {
	return slices.SortedFunc(slices.Values(vs), func(a, b reeve.Variable) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
}

func testVars(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	attic := newFleet(t, s, "attic")
	kiosk := newDevice(t, s, lobby.ID, "kiosk")
	sign := newDevice(t, s, lobby.ID, "sign")
	guard := newDevice(t, s, attic.ID, "guard")

	env := func(fleetID, deviceID int64, service, name, value string) reeve.Variable {
		return newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: fleetID, DeviceID: deviceID, Service: service, Name: name, Value: value})
	}
	// Set out of name order: Vars lists by name.
	fleetB := env(lobby.ID, 0, "", "B", "fleet b")
	fleetA := env(lobby.ID, 0, "", "A", "fleet a")
	serviceWeb := env(lobby.ID, 0, "web", "A", "service web")
	serviceDB := env(lobby.ID, 0, "db", "A", "service db")
	device := env(0, kiosk.ID, "", "A", "device")
	deviceWeb := env(0, kiosk.ID, "web", "C", "device web")
	otherDevice := env(0, sign.ID, "", "A", "other device")
	otherFleet := env(attic.ID, 0, "", "A", "other fleet")
	otherFleetDevice := env(0, guard.ID, "web", "A", "other fleet device")
	configFleet := newVar(t, s, reeve.Variable{Kind: reeve.VarConfig, FleetID: lobby.ID, Name: "A", Value: "config fleet"})
	configDevice := newVar(t, s, reeve.Variable{Kind: reeve.VarConfig, DeviceID: kiosk.ID, Name: "A", Value: "config device"})

	for _, tc := range []struct {
		kind     string
		fleetID  int64
		deviceID int64
		service  string
		want     []reeve.Variable
	}{
		{reeve.VarEnv, lobby.ID, 0, "", []reeve.Variable{fleetA, fleetB}},
		{reeve.VarEnv, lobby.ID, 0, "web", []reeve.Variable{serviceWeb}},
		{reeve.VarEnv, lobby.ID, 0, "db", []reeve.Variable{serviceDB}},
		{reeve.VarEnv, lobby.ID, 0, "cache", nil},
		{reeve.VarEnv, 0, kiosk.ID, "", []reeve.Variable{device}},
		{reeve.VarEnv, 0, kiosk.ID, "web", []reeve.Variable{deviceWeb}},
		{reeve.VarEnv, 0, sign.ID, "", []reeve.Variable{otherDevice}},
		{reeve.VarEnv, attic.ID, 0, "", []reeve.Variable{otherFleet}},
		{reeve.VarEnv, 0, guard.ID, "web", []reeve.Variable{otherFleetDevice}},
		{reeve.VarConfig, lobby.ID, 0, "", []reeve.Variable{configFleet}},
		{reeve.VarConfig, 0, kiosk.ID, "", []reeve.Variable{configDevice}},
		{reeve.VarConfig, lobby.ID, 0, "web", nil},
	} {
		got, err := s.Vars(ctx, tc.kind, tc.fleetID, tc.deviceID, tc.service)
		scope := fmt.Sprintf("%s variables of fleet %d device %d service %q", tc.kind, tc.fleetID, tc.deviceID, tc.service)
		ok(t, err, scope)
		if len(tc.want) == 0 && len(got) == 0 {
			continue
		}
		same(t, scope, tc.want, got)
	}

	for _, tc := range []struct {
		what     string
		kind     string
		fleetID  int64
		deviceID int64
		want     []reeve.Variable
	}{
		{"env of kiosk", reeve.VarEnv, lobby.ID, kiosk.ID, []reeve.Variable{fleetB, fleetA, serviceWeb, serviceDB, device, deviceWeb}},
		{"config of kiosk", reeve.VarConfig, lobby.ID, kiosk.ID, []reeve.Variable{configFleet, configDevice}},
		{"env of sign", reeve.VarEnv, lobby.ID, sign.ID, []reeve.Variable{fleetB, fleetA, serviceWeb, serviceDB, otherDevice}},
		{"config of sign", reeve.VarConfig, lobby.ID, sign.ID, []reeve.Variable{configFleet}},
		{"env of guard", reeve.VarEnv, attic.ID, guard.ID, []reeve.Variable{otherFleet, otherFleetDevice}},
		{"config of guard", reeve.VarConfig, attic.ID, guard.ID, nil},
	} {
		got, err := s.DeviceVars(ctx, tc.kind, tc.fleetID, tc.deviceID)
		ok(t, err, tc.what)
		if len(tc.want) == 0 && len(got) == 0 {
			continue
		}
		same(t, tc.what, byID(tc.want), byID(got))
	}

	// A variable belongs to a fleet or a device that exists.
	_, err := s.SetVar(ctx, reeve.Variable{Kind: reeve.VarEnv, FleetID: attic.ID + 1000, Name: "A", Value: "x"})
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(attic.ID+1000))
	_, err = s.SetVar(ctx, reeve.Variable{Kind: reeve.VarEnv, DeviceID: guard.ID + 1000, Name: "A", Value: "x"})
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(guard.ID+1000))
	_, err = s.SetVar(ctx, reeve.Variable{Kind: reeve.VarEnv, Name: "A", Value: "x"})
	wantCode(t, err, reeve.CodeInvalid)
}

func testSetVarReplaces(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	kiosk := newDevice(t, s, lobby.ID, "kiosk")

	for _, scope := range []reeve.Variable{
		{FleetID: lobby.ID},
		{FleetID: lobby.ID, Service: "web"},
		{DeviceID: kiosk.ID},
		{DeviceID: kiosk.ID, Service: "web"},
	} {
		first := scope
		first.Kind, first.Name, first.Value = reeve.VarEnv, "LEVEL", "first"
		v1 := newVar(t, s, first)
		// Same name, other kind: another variable.
		cfg := first
		cfg.Kind = reeve.VarConfig
		c := newVar(t, s, cfg)
		if c.ID == v1.ID {
			t.Errorf("%s: env and config variables share ID %d", v1.Scope(), c.ID)
		}

		second := first
		second.Value = "second"
		v2 := newVar(t, s, second)
		if v2.ID != v1.ID {
			t.Errorf("%s: replacing a variable changed its ID from %d to %d", v1.Scope(), v1.ID, v2.ID)
		}
		got, err := s.Vars(ctx, reeve.VarEnv, scope.FleetID, scope.DeviceID, scope.Service)
		ok(t, err, "list variables")
		same(t, v1.Scope()+" variables after replace", []reeve.Variable{v2}, got)
		got, err = s.Vars(ctx, reeve.VarConfig, scope.FleetID, scope.DeviceID, scope.Service)
		ok(t, err, "list config variables")
		same(t, v1.Scope()+" config variables after replacing env", []reeve.Variable{c}, got)
	}
	all, err := s.DeviceVars(ctx, reeve.VarEnv, lobby.ID, kiosk.ID)
	ok(t, err, "device variables")
	if len(all) != 4 {
		t.Errorf("got %d env variables reaching the device, want one per scope (4): %v", len(all), all)
	}
	for _, v := range all {
		if v.Value != "second" {
			t.Errorf("%s variable has value %q, want the replaced one", v.Scope(), v.Value)
		}
	}
}

func testDeleteVar(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	kiosk := newDevice(t, s, lobby.ID, "kiosk")
	fleetA := newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: lobby.ID, Name: "A", Value: "1"})
	fleetB := newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: lobby.ID, Name: "B", Value: "2"})
	serviceA := newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: lobby.ID, Service: "web", Name: "A", Value: "3"})
	deviceA := newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, DeviceID: kiosk.ID, Name: "A", Value: "4"})
	deviceWebA := newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, DeviceID: kiosk.ID, Service: "web", Name: "A", Value: "5"})
	configA := newVar(t, s, reeve.Variable{Kind: reeve.VarConfig, FleetID: lobby.ID, Name: "A", Value: "6"})

	// Only the variable of that kind, scope and name goes.
	ok(t, s.DeleteVar(ctx, reeve.VarEnv, lobby.ID, 0, "", "A"), "delete fleet variable")
	got, err := s.DeviceVars(ctx, reeve.VarEnv, lobby.ID, kiosk.ID)
	ok(t, err, "device variables")
	same(t, "env variables after deleting one", []reeve.Variable{fleetB, serviceA, deviceA, deviceWebA}, byID(got))
	got, err = s.Vars(ctx, reeve.VarConfig, lobby.ID, 0, "")
	ok(t, err, "config variables")
	same(t, "config variables after deleting an env one", []reeve.Variable{configA}, got)

	ok(t, s.DeleteVar(ctx, reeve.VarEnv, 0, kiosk.ID, "web", "A"), "delete device+service variable")
	got, err = s.DeviceVars(ctx, reeve.VarEnv, lobby.ID, kiosk.ID)
	ok(t, err, "device variables")
	same(t, "env variables after deleting another", []reeve.Variable{fleetB, serviceA, deviceA}, byID(got))

	wantCode(t, s.DeleteVar(ctx, reeve.VarEnv, lobby.ID, 0, "", "A"), reeve.CodeNotFound, "A")
	wantCode(t, s.DeleteVar(ctx, reeve.VarConfig, lobby.ID, 0, "", "B"), reeve.CodeNotFound, "B")
	wantCode(t, s.DeleteVar(ctx, reeve.VarEnv, lobby.ID, 0, "db", "A"), reeve.CodeNotFound, "A")
	wantCode(t, s.DeleteVar(ctx, reeve.VarEnv, 0, kiosk.ID+1000, "", "A"), reeve.CodeNotFound, "A")

	// A deleted variable can be set again.
	again := newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, FleetID: lobby.ID, Name: "A", Value: "again"})
	if again.ID == fleetA.ID {
		t.Errorf("a new variable got the ID %d of a deleted one", again.ID)
	}
}

func testUpdateDevices(t *testing.T, s store.Store) {
	ctx := t.Context()
	lobby := newFleet(t, s, "lobby")
	a := newDevice(t, s, lobby.ID, "a")
	b := newDevice(t, s, lobby.ID, "b")
	c := newDevice(t, s, lobby.ID, "c")
	refused := errors.New("refused by fn")
	setStatus := func(status string) func(*reeve.Device) error {
		return func(d *reeve.Device) error {
			d.State.Merge(reeve.DeviceReport{Status: ptr(status)})
			return nil
		}
	}
	errs, err := s.UpdateDevices(ctx, []store.DeviceUpdate{
		{UUID: a.UUID, Fn: setStatus("Idle")},
		{UUID: b.UUID, Fn: func(d *reeve.Device) error { d.Name = "changed"; return refused }},
		{UUID: uuidFor("nobody"), Fn: setStatus("Idle")},
		{UUID: c.UUID, Fn: setStatus("Updating")},
		{UUID: a.UUID, Fn: func(d *reeve.Device) error { // sees the first update of a
			if d.State.Status == nil || *d.State.Status != "Idle" {
				return fmt.Errorf("the second update of a device does not see the first: %+v", d.State)
			}
			d.Name = "a2"
			return nil
		}},
	})
	ok(t, err, "update devices")
	if len(errs) != 5 {
		t.Fatalf("%d errors for 5 updates", len(errs))
	}
	if errs[0] != nil || errs[3] != nil || errs[4] != nil {
		t.Errorf("successful updates have errors: %v", errs)
	}
	if errs[1] != refused {
		t.Errorf("fn's error came back as %v, want it as is", errs[1])
	}
	if reeve.ErrorCode(errs[2]) != reeve.CodeNotFound {
		t.Errorf("unknown device: %v, want not_found", errs[2])
	}
	got, err := s.Device(ctx, a.UUID)
	ok(t, err, "read a")
	if got.Name != "a2" || got.State.Status == nil || *got.State.Status != "Idle" {
		t.Errorf("a after both updates: name %q state %+v", got.Name, got.State)
	}
	got, err = s.Device(ctx, b.UUID)
	ok(t, err, "read b")
	if got.Name != "b" {
		t.Errorf("the refused update of b was written: name %q", got.Name)
	}
	got, err = s.Device(ctx, c.UUID)
	ok(t, err, "read c")
	if got.State.Status == nil || *got.State.Status != "Updating" {
		t.Errorf("the update after a failed one was not written: %+v", got.State)
	}
	if errs, err := s.UpdateDevices(ctx, nil); err != nil || len(errs) != 0 {
		t.Errorf("no updates: %v %v", errs, err)
	}
}
