package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve/internal/clicfg"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

// The operator commands run here against a fake fleet server that answers
// each route with canned JSON and records what it was sent. The real
// server's end-to-end test lives with the server.

// sent is one request the fake server received.
type sent struct {
	Method, Path, Query, Auth, Body string
}

// answer is a canned answer: a status and a body.
type answer struct {
	status int
	body   string
}

func ok(body string) answer { return answer{http.StatusOK, body} }

var noContent = answer{status: http.StatusNoContent}

// fakeServer is a fleet server that answers "METHOD /path" (the escaped
// path, without the query) from routes; anything else gets a 404.
type fakeServer struct {
	URL    string
	routes map[string]answer

	mu  sync.Mutex
	got []sent
}

func newFakeServer(t *testing.T, routes map[string]answer) *fakeServer {
	t.Helper()
	f := &fakeServer{routes: routes}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.got = append(f.got, sent{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Get("Authorization"), string(b)})
		f.mu.Unlock()
		a, found := f.routes[r.Method+" "+r.URL.EscapedPath()]
		if !found {
			a = answer{http.StatusNotFound, `{"error":{"code":"not_found","message":"no such route in the fake server"}}`}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.body)
	}))
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// requests returns what the server was sent so far.
func (f *fakeServer) requests() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sent(nil), f.got...)
}

// last returns the last request, failing when there was none.
func (f *fakeServer) last(t *testing.T) sent {
	t.Helper()
	got := f.requests()
	if len(got) == 0 {
		t.Fatal("no request was sent")
	}
	return got[len(got)-1]
}

// expectNoRequests fails when the server was sent anything.
func (f *fakeServer) expectNoRequests(t *testing.T) {
	t.Helper()
	if got := f.requests(); len(got) > 0 {
		t.Errorf("%d requests were sent (%+v), want none", len(got), got)
	}
}

// isolate gives the test its own configuration directory and clears the
// variables that override the login.
func isolate(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("REEVE_SERVER", "")
	t.Setenv("REEVE_TOKEN", "")
	return home
}

// loggedIn isolates the test and saves a login to f with token "op-token".
func loggedIn(t *testing.T, f *fakeServer) {
	t.Helper()
	isolate(t)
	if _, err := clicfg.Save(clicfg.Config{Server: f.URL, Token: "op-token"}); err != nil {
		t.Fatal(err)
	}
}

// cli runs reeve with args and stdin, returning standard output and
// standard error apart.
func cli(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := rootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// mustRun runs reeve and fails the test when it fails.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := cli(t, "", args...)
	if err != nil {
		t.Fatalf("reeve %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// mustFail runs reeve, wants it to fail with exit status code and an error
// holding every one of want, and returns the error's text.
func mustFail(t *testing.T, code int, args []string, want ...string) string {
	t.Helper()
	_, _, err := cli(t, "", args...)
	if err == nil {
		t.Fatalf("reeve %s succeeded, want exit %d", strings.Join(args, " "), code)
	}
	if got := exitCode(err); got != code {
		t.Errorf("reeve %s: exit %d (%v), want %d", strings.Join(args, " "), got, err, code)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("reeve %s: error %q does not say %q", strings.Join(args, " "), err, w)
		}
	}
	return err.Error()
}

func jsonEqual(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want is not JSON: %v", err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("JSON\n%s\nwant\n%s", got, want)
	}
}

// tableRows splits a table into rows of fields.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

const whoami = `{"token":{"id":1,"name":"admin","created_at":"2026-01-01T00:00:00Z"},"version":"1.2.3"}`

func TestLoginSavesTheCredentials(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/whoami": ok(whoami),
		"GET /api/v1/fleets": ok(`[]`),
	})
	home := isolate(t)
	addr := strings.TrimPrefix(f.URL, "http://") + "/" // no scheme, a trailing slash
	out := mustRun(t, "login", addr, "--token", "s3cret")
	if !strings.Contains(out, "logged in to "+f.URL+" with token admin (server 1.2.3)") {
		t.Errorf("output %q", out)
	}
	if r := f.last(t); r.Method != "GET" || r.Path != "/api/v1/whoami" || r.Auth != "Bearer s3cret" {
		t.Errorf("login sent %+v, want whoami with the token", r)
	}

	dir := filepath.Join(home, ".config", "reeve")
	file := filepath.Join(dir, "cli.json")
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("cli.json has mode %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(file)
	jsonEqual(t, string(b), `{"server":"`+f.URL+`","token":"s3cret"}`)
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in %s, want cli.json alone (no temporary file left)", len(entries), dir)
	}

	mustRun(t, "fleet", "ls")
	if r := f.last(t); r.Path != "/api/v1/fleets" || r.Auth != "Bearer s3cret" {
		t.Errorf("fleet ls sent %+v, want the saved token", r)
	}

	// Logging in again replaces the login, and keeps it private.
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "login", f.URL, "--token", "other")
	b, _ = os.ReadFile(file)
	jsonEqual(t, string(b), `{"server":"`+f.URL+`","token":"other"}`)
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("cli.json has mode %v after a second login, want 0600", fi.Mode().Perm())
	}
}

func TestLoginTokenFromStandardInput(t *testing.T) {
	f := newFakeServer(t, map[string]answer{"GET /api/v1/whoami": ok(whoami)})
	isolate(t)
	if _, _, err := cli(t, "piped-token\n", "login", f.URL, "--token", "-"); err != nil {
		t.Fatal(err)
	}
	if r := f.last(t); r.Auth != "Bearer piped-token" {
		t.Errorf("Authorization %q, want the token read from standard input", r.Auth)
	}
}

