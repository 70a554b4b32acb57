package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/server"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd"
	"reeve.dev/reeve/internal/serverd/serverdtest"
)

// syncBuffer is a bytes.Buffer that a command writes to while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitOutput waits up to 30 s for out to hold want.
func waitOutput(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the output has no %q after 30 s:\n%s", want, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const logsToken = "cli-logs-admin-token-0123456789"

// logsDevice logs the CLI in to the server at url, makes fleet lobby with a
// device uuid in it, and returns how to ship lines as that device does.
func logsDevice(t *testing.T, url, uuid string) func(lines ...reeve.LogLine) {
	t.Helper()
	ctx := context.Background()
	mustRun(t, "login", url, "--token", logsToken)
	mustRun(t, "fleet", "create", "lobby")
	k, err := serverapi.NewClient(url, logsToken, nil).CreateKey(ctx, "lobby", serverapi.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	devKey := server.NewSecret()
	if _, err := serverapi.NewClient(url, k.Key, nil).Register(ctx, serverapi.RegisterRequest{UUID: uuid, DeviceType: "generic-amd64", APIKey: devKey}); err != nil {
		t.Fatal(err)
	}
	dev := serverapi.NewClient(url, devKey, nil)
	return func(lines ...reeve.LogLine) {
		t.Helper()
		var body bytes.Buffer
		enc := json.NewEncoder(&body)
		for _, l := range lines {
			if err := enc.Encode(l); err != nil {
				t.Fatal(err)
			}
		}
		if ack, err := dev.LogStream(ctx, uuid, "cli", &body, false); err != nil || ack.Stored != len(lines) {
			t.Fatalf("ship: %+v %v", ack, err)
		}
	}
}

// TestLogsAgainstTheRealServer reads a device's log with reeve logs from a
// real server, with lines shipped through the device API as an agent does.
func TestLogsAgainstTheRealServer(t *testing.T) {
	isolate(t)
	ctx := context.Background()
	m := serverdtest.Start(t, logsToken, nil)
	uuid := strings.Repeat("cd", 16)
	ship := logsDevice(t, m.URL(), uuid)
	old := time.Now().Add(-time.Hour)
	ship(
		reeve.LogLine{Seq: 1, Timestamp: old, Service: "web", Message: "starting"},
		reeve.LogLine{Seq: 2, Timestamp: time.Now(), Service: "web", Message: "listening on :80"},
		reeve.LogLine{Seq: 3, Timestamp: time.Now(), Service: "web", Stderr: true, Message: "warning: no TLS"},
		reeve.LogLine{Seq: 4, Timestamp: time.Now(), System: true, Message: "Killed service db"},
		reeve.LogLine{Seq: 5, Timestamp: time.Now(), Service: "db", Message: "ready"},
	)

	// People's lines, by a prefix of the UUID.
	out := mustRun(t, "logs", uuid[:8])
	lines := strings.Split(strings.TrimSpace(out), "\n")
	stamp := `\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} `
	for i, want := range []string{
		`\[web\] starting`, `\[web\] listening on :80`, `\[web stderr\] warning: no TLS`,
		`\[system\] Killed service db`, `\[db\] ready`,
	} {
		if i >= len(lines) || !regexp.MustCompile("^"+stamp+want+"$").MatchString(lines[i]) {
			t.Fatalf("line %d does not match %q:\n%s", i, want, out)
		}
	}
	if !strings.HasPrefix(lines[0], old.Local().Format("2006-01-02 15:04:05.000")) {
		t.Errorf("the first line %q does not start with its time %s", lines[0], old.Local().Format("2006-01-02 15:04:05.000"))
	}

	// Filters.
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--service", "db"}, []string{"ready"}},
		{[]string{"--service", "db", "--service", "web", "--tail", "2"}, []string{"warning: no TLS", "ready"}},
		{[]string{"--system"}, []string{"Killed service db"}},
		{[]string{"--since", "10m"}, []string{"listening on :80", "warning: no TLS", "Killed service db", "ready"}},
		{[]string{"--since", time.Now().Add(-10 * time.Minute).UTC().Format(time.RFC3339), "--tail", "1"}, []string{"ready"}},
	} {
		out := mustRun(t, append([]string{"logs", uuid}, tc.args...)...)
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line != "" {
				got = append(got, line[strings.Index(line, "] ")+2:])
			}
		}
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("logs %v: %q, want %q", tc.args, got, tc.want)
		}
	}

	// JSON: one object a line, as the server serves it.
	out = mustRun(t, "logs", uuid, "--json", "--tail", "2")
	jl := strings.Split(strings.TrimSpace(out), "\n")
	if len(jl) != 2 {
		t.Fatalf("--json printed %d lines:\n%s", len(jl), out)
	}
	var l reeve.LogLine
	if err := json.Unmarshal([]byte(jl[1]), &l); err != nil || l.Message != "ready" || l.Device != uuid || l.ID == 0 || l.Seq != 5 {
		t.Errorf("--json line %s: %+v %v", jl[1], l, err)
	}

	// What the user typed wrong.
	mustFail(t, 2, []string{"logs", uuid, "--tail", "0"}, "--tail")
	mustFail(t, 2, []string{"logs", uuid, "--tail", "10001"}, "--tail")
	mustFail(t, 2, []string{"logs", uuid, "--since", "yesterday"}, "--since")
	mustFail(t, 2, []string{"logs"}, "accepts 1 arg")
	mustFail(t, 1, []string{"logs", "eeeeeeee"}, "no device")

	// Follow: the history, then lines as they come, until stopped.
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	var fout syncBuffer
	cmd := rootCmd()
	cmd.SetOut(&fout)
	cmd.SetErr(&fout)
	cmd.SetArgs([]string{"logs", uuid[:7], "-f", "--service", "web", "--tail", "1"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(fctx) }()
	waitOutput(t, &fout, "warning: no TLS")
	ship(
		reeve.LogLine{Seq: 6, Timestamp: time.Now(), Service: "db", Message: "not followed"},
		reeve.LogLine{Seq: 7, Timestamp: time.Now(), Service: "web", Message: "GET / 200"},
	)
	waitOutput(t, &fout, "[web] GET / 200")
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("logs -f stopped by the user: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("logs -f did not stop with its context")
	}
	got := fout.String()
	if strings.Contains(got, "starting") || strings.Contains(got, "not followed") || strings.Count(got, "\n") != 2 {
		t.Errorf("logs -f printed:\n%s\nwant the newest web line, then the new one", got)
	}
}

