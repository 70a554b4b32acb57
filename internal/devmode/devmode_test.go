package devmode_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/clicfg"
	"reeve.dev/reeve/internal/devmode"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/testimage"
)

// syncBuffer is a bytes.Buffer safe for the writer and the test to share.
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

// TestDevInstallsTheExample runs `reeve dev` as a user would on a first run:
// the example is installed from the in-process registry, its web page
// answers, and a restart resumes without reinstalling.
func TestDevInstallsTheExample(t *testing.T) {
	testimage.RequireDocker(t)
	bin := filepath.Join(t.TempDir(), "reeve")
	build := exec.Command("go", "build", "-o", bin, "reeve.dev/reeve/cmd/reeve")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build reeve: %v\n%s", err, out)
	}
	data := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir()) // the CLI login goes here
	ns := "devtest"
	t.Cleanup(func() { removeNamespace(t, ns) })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	run := func() (*devmode.Main, context.CancelFunc, chan error, *syncBuffer) {
		out := &syncBuffer{}
		m, err := devmode.New(context.Background(), devmode.Config{DataDir: data, Listen: "127.0.0.1:0", ServerListen: "127.0.0.1:0",
			RegistryListen: "127.0.0.1:0", GatewayListen: "127.0.0.1:0", Boards: 3, Binary: bin, Namespace: ns, Logger: log, Out: out})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		return m, cancel, done, out
	}
	stop := func(cancel context.CancelFunc, done chan error) {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("reeve dev stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("reeve dev did not stop")
		}
	}

	m, cancel, done, out := run()
	c := localapi.NewClient(m.Addr()).WithKey(m.APIKey())
	st := waitApplied(t, c)
	if len(st.Services) != 2 {
		t.Fatalf("services %+v, want web and worker", st.Services)
	}
	for _, s := range st.Services {
		if s.Status != agent.SvcRunning {
			t.Errorf("%s is %s", s.Service, s.Status)
		}
	}
	if !strings.Contains(out.String(), "reeve devices") || !strings.Contains(out.String(), filepath.Join(data, "example", "docker-compose.yml")) {
		t.Errorf("next steps not printed:\n%s", out.String())
	}
	// The CLI is logged in to the dev server, which sees the device
	// online, running the example release.
	login, err := clicfg.Load()
	if err != nil || login.Server != m.ServerURL() || login.Token == "" {
		t.Fatalf("CLI login %+v (%v), want the dev server %s", login, err, m.ServerURL())
	}
	op := serverapi.NewClient(login.Server, login.Token, nil)
	var dev serverapi.DeviceView
	deadline := time.Now().Add(time.Minute)
	for {
		ds, err := op.Devices(context.Background(), "hello")
		if err == nil && len(ds) == 1 && ds[0].Online && ds[0].State.Commit != nil && *ds[0].State.Commit == ds[0].TargetCommit {
			dev = ds[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dev server does not see its device running the example: %+v %v", ds, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if dev.UUID != c2uuid(t, c) {
		t.Fatalf("the fleet's device %s is not the agent %s", dev.UUID, c2uuid(t, c))
	}
	// The gateway provisions the simulated boards and installs their
	// firmware release.
	deadline = time.Now().Add(2 * time.Minute)
	for {
		boards, err := op.Devices(context.Background(), "hello-boards")
		updated := 0
		for _, b := range boards {
			if b.Gateway == dev.UUID && b.State.Commit != nil && *b.State.Commit == b.TargetCommit && b.TargetCommit != "" {
				updated++
			}
		}
		if err == nil && len(boards) == 3 && updated == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the simulated boards are not all updated: %d of %d (%v)", updated, len(boards), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "reeve devices --fleet hello-boards") {
		t.Errorf("the boards are not in the next steps:\n%s", out.String())
	}
	// The web page answers on the port the example publishes, and shows the
	// worker's count from the shared volume.
	var body string
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://127.0.0.1:48480/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if strings.Contains(body, "counted to <b>") && !strings.Contains(body, "not yet") {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(body, "Hello from reeve") || strings.Contains(body, "not yet") {
		t.Fatalf("example page: %q", body)
	}
	// The device's log reaches the server: the worker's first line, and
	// the agent's own line about starting it.
	var worker, started bool
	deadline = time.Now().Add(time.Minute)
	for !(worker && started) && time.Now().Before(deadline) {
		_ = op.Logs(context.Background(), dev.UUID, serverapi.LogQuery{}, func(l reeve.LogLine) error {
			worker = worker || (l.Service == "worker" && strings.HasPrefix(l.Message, "worker started at count"))
			started = started || (l.System && l.Message == "Started service worker")
			return nil
		})
		time.Sleep(200 * time.Millisecond)
	}
	if !worker || !started {
		t.Errorf("the device's log on the server: worker's line %v, agent's line %v", worker, started)
	}
	stop(cancel, done)

	// A second start resumes: nothing reinstalled, no second release.
	m, cancel, done, _ = run()
	c = localapi.NewClient(m.Addr()).WithKey(m.APIKey())
	st2 := waitApplied(t, c)
	op = serverapi.NewClient(m.ServerURL(), login.Token, nil)
	if rs, err := op.Releases(context.Background(), "hello"); err != nil || len(rs) != 1 {
		t.Errorf("releases after a restart: %d (%v), want the one example release", len(rs), err)
	}
	for i := range st2.Services {
		if st2.Services[i].ContainerID != st.Services[i].ContainerID {
			t.Errorf("%s was recreated by a restart of reeve dev", st2.Services[i].Service)
		}
	}
	stop(cancel, done)
}

func c2uuid(t *testing.T, c *localapi.Client) string {
	t.Helper()
	info, err := c.DeviceInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.UUID
}

func waitApplied(t *testing.T, c *localapi.Client) agent.Status {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := c.Status(context.Background())
		if err == nil && st.AppState == agent.AppStateApplied && len(st.Services) > 0 {
			return st.Status
		}
		if time.Now().After(deadline) {
			t.Fatalf("not applied: %+v %v", st.Status, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func removeNamespace(t *testing.T, ns string) {
	ctx := context.Background()
	rt, err := docker.New(ctx, docker.Options{Namespace: ns})
	if err != nil {
		t.Error(err)
		return
	}
	defer rt.Close()
	example := func(ref string) bool { return strings.Contains(ref, "/reeve/example:") }
	if err := rt.RemoveAll(ctx, example); err != nil {
		t.Error(err)
	}
}
