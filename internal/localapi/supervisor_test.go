package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// send sends a request with key as a bearer token ("" sends none).
func send(t *testing.T, h http.Handler, method, path, key, body string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// wantError checks that an answer is the JSON error body with the status of
// code, and that its message holds every one of parts.
func wantError(t *testing.T, resp *http.Response, body, code string, parts ...string) {
	t.Helper()
	var eb httpx.ErrorBody
	if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error == nil {
		t.Fatalf("status %d: body is not an error object: %s", resp.StatusCode, body)
	}
	if resp.StatusCode != httpx.StatusOf(code) || eb.Error.Code != code {
		t.Fatalf("status %d, error %+v; want %d %s", resp.StatusCode, eb.Error, httpx.StatusOf(code), code)
	}
	for _, p := range parts {
		if !strings.Contains(eb.Error.Message, p) {
			t.Fatalf("error message %q does not mention %q", eb.Error.Message, p)
		}
	}
}

// sameJSON reports how got differs from want as JSON values.
func sameJSON(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad expectation: %v: %s", err, want)
	}
	if d := cmp.Diff(w, g); d != "" {
		t.Fatalf("answer differs (-want +got):\n%s", d)
	}
}

// Who may call a route.
const (
	forAll    = "public" // no key
	forAny    = "any"    // any key; the route names no app
	forApp    = "app"    // any key; the route names app 1 (a1), so a2's key is refused
	forDevice = "device" // the device-wide key only
)

// routeCase is one route and its answer to the device-wide key. "{id}" in
// path and body stands for the appId (1).
type routeCase struct {
	method, path, body string
	who                string
	status             int
	ctype              string // the answer's Content-Type
	want               string // the exact text, or the JSON value when ctype is JSON
	calls              []string
	lockable           bool // refused with 423 while app a1 is locked
	force              bool // the body takes force
}

func (rc routeCase) name() string { return rc.method + " " + rc.path }

func (rc routeCase) request(id string) (path, body string) {
	return strings.ReplaceAll(rc.path, "{id}", id), strings.ReplaceAll(rc.body, "{id}", id)
}

const (
	ctJSON = "application/json"
	ctText = "text/plain"
)