func TestLoginRefusedSavesNothing(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/whoami": {http.StatusUnauthorized, `{"error":{"code":"unauthorized","message":"unknown token"}}`},
	})
	home := isolate(t)
	mustFail(t, 1, []string{"login", f.URL, "--token", "wrong"}, "unknown token")
	if _, err := os.Stat(filepath.Join(home, ".config", "reeve", "cli.json")); !os.IsNotExist(err) {
		t.Errorf("cli.json was written after a refused login (%v)", err)
	}
}

func TestLoginUsageErrors(t *testing.T) {
	f := newFakeServer(t, nil)
	isolate(t)
	mustFail(t, 2, []string{"login", f.URL}, "--token is required")
	mustFail(t, 2, []string{"login", "ftp://example.com", "--token", "t"}, "not a fleet server address")
	mustFail(t, 2, []string{"login", "--token", "t"}, "accepts 1 arg")
	f.expectNoRequests(t)
}

func TestNotLoggedIn(t *testing.T) {
	isolate(t)
	for _, args := range [][]string{
		{"fleet", "ls"}, {"devices"}, {"push", "--fleet", "lobby", "-f", "x.yml"}, {"env", "ls", "--fleet", "lobby"},
	} {
		msg := mustFail(t, 1, args)
		if msg != "not logged in: run `reeve login URL --token T` (or set REEVE_SERVER and REEVE_TOKEN)" {
			t.Errorf("reeve %s: %q", strings.Join(args, " "), msg)
		}
	}
}

func TestEnvironmentOverridesTheLogin(t *testing.T) {
	saved := newFakeServer(t, map[string]answer{"GET /api/v1/fleets": ok(`[]`)})
	other := newFakeServer(t, map[string]answer{"GET /api/v1/fleets": ok(`[]`)})
	loggedIn(t, saved)

	// Both variables: the saved login is not used.
	t.Setenv("REEVE_SERVER", other.URL)
	t.Setenv("REEVE_TOKEN", "env-token")
	mustRun(t, "fleet", "ls")
	if r := other.last(t); r.Auth != "Bearer env-token" {
		t.Errorf("sent %+v, want the environment's token", r)
	}
	saved.expectNoRequests(t)

	// A token alone goes to the saved server.
	t.Setenv("REEVE_SERVER", "")
	mustRun(t, "fleet", "ls")
	if r := saved.last(t); r.Auth != "Bearer env-token" {
		t.Errorf("sent %+v, want the environment's token to the saved server", r)
	}

	// Another server without a token: the saved token is not sent there.
	t.Setenv("REEVE_TOKEN", "")
	t.Setenv("REEVE_SERVER", other.URL)
	mustFail(t, 1, []string{"fleet", "ls"}, "not logged in to "+other.URL)
	t.Setenv("REEVE_SERVER", "")
	mustFail(t, 1, []string{"fleet", "ls", "--server", other.URL}, "not logged in to "+other.URL)
	if got := len(other.requests()); got != 1 {
		t.Errorf("the other server got %d requests, want only the one with REEVE_TOKEN", got)
	}

	// --server beats REEVE_SERVER.
	t.Setenv("REEVE_SERVER", other.URL)
	t.Setenv("REEVE_TOKEN", "env-token")
	mustRun(t, "fleet", "ls", "--server", saved.URL)
	if r := saved.last(t); r.Auth != "Bearer env-token" || len(other.requests()) != 1 {
		t.Errorf("sent %+v, want --server to win over REEVE_SERVER", r)
	}
	t.Setenv("REEVE_SERVER", "")
	t.Setenv("REEVE_TOKEN", "")

	// --server naming the saved server uses the saved token.
	mustRun(t, "fleet", "ls", "--server", saved.URL+"/")
	if r := saved.last(t); r.Auth != "Bearer op-token" {
		t.Errorf("sent %+v, want the saved token", r)
	}
}

func TestUnauthorizedSaysToLogInAgain(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/fleets": {http.StatusUnauthorized, `{"error":{"code":"unauthorized","message":"unknown token"}}`},
	})
	loggedIn(t, f)
	mustFail(t, 1, []string{"fleet", "ls"}, "unknown token", "reeve login "+f.URL)
}

const fleetsJSON = `[
 {"id":1,"uuid":"c9ddd6a63673c833e1942d44b827a89e","name":"lobby","device_type":"raspberrypi4-64","update_strategy":"download-then-kill","class":"fleet","created_at":"2026-01-01T00:00:00Z"},
 {"id":2,"uuid":"e7fb5db8fa58e7b8b94f15928c727d8d","name":"kiosks","device_type":"any","update_strategy":"hand-over","pinned_release":"9b3291230a27810d","class":"fleet","created_at":"2026-01-02T00:00:00Z"},
 {"id":3,"uuid":"f1c0ffee8fa58e7b8b94f15928c727d8","name":"sensors","device_type":"esp32","update_strategy":"download-then-kill","class":"dependent","parent_id":1,"created_at":"2026-01-03T00:00:00Z"}]`

