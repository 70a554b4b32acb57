package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/httpx"
)

const goodTarget = `{"dev1": {"name": "pi", "apps": {"a1": {"id": 1, "name": "app", "releases": {"c1": {"id": 1,
	"services": {"web": {"id": 1, "image_id": 1, "image": "registry.example.com/web:1"}}}}}}}}`

// do sends a request with the device-wide key.
func do(t *testing.T, h http.Handler, method, path, ctype, body string) (*http.Response, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+devKey)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestSetTargetRefusesBadInput(t *testing.T) {
	big := `{"dev1": {"name": "` + strings.Repeat("x", MaxTargetBytes) + `"}}`
	for _, tc := range []struct {
		name, ctype, body string
		status            int
		wantInMessage     string
	}{
		{"not json", "application/json", "[", 400, "JSON object"},
		{"wrong content type", "text/plain", goodTarget, 400, "Content-Type"},
		{"unknown key", "application/json", `{"dev1": {"apps": {}, "colour": "red"}}`, 400, `unknown field "colour"`},
		{"bad image", "application/json", strings.Replace(goodTarget, "registry.example.com/web:1", "Bad Image", 1), 400,
			`apps.a1.releases.c1.services.web.image: invalid reference "Bad Image"`},
		{"depends on nothing", "application/json", strings.Replace(goodTarget, `"image": "registry.example.com/web:1"`,
			`"image": "registry.example.com/web:1", "composition": {"depends_on": {"db": {}}}`, 1), 400,
			`services.web.composition.depends_on.db: depends on service "db"`},
		{"other device", "application/json", strings.Replace(goodTarget, `"dev1"`, `"dev2"`, 1), 400, "wrong device"},
		{"too large", "application/json", big, 413, "larger than the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			resp, body := do(t, New(f, Options{Local: true}), "POST", "/v2/local/target-state", tc.ctype, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			var eb httpx.ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error == nil {
				t.Fatalf("body is not an error object: %s", body)
			}
			wantCode := reeve.CodeInvalid
			if tc.status == http.StatusRequestEntityTooLarge {
				wantCode = reeve.CodeTooLarge
			}
			if eb.Error.Code != wantCode || !strings.Contains(eb.Error.Message, tc.wantInMessage) {
				t.Fatalf("error %+v, want code %s mentioning %q", eb.Error, wantCode, tc.wantInMessage)
			}
			if f.sets != 0 {
				t.Fatal("a refused target was stored")
			}
		})
	}
}

func TestSetTargetStoresAndReturnsVersion(t *testing.T) {
	f := newFake()
	f.target = nil
	srv := httptest.NewServer(New(f, Options{Local: true}))
	defer srv.Close()
	c := NewClient(srv.URL).WithKey(devKey)
	ts, err := reeve.ParseTargetState([]byte(goodTarget))
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.SetTarget(context.Background(), ts)
	if err != nil || v != 1 {
		t.Fatalf("SetTarget = %d, %v", v, err)
	}
	got, version, err := c.Target(context.Background())
	if err != nil || version != 1 || got["dev1"].Apps["a1"].Releases["c1"].Services["web"].Image != "registry.example.com/web:1" {
		t.Fatalf("Target = %+v, %d, %v", got, version, err)
	}
	// A refused target comes back to the client as a validation error with
	// the problems, so that the CLI can exit with status 2.
	bad := reeve.TargetState{"dev1": {Apps: map[string]reeve.App{"a1": {Releases: map[string]reeve.Release{"c1": {}}}}}}
	_, err = c.SetTarget(context.Background(), bad)
	var ve *reeve.ValidationError
	if !errors.As(err, &ve) || !strings.Contains(ve.Error(), "at least one service") {
		t.Fatalf("want a validation error, got %v", err)
	}
}