func routeCases() []routeCase {
	return []routeCase{
		{method: "GET", path: "/ping", who: forAll, status: 200, ctype: ctText, want: "OK"},
		{method: "GET", path: "/v1/healthy", who: forAll, status: 200, ctype: ctText, want: "OK"},
		{method: "GET", path: "/v2/version", who: forAny, status: 200, ctype: ctJSON,
			want: `{"status": "success", "version": "` + reeve.Version + `"}`},
		{method: "GET", path: "/v2/state/status", who: forAny, status: 200, ctype: ctJSON,
			want: `{"status": "success", "device_uuid": "dev1", "app_state": "applying", "runtime": "", "target_version": 0,
				"steps": ["fetch a1/web", "noop a2"], "services": [
				{"app_uuid": "a1", "app_name": "shop", "service": "db", "commit": "c1", "current_commit": "c1",
				 "image": "registry.example.com/shop/db:1", "status": "running", "restart_count": 0, "container_id": "cdb"},
				{"app_uuid": "a1", "app_name": "shop", "service": "web", "commit": "c1",
				 "image": "registry.example.com/shop/web:1", "status": "downloading", "download_progress": 40, "restart_count": 0},
				{"app_uuid": "a2", "app_name": "other", "service": "main", "commit": "c2", "current_commit": "c2",
				 "image": "registry.example.com/other/main:1", "status": "exited", "exit_code": 3, "restart_count": 0, "container_id": "cmain"}]}`},
		{method: "GET", path: "/v2/local/device-info", who: forAny, status: 200, ctype: ctJSON,
			want: `{"status": "success", "uuid": "dev1", "name": "pi", "device_type": "generic-amd64", "local_mode": true, "version": "` + reeve.Version + `"}`},
		{method: "GET", path: "/v2/local/target-state", who: forDevice, status: 200, ctype: ctJSON},
		{method: "POST", path: "/v2/local/target-state", body: goodTarget, who: forDevice, status: 200, ctype: ctJSON,
			want: `{"status": "success", "version": 1}`, calls: []string{"SetTarget"}},

		{method: "POST", path: "/v1/update", body: `{"force": true}`, who: forAny, status: 204,
			calls: []string{"Update force=true"}, force: true},
		{method: "POST", path: "/v1/restart", body: `{"appId": {id}}`, who: forApp, status: 200, ctype: ctText, want: "OK",
			calls: []string{"RestartApp a1 force=false"}, lockable: true, force: true},
		{method: "POST", path: "/v1/purge", body: `{"appId": {id}, "force": false}`, who: forApp, status: 200, ctype: ctJSON,
			want: `{"Data": "OK", "Error": ""}`, calls: []string{"PurgeApp a1 force=false"}, lockable: true, force: true},
		{method: "GET", path: "/v1/apps/{id}", who: forApp, status: 200, ctype: ctJSON,
			want: `{"appId": 1, "commit": "c1", "containerId": "cdb", "env": {"GREETING": "hi"},
				"imageId": "registry.example.com/shop/db:1", "releaseId": 10, "serviceName": "db"}`},
		{method: "POST", path: "/v1/apps/{id}/stop", who: forApp, status: 200, ctype: ctJSON, want: `{"containerId": "cdb"}`,
			calls: []string{"StopApp a1 force=false"}, lockable: true, force: true},
		{method: "POST", path: "/v1/apps/{id}/start", body: `{"force": true}`, who: forApp, status: 200, ctype: ctJSON,
			want: `{"containerId": "cdb"}`, calls: []string{"StartApp a1"}, lockable: true, force: true},
		{method: "GET", path: "/v1/device", who: forAny, status: 200, ctype: ctJSON,
			want: `{"api_port": null, "ip_address": null, "mac_address": null, "commit": "c1", "status": "Idle",
				"download_progress": null, "os_version": null, "supervisor_version": "` + reeve.Version + `",
				"update_pending": true, "update_downloaded": false, "update_failed": false}`},
		{method: "POST", path: "/v1/regenerate-api-key", who: forDevice, status: 200, ctype: ctText, want: "newkey-9876543210",
			calls: []string{"RegenerateAPIKey"}},
		{method: "POST", path: "/v1/reboot", who: forDevice, status: 202, ctype: ctJSON, want: `{"Data": "OK", "Error": null}`,
			calls: []string{"Reboot"}, force: true},
		{method: "POST", path: "/v1/shutdown", body: `{"force": false}`, who: forDevice, status: 202, ctype: ctJSON,
			want: `{"Data": "OK", "Error": null}`, calls: []string{"Shutdown"}, force: true},

		{method: "GET", path: "/v2/applications/state", who: forAny, status: 200, ctype: ctJSON,
			want: `{
				"shop": {"appId": 1, "appUuid": "a1", "commit": "c1", "services": {
					"db": {"status": "Running", "releaseId": 10, "downloadProgress": null, "image": "registry.example.com/shop/db:1"},
					"web": {"status": "Downloading", "releaseId": 10, "downloadProgress": 40, "image": "registry.example.com/shop/web:1"}}},
				"other": {"appId": 2, "appUuid": "a2", "commit": "c2", "services": {
					"main": {"status": "exited", "releaseId": 20, "downloadProgress": null, "image": "registry.example.com/other/main:1"}}}}`},
		{method: "GET", path: "/v2/applications/{id}/state", who: forApp, status: 200, ctype: ctJSON,
			want: `{"local": {"1": {"services": {
					"12": {"status": "Running", "releaseId": 10, "download_progress": null},
					"11": {"status": "Downloading", "releaseId": 10, "download_progress": 40}}}},
				"dependent": {}, "commit": "c1"}`},
		{method: "POST", path: "/v2/applications/{id}/restart", body: `{"force": true}`, who: forApp, status: 200, ctype: ctText,
			want: "OK", calls: []string{"RestartApp a1 force=true"}, lockable: true, force: true},
		{method: "POST", path: "/v2/applications/{id}/purge", who: forApp, status: 200, ctype: ctText,
			want: "OK", calls: []string{"PurgeApp a1 force=false"}, lockable: true, force: true},
		{method: "POST", path: "/v2/applications/{id}/restart-service", body: `{"serviceName": "web"}`, who: forApp, status: 200,
			ctype: ctText, want: "OK", calls: []string{"RestartService a1 web force=false"}, lockable: true, force: true},
		{method: "POST", path: "/v2/applications/{id}/stop-service", body: `{"imageId": 12}`, who: forApp, status: 200,
			ctype: ctText, want: "OK", calls: []string{"StopService a1 db force=false"}, lockable: true, force: true},
		{method: "POST", path: "/v2/applications/{id}/start-service", body: `{"serviceName": "web", "force": true}`, who: forApp,
			status: 200, ctype: ctText, want: "OK", calls: []string{"StartService a1 web"}, lockable: true, force: true},
		{method: "GET", path: "/v2/device/name", who: forAny, status: 200, ctype: ctJSON,
			want: `{"status": "success", "deviceName": "pi"}`},
		{method: "GET", path: "/v2/cleanup-volumes", who: forDevice, status: 200, ctype: ctJSON,
			want: `{"status": "success", "volumes": ["gone_data"]}`, calls: []string{"CleanupVolumes"}},
	}
}