func TestFleetCommands(t *testing.T) {
	routes := map[string]answer{
		"POST /api/v1/fleets":          {http.StatusCreated, `{"id":3,"name":"new","device_type":"generic-amd64","update_strategy":"kill-then-download"}`},
		"GET /api/v1/fleets":           ok(fleetsJSON),
		"DELETE /api/v1/fleets/kiosks": noContent,
		"PATCH /api/v1/fleets/lobby":   ok(`{"id":1,"name":"lobby","pinned_release":"9b3291230a27810d"}`),
		"PATCH /api/v1/fleets/kiosks":  ok(`{"id":2,"name":"kiosks"}`),
	}
	f := newFakeServer(t, routes)
	loggedIn(t, f)

	out := mustRun(t, "fleet", "create", "new", "--type", "generic-amd64", "--strategy", "kill-then-download")
	r := f.last(t)
	if r.Method != "POST" || r.Path != "/api/v1/fleets" || r.Auth != "Bearer op-token" {
		t.Errorf("sent %+v", r)
	}
	jsonEqual(t, r.Body, `{"name":"new","device_type":"generic-amd64","update_strategy":"kill-then-download"}`)
	if !strings.Contains(out, "created fleet new (id 3): device type generic-amd64, update strategy kill-then-download") {
		t.Errorf("output %q", out)
	}
	mustRun(t, "fleet", "create", "bare")
	jsonEqual(t, f.last(t).Body, `{"name":"bare"}`)

	// A fleet of dependent devices: no provisioning key to make next.
	routes["POST /api/v1/fleets"] = answer{http.StatusCreated, `{"id":3,"name":"sensors","device_type":"esp32","update_strategy":"download-then-kill","class":"dependent","parent_id":1}`}
	out = mustRun(t, "fleet", "create", "sensors", "--parent", "lobby", "--type", "esp32")
	jsonEqual(t, f.last(t).Body, `{"name":"sensors","device_type":"esp32","parent":"lobby"}`)
	for _, want := range []string{"created dependent fleet sensors (id 3) under fleet lobby: device type esp32", "reeve push --fleet sensors", "/assets"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q does not say %q", out, want)
		}
	}
	if strings.Contains(out, "key create") {
		t.Errorf("output %q advises a provisioning key for a fleet of dependent devices", out)
	}

	rows := tableRows(mustRun(t, "fleet", "ls"))
	if len(rows) != 4 || strings.Join(rows[0], " ") != "NAME ID CLASS PARENT DEVICE TYPE STRATEGY RELEASE CREATED" {
		t.Fatalf("table %q", rows)
	}
	for i, want := range []string{
		"lobby 1 fleet - raspberrypi4-64 download-then-kill latest",
		"kiosks 2 fleet - any hand-over pinned 9b3291230a27810d",
		"sensors 3 dependent lobby esp32 download-then-kill latest",
	} {
		if got := strings.Join(rows[i+1], " "); !strings.HasPrefix(got, want) {
			t.Errorf("row %q, want it to start with %q", got, want)
		}
	}
	jsonEqual(t, mustRun(t, "fleet", "ls", "--json"), fleetsJSON)

	mustRun(t, "fleet", "rm", "kiosks")
	if r := f.last(t); r.Method != "DELETE" || r.Path != "/api/v1/fleets/kiosks" {
		t.Errorf("rm sent %+v", r)
	}

	out = mustRun(t, "fleet", "pin", "lobby", "9b3291230a27810d")
	r = f.last(t)
	if r.Method != "PATCH" || r.Path != "/api/v1/fleets/lobby" {
		t.Errorf("pin sent %+v", r)
	}
	jsonEqual(t, r.Body, `{"pinned_release":"9b3291230a27810d"}`)
	if !strings.Contains(out, "fleet lobby is pinned to release 9b3291230a27810d") {
		t.Errorf("output %q", out)
	}

	mustRun(t, "fleet", "track-latest", "kiosks")
	jsonEqual(t, f.last(t).Body, `{"pinned_release":""}`)

	n := len(f.requests())
	mustFail(t, 2, []string{"fleet", "pin", "lobby"}, "accepts 2 arg")
	mustFail(t, 2, []string{"fleet", "bogus"}, `unknown command "bogus"`)
	mustFail(t, 2, []string{"fleet", "ls", "--no-such-flag"})
	if len(f.requests()) != n {
		t.Error("a usage error sent a request")
	}
}

func TestServerErrorsAreShownWithTheirExitCode(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"POST /api/v1/fleets":        {http.StatusConflict, `{"error":{"code":"conflict","message":"fleet \"lobby\" exists"}}`},
		"DELETE /api/v1/fleets/blue": {http.StatusBadRequest, `{"error":{"code":"invalid","message":"bad fleet name"}}`},
	})
	loggedIn(t, f)
	if msg := mustFail(t, 1, []string{"fleet", "create", "lobby"}); msg != `fleet "lobby" exists` {
		t.Errorf("error %q, want the server's message", msg)
	}
	mustFail(t, 2, []string{"fleet", "rm", "blue"}, "bad fleet name")
}

