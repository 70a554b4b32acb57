package server

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
)

func TestBuildTargetPrecedenceAndStrategy(t *testing.T) {
	f := reeve.Fleet{ID: 7, UUID: "0123456789abcdef0123456789abcdef", Name: "lobby", UpdateStrategy: reeve.StrategyHandOver}
	d := reeve.Device{ID: 3, UUID: "fedcba9876543210fedcba9876543210", Name: "hall-1", FleetID: 7}
	rel := &reeve.FleetRelease{ID: 11, FleetID: 7, Commit: "c0ffee00c0ffee00", Release: reeve.Release{Services: map[string]reeve.Service{
		"web": {ID: 1, Image: "registry.example.com/web:1", Running: true, Environment: map[string]string{"FROM_COMPOSE": "c", "LEVEL": "compose"}},
		"db": {ID: 2, Image: "registry.example.com/db:1", Running: true,
			Labels: map[string]string{"io.balena.update.strategy": reeve.StrategyKillThenDownload}},
	}}}
	env := []reeve.Variable{ // deliberately out of order
		{Kind: reeve.VarEnv, DeviceID: 3, Service: "web", Name: "LEVEL", Value: "device+service"},
		{Kind: reeve.VarEnv, FleetID: 7, Name: "LEVEL", Value: "fleet"},
		{Kind: reeve.VarEnv, DeviceID: 3, Name: "LEVEL", Value: "device"},
		{Kind: reeve.VarEnv, FleetID: 7, Service: "web", Name: "LEVEL", Value: "service"},
		{Kind: reeve.VarEnv, FleetID: 7, Service: "db", Name: "ONLY_DB", Value: "1"},
		{Kind: reeve.VarEnv, FleetID: 7, Name: "FLEET_ONLY", Value: "f"},
	}
	config := []reeve.Variable{
		{Kind: reeve.VarConfig, DeviceID: 3, Name: "REEVE_SUPERVISOR_POLL_INTERVAL", Value: "30000"},
		{Kind: reeve.VarConfig, FleetID: 7, Name: "REEVE_SUPERVISOR_POLL_INTERVAL", Value: "60000"},
		{Kind: reeve.VarConfig, FleetID: 7, Name: "TZ", Value: "UTC"},
	}
	ts := BuildTarget(f, d, rel, env, config)
	dev := ts[d.UUID]
	if dev.Name != "hall-1" {
		t.Errorf("name %q", dev.Name)
	}
	if diff := cmp.Diff(map[string]string{"REEVE_SUPERVISOR_POLL_INTERVAL": "30000", "TZ": "UTC"}, dev.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	app := dev.Apps[f.UUID]
	if app.ID != 7 || app.Name != "lobby" || app.Class != reeve.ClassFleet {
		t.Errorf("app %+v", app)
	}
	r := app.Releases["c0ffee00c0ffee00"]
	if r.ID != 11 {
		t.Errorf("release id %d, want 11", r.ID)
	}
	web, db := r.Services["web"], r.Services["db"]
	if diff := cmp.Diff(map[string]string{"FROM_COMPOSE": "c", "LEVEL": "device+service", "FLEET_ONLY": "f"}, web.Environment); diff != "" {
		t.Errorf("web env (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"LEVEL": "device", "ONLY_DB": "1", "FLEET_ONLY": "f"}, db.Environment); diff != "" {
		t.Errorf("db env (-want +got):\n%s", diff)
	}
	if web.Strategy() != reeve.StrategyHandOver {
		t.Errorf("web strategy %q: the fleet's default should apply", web.Strategy())
	}
	if db.Strategy() != reeve.StrategyKillThenDownload {
		t.Errorf("db strategy %q: the service's own label must win", db.Strategy())
	}
	if _, ok := rel.Release.Services["web"].Labels[reeve.LabelUpdateStrategy]; ok {
		t.Error("BuildTarget changed the release it was given")
	}
	if rel.Release.Services["web"].Environment["LEVEL"] != "compose" {
		t.Error("BuildTarget changed the release's environment")
	}
	// What is served must be a target the agent accepts.
	b, _ := json.Marshal(ts)
	if _, err := reeve.ParseTargetState(b); err != nil {
		t.Fatalf("the built target does not validate: %v", err)
	}
}

func TestBuildTargetDeterministicAndNoRelease(t *testing.T) {
	f := reeve.Fleet{ID: 1, UUID: "0123456789abcdef0123456789abcdef", Name: "f", UpdateStrategy: reeve.StrategyDownloadThenKill}
	d := reeve.Device{ID: 1, UUID: "fedcba9876543210fedcba9876543210", Name: "d", FleetID: 1}
	ts := BuildTarget(f, d, nil, nil, nil)
	app := ts[d.UUID].Apps[f.UUID]
	if app.Releases == nil || len(app.Releases) != 0 {
		t.Fatalf("a fleet without releases must give an app with no release, got %+v", app)
	}
	rel := &reeve.FleetRelease{ID: 2, Commit: "aaaaaaaaaaaaaaaa", Release: reeve.Release{Services: map[string]reeve.Service{
		"a": {Image: "x/a:1", Running: true}, "b": {Image: "x/b:1", Running: true}, "c": {Image: "x/c:1", Running: true},
	}}}
	env := []reeve.Variable{{FleetID: 1, Name: "A", Value: "1"}, {FleetID: 1, Name: "B", Value: "2"}}
	first, _ := json.Marshal(BuildTarget(f, d, rel, env, nil))
	for range 20 {
		again, _ := json.Marshal(BuildTarget(f, d, rel, env, nil))
		if string(again) != string(first) {
			t.Fatal("the same inputs gave different bytes: ETags would change without a change")
		}
	}
}