// checkSuccess checks the answer of a route that did what was asked.
func checkSuccess(t *testing.T, rc routeCase, f *fakeAgent, resp *http.Response, body string) {
	t.Helper()
	if resp.StatusCode != rc.status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, rc.status, body)
	}
	if ct := resp.Header.Get("Content-Type"); rc.ctype != "" && !strings.HasPrefix(ct, rc.ctype) {
		t.Fatalf("Content-Type %q, want %s", ct, rc.ctype)
	}
	switch {
	case rc.status == http.StatusNoContent && body != "":
		t.Fatalf("204 with a body: %q", body)
	case rc.ctype == ctJSON && rc.want != "":
		sameJSON(t, body, rc.want)
	case rc.ctype == ctText && body != rc.want:
		t.Fatalf("body %q, want %q", body, rc.want)
	}
	if !slices.Equal(f.calls, rc.calls) {
		t.Fatalf("calls %q, want %q", f.calls, rc.calls)
	}
}

func TestRoutesAnswerTheDeviceKey(t *testing.T) {
	for _, rc := range routeCases() {
		t.Run(rc.name(), func(t *testing.T) {
			path, body := rc.request("1")
			f := newFake()
			resp, got := send(t, New(f, f.options(true)), rc.method, path, devKey, body)
			checkSuccess(t, rc, f, resp, got)

			// The same key as ?apikey=, as balena's apps send it.
			f = newFake()
			sep := "?"
			if strings.Contains(path, "?") {
				sep = "&"
			}
			resp, got = send(t, New(f, f.options(true)), rc.method, path+sep+"apikey="+devKey, "", body)
			checkSuccess(t, rc, f, resp, got)
		})
	}
}

func TestRoutesRefuseMissingAndWrongKeys(t *testing.T) {
	for _, rc := range routeCases() {
		if rc.who == forAll {
			continue
		}
		t.Run(rc.name(), func(t *testing.T) {
			path, body := rc.request("1")
			for _, key := range []string{"", "not-a-key", devKey + "x"} {
				f := newFake()
				resp, got := send(t, New(f, f.options(true)), rc.method, path, key, body)
				wantError(t, resp, got, reeve.CodeUnauthorized, "API key")
				if resp.Header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
				if len(f.calls) != 0 || f.sets != 0 {
					t.Fatalf("key %q: refused request acted: %q", key, f.calls)
				}
			}
			// An agent without a device-wide key yet accepts no key, not even "".
			f := newFake()
			f.key = ""
			resp, got := send(t, New(f, f.options(true)), rc.method, path+"?apikey=", "", body)
			wantError(t, resp, got, reeve.CodeUnauthorized)
		})
	}
}

func TestRoutesScopeAppKeys(t *testing.T) {
	for _, rc := range routeCases() {
		if rc.who == forAll {
			continue
		}
		t.Run(rc.name(), func(t *testing.T) {
			path, body := rc.request("1")
			// a1's key: its own app.
			f := newFake()
			resp, got := send(t, New(f, f.options(true)), rc.method, path, a1Key, body)
			switch rc.who {
			case forDevice:
				wantError(t, resp, got, reeve.CodeForbidden, "device-wide API key")
				if len(f.calls) != 0 {
					t.Fatalf("refused request acted: %q", f.calls)
				}
			case forApp:
				checkSuccess(t, rc, f, resp, got)
			case forAny:
				if resp.StatusCode != rc.status || !slices.Equal(f.calls, rc.calls) {
					t.Fatalf("status %d calls %q, want %d %q: %s", resp.StatusCode, f.calls, rc.status, rc.calls, got)
				}
			}
			// a2's key: another app.
			f = newFake()
			resp, got = send(t, New(f, f.options(true)), rc.method, path, a2Key, body)
			switch rc.who {
			case forDevice:
				wantError(t, resp, got, reeve.CodeForbidden, "device-wide API key")
			case forApp:
				wantError(t, resp, got, reeve.CodeForbidden, `app "other" (appId 2)`, "not on appId 1")
			case forAny:
				if resp.StatusCode != rc.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, rc.status, got)
				}
				return
			}
			if len(f.calls) != 0 {
				t.Fatalf("refused request acted: %q", f.calls)
			}
		})
	}
}