func TestKeyCreatePrintsADeviceConfig(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/fleets/lobby":        ok(`{"id":1,"name":"lobby","device_type":"raspberrypi4-64"}`),
		"GET /api/v1/fleets/kiosks":       ok(`{"id":2,"name":"kiosks","device_type":"any"}`),
		"POST /api/v1/fleets/lobby/keys":  {http.StatusCreated, `{"key":"feedc0de","provisioning_key":{"id":4,"fleet_id":1,"name":"factory","expires_at":"2030-01-01T00:00:00Z"}}`},
		"POST /api/v1/fleets/kiosks/keys": {http.StatusCreated, `{"key":"c0ffee","provisioning_key":{"id":5,"fleet_id":2}}`},
	})
	loggedIn(t, f)

	before := time.Now().Truncate(time.Second)
	out := mustRun(t, "key", "create", "--fleet", "lobby", "--name", "factory", "--expires", "720h")
	after := time.Now()
	r := f.last(t)
	if r.Method != "POST" || r.Path != "/api/v1/fleets/lobby/keys" {
		t.Fatalf("sent %+v", r)
	}
	var req serverapi.CreateKeyRequest
	if err := json.Unmarshal([]byte(r.Body), &req); err != nil {
		t.Fatal(err)
	}
	if req.Name != "factory" || req.ExpiresAt.Before(before.Add(720*time.Hour)) || req.ExpiresAt.After(after.Add(720*time.Hour)) {
		t.Errorf("request %s, want the name and an expiry 720h from now", r.Body)
	}
	if !strings.Contains(out, "\n  feedc0de\n") || !strings.Contains(out, "expires 2030-01-01T00:00:00Z") {
		t.Errorf("output %q, want the key on its own line and the expiry", out)
	}
	jsonEqual(t, out[strings.Index(out, "{"):], `{"apiEndpoint":"`+f.URL+`","provisioningKey":"feedc0de","deviceType":"raspberrypi4-64"}`)

	// A fleet of any type: the config names none.
	out = mustRun(t, "key", "create", "--fleet", "kiosks")
	jsonEqual(t, f.last(t).Body, `{}`)
	jsonEqual(t, out[strings.Index(out, "{"):], `{"apiEndpoint":"`+f.URL+`","provisioningKey":"c0ffee"}`)

	// --output writes the config, privately, and does not print the key.
	file := filepath.Join(t.TempDir(), "config.json")
	out = mustRun(t, "key", "create", "--fleet", "lobby", "--output", file)
	if strings.Contains(out, "feedc0de") || !strings.Contains(out, "wrote "+file) {
		t.Errorf("output %q, want the file named and no key", out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, string(b), `{"apiEndpoint":"`+f.URL+`","provisioningKey":"feedc0de","deviceType":"raspberrypi4-64"}`)
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("config.json has mode %v, want 0600", fi.Mode().Perm())
	}

	n := len(f.requests())
	mustFail(t, 2, []string{"key", "create"}, "--fleet is required")
	mustFail(t, 2, []string{"key", "create", "--fleet", "lobby", "--expires", "-1h"}, "--expires")
	mustFail(t, 2, []string{"key", "create", "--fleet", "lobby", "--expires", "soon"})
	if len(f.requests()) != n {
		t.Error("a usage error sent a request")
	}
}

func TestKeyListAndRevoke(t *testing.T) {
	keys := `[{"id":1,"fleet_id":1,"name":"factory","created_at":"2026-01-01T00:00:00Z"},
	          {"id":2,"fleet_id":1,"revoked_at":"2026-01-03T00:00:00Z","created_at":"2026-01-02T00:00:00Z"},
	          {"id":3,"fleet_id":1,"expires_at":"2026-01-03T00:00:00Z","created_at":"2026-01-02T00:00:00Z"}]`
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/fleets/lobby/keys": ok(keys),
		"DELETE /api/v1/keys/2":         noContent,
	})
	loggedIn(t, f)
	rows := tableRows(mustRun(t, "key", "ls", "--fleet", "lobby"))
	if len(rows) != 4 || strings.Join(rows[0], " ") != "ID NAME STATUS EXPIRES CREATED" {
		t.Fatalf("table %q", rows)
	}
	for i, want := range []string{"1 factory usable never", "2 - revoked", "3 - expired"} {
		if got := strings.Join(rows[i+1], " "); !strings.HasPrefix(got, want) {
			t.Errorf("row %q, want it to start with %q", got, want)
		}
	}
	jsonEqual(t, mustRun(t, "key", "ls", "--fleet", "lobby", "--json"), keys)

	mustRun(t, "key", "revoke", "2")
	if r := f.last(t); r.Method != "DELETE" || r.Path != "/api/v1/keys/2" {
		t.Errorf("sent %+v", r)
	}
	n := len(f.requests())
	mustFail(t, 2, []string{"key", "revoke", "two"}, "not a key id")
	mustFail(t, 2, []string{"key", "ls"}, "--fleet is required")
	if len(f.requests()) != n {
		t.Error("a usage error sent a request")
	}
}

const goodCompose = "services:\n  web:\n    image: nginx\n  worker:\n    image: busybox\n"

const pushedRelease = `{"id":3,"fleet_id":1,"commit":"9b3291230a27810d","release":{"id":3,"services":{
	"web":{"id":1,"image_id":1,"image":"nginx","running":true,"composition":{}},
	"worker":{"id":2,"image_id":2,"image":"busybox","running":true,"composition":{}}}}}`

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPushUploadsAValidFile(t *testing.T) {
	routes := map[string]answer{
		"POST /api/v1/fleets/lobby/releases": {http.StatusCreated, pushedRelease},
		"GET /api/v1/fleets/lobby":           ok(`{"id":1,"name":"lobby"}`),
	}
	f := newFakeServer(t, routes)
	loggedIn(t, f)
	file := writeFile(t, t.TempDir(), "app.yml", goodCompose)

	out, errOut, err := cli(t, "", "push", "--fleet", "lobby", "-f", file)
	if err != nil {
		t.Fatal(err)
	}
	var push sent
	for _, r := range f.requests() {
		if r.Method == "POST" {
			push = r
		}
	}
	if push.Path != "/api/v1/fleets/lobby/releases" || push.Auth != "Bearer op-token" {
		t.Fatalf("sent %+v", push)
	}
	var req serverapi.PushRequest
	if err := json.Unmarshal([]byte(push.Body), &req); err != nil || req.Compose != goodCompose {
		t.Errorf("body %s (%v), want the file as it is", push.Body, err)
	}
	if out != "pushed release 9b3291230a27810d to fleet lobby: 2 services (web, worker)\n" {
		t.Errorf("output %q", out)
	}
	for _, want := range []string{"validating " + file, fmt.Sprintf("uploading %d bytes to fleet lobby", len(goodCompose))} {
		if !strings.Contains(errOut, want) {
			t.Errorf("standard error %q does not say %q", errOut, want)
		}
	}

	// The same file again, to a pinned fleet.
	routes["POST /api/v1/fleets/lobby/releases"] = ok(pushedRelease)
	routes["GET /api/v1/fleets/lobby"] = ok(`{"id":1,"name":"lobby","pinned_release":"0be11a3c0be11a3c"}`)
	out = mustRun(t, "push", "--fleet", "lobby", "-f", file)
	for _, want := range []string{
		"release 9b3291230a27810d was already pushed to fleet lobby: 2 services (web, worker)",
		"fleet lobby is pinned to release 0be11a3c0be11a3c",
		"reeve fleet track-latest lobby",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q does not say %q", out, want)
		}
	}
}

