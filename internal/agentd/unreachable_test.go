package agentd_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/compose"
	"reeve.dev/reeve/internal/localapi"
)

// With no engine the agent keeps its target, keeps retrying with backoff,
// and says why in its status.
func TestEngineUnreachable(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := "unix://" + t.TempDir() + "/no-engine.sock"
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := agentd.New(ctx, agentd.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Local: true, DockerHost: sock, Logger: log,
		Agent: agent.Config{BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	c := localapi.NewClient(m.Addr()).WithKey(m.Agent().APIKey())

	yml := []byte("services:\n  a:\n    image: registry.example.com/a:1\n")
	rel, err := compose.Load(ctx, yml, compose.Options{ProjectName: "app"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.DeviceInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	uuid, app := localapi.LocalApp("app", rel, compose.Commit(yml))
	if _, err := c.SetTarget(ctx, localapi.WithApp(nil, info.UUID, info.Name, uuid, app)); err != nil {
		t.Fatalf("the target must be stored while the engine is down: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.RuntimeError != "" {
			if st.AppState != agent.AppStateError || !strings.Contains(st.RuntimeError, "no-engine.sock") || st.RetryAt.IsZero() {
				t.Fatalf("status %+v: want state error naming the engine address, with a retry time", st.Status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no runtime error in status: %+v", st.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := m.Agent().Healthy(); err != nil {
		t.Fatalf("an agent retrying an absent engine is still healthy: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not stop")
	}
	// The target survives a restart.
	m2, err := agentd.New(context.Background(), agentd.Config{DataDir: m.DataDir(), Listen: "127.0.0.1:0", Local: true, DockerHost: sock, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	ts, v := m2.Agent().Target()
	if v != 1 || len(ts[info.UUID].Apps) != 1 {
		t.Fatalf("after restart: version %d target %+v", v, ts)
	}
}
