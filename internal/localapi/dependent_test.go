package localapi

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/dependent"
	"reeve.dev/reeve/internal/httpx"
)

const depUUID = "dep00000dep00000dep00000dep00000"

// newDependents returns a real dependent-device store holding app 9
// (release v1, whose firmware is one file) and device depUUID; the fleet
// server and the runtime are stood in for.
func newDependents(t *testing.T) (*dependent.Manager, *[]reeve.LogLine) {
	t.Helper()
	var lines []reeve.LogLine
	m, err := dependent.Open(t.Context(), dependent.Config{
		Dir: t.TempDir(),
		Provision: func(_ context.Context, req dependent.ProvisionRequest) (reeve.Device, error) {
			return reeve.Device{UUID: "new00000new00000new00000new00000", Name: "sensor", DeviceType: req.DeviceType}, nil
		},
		Log: func(l reeve.LogLine) { lines = append(lines, l) },
		Export: func(_ context.Context, image string, w io.Writer) error {
			tw := tar.NewWriter(w)
			body := "firmware " + image
			tw.WriteHeader(&tar.Header{Name: "fw.bin", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
			io.WriteString(tw, body)
			return tw.Close()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	app := reeve.DependentApp{UUID: "depapp", ID: 9, Name: "sensors", Commit: "v1", Image: "fw:1",
		Devices: map[string]reeve.DependentTarget{depUUID: {Name: "s1", Commit: "v1", Image: "fw:1"}}}
	if err := m.UpdateTargets(t.Context(), app); err != nil {
		t.Fatal(err)
	}
	return m, &lines
}

func TestDependentRoutesRefuseBadInput(t *testing.T) {
	m, _ := newDependents(t)
	h := New(newFake(), Options{Dependents: m})
	for _, tc := range []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/v1/devices", `{"appId": "abc", "device_type": "esp32"}`, 400, "appId must be a positive integer"},
		{"POST", "/v1/devices", `{"appId": -3}`, 400, "appId must be a positive integer"},
		{"POST", "/v1/devices", `{"device_type": "esp32"}`, 400, "appId must be a positive integer"},
		{"POST", "/v1/devices", `{"appId": 5}`, 404, "no dependent app 5"},
		{"POST", "/v1/devices", `{"appId": 9, "device_type": 7}`, 400, "device_type must be a string"},
		{"GET", "/v1/devices/nope", "", 404, "no dependent device nope"},
		{"PUT", "/v1/devices/" + depUUID, `{}`, 400, "nothing to update"},
		{"PUT", "/v1/devices/" + depUUID, `{"is_online": "yes"}`, 400, "is_online must be a boolean"},
		{"PUT", "/v1/devices/" + depUUID, `{"environment": ["A=1"]}`, 400, "environment must be an object of strings"},
		{"PUT", "/v1/devices/" + depUUID, `{"config": {"A": 1}, "status": 3}`, 400, `config must be an object of strings, such as {"VAR": "value"}; status must be a string`},
		{"PUT", "/v1/devices/" + depUUID, `{"releaseId": "x"}`, 400, "releaseId must be a positive integer"},
		{"PUT", "/v1/devices/" + depUUID, `[`, 400, "not valid JSON"},
		{"PUT", "/v1/devices/nope", `{"status": "Idle"}`, 404, "no dependent device nope"},
		{"POST", "/v1/devices/" + depUUID + "/logs", `{"message": 5}`, 400, "message must be a string"},
		{"POST", "/v1/devices/" + depUUID + "/logs", `{"message": "m", "timestamp": "yesterday"}`, 400, "timestamp must be unix milliseconds"},
		{"POST", "/v1/devices/" + depUUID + "/logs", `[{"message": "m"}, {"message": "n", "isSystem": "no"}]`, 400, "line 1: isSystem must be a boolean"},
		{"POST", "/v1/devices/nope/logs", `{"message": "m"}`, 404, "no dependent device nope"},
		{"GET", "/v1/dependent-apps/x/assets/v1", "", 400, "appId must be a positive integer"},
		{"GET", "/v1/dependent-apps/9/assets/v0", "", 404, `no release "v0"`},
		{"GET", "/v1/dependent-apps/8/assets/v1", "", 404, "no dependent app 8"},
		{"GET", "/v1/dependent-apps/9/assets/..%2F..%2Fetc", "", 404, "no release"},
	} {
		t.Run(tc.method+" "+tc.path+" "+tc.body, func(t *testing.T) {
			resp, body := do(t, h, tc.method, tc.path, "application/json", tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			var eb httpx.ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error == nil || !strings.Contains(eb.Error.Message, tc.want) {
				t.Fatalf("body %s, want an error saying %q", body, tc.want)
			}
		})
	}
	// Nothing of the refused updates was applied.
	d, err := m.Device(t.Context(), depUUID)
	if err != nil || d.Status != "" || d.IsOnline || len(d.Config) != 0 {
		t.Fatalf("device after refused updates: %+v, %v", d, err)
	}
}

func TestDependentRoutes(t *testing.T) {
	m, lines := newDependents(t)
	h := New(newFake(), Options{Dependents: m})

	// Readiness as a gateway application checks it: GET / without a key.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("GET / without a key: %d, want 401", rec.Code)
	}
	if resp, body := do(t, h, "GET", "/", "", ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET / with a key: %d %s, want 404", resp.StatusCode, body)
	}

	resp, body := do(t, h, "POST", "/v1/devices", "application/json", `{"appId": "9", "device_type": "esp32", "local_id": "serial-7"}`)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("provision: %d %s", resp.StatusCode, body)
	}
	var created dependent.Device
	json.Unmarshal(body, &created)
	if created.UUID == "" || created.AppID != 9 || created.DeviceType != "esp32" {
		t.Fatalf("provisioned %s", body)
	}

	resp, body = do(t, h, "PUT", "/v1/devices/"+depUUID, "application/json",
		`{"status": "Idle", "is_online": true, "commit": "v1", "environment": {"A": "1"}, "config": {}}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("update: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, h, "GET", "/v1/devices/"+depUUID, "", "")
	var got dependent.Device
	json.Unmarshal(body, &got)
	if resp.StatusCode != 200 || got.Status != "Idle" || !got.IsOnline || got.Commit != "v1" || got.TargetCommit != "v1" || got.Environment["A"] != "1" {
		t.Fatalf("device: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, h, "GET", "/v1/devices", "", "")
	var list []dependent.Device
	json.Unmarshal(body, &list)
	if resp.StatusCode != 200 || len(list) != 2 {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}

	resp, body = do(t, h, "POST", "/v1/devices/"+depUUID+"/logs", "application/json", `{"message": "hello", "timestamp": 1767225600000, "isSystem": false}`)
	if resp.StatusCode != http.StatusAccepted || len(*lines) != 1 || (*lines)[0].Device != depUUID || (*lines)[0].Timestamp.Year() != 2026 {
		t.Fatalf("logs: %d %s, lines %+v", resp.StatusCode, body, *lines)
	}

	resp, body = do(t, h, "GET", "/v1/dependent-apps", "", "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"commit": "v1"`) {
		t.Fatalf("apps: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, h, "GET", "/v1/dependent-apps/9/assets/v1", "", "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-tar" {
		t.Fatalf("assets: %d %v", resp.StatusCode, resp.Header)
	}
	tr := tar.NewReader(strings.NewReader(string(body)))
	if hd, err := tr.Next(); err != nil || hd.Name != "fw.bin" {
		t.Fatalf("assets tar: %v %v", hd, err)
	}
	if b, _ := io.ReadAll(tr); string(b) != "firmware fw:1" {
		t.Fatalf("firmware %q", b)
	}
	// A download resumes where it stopped.
	req := httptest.NewRequest("GET", "/v1/dependent-apps/9/assets/v1", nil)
	req.Header.Set("Authorization", "Bearer "+devKey)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-", len(body)-10))
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusPartialContent || rec.Body.String() != string(body[len(body)-10:]) {
		t.Fatalf("range: %d, %d bytes", rec.Code, rec.Body.Len())
	}

	// Without a key, refused.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/devices", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("no key: %d", rec.Code)
	}
	// Without a store, 503.
	if resp, _ := do(t, New(newFake(), Options{}), "GET", "/v1/devices", "", ""); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("without dependent devices: %d, want 503", resp.StatusCode)
	}
}

func TestSupervisorRoutesLeaveDependentAppsOut(t *testing.T) {
	f := newFake()
	f.target["dev1"].Apps["dep"] = reeve.App{ID: 9, Name: "sensors", Class: reeve.ClassDependent,
		Releases: map[string]reeve.Release{"v1": {ID: 3, Services: map[string]reeve.Service{"firmware": {Image: "fw:1"}}}}}
	h := New(f, Options{})
	resp, body := do(t, h, "GET", "/v2/applications/state", "", "")
	if resp.StatusCode != 200 || strings.Contains(string(body), "sensors") {
		t.Fatalf("apps state lists the dependent app: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, h, "GET", "/v1/apps/9", "", ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /v1/apps/9 of a dependent app: %d %s, want 404", resp.StatusCode, body)
	}
	if resp, body := do(t, h, "POST", "/v1/restart", "application/json", `{"appId": 9}`); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("restarting a dependent app: %d %s, want 404", resp.StatusCode, body)
	}
}