func TestAuthorizationSchemes(t *testing.T) {
	f := newFake()
	h := New(f, f.options(false))
	for _, hdr := range []string{"Bearer " + a1Key, "bearer " + a1Key, "ApiKey " + a1Key} {
		req := httptest.NewRequest("GET", "/v2/device/name", nil)
		req.Header.Set("Authorization", hdr)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Errorf("Authorization: %s → %d %s", hdr, rec.Code, rec.Body)
		}
	}
	req := httptest.NewRequest("GET", "/v2/device/name", nil)
	req.Header.Set("Authorization", "Basic "+a1Key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 401 {
		t.Errorf("Authorization: Basic → %d, want 401", rec.Code)
	}
}

func appRoutes() []routeCase {
	var out []routeCase
	for _, rc := range routeCases() {
		if rc.who == forApp {
			out = append(out, rc)
		}
	}
	return out
}

func TestUnknownAppIs404(t *testing.T) {
	for _, rc := range appRoutes() {
		t.Run(rc.name(), func(t *testing.T) {
			path, body := rc.request("99")
			f := newFake()
			resp, got := send(t, New(f, f.options(false)), rc.method, path, devKey, body)
			wantError(t, resp, got, reeve.CodeNotFound, "no app with appId 99")
			if len(f.calls) != 0 {
				t.Fatalf("acted on an unknown app: %q", f.calls)
			}
			// An app's key learns nothing about other IDs: 403.
			resp, got = send(t, New(f, f.options(false)), rc.method, path, a1Key, body)
			wantError(t, resp, got, reeve.CodeForbidden, "not on appId 99")
		})
	}
}

func TestBadAppIDIs400(t *testing.T) {
	for _, rc := range appRoutes() {
		t.Run(rc.name(), func(t *testing.T) {
			var bad []string
			if strings.Contains(rc.path, "{id}") {
				bad = []string{"abc", "0", "-1", "1.5", "99999999999999999999"}
			} else {
				bad = []string{`"abc"`, "0", "-1", "1.5", "true", `{}`, `""`}
			}
			for _, id := range bad {
				path, body := rc.request(id)
				f := newFake()
				resp, got := send(t, New(f, f.options(false)), rc.method, path, devKey, body)
				wantError(t, resp, got, reeve.CodeInvalid, "appId must be a positive integer")
				if len(f.calls) != 0 {
					t.Fatalf("appId %s: acted: %q", id, f.calls)
				}
			}
		})
	}
	// A body route without appId at all.
	for _, path := range []string{"/v1/restart", "/v1/purge"} {
		f := newFake()
		resp, got := send(t, New(f, f.options(false)), "POST", path, devKey, `{"force": true}`)
		wantError(t, resp, got, reeve.CodeInvalid, "appId is required")
		if len(f.calls) != 0 {
			t.Fatalf("%s acted: %q", path, f.calls)
		}
	}
	// balena's clients may send the ID as a string of digits.
	f := newFake()
	resp, got := send(t, New(f, f.options(false)), "POST", "/v1/restart", devKey, `{"appId": "1"}`)
	if resp.StatusCode != 200 || !slices.Equal(f.calls, []string{"RestartApp a1 force=false"}) {
		t.Fatalf("appId as a string: %d %s %q", resp.StatusCode, got, f.calls)
	}
}

func bodyRoutes() []routeCase {
	var out []routeCase
	for _, rc := range routeCases() {
		if rc.method == "POST" && rc.path != "/v2/local/target-state" {
			out = append(out, rc)
		}
	}
	return out
}

// withField adds a field to a JSON object body ("" is {}); it goes last,
// so it wins over a field of the same name.
func withField(body, field string) string {
	if strings.TrimSpace(body) == "" {
		return "{" + field + "}"
	}
	i := strings.LastIndex(body, "}")
	return body[:i] + ", " + field + "}"
}

