package serverapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

// depSetup is fleetSetup's lobby as a gateway fleet (its devices a and b
// are gateways) with a dependent fleet "sensors" under it, and a fleet
// "others" with a dependent fleet "lights" that lobby's devices do not
// carry.
type depSetup struct {
	fleetSetup
	sensors, lights reeve.Fleet
}

func (e *env) depSetup() depSetup {
	s := depSetup{fleetSetup: e.setup()}
	e.must(201, "POST", "/api/v1/fleets", adminToken, serverapi.CreateFleetRequest{Name: "sensors", DeviceType: "esp32", Parent: "lobby"}, &s.sensors)
	e.must(201, "POST", "/api/v1/fleets", adminToken, serverapi.CreateFleetRequest{Name: "others"}, nil)
	e.must(201, "POST", "/api/v1/fleets", adminToken, `{"name":"lights","parent":"others"}`, &s.lights)
	return s
}

func TestDependentFleetsInTheOperatorAPI(t *testing.T) {
	e := newEnv(t)
	s := e.depSetup()
	if s.sensors.Class != reeve.ClassDependent || s.sensors.ParentID != s.fleet.ID || s.fleet.Class != reeve.ClassFleet {
		t.Fatalf("fleets: sensors %+v, lobby %+v", s.sensors, s.fleet)
	}
	var raw map[string]any
	e.must(200, "GET", "/api/v1/fleets/sensors", adminToken, nil, &raw)
	if raw["class"] != "dependent" || raw["parent_id"] != float64(s.fleet.ID) {
		t.Errorf("GET fleet shows class %v and parent_id %v", raw["class"], raw["parent_id"])
	}
	for _, tc := range []struct {
		name, method, path string
		body               any
		status             int
		says               string
	}{
		{"unknown parent", "POST", "/api/v1/fleets", `{"name":"x","parent":"nowhere"}`, 400, "parent"},
		{"dependent parent", "POST", "/api/v1/fleets", `{"name":"x","parent":"sensors"}`, 400, "itself a fleet of dependent devices"},
		{"two services", "POST", "/api/v1/fleets/sensors/releases", serverapi.PushRequest{Compose: "services:\n  a:\n    image: a/fw:1\n  b:\n    image: a/fw:1\n"}, 400, "exactly one service"},
		{"a provisioning key", "POST", "/api/v1/fleets/sensors/keys", `{}`, 400, "gateway"},
		{"remove the parent", "DELETE", "/api/v1/fleets/lobby", nil, 409, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, _ := e.call(tc.method, tc.path, adminToken, tc.body)
			if status != tc.status {
				t.Fatalf("%d, want %d: %s", status, tc.status, body)
			}
			if msg := errorOf(t, body).Message; !strings.Contains(msg, tc.says) {
				t.Errorf("message %q does not say %q", msg, tc.says)
			}
		})
	}
	var rel reeve.FleetRelease
	e.must(201, "POST", "/api/v1/fleets/sensors/releases", adminToken, serverapi.PushRequest{Compose: "services:\n  firmware:\n    image: registry.example.com/fw:1\n"}, &rel)
	if len(rel.Release.Services) != 1 {
		t.Errorf("pushed firmware: %+v", rel)
	}
}