func TestPushRefusesAnInvalidFileBeforeAnyRequest(t *testing.T) {
	f := newFakeServer(t, nil)
	loggedIn(t, f)
	dir := t.TempDir()
	t.Setenv("REEVE_TEST_SET", "x") // the server has no environment: set here, still refused
	file := writeFile(t, dir, "docker-compose.yml",
		"services:\n  web:\n    image: nginx\n    build: .\n    environment:\n      A: ${REEVE_TEST_SET}\n")
	msg := mustFail(t, 2, []string{"push", "--fleet", "lobby", "-f", file}, "nothing was pushed", "services.web.build", "REEVE_TEST_SET")
	if strings.Count(msg, "\n  services.web.") != 2 {
		t.Errorf("error %q, want each problem on its own line", msg)
	}
	bind := writeFile(t, dir, "bind.yml", "services:\n  web:\n    image: nginx\n    volumes: [\"./data:/data\"]\n")
	mustFail(t, 2, []string{"push", "--fleet", "lobby", "-f", bind}, "nothing was pushed", "services.web.volumes")
	mustFail(t, 2, []string{"push", "-f", file}, "--fleet is required")
	mustFail(t, 2, []string{"push", "--fleet", "lobby", "-f", filepath.Join(dir, "missing.yml")}, "missing.yml")
	f.expectNoRequests(t)
}

func TestPushShowsTheServersProblems(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"POST /api/v1/fleets/lobby/releases": {http.StatusBadRequest, `{"error":{"code":"invalid","message":"…","details":[
			{"path":"services.web.image","message":"not allowed here"},{"path":"services.worker","message":"no"}]}}`},
	})
	loggedIn(t, f)
	file := writeFile(t, t.TempDir(), "app.yml", goodCompose)
	mustFail(t, 2, []string{"push", "--fleet", "lobby", "-f", file},
		"the server refused", "\n  services.web.image: not allowed here", "\n  services.worker: no")
}

func TestPushFindsTheComposeFile(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"POST /api/v1/fleets/lobby/releases": {http.StatusCreated, pushedRelease},
		"GET /api/v1/fleets/lobby":           ok(`{"id":1,"name":"lobby"}`),
	})
	loggedIn(t, f)
	dir := t.TempDir()
	t.Chdir(dir)
	mustFail(t, 2, []string{"push", "--fleet", "lobby"}, "no compose file here", "docker-compose.yml", "compose.yaml")
	f.expectNoRequests(t)

	writeFile(t, dir, "compose.yml", "services:\n  last:\n    image: busybox\n")
	writeFile(t, dir, "compose.yaml", goodCompose)
	_, errOut, err := cli(t, "", "push", "--fleet", "lobby")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "validating compose.yaml") || !strings.Contains(f.requests()[0].Body, "worker") {
		t.Errorf("pushed %q (%s), want compose.yaml before compose.yml", f.requests()[0].Body, errOut)
	}
}

func TestReleases(t *testing.T) {
	rels := `[{"id":4,"fleet_id":1,"commit":"0be11a3c0be11a3c","release":{"id":4,"services":{"web":{"id":1,"image_id":1,"image":"nginx","running":true,"composition":{}}}},"created_at":"2026-01-02T00:00:00Z"},
	          {"id":3,"fleet_id":1,"commit":"9b3291230a27810d","release":{"id":3,"services":{}},"created_at":"2026-01-01T00:00:00Z"}]`
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/fleets/lobby/releases": ok(rels),
		"GET /api/v1/fleets/empty/releases": ok(`[]`),
	})
	loggedIn(t, f)
	rows := tableRows(mustRun(t, "releases", "--fleet", "lobby"))
	if len(rows) != 3 || strings.Join(rows[0], " ") != "COMMIT SERVICES NAMES CREATED" {
		t.Fatalf("table %q", rows)
	}
	if got := strings.Join(rows[1][:3], " "); got != "0be11a3c0be11a3c 1 web" {
		t.Errorf("row %q", got)
	}
	if got := strings.Join(rows[2][:3], " "); got != "9b3291230a27810d 0 -" {
		t.Errorf("row %q", got)
	}
	jsonEqual(t, mustRun(t, "releases", "--fleet", "lobby", "--json"), rels)
	if out := mustRun(t, "releases", "--fleet", "empty", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("empty list printed as %q, want []", out)
	}
	if out := mustRun(t, "releases", "--fleet", "empty"); !strings.HasPrefix(out, "no releases") {
		t.Errorf("empty table printed as %q", out)
	}
	mustFail(t, 2, []string{"releases"}, "--fleet is required")
}