func TestMalformedBodiesAre400(t *testing.T) {
	for _, rc := range bodyRoutes() {
		t.Run(rc.name(), func(t *testing.T) {
			path, body := rc.request("1")
			cases := []struct{ body, code, mention string }{
				{"{", reeve.CodeInvalid, "not valid JSON"},
				{"[1]", reeve.CodeInvalid, "not valid JSON"},
				{withField(body, `"colour": "red"`), reeve.CodeInvalid, `unknown field "colour"`},
				{`{} {}`, reeve.CodeInvalid, "more than one JSON value"},
				{withField(body, `"pad": "`+strings.Repeat("x", maxActionBytes)+`"`), reeve.CodeTooLarge, "larger than the limit"},
			}
			if rc.force {
				cases = append(cases,
					struct{ body, code, mention string }{withField(body, `"force": "maybe"`), reeve.CodeInvalid, "force must be true or false"},
					struct{ body, code, mention string }{withField(body, `"force": 2`), reeve.CodeInvalid, "force must be true or false"})
			}
			for _, tc := range cases {
				f := newFake()
				resp, got := send(t, New(f, f.options(false)), rc.method, path, devKey, tc.body)
				wantError(t, resp, got, tc.code, tc.mention)
				if len(f.calls) != 0 {
					t.Fatalf("body %.40q: acted: %q", tc.body, f.calls)
				}
			}
		})
	}
}

func TestForceIsReadAsBalenaReadsIt(t *testing.T) {
	for _, tc := range []struct {
		force string
		want  bool
	}{{"true", true}, {`"true"`, true}, {"1", true}, {`"1"`, true}, {`"on"`, true},
		{"false", false}, {`"false"`, false}, {"0", false}, {`"off"`, false}, {"null", false}} {
		f := newFake()
		resp, got := send(t, New(f, f.options(false)), "POST", "/v1/restart", devKey, `{"appId": 1, "force": `+tc.force+`}`)
		want := "RestartApp a1 force=" + strconv.FormatBool(tc.want)
		if resp.StatusCode != 200 || !slices.Equal(f.calls, []string{want}) {
			t.Errorf("force %s: %d %s %q, want %s", tc.force, resp.StatusCode, got, f.calls, want)
		}
	}
}

func TestLockedAppRefusesActionsUnlessForced(t *testing.T) {
	for _, rc := range routeCases() {
		if rc.who != forApp || rc.method != "POST" {
			continue
		}
		t.Run(rc.name(), func(t *testing.T) {
			path, body := rc.request("1")
			noForce := withField(body, `"force": false`)
			f := newFake()
			f.locked["a1"] = true
			resp, got := send(t, New(f, f.options(false)), rc.method, path, devKey, noForce)
			if !rc.lockable {
				t.Fatalf("%s acts on an app but is not marked lockable: every app action waits for a held lock", rc.name())
			}
			wantError(t, resp, got, reeve.CodeLocked, `app "shop" (appId 1) is locked`, "update lock", `{"force": true}`)
			if len(f.calls) != 0 {
				t.Fatalf("acted on a locked app: %q", f.calls)
			}

			// Forced: the action runs, and is told so.
			resp, got = send(t, New(f, f.options(false)), rc.method, path, devKey, withField(body, `"force": true`))
			want := strings.Replace(rc.calls[0], "force=false", "force=true", 1)
			if resp.StatusCode != rc.status || !slices.Equal(f.calls, []string{want}) {
				t.Fatalf("forced: %d %s calls %q, want %q", resp.StatusCode, got, f.calls, want)
			}

			// The device config may override locks, as on balena.
			f = newFake()
			f.locked["a1"] = true
			f.target["dev1"].Config["BALENA_SUPERVISOR_OVERRIDE_LOCK"] = "1"
			resp, got = send(t, New(f, f.options(false)), rc.method, path, devKey, noForce)
			unforced := strings.Replace(rc.calls[0], "force=true", "force=false", 1)
			if resp.StatusCode != rc.status || !slices.Equal(f.calls, []string{unforced}) {
				t.Fatalf("override lock: %d %s calls %q", resp.StatusCode, got, f.calls)
			}

			// Another app's lock is not this app's.
			f = newFake()
			f.locked["a2"] = true
			resp, got = send(t, New(f, f.options(false)), rc.method, path, devKey, noForce)
			if resp.StatusCode != rc.status || !slices.Equal(f.calls, []string{unforced}) {
				t.Fatalf("other app locked: %d %s calls %q", resp.StatusCode, got, f.calls)
			}
		})
	}
}