func TestSetTargetOnlyInLocalMode(t *testing.T) {
	f := newFake()
	resp, body := do(t, New(f, Options{Local: false}), "POST", "/v2/local/target-state", "application/json", goodTarget)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "local mode is off") {
		t.Fatalf("status %d body %s", resp.StatusCode, body)
	}
	if f.sets != 0 {
		t.Fatal("target stored outside local mode")
	}
	// The fleet can put the device in local mode through its config.
	fleetLocal := New(f, Options{LocalMode: func() bool { return true }})
	resp, body = do(t, fleetLocal, "POST", "/v2/local/target-state", "application/json", goodTarget)
	if resp.StatusCode != http.StatusOK || f.sets != 1 {
		t.Fatalf("in local mode set by the fleet: status %d body %s, %d targets stored", resp.StatusCode, body, f.sets)
	}
}

func TestRoutes(t *testing.T) {
	f := newFake()
	h := New(f, Options{Local: true})
	if resp, body := do(t, h, "GET", "/ping", "", ""); resp.StatusCode != 200 || string(body) != "OK" {
		t.Errorf("/ping: %d %s", resp.StatusCode, body)
	}
	if resp, _ := do(t, h, "GET", "/v1/healthy", "", ""); resp.StatusCode != 200 {
		t.Errorf("/v1/healthy: %d", resp.StatusCode)
	}
	stuckPolls := New(f, Options{LinkHealthy: func() error { return errors.New("the fleet link has not polled for 20m0s") }})
	if resp, body := do(t, stuckPolls, "GET", "/v1/healthy", "", ""); resp.StatusCode != 500 || !strings.Contains(string(body), "has not polled") {
		t.Errorf("/v1/healthy when polling is stuck: %d %s", resp.StatusCode, body)
	}
	f.healthy = errors.New("the apply loop has not completed a round for 11m0s")
	if resp, body := do(t, h, "GET", "/v1/healthy", "", ""); resp.StatusCode != 500 || !strings.Contains(string(body), "11m0s") {
		t.Errorf("/v1/healthy when stuck: %d %s", resp.StatusCode, body)
	}
	resp, body := do(t, h, "GET", "/v2/state/status", "", "")
	var st StatusResponse
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 || st.Result != "success" || st.AppState != agent.AppStateApplying {
		t.Errorf("/v2/state/status: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, h, "GET", "/v2/local/device-info", "", "")
	var info DeviceInfo
	if err := json.Unmarshal(body, &info); err != nil || info.UUID != "dev1" || !info.Local {
		t.Errorf("/v2/local/device-info: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, h, "GET", "/v9/nothing", "", ""); resp.StatusCode != 404 || !strings.Contains(string(body), `"not_found"`) {
		t.Errorf("unknown route: %d %s", resp.StatusCode, body)
	}
	if resp, _ := do(t, h, "DELETE", "/v2/local/target-state", "", ""); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE target-state: %d, want 405", resp.StatusCode)
	}
}

func TestLocalAppIsStableByName(t *testing.T) {
	rel := reeve.Release{Services: map[string]reeve.Service{"a": {Image: "x"}}}
	u1, a1 := LocalApp("shop", rel, "c1")
	u2, a2 := LocalApp("shop", rel, "c2")
	u3, _ := LocalApp("other", rel, "c1")
	if u1 != u2 || a1.ID != a2.ID || u1 == u3 || a1.ID <= 0 {
		t.Fatalf("LocalApp: %s/%d %s/%d %s", u1, a1.ID, u2, a2.ID, u3)
	}
	ts := WithApp(nil, "dev1", "pi", u1, a1)
	ts = WithApp(ts, "dev1", "pi", u3, a1)
	if len(ts["dev1"].Apps) != 2 || ts["dev1"].Name != "pi" {
		t.Fatalf("WithApp: %+v", ts)
	}
	ts = WithoutApp(ts, "dev1", u1)
	if _, ok := ts["dev1"].Apps[u1]; ok || len(ts["dev1"].Apps) != 1 {
		t.Fatalf("WithoutApp: %+v", ts)
	}
}