const (
	uuidA = "5d6c4a0e2b8f4c1e9a7d3b6f0e1c2a4b"
	uuidB = "5d6c4a0f2b8f4c1e9a7d3b6f0e1c2a4b" // shares 7 characters with uuidA
	uuidC = "0be11a3c2b8f4c1e9a7d3b6f0e1c2a4b"
)

var devicesJSON = `[
 {"id":1,"uuid":"` + uuidA + `","name":"hall","fleet_id":1,"device_type":"rpi","created_at":"2026-01-01T00:00:00Z",
  "last_seen":"2026-01-01T00:00:00Z","state":{"status":"Idle","update_status":"downloading","commit":"aaaaaaaaaaaaaaaa"},
  "online":true,"fleet":"lobby","target_commit":"bbbbbbbbbbbbbbbb"},
 {"id":2,"uuid":"` + uuidB + `","name":"door","fleet_id":1,"device_type":"rpi","created_at":"2026-01-01T00:00:00Z",
  "state":{"status":"Idle","commit":"bbbbbbbbbbbbbbbb"},"online":false,"fleet":"lobby","target_commit":"bbbbbbbbbbbbbbbb"},
 {"id":3,"uuid":"` + uuidC + `","name":"","fleet_id":2,"device_type":"rpi","created_at":"2026-01-01T00:00:00Z",
  "online":false,"fleet":"kiosks","target_commit":""}]`

func TestDevicesList(t *testing.T) {
	f := newFakeServer(t, map[string]answer{"GET /api/v1/devices": ok(devicesJSON)})
	loggedIn(t, f)
	rows := tableRows(mustRun(t, "devices"))
	if len(rows) != 4 || strings.Join(rows[0], " ") != "UUID NAME FLEET STATUS ONLINE COMMIT LAST SEEN" {
		t.Fatalf("table %q", rows)
	}
	// uuidA and uuidB share 7 characters: the table shows 8 to tell them apart.
	for i, want := range []string{
		"5d6c4a0e hall lobby Idle (downloading) yes aaaaaaa -> bbbbbbb",
		"5d6c4a0f door lobby Idle no bbbbbbb never",
		"0be11a3c - kiosks - no - never",
	} {
		if got := strings.Join(rows[i+1], " "); !strings.HasPrefix(got, want) {
			t.Errorf("row %q, want it to start with %q", got, want)
		}
	}
	if r := f.last(t); r.Query != "" {
		t.Errorf("query %q, want none without --fleet", r.Query)
	}

	jsonEqual(t, mustRun(t, "devices", "--fleet", "lobby & co", "--json"), devicesJSON)
	if r := f.last(t); r.Query != "fleet=lobby+%26+co" {
		t.Errorf("query %q, want the fleet escaped", r.Query)
	}
}

const uuidD = "d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6"

// dependentsJSON lists a dependent fleet's devices: one online (its
// gateway online, and it reported online), one not.
var dependentsJSON = `[
 {"id":4,"uuid":"` + uuidD + `","name":"probe","fleet_id":3,"device_type":"esp32","gateway_id":1,"local_id":"serial-1",
  "created_at":"2026-01-01T00:00:00Z","state":{"status":"Idle","commit":"cccccccccccccccc","is_online":true},
  "online":true,"fleet":"sensors","target_commit":"cccccccccccccccc","gateway":"` + uuidA + `"},
 {"id":5,"uuid":"` + uuidC + `","name":"spare","fleet_id":3,"device_type":"esp32","gateway_id":1,
  "created_at":"2026-01-01T00:00:00Z","state":{"is_online":false},"online":false,"fleet":"sensors","target_commit":"cccccccccccccccc","gateway":"` + uuidA + `"}]`

func TestDependentDevices(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/devices":          ok(dependentsJSON),
		"GET /api/v1/devices/" + uuidD: ok(`{"uuid":"` + uuidD + `","name":"probe","device_type":"esp32","gateway_id":1,"local_id":"serial-1","state":{"status":"Idle","commit":"aaaaaaaaaaaaaaaa","is_online":true},"online":true,"fleet":"sensors","target_commit":"cccccccccccccccc","gateway":"` + uuidA + `"}`),
	})
	loggedIn(t, f)
	rows := tableRows(mustRun(t, "devices", "--fleet", "sensors"))
	if len(rows) != 3 || strings.Join(rows[0], " ") != "UUID NAME FLEET STATUS ONLINE COMMIT LAST SEEN GATEWAY" {
		t.Fatalf("table %q", rows)
	}
	for i, want := range []string{
		"d1e2f3a probe sensors Idle yes ccccccc never 5d6c4a0",
		"0be11a3 spare sensors - no - -> ccccccc never 5d6c4a0",
	} {
		if got := strings.Join(rows[i+1], " "); got != want {
			t.Errorf("row %q, want %q", got, want)
		}
	}
	out := mustRun(t, "device", "show", uuidD)
	for _, want := range [][2]string{
		{"Gateway:", uuidA}, {"Local ID:", "serial-1"}, {"Online:", "yes"}, {"Reported online:", "yes"},
		{"Status:", "Idle"}, {"Commit:", "aaaaaaaaaaaaaaaa"}, {"Target commit:", "cccccccccccccccc"},
	} {
		if !regexpLine(out, want[0], want[1]) {
			t.Errorf("device show %q has no line %s %s", out, want[0], want[1])
		}
	}
}

// regexpLine reports whether out has a line with label then value.
func regexpLine(out, label, value string) bool {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && strings.HasPrefix(line, label) && strings.Contains(line, value) {
			return true
		}
	}
	return false
}

