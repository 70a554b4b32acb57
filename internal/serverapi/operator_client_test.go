package serverapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
)

// recorded is one request the fake operator server received.
type recorded struct {
	method, path, query, auth, body string
}

// fakeOperator answers every request with status and body, and records
// what it received.
type fakeOperator struct {
	status int
	body   string

	mu  sync.Mutex
	got []recorded
}

func (f *fakeOperator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, recorded{
		method: r.Method,
		path:   r.URL.EscapedPath(),
		query:  r.URL.RawQuery,
		auth:   r.Header.Get("Authorization"),
		body:   string(b),
	})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.status)
	_, _ = io.WriteString(w, f.body)
}

func newFakeOperator(t *testing.T, status int, body string) (*fakeOperator, *Client) {
	t.Helper()
	f := &fakeOperator{status: status, body: body}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, NewClient(srv.URL, "tok3n", nil)
}

func strp(s string) *string { return &s }

func TestOperatorRoutes(t *testing.T) {
	ctx := context.Background()
	expires := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		call   func(c *Client) error
		status int
		answer string
		// want is the request: method, escaped path, raw query, body (JSON
		// compared by value; "" for none).
		method, path, query, body string
	}{
		{name: "whoami", call: func(c *Client) error { _, err := c.WhoAmI(ctx); return err },
			method: "GET", path: "/api/v1/whoami", answer: `{"token":{"id":1,"name":"admin"},"version":"1.0"}`},
		{name: "create fleet", call: func(c *Client) error {
			_, err := c.CreateFleet(ctx, CreateFleetRequest{Name: "lobby", DeviceType: "raspberrypi4-64"})
			return err
		}, status: 201, method: "POST", path: "/api/v1/fleets", body: `{"name":"lobby","device_type":"raspberrypi4-64"}`, answer: `{"id":1}`},
		{name: "fleets", call: func(c *Client) error { _, err := c.Fleets(ctx); return err },
			method: "GET", path: "/api/v1/fleets", answer: `[]`},
		{name: "fleet escaped", call: func(c *Client) error { _, err := c.Fleet(ctx, "a b/c?d"); return err },
			method: "GET", path: "/api/v1/fleets/a%20b%2Fc%3Fd", answer: `{}`},
		{name: "update fleet unpins", call: func(c *Client) error {
			_, err := c.UpdateFleet(ctx, "lobby", UpdateFleetRequest{PinnedRelease: strp("")})
			return err
		}, method: "PATCH", path: "/api/v1/fleets/lobby", body: `{"pinned_release":""}`, answer: `{}`},
		{name: "delete fleet", call: func(c *Client) error { return c.DeleteFleet(ctx, "7") },
			status: 204, method: "DELETE", path: "/api/v1/fleets/7"},
		{name: "create key", call: func(c *Client) error {
			_, err := c.CreateKey(ctx, "lobby", CreateKeyRequest{Name: "factory", ExpiresAt: expires})
			return err
		}, status: 201, method: "POST", path: "/api/v1/fleets/lobby/keys", body: `{"name":"factory","expires_at":"2030-01-02T03:04:05Z"}`, answer: `{"key":"k"}`},
		{name: "create key without expiry", call: func(c *Client) error {
			_, err := c.CreateKey(ctx, "lobby", CreateKeyRequest{})
			return err
		}, status: 201, method: "POST", path: "/api/v1/fleets/lobby/keys", body: `{}`, answer: `{"key":"k"}`},
		{name: "keys", call: func(c *Client) error { _, err := c.Keys(ctx, "lobby"); return err },
			method: "GET", path: "/api/v1/fleets/lobby/keys", answer: `[]`},
		{name: "revoke key", call: func(c *Client) error { return c.RevokeKey(ctx, 42) },
			status: 204, method: "DELETE", path: "/api/v1/keys/42"},
		{name: "push", call: func(c *Client) error { _, _, err := c.Push(ctx, "lobby", []byte("services: {}\n")); return err },
			status: 201, method: "POST", path: "/api/v1/fleets/lobby/releases", body: `{"compose":"services: {}\n"}`, answer: `{"commit":"abc"}`},
		{name: "releases", call: func(c *Client) error { _, err := c.Releases(ctx, "lobby"); return err },
			method: "GET", path: "/api/v1/fleets/lobby/releases", answer: `[]`},
		{name: "release", call: func(c *Client) error { _, err := c.Release(ctx, "lobby", "9f2c/41"); return err },
			method: "GET", path: "/api/v1/fleets/lobby/releases/9f2c%2F41", answer: `{}`},
		{name: "all devices", call: func(c *Client) error { _, err := c.Devices(ctx, ""); return err },
			method: "GET", path: "/api/v1/devices", answer: `[]`},
		{name: "devices of a fleet", call: func(c *Client) error { _, err := c.Devices(ctx, "lobby & co"); return err },
			method: "GET", path: "/api/v1/devices", query: "fleet=lobby+%26+co", answer: `[]`},
		{name: "device", call: func(c *Client) error { _, err := c.Device(ctx, "5d6c4a0e"); return err },
			method: "GET", path: "/api/v1/devices/5d6c4a0e", answer: `{}`},
		{name: "rename device", call: func(c *Client) error {
			_, err := c.UpdateDevice(ctx, "5d6c4a0e", UpdateDeviceRequest{Name: strp("hall")})
			return err
		}, method: "PATCH", path: "/api/v1/devices/5d6c4a0e", body: `{"name":"hall"}`, answer: `{}`},
		{name: "delete device", call: func(c *Client) error { return c.DeleteDevice(ctx, "5d6c4a0e") },
			status: 204, method: "DELETE", path: "/api/v1/devices/5d6c4a0e"},
		{name: "revoke device key", call: func(c *Client) error { return c.RevokeDeviceKey(ctx, "5d6c4a0e") },
			status: 204, method: "DELETE", path: "/api/v1/devices/5d6c4a0e/key"},
		{name: "set tag", call: func(c *Client) error { _, err := c.SetTag(ctx, "5d6c4a0e", "room/floor", "2"); return err },
			method: "PUT", path: "/api/v1/devices/5d6c4a0e/tags/room%2Ffloor", body: `{"value":"2"}`, answer: `{}`},
		{name: "delete tag", call: func(c *Client) error { return c.DeleteTag(ctx, "5d6c4a0e", "room") },
			status: 204, method: "DELETE", path: "/api/v1/devices/5d6c4a0e/tags/room"},
		{name: "env of a service", call: func(c *Client) error {
			_, err := c.Vars(ctx, reeve.VarEnv, VarScope{Fleet: "lobby", Service: "web"})
			return err
		}, method: "GET", path: "/api/v1/env", query: "fleet=lobby&service=web", answer: `[]`},
		{name: "config of a device", call: func(c *Client) error {
			_, err := c.Vars(ctx, reeve.VarConfig, VarScope{Device: "5d6c4a0e"})
			return err
		}, method: "GET", path: "/api/v1/config", query: "device=5d6c4a0e", answer: `[]`},
		{name: "set env", call: func(c *Client) error {
			_, err := c.SetVar(ctx, reeve.VarEnv, SetVarRequest{Device: "5d6c4a0e", Service: "web", Name: "GREETING", Value: "a=b"})
			return err
		}, method: "PUT", path: "/api/v1/env", body: `{"device":"5d6c4a0e","service":"web","name":"GREETING","value":"a=b"}`, answer: `{}`},
		{name: "delete env", call: func(c *Client) error {
			return c.DeleteVar(ctx, reeve.VarEnv, VarScope{Fleet: "lobby", Service: "web"}, "GREETING")
		}, status: 204, method: "DELETE", path: "/api/v1/env", query: "fleet=lobby&name=GREETING&service=web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status := tc.status
			if status == 0 {
				status = 200
			}
			f, c := newFakeOperator(t, status, tc.answer)
			if err := tc.call(c); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.got) != 1 {
				t.Fatalf("%d requests, want 1", len(f.got))
			}
			got := f.got[0]
			if got.method != tc.method || got.path != tc.path || got.query != tc.query {
				t.Errorf("request %s %s ? %s, want %s %s ? %s", got.method, got.path, got.query, tc.method, tc.path, tc.query)
			}
			if got.auth != "Bearer tok3n" {
				t.Errorf("Authorization %q, want the bearer token", got.auth)
			}
			if !sameJSON(got.body, tc.body) {
				t.Errorf("body %s, want %s", got.body, tc.body)
			}
		})
	}
}