func TestAgentErrorsKeepTheirCode(t *testing.T) {
	f := newFake()
	f.err = reeve.Errorf(reeve.CodeLocked, "service db holds the update lock of its app: pass force: true")
	resp, got := send(t, New(f, f.options(false)), "POST", "/v2/applications/1/restart", devKey, "")
	wantError(t, resp, got, reeve.CodeLocked, "service db holds the update lock")

	f = newFake()
	f.err = errors.New("engine gone")
	resp, got = send(t, New(f, f.options(false)), "POST", "/v1/apps/1/stop", devKey, "")
	wantError(t, resp, got, reeve.CodeInternal, "engine gone")
}

func TestRebootAndShutdownRefusedUnderALock(t *testing.T) {
	for _, action := range []string{"reboot", "shutdown"} {
		t.Run(action, func(t *testing.T) {
			f := newFake()
			f.locked["a2"] = true
			h := New(f, f.options(false))
			resp, got := send(t, h, "POST", "/v1/"+action, devKey, "")
			wantError(t, resp, got, reeve.CodeLocked, `app "other" (appId 2) is locked`, "will not "+action, `{"force": true}`)
			if len(f.calls) != 0 {
				t.Fatalf("ran the host command under a lock: %q", f.calls)
			}
			resp, got = send(t, h, "POST", "/v1/"+action, devKey, `{"force": true}`)
			if resp.StatusCode != 202 || !slices.Equal(f.calls, []string{strings.ToUpper(action[:1]) + action[1:]}) {
				t.Fatalf("forced: %d %s %q", resp.StatusCode, got, f.calls)
			}
			sameJSON(t, got, `{"Data": "OK", "Error": null}`)

			// A failing host command is an error, not a 202.
			f = newFake()
			f.err = errors.New("systemctl: exit status 1")
			resp, got = send(t, New(f, f.options(false)), "POST", "/v1/"+action, devKey, "")
			wantError(t, resp, got, reeve.CodeInternal, "systemctl: exit status 1")
		})
	}
}

func TestMissingHostHooksAre503(t *testing.T) {
	for _, path := range []string{"/v1/update", "/v1/reboot", "/v1/shutdown"} {
		f := newFake()
		resp, got := send(t, New(f, Options{Local: true}), "POST", path, devKey, `{"force": true}`)
		wantError(t, resp, got, reeve.CodeUnavailable, "not available on this agent")
		if len(f.calls) != 0 {
			t.Fatalf("%s acted: %q", path, f.calls)
		}
	}
}

func TestServiceActionsNameTheService(t *testing.T) {
	for _, tc := range []struct {
		body   string
		code   string // "" for success
		want   string // the call, or what the error mentions
		action string
	}{
		{`{"imageId": 11}`, "", "RestartService a1 web force=false", "restart-service"},
		{`{"imageId": "12"}`, "", "RestartService a1 db force=false", "restart-service"},
		{`{"serviceName": "db", "imageId": 12}`, "", "StopService a1 db force=false", "stop-service"},
		{`{}`, reeve.CodeInvalid, "serviceName or imageId is required", "restart-service"},
		{``, reeve.CodeInvalid, "serviceName or imageId is required", "start-service"},
		{`{"serviceName": ""}`, reeve.CodeInvalid, "serviceName or imageId is required", "stop-service"},
		{`{"serviceName": 5}`, reeve.CodeInvalid, "serviceName must be a string", "stop-service"},
		{`{"imageId": "x"}`, reeve.CodeInvalid, "imageId must be a positive integer", "stop-service"},
		{`{"serviceName": "cache"}`, reeve.CodeNotFound, `no service "cache"`, "restart-service"},
		{`{"imageId": 21}`, reeve.CodeNotFound, "no service with imageId 21", "restart-service"},
		{`{"serviceName": "web", "imageId": 12}`, reeve.CodeInvalid, "name different services", "restart-service"},
	} {
		f := newFake()
		resp, got := send(t, New(f, f.options(false)), "POST", "/v2/applications/1/"+tc.action, devKey, tc.body)
		if tc.code == "" {
			if resp.StatusCode != 200 || got != "OK" || !slices.Equal(f.calls, []string{tc.want}) {
				t.Errorf("%s %s: %d %s %q, want %s", tc.action, tc.body, resp.StatusCode, got, f.calls, tc.want)
			}
			continue
		}
		wantError(t, resp, got, tc.code, tc.want)
		if len(f.calls) != 0 {
			t.Errorf("%s %s acted: %q", tc.action, tc.body, f.calls)
		}
	}
}