func TestDevicePrefixes(t *testing.T) {
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/devices":             ok(devicesJSON),
		"GET /api/v1/devices/" + uuidA:    ok(`{"uuid":"` + uuidA + `","name":"hall","online":true,"fleet":"lobby","target_commit":"bbbbbbbbbbbbbbbb","tags":{"room":"hall"}}`),
		"GET /api/v1/devices/" + uuidC:    ok(`{"uuid":"` + uuidC + `"}`),
		"DELETE /api/v1/devices/" + uuidC: noContent,
	})
	loggedIn(t, f)

	out := mustRun(t, "device", "show", "5d6c4a0E") // case does not matter
	got := f.requests()
	if len(got) != 2 || got[0].Path != "/api/v1/devices" || got[1].Path != "/api/v1/devices/"+uuidA {
		t.Errorf("sent %+v, want the list then the device", got)
	}
	for _, want := range []string{"UUID:", uuidA, "Fleet:", "lobby", "Online:", "yes", "room=hall"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q does not say %q", out, want)
		}
	}
	jsonEqual(t, mustRun(t, "device", "show", uuidA[:9], "--json"),
		`{"id":0,"uuid":"`+uuidA+`","name":"hall","fleet_id":0,"device_type":"","created_at":"0001-01-01T00:00:00Z","tags":{"room":"hall"},"online":true,"fleet":"lobby","target_commit":"bbbbbbbbbbbbbbbb"}`)

	// A whole UUID needs no list.
	n := len(f.requests())
	mustRun(t, "device", "rm", uuidC)
	if got := f.requests()[n:]; len(got) != 1 || got[0].Method != "DELETE" || got[0].Path != "/api/v1/devices/"+uuidC {
		t.Errorf("sent %+v, want the delete alone", got)
	}

	n = len(f.requests())
	mustFail(t, 2, []string{"device", "show", "5d6c4a0"}, "2 devices", uuidA, uuidB, "give more")
	mustFail(t, 1, []string{"device", "show", "ffffffff"}, "no device has a UUID starting with ffffffff")
	for _, r := range f.requests()[n:] {
		if r.Path != "/api/v1/devices" {
			t.Errorf("an ambiguous or unknown prefix sent %s %s", r.Method, r.Path)
		}
	}
	n = len(f.requests())
	mustFail(t, 2, []string{"device", "show", "5d6c4a"}, "at least 7 characters")
	if len(f.requests()) != n {
		t.Error("a short prefix sent a request")
	}
}

func TestDeviceChanges(t *testing.T) {
	dev := `{"uuid":"` + uuidC + `","name":"new-name","pinned_release":"9b3291230a27810d"}`
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/devices":                            ok(devicesJSON),
		"PATCH /api/v1/devices/" + uuidC:                 ok(dev),
		"DELETE /api/v1/devices/" + uuidC + "/key":       noContent,
		"PUT /api/v1/devices/" + uuidC + "/tags/room":    ok(dev),
		"PUT /api/v1/devices/" + uuidC + "/tags/a%2Fb":   ok(dev),
		"DELETE /api/v1/devices/" + uuidC + "/tags/room": noContent,
	})
	loggedIn(t, f)
	for _, tc := range []struct {
		args               []string
		method, path, body string
		out                string
	}{
		{[]string{"device", "rename", "0be11a3", "new-name"}, "PATCH", "/api/v1/devices/" + uuidC, `{"name":"new-name"}`, "renamed device 0be11a3 to new-name"},
		{[]string{"device", "pin", "0be11a3", "9b3291230a27810d"}, "PATCH", "/api/v1/devices/" + uuidC, `{"pinned_release":"9b3291230a27810d"}`, "device 0be11a3 is pinned to release 9b3291230a27810d"},
		{[]string{"device", "unpin", "0be11a3"}, "PATCH", "/api/v1/devices/" + uuidC, `{"pinned_release":""}`, "device 0be11a3 runs what its fleet runs"},
		{[]string{"device", "revoke-key", "0be11a3"}, "DELETE", "/api/v1/devices/" + uuidC + "/key", "", "revoked the key of device " + uuidC},
		{[]string{"device", "tag", "0be11a3", "room=hall=2"}, "PUT", "/api/v1/devices/" + uuidC + "/tags/room", `{"value":"hall=2"}`, "tagged device 0be11a3 with room=hall=2"},
		{[]string{"device", "tag", "0be11a3", "a/b="}, "PUT", "/api/v1/devices/" + uuidC + "/tags/a%2Fb", `{"value":""}`, "tagged device 0be11a3 with a/b="},
		{[]string{"device", "untag", "0be11a3", "room"}, "DELETE", "/api/v1/devices/" + uuidC + "/tags/room", "", "removed tag room from device 0be11a3"},
	} {
		out := mustRun(t, tc.args...)
		r := f.last(t)
		if r.Method != tc.method || r.Path != tc.path {
			t.Errorf("%v sent %s %s, want %s %s", tc.args, r.Method, r.Path, tc.method, tc.path)
		}
		if tc.body != "" {
			jsonEqual(t, r.Body, tc.body)
		}
		if !strings.Contains(out, tc.out) {
			t.Errorf("%v printed %q, want %q", tc.args, out, tc.out)
		}
	}
	n := len(f.requests())
	mustFail(t, 2, []string{"device", "tag", "0be11a3", "room"}, "KEY=VALUE")
	mustFail(t, 2, []string{"device", "tag", "0be11a3", "=x"}, "KEY=VALUE")
	mustFail(t, 2, []string{"device", "rename", "0be11a3"}, "accepts 2 arg")
	if len(f.requests()) != n {
		t.Error("a usage error sent a request")
	}
}