func sameJSON(a, b string) bool {
	if a == "" || b == "" {
		return a == b
	}
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func TestPushCreatedOrExisting(t *testing.T) {
	answer := `{"id":3,"fleet_id":1,"commit":"9f2c41d0ab8e7731","release":{"id":3,"services":{"web":{"image":"nginx"}}}}`
	for _, tc := range []struct {
		status  int
		created bool
	}{{201, true}, {200, false}} {
		_, c := newFakeOperator(t, tc.status, answer)
		rel, created, err := c.Push(context.Background(), "lobby", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if created != tc.created || rel.Commit != "9f2c41d0ab8e7731" || rel.Release.Services["web"].Image != "nginx" {
			t.Errorf("status %d: created %v, release %+v", tc.status, created, rel)
		}
	}
}

func TestOperatorAnswersDecoded(t *testing.T) {
	ctx := context.Background()
	_, c := newFakeOperator(t, 200, `[{"id":1,"uuid":"5d6c4a0e2b8f4c1e9a7d3b6f0e1c2a4b","name":"hall","fleet_id":2,
		"state":{"status":"Idle","commit":"abc"},"online":true,"fleet":"lobby","target_commit":"def"}]`)
	devs, err := c.Devices(ctx, "lobby")
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 {
		t.Fatalf("%d devices, want 1", len(devs))
	}
	d := devs[0]
	if d.UUID != "5d6c4a0e2b8f4c1e9a7d3b6f0e1c2a4b" || !d.Online || d.Fleet != "lobby" || d.TargetCommit != "def" ||
		d.State.Commit == nil || *d.State.Commit != "abc" {
		t.Errorf("device %+v", d)
	}
}

func TestOperatorErrors(t *testing.T) {
	ctx := context.Background()

	_, c := newFakeOperator(t, 404, `{"error":{"code":"not_found","message":"no fleet named lobby"}}`)
	_, err := c.Fleet(ctx, "lobby")
	if reeve.ErrorCode(err) != reeve.CodeNotFound || err.Error() != "no fleet named lobby" {
		t.Errorf("err %v (code %s), want the server's not_found", err, reeve.ErrorCode(err))
	}

	_, c = newFakeOperator(t, 400, `{"error":{"code":"invalid","message":"2 problems","details":[
		{"path":"services.web.build","message":"build is not supported"},{"path":"services.db.image","message":"required"}]}}`)
	_, _, err = c.Push(ctx, "lobby", []byte("x"))
	var ve *reeve.ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 2 || ve.Problems[0].Path != "services.web.build" {
		t.Errorf("err %v, want a validation error with both problems", err)
	}

	_, c = newFakeOperator(t, 502, `bad gateway`)
	if err := c.DeleteFleet(ctx, "lobby"); err == nil || !strings.Contains(err.Error(), "502") {
		t.Errorf("err %v, want one naming the status", err)
	}

	_, c = newFakeOperator(t, 200, `[]`)
	if _, err := c.Vars(ctx, "secrets", VarScope{Fleet: "lobby"}); err == nil || !strings.Contains(err.Error(), "unknown variable kind") {
		t.Errorf("err %v, want an unknown kind refused", err)
	}

	c = NewClient("127.0.0.1:1", "t", nil)
	if _, err := c.WhoAmI(ctx); err == nil || !strings.Contains(err.Error(), "cannot reach the fleet server") {
		t.Errorf("err %v, want unreachable", err)
	}
	if _, _, err := c.Push(ctx, "lobby", nil); err == nil || !strings.Contains(err.Error(), "cannot reach the fleet server") {
		t.Errorf("push err %v, want unreachable", err)
	}
}
