package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"reeve.dev/reeve/internal/agent"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := rootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestInvalidComposeExitsTwoAndSendsNothing(t *testing.T) {
	file := filepath.Join(t.TempDir(), "docker-compose.yml")
	if err := os.WriteFile(file, []byte("services:\n  web:\n    image: x\n    build: .\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The device address is unreachable on purpose: validation must fail
	// before anything is sent.
	_, err := run(t, "local", "apply", "-f", file, "--device", "127.0.0.1:1")
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "services.web.build") {
		t.Fatalf("err %v (exit %d), want exit 2 naming services.web.build", err, exitCode(err))
	}
}

func TestBadFlagExitsTwo(t *testing.T) {
	_, err := run(t, "local", "status", "--no-such-flag")
	if err == nil || exitCode(err) != 2 {
		t.Fatalf("err %v (exit %d), want exit 2", err, exitCode(err))
	}
	_, err = run(t, "agent", "--local", "--log-level", "loud", "--data", t.TempDir())
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "--log-level") {
		t.Fatalf("err %v (exit %d), want exit 2 naming --log-level", err, exitCode(err))
	}
}

func TestUnreachableAgentExitsOne(t *testing.T) {
	_, err := run(t, "local", "status", "--device", "127.0.0.1:1", "--api-key", "k")
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "cannot reach the agent") {
		t.Fatalf("err %v (exit %d), want exit 1 saying the agent cannot be reached", err, exitCode(err))
	}
}

func TestLocalCommandsSayWhereTheKeyIs(t *testing.T) {
	t.Setenv("REEVE_API_KEY", "")
	_, err := run(t, "local", "status", "--device", "127.0.0.1:1", "--data", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "--api-key") || !strings.Contains(err.Error(), "REEVE_API_KEY") {
		t.Fatalf("err %v, want it to say how to give the API key", err)
	}
}

func TestServiceStatusText(t *testing.T) {
	pc, code := 40, 3
	for _, tc := range []struct {
		s    agent.ServiceStatus
		want string
	}{
		{agent.ServiceStatus{Status: agent.SvcDownloading, DownloadProgress: &pc}, "downloading 40 %"},
		{agent.ServiceStatus{Status: agent.SvcExited, ExitCode: &code}, "exited (3)"},
		{agent.ServiceStatus{Status: agent.SvcWaiting, Detail: "waiting for db"}, "waiting for db"},
		{agent.ServiceStatus{Status: agent.SvcRunning, Health: "healthy", RestartCount: 2}, "running (healthy) restarts 2"},
		{agent.ServiceStatus{Status: agent.SvcRunning, Error: "download failed: manifest unknown"}, "running - error: download failed: manifest unknown"},
		{agent.ServiceStatus{Status: agent.SvcHandingOver}, "handing over"},
	} {
		if got := serviceStatusText(tc.s); got != tc.want {
			t.Errorf("serviceStatusText(%+v) = %q, want %q", tc.s, got, tc.want)
		}
	}
}