func TestRegisterDependentRoute(t *testing.T) {
	e := newEnv(t)
	s := e.depSetup()
	path := "/device/v3/" + s.a + "/dependent-devices"
	var d reeve.Device
	e.must(201, "POST", path, s.keyA, `{"app_id":`+itoa(s.sensors.ID)+`,"device_type":"esp32","local_id":"serial-1","name":"probe","uuid":"`+uuidN(1)+`"}`, &d)
	if d.UUID != uuidN(1) || d.Name != "probe" || d.LocalID != "serial-1" || d.FleetID != s.sensors.ID || d.GatewayID == 0 {
		t.Fatalf("registered %+v", d)
	}
	// app_id as a string of digits, and no uuid: one is made.
	e.must(201, "POST", path, s.keyA, `{"app_id":"`+itoa(s.sensors.ID)+`","device_type":"esp32"}`, &d)
	if !reeve.ValidUUID(d.UUID) || d.Name != d.UUID[:7] {
		t.Fatalf("registered without uuid: %+v", d)
	}

	app := itoa(s.sensors.ID)
	for _, tc := range []struct {
		name, path, token string
		body              string
		status            int
		code              string
		says              string
	}{
		{"non-numeric app_id", path, s.keyA, `{"app_id":"abc","device_type":"esp32"}`, 400, reeve.CodeInvalid, "app_id"},
		{"app_id an object", path, s.keyA, `{"app_id":{},"device_type":"esp32"}`, 400, reeve.CodeInvalid, "app_id"},
		{"no app_id", path, s.keyA, `{"device_type":"esp32"}`, 400, reeve.CodeInvalid, "app_id"},
		{"unknown app", path, s.keyA, `{"app_id":9999,"device_type":"esp32"}`, 404, reeve.CodeNotFound, "no dependent app 9999"},
		{"app of another gateway fleet", path, s.keyA, `{"app_id":` + itoa(s.lights.ID) + `,"device_type":"esp32"}`, 403, reeve.CodeForbidden, `"lights"`},
		{"app that is not dependent", path, s.keyA, `{"app_id":` + itoa(s.fleet.ID) + `,"device_type":"esp32"}`, 403, reeve.CodeForbidden, `"lobby"`},
		{"invalid uuid", path, s.keyA, `{"app_id":` + app + `,"device_type":"esp32","uuid":"kitchen"}`, 400, reeve.CodeInvalid, "uuid"},
		{"wrong device type", path, s.keyA, `{"app_id":` + app + `,"device_type":"nrf52"}`, 400, reeve.CodeInvalid, "cannot join"},
		{"unknown field", path, s.keyA, `{"app_id":` + app + `,"device_type":"esp32","colour":"red"}`, 400, reeve.CodeInvalid, "colour"},
		{"uuid taken", path, s.keyA, `{"app_id":` + app + `,"device_type":"esp32","uuid":"` + uuidN(1) + `"}`, 409, reeve.CodeConflict, "already registered"},
		{"no key", path, "", `{"app_id":` + app + `,"device_type":"esp32"}`, 401, reeve.CodeUnauthorized, ""},
		{"another device's key", path, s.keyB, `{"app_id":` + app + `,"device_type":"esp32"}`, 403, reeve.CodeForbidden, ""},
		{"provisioning key", path, s.provKey, `{"app_id":` + app + `,"device_type":"esp32"}`, 401, reeve.CodeUnauthorized, ""},
		{"revoked device key", "/device/v3/" + s.c + "/dependent-devices", s.keyC, `{"app_id":` + app + `,"device_type":"esp32"}`, 401, reeve.CodeUnauthorized, ""},
		{"bad path uuid", "/device/v3/kitchen/dependent-devices", s.keyA, `{"app_id":` + app + `,"device_type":"esp32"}`, 400, reeve.CodeInvalid, "kitchen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, _ := e.call("POST", tc.path, tc.token, tc.body)
			if status != tc.status {
				t.Fatalf("%d, want %d: %s", status, tc.status, body)
			}
			eb := errorOf(t, body)
			if eb.Code != tc.code || !strings.Contains(eb.Message, tc.says) {
				t.Errorf("error %s %q, want code %s saying %q", eb.Code, eb.Message, tc.code, tc.says)
			}
		})
	}
	var ds []serverapi.DeviceView
	e.must(200, "GET", "/api/v1/devices?fleet=sensors", adminToken, nil, &ds)
	if len(ds) != 2 {
		t.Fatalf("%d dependent devices after the refusals, want 2", len(ds))
	}

	// The typed client.
	c := serverapi.NewClient(e.url, s.keyB, nil)
	got, err := c.RegisterDependent(t.Context(), s.b, serverapi.RegisterDependentRequest{AppID: s.sensors.ID, DeviceType: "esp32", LocalID: "serial-9"})
	if err != nil || got.LocalID != "serial-9" || !reeve.ValidUUID(got.UUID) {
		t.Fatalf("client: %+v %v", got, err)
	}
	_, err = c.RegisterDependent(t.Context(), s.b, serverapi.RegisterDependentRequest{AppID: s.sensors.ID, DeviceType: "esp32", UUID: got.UUID})
	if reeve.ErrorCode(err) != reeve.CodeConflict {
		t.Errorf("client, uuid taken: %v, want conflict", err)
	}
	_, err = c.RegisterDependent(t.Context(), s.b, serverapi.RegisterDependentRequest{AppID: s.lights.ID, DeviceType: "esp32"})
	if reeve.ErrorCode(err) != reeve.CodeForbidden {
		t.Errorf("client, another fleet's app: %v, want forbidden", err)
	}
}