func TestFormatLogLine(t *testing.T) {
	ts := time.Date(2026, 11, 23, 15, 28, 44, 123456789, time.UTC)
	for _, tc := range []struct {
		l    reeve.LogLine
		want string
	}{
		{reeve.LogLine{Timestamp: ts, Service: "web", Message: "hi"}, "2026-11-23 15:28:44.123 [web] hi"},
		{reeve.LogLine{Timestamp: ts, Service: "web", Stderr: true, Message: "oops"}, "2026-11-23 15:28:44.123 [web stderr] oops"},
		{reeve.LogLine{Timestamp: ts, System: true, Message: "Killed service db"}, "2026-11-23 15:28:44.123 [system] Killed service db"},
		{reeve.LogLine{Timestamp: ts, Service: "db", System: true, Message: "Killed"}, "2026-11-23 15:28:44.123 [db system] Killed"},
		{reeve.LogLine{Timestamp: ts, Message: "bare"}, "2026-11-23 15:28:44.123 bare"},
	} {
		if got := formatLogLine(tc.l, time.UTC); got != tc.want {
			t.Errorf("formatLogLine(%+v) = %q, want %q", tc.l, got, tc.want)
		}
	}
	if got := formatLogLine(reeve.LogLine{Timestamp: ts, Message: "x"}, time.FixedZone("CET", 3600)); !strings.HasPrefix(got, "2026-11-23 16:28:44.123") {
		t.Errorf("in CET: %q", got)
	}
}

// The fake server's view: what reeve logs asks for.
func TestLogsSendsTheQuery(t *testing.T) {
	uuid := strings.Repeat("ab", 16)
	f := newFakeServer(t, map[string]answer{
		"GET /api/v1/devices/" + uuid + "/logs": ok(`{"id":1,"timestamp":"2026-11-23T15:28:44Z","service":"web","message":"hi"}` + "\n"),
	})
	loggedIn(t, f)
	out := mustRun(t, "logs", uuid, "--service", "web", "--service", "db", "--system", "--tail", "5", "--since", "2026-11-23T15:00:00Z")
	if !strings.Contains(out, "[web] hi") {
		t.Errorf("output %q", out)
	}
	r := f.last(t)
	if r.Auth != "Bearer op-token" || r.Query != "limit=5&service=web&service=db&since=2026-11-23T15%3A00%3A00Z&system=true" {
		t.Errorf("request %+v", r)
	}
}

func TestServerLogFlags(t *testing.T) {
	dir := t.TempDir()
	mustFail(t, 2, []string{"server", "--data", dir, "--listen", "127.0.0.1:0", "--log-max-lines", "0"}, "--log-max-lines")
	mustFail(t, 2, []string{"server", "--data", dir, "--listen", "127.0.0.1:0", "--log-max-age", "10s"}, "--log-max-age")
}

// reeve logs -f outlives a restart of the fleet server: it follows again
// from after the last line it showed, nothing twice, nothing missed.
func TestLogsFollowSurvivesAServerRestart(t *testing.T) {
	isolate(t)
	ctx := context.Background()
	cfg := serverd.Config{DataDir: t.TempDir(), Listen: freeListenAddr(t), AdminToken: logsToken}
	m, stop := serverdtest.StartConfig(t, cfg)
	uuid := strings.Repeat("ef", 16)
	shipLines := logsDevice(t, m.URL(), uuid)
	ship := func(seq uint64, msg string) {
		shipLines(reeve.LogLine{Seq: seq, Timestamp: time.Now(), Service: "web", Message: msg})
	}
	ship(1, "before the restart")

	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out, errOut syncBuffer
	cmd := rootCmd()
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"logs", uuid, "-f"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(fctx) }()
	waitOutput(t, &out, "before the restart")

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, &errOut, "following again")
	_, stop = serverdtest.StartConfig(t, cfg)
	defer stop()
	ship(2, "after the restart")
	waitOutput(t, &out, "after the restart")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("logs -f stopped by the user: %v", err)
	}
	if n := strings.Count(out.String(), "before the restart"); n != 1 {
		t.Errorf("the line before the restart was shown %d times:\n%s", n, out.String())
	}
}

func freeListenAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
