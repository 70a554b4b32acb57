package serverapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
	"reeve.dev/reeve/internal/server"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd"
	"reeve.dev/reeve/internal/serverd/serverdtest"
)

const adminToken = "test-admin-token-0123456789abcdef"

// env is a real server (SQLite file, HTTP over loopback) for one test.
type env struct {
	t   *testing.T
	m   *serverd.Main
	url string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	m := serverdtest.Start(t, adminToken, nil)
	return &env{t: t, m: m, url: m.URL()}
}

// call sends a request and returns the status and body.
func (e *env) call(method, path, token string, body any) (int, []byte, http.Header) {
	e.t.Helper()
	var rd io.Reader = http.NoBody
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// must sends a request that has to answer want, and decodes the answer.
func (e *env) must(want int, method, path, token string, body, out any) {
	e.t.Helper()
	status, b, _ := e.call(method, path, token, body)
	if status != want {
		e.t.Fatalf("%s %s: %d, want %d: %s", method, path, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

type fleetSetup struct {
	fleet            reeve.Fleet
	provKey, revoked string
	a, b, c          string // device UUIDs
	keyA, keyB, keyC string // their keys; keyC is revoked
}

func uuidN(n byte) string { return strings.Repeat(string("0123456789abcdef"[n%16]), 32) }

func (e *env) setup() fleetSetup {
	var s fleetSetup
	e.must(201, "POST", "/api/v1/fleets", adminToken, serverapi.CreateFleetRequest{Name: "lobby"}, &s.fleet)
	var k serverapi.CreatedKey
	e.must(201, "POST", "/api/v1/fleets/lobby/keys", adminToken, serverapi.CreateKeyRequest{Name: "factory"}, &k)
	s.provKey = k.Key
	var k2 serverapi.CreatedKey
	e.must(201, "POST", "/api/v1/fleets/lobby/keys", adminToken, serverapi.CreateKeyRequest{Name: "old"}, &k2)
	s.revoked = k2.Key
	e.must(204, "DELETE", "/api/v1/keys/"+itoa(k2.ProvisioningKey.ID), adminToken, nil, nil)
	s.a, s.b, s.c = uuidN(10), uuidN(11), uuidN(12)
	s.keyA, s.keyB, s.keyC = server.NewSecret(), server.NewSecret(), server.NewSecret()
	for _, d := range []struct{ uuid, key string }{{s.a, s.keyA}, {s.b, s.keyB}, {s.c, s.keyC}} {
		e.must(201, "POST", "/device/register", s.provKey, serverapi.RegisterRequest{UUID: d.uuid, DeviceType: "generic-amd64", APIKey: d.key}, nil)
	}
	e.must(204, "DELETE", "/api/v1/devices/"+s.c+"/key", adminToken, nil, nil)
	return s
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func errorOf(t *testing.T, body []byte) *reeve.Error {
	t.Helper()
	var eb httpx.ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error == nil || eb.Error.Message == "" {
		t.Fatalf("not an error body: %s", body)
	}
	return eb.Error
}

func TestDeviceAuthMatrix(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	report := func(uuid string) any {
		return map[string]any{uuid: map[string]any{"status": "Idle"}}
	}
	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		want                      int
	}{
		{"state: own key", "GET", "/device/v3/" + s.a + "/state", s.keyA, nil, 200},
		{"state: no key", "GET", "/device/v3/" + s.a + "/state", "", nil, 401},
		{"state: another device's key", "GET", "/device/v3/" + s.a + "/state", s.keyB, nil, 403},
		{"state: provisioning key", "GET", "/device/v3/" + s.a + "/state", s.provKey, nil, 401},
		{"state: operator token", "GET", "/device/v3/" + s.a + "/state", adminToken, nil, 401},
		{"state: revoked device key", "GET", "/device/v3/" + s.c + "/state", s.keyC, nil, 401},
		{"state: made-up key", "GET", "/device/v3/" + s.a + "/state", server.NewSecret(), nil, 401},
		{"report: own key", "PATCH", "/device/v3/state", s.keyA, report(s.a), 200},
		{"report: no key", "PATCH", "/device/v3/state", "", report(s.a), 401},
		{"report: another device's key", "PATCH", "/device/v3/state", s.keyB, report(s.a), 403},
		{"report: provisioning key", "PATCH", "/device/v3/state", s.provKey, report(s.a), 401},
		{"report: revoked device key", "PATCH", "/device/v3/state", s.keyC, report(s.c), 401},
		{"tags: own key", "GET", "/device/v3/" + s.a + "/tags", s.keyA, nil, 200},
		{"tags: no key", "GET", "/device/v3/" + s.a + "/tags", "", nil, 401},
		{"tags: another device's key", "GET", "/device/v3/" + s.a + "/tags", s.keyB, nil, 403},
		{"tags: provisioning key", "GET", "/device/v3/" + s.a + "/tags", s.provKey, nil, 401},
		{"tags: revoked device key", "GET", "/device/v3/" + s.c + "/tags", s.keyC, nil, 401},
		{"patch tags: own key", "PATCH", "/device/v3/" + s.a + "/tags", s.keyA, `{"tags":{"site":"berlin"}}`, 200},
		{"patch tags: another device's key", "PATCH", "/device/v3/" + s.a + "/tags", s.keyB, `{"tags":{"site":"x"}}`, 403},
		{"patch tags: no key", "PATCH", "/device/v3/" + s.a + "/tags", "", `{"tags":{"site":"x"}}`, 401},
		{"patch tags: revoked device key", "PATCH", "/device/v3/" + s.c + "/tags", s.keyC, `{"tags":{"site":"x"}}`, 401},
		{"register: no key", "POST", "/device/register", "", serverapi.RegisterRequest{UUID: uuidN(1), DeviceType: "x", APIKey: server.NewSecret()}, 401},
		{"register: revoked key", "POST", "/device/register", s.revoked, serverapi.RegisterRequest{UUID: uuidN(1), DeviceType: "x", APIKey: server.NewSecret()}, 401},
		{"register: device key", "POST", "/device/register", s.keyA, serverapi.RegisterRequest{UUID: uuidN(1), DeviceType: "x", APIKey: server.NewSecret()}, 401},
		{"register: operator token", "POST", "/device/register", adminToken, serverapi.RegisterRequest{UUID: uuidN(1), DeviceType: "x", APIKey: server.NewSecret()}, 401},
		{"key exchange: no key", "POST", "/device/v3/" + s.a + "/key-exchange", "", serverapi.KeyExchangeRequest{APIKey: server.NewSecret()}, 401},
		{"key exchange: device key", "POST", "/device/v3/" + s.a + "/key-exchange", s.keyA, serverapi.KeyExchangeRequest{APIKey: server.NewSecret()}, 401},
		{"key exchange: revoked provisioning key", "POST", "/device/v3/" + s.a + "/key-exchange", s.revoked, serverapi.KeyExchangeRequest{APIKey: server.NewSecret()}, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, _ := e.call(tc.method, tc.path, tc.token, tc.body)
			if status != tc.want {
				t.Fatalf("%d, want %d: %s", status, tc.want, body)
			}
			if status >= 400 {
				errorOf(t, body)
			}
		})
	}
	// Nothing refused was stored: only the three devices exist.
	var ds []serverapi.DeviceView
	e.must(200, "GET", "/api/v1/devices", adminToken, nil, &ds)
	if len(ds) != 3 {
		t.Fatalf("%d devices, want 3: a refused registration was stored", len(ds))
	}
	// Only the device's own PATCH changed its tags.
	var dv serverapi.DeviceView
	e.must(200, "GET", "/api/v1/devices/"+s.a, adminToken, nil, &dv)
	if len(dv.Tags) != 1 || dv.Tags["site"] != "berlin" {
		t.Fatalf("tags after the matrix: %v, want only site=berlin", dv.Tags)
	}
	// A deleted device's key stops working at once, though its polls
	// were answered from memory.
	e.must(200, "GET", "/device/v3/"+s.b+"/state", s.keyB, nil, nil)
	e.must(204, "DELETE", "/api/v1/devices/"+s.b, adminToken, nil, nil)
	if status, body, _ := e.call("GET", "/device/v3/"+s.b+"/state", s.keyB, nil); status != 401 {
		t.Fatalf("a deleted device polled: %d %s", status, body)
	}
	// The revoked device key says so.
	_, body, _ := e.call("GET", "/device/v3/"+s.c+"/state", s.keyC, nil)
	if msg := errorOf(t, body).Message; !strings.Contains(msg, "revoked") {
		t.Errorf("a revoked device is told %q; it should say the key was revoked", msg)
	}
}

func TestOperatorRoutesNeedAToken(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	h := serverapi.NewHandler(server.New(server.Options{Store: e.m.Server().Store()}), nil)
	routes := h.OperatorRoutes()
	if len(routes) < 20 {
		t.Fatalf("only %d operator routes listed", len(routes))
	}
	fill := strings.NewReplacer("{fleet}", "lobby", "{id}", "1", "{commit}", "aaaaaaaaaaaaaaaa", "{uuid}", s.a, "{key}", "site")
	for _, r := range routes {
		method, path, _ := strings.Cut(r, " ")
		path = fill.Replace(path)
		for _, who := range []struct{ name, token string }{
			{"no token", ""}, {"device key", s.keyA}, {"provisioning key", s.provKey}, {"made-up token", server.NewSecret()},
		} {
			status, body, _ := e.call(method, path, who.token, `{}`)
			if status != 401 {
				t.Errorf("%s %s with %s: %d, want 401: %s", method, path, who.name, status, body)
				continue
			}
			if c := errorOf(t, body).Code; c != reeve.CodeUnauthorized {
				t.Errorf("%s %s: code %q", method, path, c)
			}
		}
	}
	// And nothing changed: the fleet and its devices are all there.
	var ds []serverapi.DeviceView
	e.must(200, "GET", "/api/v1/devices?fleet=lobby", adminToken, nil, &ds)
	if len(ds) != 3 {
		t.Fatalf("%d devices after unauthenticated calls, want 3", len(ds))
	}
}

func TestBadInputIsRefusedAndNothingStored(t *testing.T) {
	e := newEnv(t)
	e.setup()
	big := `{"name":"` + strings.Repeat("x", serverapi.MaxBody) + `"}`
	for _, tc := range []struct {
		name, method, path string
		body               any
		want               int
		msg                string
	}{
		{"malformed json", "POST", "/api/v1/fleets", `{"name":`, 400, "not valid JSON"},
		{"unknown field", "POST", "/api/v1/fleets", `{"name":"x","colour":"red"}`, 400, `unknown field "colour"`},
		{"two values", "POST", "/api/v1/fleets", `{"name":"x"}{"name":"y"}`, 400, "more than one JSON value"},
		{"oversized", "POST", "/api/v1/fleets", big, 413, "larger than the limit"},
		{"bad fleet name", "POST", "/api/v1/fleets", `{"name":"no spaces please"}`, 400, "not a fleet name"},
		{"bad strategy", "POST", "/api/v1/fleets", `{"name":"x","update_strategy":"yolo"}`, 400, "not an update strategy"},
		{"fleet name taken", "POST", "/api/v1/fleets", `{"name":"lobby"}`, 409, "lobby"},
		{"bad uuid", "GET", "/api/v1/devices/not-a-uuid", nil, 400, "not a device UUID"},
		{"unknown device", "GET", "/api/v1/devices/" + uuidN(3), nil, 404, "not found"},
		{"bad variable name", "PUT", "/api/v1/env", `{"fleet":"lobby","name":"1BAD","value":"x"}`, 400, "not a variable name"},
		{"config with service", "PUT", "/api/v1/config", `{"fleet":"lobby","service":"web","name":"A","value":"x"}`, 400, "no service scope"},
		{"fleet and device", "PUT", "/api/v1/env", `{"fleet":"lobby","device":"` + uuidN(10) + `","name":"A","value":"x"}`, 400, "not both"},
		{"pin unknown release", "PATCH", "/api/v1/devices/" + uuidN(10), `{"pinned_release":"deadbeefdeadbeef"}`, 404, "no release"},
		{"invalid compose", "POST", "/api/v1/fleets/lobby/releases", `{"compose":"services:\n  web:\n    image: \"Bad Image\"\n"}`, 400, "services.web.image"},
		{"unsupported compose key", "POST", "/api/v1/fleets/lobby/releases", `{"compose":"services:\n  web:\n    image: nginx\n    build: .\n"}`, 400, "build"},
		{"empty compose", "POST", "/api/v1/fleets/lobby/releases", `{"compose":""}`, 400, "empty"},
		{"wrong method", "PUT", "/api/v1/fleets", `{}`, 405, "not allowed"},
		{"no route", "GET", "/api/v1/nothing", nil, 404, "no such route"},
		{"long poll too long", "GET", "/device/v3/" + uuidN(10) + "/state?wait=9999", nil, 401, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, _ := e.call(tc.method, tc.path, adminToken, tc.body)
			if status != tc.want {
				t.Fatalf("%d, want %d: %s", status, tc.want, body)
			}
			if msg := errorOf(t, body).Message; !strings.Contains(msg, tc.msg) {
				t.Fatalf("message %q does not mention %q", msg, tc.msg)
			}
		})
	}
	var fs []reeve.Fleet
	e.must(200, "GET", "/api/v1/fleets", adminToken, nil, &fs)
	if len(fs) != 1 {
		t.Errorf("%d fleets, want 1: a refused fleet was stored", len(fs))
	}
	var rs []reeve.FleetRelease
	e.must(200, "GET", "/api/v1/fleets/lobby/releases", adminToken, nil, &rs)
	if len(rs) != 0 {
		t.Errorf("%d releases, want 0: a refused compose file was stored", len(rs))
	}
	var vs []reeve.Variable
	e.must(200, "GET", "/api/v1/env?fleet=lobby", adminToken, nil, &vs)
	if len(vs) != 0 {
		t.Errorf("refused variables were stored: %+v", vs)
	}
}

const composeV1 = "services:\n  web:\n    image: registry.example.com/web:1\n    environment:\n      GREETING: compose\n"
const composeV2 = "services:\n  web:\n    image: registry.example.com/web:2\n"

func TestStateETagLongPollAndPins(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	get := func(etag, query string) (int, reeve.TargetState, http.Header) {
		req, _ := http.NewRequest("GET", e.url+"/device/v3/"+s.a+"/state"+query, nil)
		req.Header.Set("Authorization", "Bearer "+s.keyA)
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var ts reeve.TargetState
		if resp.StatusCode == 200 {
			b, _ := io.ReadAll(resp.Body)
			var err error
			if ts, err = reeve.ParseTargetState(b); err != nil {
				t.Fatalf("served target does not parse: %v\n%s", err, b)
			}
		}
		return resp.StatusCode, ts, resp.Header
	}
	status, ts, h := get("", "")
	if status != 200 || h.Get("ETag") == "" || h.Get(serverapi.LongPollHeader) != "300" {
		t.Fatalf("first poll: %d, headers %v", status, h)
	}
	if n := len(ts[s.a].Apps[s.fleet.UUID].Releases); n != 0 {
		t.Fatalf("a fleet with no release gave %d releases", n)
	}
	etag := h.Get("ETag")
	if status, _, _ := get(etag, ""); status != 304 {
		t.Fatalf("unchanged target: %d, want 304", status)
	}
	if status, _, _ := get(etag, "?wait=1"); status != 304 {
		t.Fatalf("long poll with no change: %d, want 304 when the wait is over", status)
	}

	// A long poll answers as soon as a release is pushed.
	type result struct {
		status int
		ts     reeve.TargetState
		etag   string
	}
	res := make(chan result, 1)
	go func() {
		st, ts, h := get(etag, "?wait=120")
		res <- result{st, ts, h.Get("ETag")}
	}()
	waitFor(t, func() bool {
		var d serverapi.DeviceView
		e.must(200, "GET", "/api/v1/devices/"+s.a, adminToken, nil, &d)
		return d.Online // online while it long-polls
	})
	var v1 reeve.FleetRelease
	e.must(201, "POST", "/api/v1/fleets/lobby/releases", adminToken, serverapi.PushRequest{Compose: composeV1}, &v1)
	r := <-res
	if r.status != 200 {
		t.Fatalf("long poll after a push: %d, want 200 (the change must end the wait)", r.status)
	}
	web := r.ts[s.a].Apps[s.fleet.UUID].Releases[v1.Commit].Services["web"]
	if web.Image != "registry.example.com/web:1" || web.Environment["GREETING"] != "compose" {
		t.Fatalf("served service %+v", web)
	}
	// Pushing the same file again is the same release.
	var again reeve.FleetRelease
	e.must(200, "POST", "/api/v1/fleets/lobby/releases", adminToken, serverapi.PushRequest{Compose: composeV1}, &again)
	if again.ID != v1.ID {
		t.Fatalf("same file pushed twice made two releases")
	}
	// A device variable wakes the long poll too and wins over the compose file.
	go func() {
		st, ts, h := get(r.etag, "?wait=120")
		res <- result{st, ts, h.Get("ETag")}
	}()
	e.must(200, "PUT", "/api/v1/env", adminToken, serverapi.SetVarRequest{Device: s.a, Name: "GREETING", Value: "device"}, nil)
	r = <-res
	if got := r.ts[s.a].Apps[s.fleet.UUID].Releases[v1.Commit].Services["web"].Environment["GREETING"]; r.status != 200 || got != "device" {
		t.Fatalf("after a device variable: %d, GREETING=%q", r.status, got)
	}
	// v2, then pin the device back to v1.
	var v2 reeve.FleetRelease
	e.must(201, "POST", "/api/v1/fleets/lobby/releases", adminToken, serverapi.PushRequest{Compose: composeV2}, &v2)
	_, ts, _ = get("", "")
	if _, ok := ts[s.a].Apps[s.fleet.UUID].Releases[v2.Commit]; !ok {
		t.Fatalf("the fleet does not track its newest release: %+v", ts)
	}
	var dv serverapi.DeviceView
	e.must(200, "PATCH", "/api/v1/devices/"+s.a, adminToken, serverapi.UpdateDeviceRequest{PinnedRelease: &v1.Commit}, &dv)
	if dv.TargetCommit != v1.Commit {
		t.Fatalf("pinned device's target commit %q, want %q", dv.TargetCommit, v1.Commit)
	}
	_, ts, _ = get("", "")
	if _, ok := ts[s.a].Apps[s.fleet.UUID].Releases[v1.Commit]; !ok {
		t.Fatalf("a pinned device does not get its pinned release")
	}
	// The other device still tracks the newest.
	e.must(200, "GET", "/api/v1/devices/"+s.b, adminToken, nil, &dv)
	if dv.TargetCommit != v2.Commit || dv.Online {
		t.Fatalf("device b: target %q online %v; want %q and offline (never polled)", dv.TargetCommit, dv.Online, v2.Commit)
	}
	// A revoked key ends a long poll with 401.
	_, _, h = get("", "")
	go func() {
		st, ts, h := get(h.Get("ETag"), "?wait=120")
		res <- result{st, ts, h.Get("ETag")}
	}()
	e.must(204, "DELETE", "/api/v1/devices/"+s.a+"/key", adminToken, nil, nil)
	if r = <-res; r.status != 401 {
		t.Fatalf("long poll after its key was revoked: %d, want 401", r.status)
	}
}

func TestReportMergesAndRegisterConflict(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	e.must(200, "PATCH", "/device/v3/state", s.keyA, map[string]any{s.a: map[string]any{
		"status": "Updating", "ip_address": "10.0.0.2", "cpu_usage": 12.5, "memory_total": 3790, "poll_interval": "30s",
		"apps": map[string]any{s.fleet.UUID: map[string]any{"releases": map[string]any{"aaaaaaaaaaaaaaaa": map[string]any{
			"services": map[string]any{"web": map[string]any{"image": "x", "status": "downloading", "download_progress": 40}}}}}},
	}}, nil)
	e.must(200, "PATCH", "/device/v3/state", s.keyA, map[string]any{s.a: map[string]any{"status": "Idle"}}, nil)
	var d serverapi.DeviceView
	e.must(200, "GET", "/api/v1/devices/"+s.a, adminToken, nil, &d)
	st := d.State
	if st.Status == nil || *st.Status != "Idle" || st.IPAddress == nil || *st.IPAddress != "10.0.0.2" ||
		st.MemoryTotal == nil || *st.MemoryTotal != 3790 || st.PollInterval == nil || st.PollInterval.D() != 30*time.Second {
		t.Fatalf("merged state %+v", st)
	}
	if p := st.Apps[s.fleet.UUID].Releases["aaaaaaaaaaaaaaaa"].Services["web"].DownloadProgress; p == nil || *p != 40 {
		t.Fatalf("service report lost: %+v", st.Apps)
	}
	if !d.Online || d.ReportedAt.IsZero() {
		t.Fatalf("a device that just reported is online=%v reported_at=%v", d.Online, d.ReportedAt)
	}
	// Bad reports.
	for _, body := range []string{
		`{"` + s.a + `":{"cpu_usage":250}}`,
		`{"` + s.a + `":{"surprise":1}}`,
		`{}`,
		`{"` + s.a + `":{},"` + s.b + `":{"cpu_usage":1}}`, // only a dependent device's fields beside its own
	} {
		if status, b, _ := e.call("PATCH", "/device/v3/state", s.keyA, body); status != 400 {
			t.Errorf("report %s: %d, want 400: %s", body, status, b)
		}
	}
	// An entry for a device that a is not the gateway of is skipped:
	// the report is taken, and b is left as it was.
	e.must(200, "PATCH", "/device/v3/state", s.keyA, `{"`+s.a+`":{"status":"Idle"},"`+s.b+`":{"status":"Hijacked"}}`, nil)
	var other serverapi.DeviceView
	e.must(200, "GET", "/api/v1/devices/"+s.b, adminToken, nil, &other)
	if other.State.Status != nil || !other.ReportedAt.IsZero() {
		t.Fatalf("a device's report changed another device: %+v", other.State)
	}
	// Registering a UUID twice: 409, then the key exchange gives the
	// device a new key and the old one stops working.
	e.must(200, "GET", "/device/v3/"+s.a+"/state", s.keyA, nil, nil) // the poll cache holds the old key now
	newKey := server.NewSecret()
	status, body, _ := e.call("POST", "/device/register", s.provKey, serverapi.RegisterRequest{UUID: s.a, DeviceType: "generic-amd64", APIKey: newKey})
	if status != 409 || !strings.Contains(errorOf(t, body).Message, "key-exchange") {
		t.Fatalf("second registration: %d %s", status, body)
	}
	e.must(200, "POST", "/device/v3/"+s.a+"/key-exchange", s.provKey, serverapi.KeyExchangeRequest{APIKey: newKey}, nil)
	e.must(200, "GET", "/device/v3/"+s.a+"/state", newKey, nil, nil)
	if status, _, _ := e.call("GET", "/device/v3/"+s.a+"/state", s.keyA, nil); status != 401 {
		t.Fatalf("the old key still works after a key exchange: %d", status)
	}
	// A device type the fleet does not take.
	var typed reeve.Fleet
	e.must(201, "POST", "/api/v1/fleets", adminToken, serverapi.CreateFleetRequest{Name: "pis", DeviceType: "raspberrypi4-64"}, &typed)
	var k serverapi.CreatedKey
	e.must(201, "POST", "/api/v1/fleets/pis/keys", adminToken, serverapi.CreateKeyRequest{}, &k)
	status, body, _ = e.call("POST", "/device/register", k.Key, serverapi.RegisterRequest{UUID: uuidN(5), DeviceType: "generic-amd64", APIKey: server.NewSecret()})
	if status != 400 || !strings.Contains(errorOf(t, body).Message, "cannot join") {
		t.Fatalf("wrong device type: %d %s", status, body)
	}
	// An expired key.
	e.must(400, "POST", "/api/v1/fleets/pis/keys", adminToken, serverapi.CreateKeyRequest{ExpiresAt: time.Now().Add(-time.Hour)}, nil)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDeviceTagsFromTheDevice(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	var got serverapi.DeviceTags
	e.must(200, "PATCH", "/device/v3/"+s.a+"/tags", s.keyA, `{"tags":{"site":"berlin","floor":"2"}}`, &got)
	got = serverapi.DeviceTags{} // decoding into a filled map would merge
	e.must(200, "PATCH", "/device/v3/"+s.a+"/tags", s.keyA, `{"tags":{"floor":null,"wing":"east"}}`, &got)
	if len(got.Tags) != 2 || got.Tags["site"] != "berlin" || got.Tags["wing"] != "east" {
		t.Fatalf("tags %v, want site and wing (floor removed)", got.Tags)
	}
	for _, body := range []string{`{"tags":{"bad key!":"x"}}`, `{"tags":{}}`, `{"tags":{"a":1}}`, `{"labels":{}}`} {
		if status, b, _ := e.call("PATCH", "/device/v3/"+s.a+"/tags", s.keyA, body); status != 400 {
			t.Errorf("PATCH tags %s: %d, want 400: %s", body, status, b)
		}
	}
	got = serverapi.DeviceTags{}
	e.must(200, "GET", "/device/v3/"+s.a+"/tags", s.keyA, nil, &got)
	if len(got.Tags) != 2 {
		t.Fatalf("a refused patch changed the tags: %v", got.Tags)
	}
}

// The agent's API key reaches the server with a report but never shows in
// the operator API.
func TestReportedAPIKeyIsKeptOutOfViews(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	e.must(200, "PATCH", "/device/v3/state", s.keyA, map[string]any{s.a: map[string]any{"api_key": "secret-agent-key", "status": "Idle"}}, nil)
	for _, path := range []string{"/api/v1/devices/" + s.a, "/api/v1/devices", "/api/v1/devices?fleet=lobby"} {
		_, body, _ := e.call("GET", path, adminToken, nil)
		if strings.Contains(string(body), "secret-agent-key") || !strings.Contains(string(body), "Idle") {
			t.Fatalf("GET %s shows the device's API key (or not its state): %s", path, body)
		}
	}
	d, err := e.m.Server().Store().Device(context.Background(), s.a)
	if err != nil || d.State.APIKey == nil || *d.State.APIKey != "secret-agent-key" {
		t.Fatalf("the server did not keep the reported key: %+v %v", d.State.APIKey, err)
	}
}