// TestGatewayRoundTrip: a gateway polls, registers a dependent device
// (which ends its long poll), reports it and ships its lines; the operator
// sees all of it.
func TestGatewayRoundTrip(t *testing.T) {
	e := newEnv(t)
	s := e.depSetup()
	ctx := context.Background()
	gw := serverapi.NewClient(e.url, s.keyA, &http.Client{})
	e.must(201, "POST", "/api/v1/fleets/sensors/releases", adminToken, serverapi.PushRequest{Compose: "services:\n  firmware:\n    image: registry.example.com/fw:1\n"}, nil)
	first, err := gw.State(ctx, s.a, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if app := first.Target[s.a].Apps[s.sensors.UUID]; app.Class != reeve.ClassDependent || app.ID != s.sensors.ID {
		t.Fatalf("the gateway's target has no sensors app: %+v", first.Target)
	}
	polled := make(chan serverapi.StateResult, 1)
	go func() {
		res, err := gw.State(ctx, s.a, first.ETag, 120*time.Second)
		if err != nil {
			t.Error(err)
		}
		polled <- res
	}()
	dep, err := gw.RegisterDependent(ctx, s.a, serverapi.RegisterDependentRequest{AppID: s.sensors.ID, DeviceType: "esp32", Name: "probe", LocalID: "serial-1"})
	if err != nil {
		t.Fatal(err)
	}
	res := <-polled
	if res.NotModified {
		t.Fatal("registering a dependent device did not end its gateway's long poll")
	}
	if err := res.Target.CheckDependents(s.a); err != nil {
		t.Fatalf("the agent would refuse the target: %v", err)
	}
	da := res.Target.DependentApps(s.a)[s.sensors.UUID]
	if d, ok := da.Devices[dep.UUID]; !ok || d.Name != "probe" || d.Image != "registry.example.com/fw:1" {
		t.Fatalf("the gateway's target has the dependent device as %+v", da)
	}

	// Report: the gateway's entry and the device's, and one for a device
	// it does not carry (skipped).
	e.must(200, "PATCH", "/device/v3/state", s.keyA, map[string]any{
		s.a:       map[string]any{"status": "Idle"},
		dep.UUID:  map[string]any{"status": "Idle", "is_online": true, "commit": da.Commit, "config": map[string]string{"RATE": "9"}},
		uuidN(15): map[string]any{"status": "Idle"},
	}, nil)
	var dv serverapi.DeviceView
	e.must(200, "GET", "/api/v1/devices/"+dep.UUID, adminToken, nil, &dv)
	if !dv.Online || dv.Gateway != s.a || dv.LocalID != "serial-1" || dv.State.IsOnline == nil || !*dv.State.IsOnline ||
		dv.State.Commit == nil || *dv.State.Commit != da.Commit || dv.TargetCommit != da.Commit || dv.State.Config["RATE"] != "9" {
		t.Fatalf("the dependent device as the operator sees it: %+v", dv)
	}
	var ds []serverapi.DeviceView
	e.must(200, "GET", "/api/v1/devices?fleet=sensors", adminToken, nil, &ds)
	if len(ds) != 1 || ds[0].Gateway != s.a || !ds[0].Online {
		t.Fatalf("the dependent fleet's devices: %+v", ds)
	}
	// Another gateway's key cannot report for it; a field a dependent
	// device does not report refuses the report, naming it.
	status, body, _ := e.call("PATCH", "/device/v3/state", s.keyB, map[string]any{dep.UUID: map[string]any{"status": "x"}})
	if status != 403 {
		t.Errorf("another device reporting a dependent device alone: %d %s", status, body)
	}
	status, body, _ = e.call("PATCH", "/device/v3/state", s.keyA, map[string]any{s.a: map[string]any{}, dep.UUID: map[string]any{"cpu_usage": 5}})
	if status != 400 || len(errorOf(t, body).Details) != 1 || errorOf(t, body).Details[0].Path != dep.UUID+".cpu_usage" {
		t.Errorf("a report with a field of no dependent device: %d %s", status, body)
	}
	status, body, _ = e.call("PATCH", "/device/v3/state", s.keyA, map[string]any{s.b: map[string]any{}, dep.UUID: map[string]any{}})
	if status != 403 {
		t.Errorf("a report without the reporter's own entry: %d %s", status, body)
	}

	// Logs: the device's lines go in the gateway's stream and are kept
	// under the device.
	ack := e.mustPostLogs(s.a, s.keyA, "gw", ndjson(
		`{"seq":1,"message":"gateway up"}`,
		`{"seq":2,"device":"`+dep.UUID+`","service":"firmware","message":"probe booted"}`,
		`{"seq":3,"device":"`+dep.UUID+`","message":"probe reading 21.5"}`,
	), true)
	if ack != (serverapi.LogAck{Stored: 3, LastSeq: 3}) {
		t.Errorf("ack %+v, want 3 stored, last seq 3", ack)
	}
	lines := e.logsOf(dep.UUID, "")
	sameMessages(t, "the dependent device's lines", []string{"probe booted", "probe reading 21.5"}, lines)
	for _, l := range lines {
		if l.Device != dep.UUID {
			t.Errorf("a line of the dependent device reads as %s's", l.Device)
		}
	}
	sameMessages(t, "the gateway's lines", []string{"gateway up"}, e.logsOf(s.a, ""))
	status, body = e.postLogs(s.b, s.keyB, "other", ndjson(`{"seq":1,"message":"mine"}`, `{"seq":2,"device":"`+dep.UUID+`","message":"spoof"}`), false)
	// A line of a device the sender does not carry is skipped, not
	// refused: the sender's own lines around it are kept, and it is acked
	// so that it is not sent again.
	var spoofAck serverapi.LogAck
	json.Unmarshal(body, &spoofAck)
	if status != 200 || spoofAck != (serverapi.LogAck{Stored: 1, Skipped: 1, LastSeq: 2}) {
		t.Errorf("another gateway's line of the device: %d %s, want 200 with 1 stored, 1 skipped, last seq 2", status, body)
	}
	sameMessages(t, "the dependent device's lines after a spoof", []string{"probe booted", "probe reading 21.5"}, e.logsOf(dep.UUID, ""))
	if ack := e.mustPostLogs(s.a, s.keyA, "gw", nil, false); ack.LastSeq != 3 {
		t.Errorf("an empty request: last seq %d, want 3", ack.LastSeq)
	}

	// Removal: the gateway cannot go while it carries the device; the
	// device goes with its lines, and leaves the gateway's target.
	if status, body, _ := e.call("DELETE", "/api/v1/devices/"+s.a, adminToken, nil); status != 409 || !strings.Contains(errorOf(t, body).Message, "remove them first") {
		t.Errorf("removing a gateway that carries a device: %d %s", status, body)
	}
	e.must(204, "DELETE", "/api/v1/devices/"+dep.UUID, adminToken, nil, nil)
	after, err := gw.State(ctx, s.a, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := after.Target[dep.UUID]; ok || len(after.Target) != 1 {
		t.Errorf("the gateway's target after the removal: %+v", after.Target)
	}
	if status, _, _ := e.call("GET", "/api/v1/devices/"+dep.UUID+"/logs", adminToken, nil); status != 404 {
		t.Errorf("logs of the removed device: %d, want 404", status)
	}
	// The report of a removed device is skipped, not refused.
	e.must(200, "PATCH", "/device/v3/state", s.keyA, map[string]any{s.a: map[string]any{"status": "Idle"}, dep.UUID: map[string]any{"is_online": false}}, nil)
}