func TestRegeneratedKeyReplacesTheOld(t *testing.T) {
	f := newFake()
	h := New(f, f.options(false))
	resp, key := send(t, h, "POST", "/v1/regenerate-api-key", devKey, "")
	if resp.StatusCode != 200 || key != f.newKey {
		t.Fatalf("regenerate: %d %q", resp.StatusCode, key)
	}
	resp, got := send(t, h, "GET", "/v2/device/name", devKey, "")
	wantError(t, resp, got, reeve.CodeUnauthorized)
	if resp, got := send(t, h, "GET", "/v2/device/name", key, ""); resp.StatusCode != 200 {
		t.Fatalf("new key refused: %d %s", resp.StatusCode, got)
	}
	// App keys are the agent's to keep: they still work.
	if resp, got := send(t, h, "GET", "/v2/device/name", a1Key, ""); resp.StatusCode != 200 {
		t.Fatalf("app key refused after regeneration: %d %s", resp.StatusCode, got)
	}
	// regenerate-api-key takes no body fields.
	resp, got = send(t, h, "POST", "/v1/regenerate-api-key", key, `{"appId": 1}`)
	wantError(t, resp, got, reeve.CodeInvalid, `unknown field "appId"`)
}

func TestAppKeysSeeOnlyTheirApp(t *testing.T) {
	f := newFake()
	h := New(f, f.options(false))

	_, got := send(t, h, "GET", "/v2/applications/state", a2Key, "")
	sameJSON(t, got, `{"other": {"appId": 2, "appUuid": "a2", "commit": "c2", "services": {
		"main": {"status": "exited", "releaseId": 20, "downloadProgress": null, "image": "registry.example.com/other/main:1"}}}}`)

	_, got = send(t, h, "GET", "/v2/state/status", a2Key, "")
	var st StatusResponse
	if err := json.Unmarshal([]byte(got), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != 1 || st.Services[0].AppUUID != "a2" || len(st.Steps) != 0 {
		t.Fatalf("status for a2's key: %s", got)
	}

	_, got = send(t, h, "GET", "/v1/device", a2Key, "")
	sameJSON(t, got, `{"api_port": null, "ip_address": null, "mac_address": null, "commit": "c2", "status": "exited",
		"download_progress": null, "os_version": null, "supervisor_version": "`+reeve.Version+`",
		"update_pending": true, "update_downloaded": false, "update_failed": false}`)
}

func TestDeviceStateFlags(t *testing.T) {
	f := newFake()
	f.status.AppState = "locked"
	f.status.Services = f.status.Services[2:] // nothing downloading
	_, got := send(t, New(f, f.options(false)), "GET", "/v1/device", devKey, "")
	var d V1Device
	if err := json.Unmarshal([]byte(got), &d); err != nil {
		t.Fatal(err)
	}
	if !d.UpdatePending || !d.UpdateDownloaded || !d.UpdateFailed || d.Status == nil || *d.Status != "exited" {
		t.Fatalf("locked, downloaded: %s", got)
	}

	f.status.AppState = "applied"
	f.status.Services = nil
	_, got = send(t, New(f, f.options(false)), "GET", "/v1/device", devKey, "")
	sameJSON(t, got, `{"api_port": null, "ip_address": null, "mac_address": null, "commit": null, "status": null,
		"download_progress": null, "os_version": null, "supervisor_version": "`+reeve.Version+`",
		"update_pending": false, "update_downloaded": false, "update_failed": false}`)
}

func TestDeviceAPIPortIsTheListenersPort(t *testing.T) {
	f := newFake()
	srv := httptest.NewServer(New(f, f.options(false)))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/v1/device?apikey="+devKey, nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d V1Device
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	if d.APIPort == nil || strconv.Itoa(*d.APIPort) != port {
		t.Fatalf("api_port %v, want %s", d.APIPort, port)
	}
}

func TestAppStateOfAnAppWithoutRelease(t *testing.T) {
	f := newFake()
	app := f.target["dev1"].Apps["a2"]
	app.Releases = nil
	f.target["dev1"].Apps["a2"] = app
	h := New(f, f.options(false))
	_, got := send(t, h, "GET", "/v2/applications/2/state", devKey, "")
	sameJSON(t, got, `{"local": {"2": {"services": {}}}, "dependent": {}, "commit": null}`)
	resp, got := send(t, h, "GET", "/v1/apps/2", devKey, "")
	wantError(t, resp, got, reeve.CodeNotFound, "has no release")
}

func TestAppsWithTheSameName(t *testing.T) {
	f := newFake()
	app := f.target["dev1"].Apps["a2"]
	app.Name = "shop"
	f.target["dev1"].Apps["a2"] = app
	_, got := send(t, New(f, f.options(false)), "GET", "/v2/applications/state", devKey, "")
	var m map[string]AppState
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m["shop"].AppUUID != "a1" || m["a2"].AppID != 2 {
		t.Fatalf("two apps named shop: %s", got)
	}
}

func TestMethodsAndUnknownPaths(t *testing.T) {
	f := newFake()
	h := New(f, f.options(false))
	for _, tc := range []struct{ method, path, allow string }{
		{"DELETE", "/v1/apps/1", "GET"},
		{"GET", "/v1/apps/1/stop", "POST"},
		{"GET", "/v1/reboot", "POST"},
		{"PUT", "/v2/applications/7/restart-service", "POST"},
		{"POST", "/v2/cleanup-volumes", "GET"},
		{"PATCH", "/v2/local/target-state", "GET, POST"},
	} {
		resp, got := send(t, h, tc.method, tc.path, devKey, "")
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q, want 405 %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), tc.allow)
		}
		if !strings.Contains(got, `"invalid"`) || !strings.Contains(got, "is not allowed") {
			t.Errorf("%s %s: body %s", tc.method, tc.path, got)
		}
	}
	for _, path := range []string{"/v1/apps/1/nothing", "/v1/blink", "/v3/anything"} {
		resp, got := send(t, h, "GET", path, devKey, "")
		wantError(t, resp, got, reeve.CodeNotFound, "no route")
	}
	if len(f.calls) != 0 {
		t.Fatalf("acted: %q", f.calls)
	}
}