func TestVariables(t *testing.T) {
	vars := `[{"id":1,"kind":"env","fleet_id":1,"service":"web","name":"GREETING","value":"hello"}]`
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/devices":   ok(devicesJSON),
		"PUT /api/v1/env":       ok(`{"id":1}`),
		"GET /api/v1/env":       ok(vars),
		"DELETE /api/v1/env":    noContent,
		"PUT /api/v1/config":    ok(`{"id":2}`),
		"GET /api/v1/config":    ok(`[]`),
		"DELETE /api/v1/config": noContent,
	})
	loggedIn(t, f)

	out := mustRun(t, "env", "set", "GREETING=a=b", "--fleet", "lobby", "--service", "web")
	r := f.last(t)
	if r.Method != "PUT" || r.Path != "/api/v1/env" {
		t.Errorf("sent %+v", r)
	}
	jsonEqual(t, r.Body, `{"fleet":"lobby","service":"web","name":"GREETING","value":"a=b"}`)
	if !strings.Contains(out, "set env GREETING for service web of fleet lobby") {
		t.Errorf("output %q", out)
	}

	rows := tableRows(mustRun(t, "env", "ls", "--device", "0be11a3", "--service", "web"))
	if r := f.last(t); r.Path != "/api/v1/env" || r.Query != "device="+uuidC+"&service=web" {
		t.Errorf("sent %+v, want the device's whole UUID in the query", r)
	}
	if len(rows) != 2 || strings.Join(rows[0], " ") != "NAME VALUE" || strings.Join(rows[1], " ") != "GREETING hello" {
		t.Errorf("table %q", rows)
	}
	jsonEqual(t, mustRun(t, "env", "ls", "--fleet", "lobby", "--json"), vars)

	out = mustRun(t, "env", "rm", "GREETING", "--device", uuidC)
	if r := f.last(t); r.Method != "DELETE" || r.Query != "device="+uuidC+"&name=GREETING" {
		t.Errorf("sent %+v", r)
	}
	if !strings.Contains(out, "removed env GREETING from device 0be11a3") {
		t.Errorf("output %q", out)
	}

	mustRun(t, "config", "set", "RESIN_HOST_LOG=1", "--fleet", "lobby")
	jsonEqual(t, f.last(t).Body, `{"fleet":"lobby","name":"RESIN_HOST_LOG","value":"1"}`)
	if out := mustRun(t, "config", "ls", "--fleet", "lobby"); !strings.HasPrefix(out, "no config variables for fleet lobby") {
		t.Errorf("output %q", out)
	}
	if out := mustRun(t, "config", "ls", "--fleet", "lobby", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("output %q", out)
	}
	mustRun(t, "config", "rm", "RESIN_HOST_LOG", "--fleet", "lobby")
	if r := f.last(t); r.Method != "DELETE" || r.Path != "/api/v1/config" || r.Query != "fleet=lobby&name=RESIN_HOST_LOG" {
		t.Errorf("sent %+v", r)
	}

	n := len(f.requests())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"env", "set", "A=1"}, "--fleet F or --device U"},
		{[]string{"env", "ls", "--fleet", "lobby", "--device", "0be11a3"}, "not both"},
		{[]string{"env", "set", "A", "--fleet", "lobby"}, "NAME=VALUE"},
		{[]string{"env", "rm", "--fleet", "lobby"}, "accepts 1 arg"},
		{[]string{"config", "set", "A=1", "--fleet", "lobby", "--service", "web"}, "config variables have no service scope"},
		{[]string{"config", "ls", "--device", "0be11a3", "--service", "web"}, "config variables have no service scope"},
		{[]string{"config", "rm", "A", "--fleet", "lobby", "--service", ""}, "config variables have no service scope"},
	} {
		mustFail(t, 2, tc.args, tc.want)
	}
	if len(f.requests()) != n {
		t.Error("a usage error sent a request")
	}
}

func TestRelTime(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{time.Time{}, "never"},
		{now, "just now"},
		{now.Add(-12 * time.Second), "12s ago"},
		{now.Add(-5*time.Minute - 30*time.Second), "5m ago"},
		{now.Add(-47 * time.Hour), "47h ago"},
		{now.Add(-72 * time.Hour), "3d ago"},
		{now.Add(720 * time.Hour), "in 30d"},
	} {
		if got := relTime(tc.t, now); got != tc.want {
			t.Errorf("relTime(now%+v) = %q, want %q", tc.t.Sub(now), got, tc.want)
		}
	}
}

func TestCommitAndStatusText(t *testing.T) {
	for _, tc := range []struct{ cur, tgt, want string }{
		{"", "", "-"},
		{"9b3291230a27810d", "9b3291230a27810d", "9b32912"},
		{"9b3291230a27810d", "", "9b32912"},
		{"9b3291230a27810d", "0be11a3c0be11a3c", "9b32912 -> 0be11a3"},
		{"", "0be11a3c0be11a3c", "- -> 0be11a3"},
	} {
		if got := commitText(tc.cur, tc.tgt); got != tc.want {
			t.Errorf("commitText(%q, %q) = %q, want %q", tc.cur, tc.tgt, got, tc.want)
		}
	}
	idle, done, failed := "Idle", "done", "failed"
	for _, tc := range []struct {
		r    reeve.DeviceReport
		want string
	}{
		{reeve.DeviceReport{}, "-"},
		{reeve.DeviceReport{Status: &idle, UpdateStatus: &done}, "Idle"},
		{reeve.DeviceReport{Status: &idle, UpdateStatus: &failed}, "Idle (failed)"},
	} {
		if got := statusText(tc.r); got != tc.want {
			t.Errorf("statusText = %q, want %q", got, tc.want)
		}
	}
}