func TestDeviceTags(t *testing.T) {
	f := newFake()
	tags := reeve.Tags{"site": "berlin"}
	opts := f.options(false)
	opts.Tags = func(context.Context) (reeve.Tags, error) { return tags, nil }
	opts.PatchTags = func(_ context.Context, patch map[string]*string) (reeve.Tags, error) {
		for k, v := range patch {
			if v == nil {
				delete(tags, k)
			} else {
				tags[k] = *v
			}
		}
		return tags, nil
	}
	h := New(f, opts)
	check := func(what string, resp *http.Response, got string, want TagsResponse) {
		t.Helper()
		var tr TagsResponse
		if err := json.Unmarshal([]byte(got), &tr); err != nil || resp.StatusCode != 200 || !reflect.DeepEqual(tr, want) {
			t.Fatalf("%s: %d %s, want %+v", what, resp.StatusCode, got, want)
		}
	}
	resp, got := send(t, h, "GET", "/v2/device/tags", devKey, "")
	check("GET tags", resp, got, TagsResponse{Status: "success", Tags: []Tag{{Name: "site", Value: "berlin"}}})
	resp, got = send(t, h, "PATCH", "/v2/device/tags", devKey, `{"tags":{"site":null,"floor":"2"}}`)
	check("PATCH tags", resp, got, TagsResponse{Status: "success", Tags: []Tag{{Name: "floor", Value: "2"}}})
	for _, body := range []string{`{"tags":{}}`, `{"tag":{"a":"b"}}`, `{"tags":{"a":1}}`} {
		resp, got = send(t, h, "PATCH", "/v2/device/tags", devKey, body)
		if resp.StatusCode != 400 {
			t.Errorf("PATCH %s: %d %s, want 400", body, resp.StatusCode, got)
		}
	}
	if resp, got = send(t, h, "GET", "/v2/device/tags", "", ""); resp.StatusCode != 401 {
		t.Errorf("GET tags without a key: %d %s", resp.StatusCode, got)
	}
	// Local mode has no server to keep tags.
	resp, got = send(t, New(f, f.options(false)), "GET", "/v2/device/tags", devKey, "")
	wantError(t, resp, got, reeve.CodeUnavailable, "fleet server")
}
