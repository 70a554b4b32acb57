package agentd_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/testimage"
)

const lockedApp = `
services:
  web:
    image: {{V1}}
    environment:
      TESTPROG_WRITE: /tmp/reeve/updates.lock=held
  worker:
    image: {{V1}}
    volumes:
      - data:/data
    environment:
      TESTPROG_WRITE: /data/count=1
volumes:
  data: {}
`

// TestLockedServiceIsNotKilledUntilReleased: web takes its update lock
// when it starts; an update waits (status "locked") with web untouched
// until the lock file goes, then goes through.
func TestLockedServiceIsNotKilledUntilReleased(t *testing.T) {
	h := newHarness(t)
	h.apply("shop", lockedApp)
	before := h.containers("shop")
	uuid, _ := localapi.LocalApp("shop", reeve.Release{}, "x")
	lock := filepath.Join(h.main.Agent().LockDir(uuid, "web"), "updates.lock")
	if _, err := os.Stat(lock); err != nil {
		t.Fatalf("web did not take its lock: %v", err)
	}
	h.applyNoWait("shop", `
services:
  web:
    image: {{V2}}
  worker:
    image: {{V1}}
    volumes:
      - data:/data
volumes:
  data: {}
`)
	waitStatus(t, h, func(st agent.Status) bool { return st.AppState == agent.AppStateLocked })
	if c := h.containers("shop")["web"]; c.ID != before["web"].ID || !c.IsRunning() {
		t.Fatalf("web was touched while it held its lock: %+v", c)
	}
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	h.waitApplied()
	if c := h.containers("shop")["web"]; c.ID == before["web"].ID || c.Image != h.v2 {
		t.Fatalf("after the lock was released web is %+v, want v2 in a new container", c)
	}
}

// TestSupervisorActions drives the agent's actions against the engine:
// restart and stop/start of one service, a restart refused under a lock
// and forced through it, and a purge that empties the app's volumes
// without downloading its images again.
func TestSupervisorActions(t *testing.T) {
	h := newHarness(t)
	h.apply("shop", lockedApp)
	uuid, _ := localapi.LocalApp("shop", reeve.Release{}, "x")
	a := h.main.Agent()
	lock := filepath.Join(a.LockDir(uuid, "web"), "updates.lock")
	if err := os.Remove(lock); err != nil { // web holds it from its start; this test wants it free first
		t.Fatal(err)
	}
	before := h.containers("shop")
	since := time.Now()

	if err := a.RestartService(h.ctx, uuid, "worker", false); err != nil {
		t.Fatal(err)
	}
	after := h.containers("shop") // RestartService returns once the service runs again
	if !after["worker"].IsRunning() || after["worker"].ID == before["worker"].ID || after["web"].ID != before["web"].ID {
		t.Fatalf("restart-service worker: worker %s→%s, web %s→%s", before["worker"].ID[:12], after["worker"].ID[:12], before["web"].ID[:12], after["web"].ID[:12])
	}

	if err := a.StopService(h.ctx, uuid, "worker", false); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, h, func(st agent.Status) bool { return svcStatus(st, "worker") == agent.SvcStopped })
	if c := h.containers("shop")["worker"]; c.IsRunning() {
		t.Fatal("stop-service: worker still runs")
	}
	if err := a.StartService(h.ctx, uuid, "worker"); err != nil {
		t.Fatal(err)
	}
	if c := h.containers("shop")["worker"]; !c.IsRunning() {
		t.Fatal("start-service: worker does not run")
	}

	// web holds the lock again (it wrote it at its start; put it back).
	if err := os.WriteFile(lock, []byte("held"), 0o644); err != nil {
		t.Fatal(err)
	}
	cur := h.containers("shop")
	err := a.RestartApp(h.ctx, uuid, false)
	if reeve.ErrorCode(err) != reeve.CodeLocked {
		t.Fatalf("restart of a locked app: %v, want a locked error", err)
	}
	if c := h.containers("shop"); c["web"].ID != cur["web"].ID || c["worker"].ID != cur["worker"].ID {
		t.Fatal("a refused restart touched the app")
	}
	if err := a.RestartApp(h.ctx, uuid, true); err != nil {
		t.Fatalf("forced restart: %v", err)
	}
	if c := h.containers("shop"); !c["web"].IsRunning() || !c["worker"].IsRunning() || c["web"].ID == cur["web"].ID || c["worker"].ID == cur["worker"].ID {
		t.Fatal("a forced restart did not recreate the app's containers")
	}

	// Purge: the volume is emptied (the worker writes count=1 afresh, so
	// mark it first), images stay.
	if err := os.Remove(lock); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	mark := filepath.Join(h.volumeMountpoint("shop", "data"), "mark")
	if err := os.WriteFile(mark, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.PurgeApp(h.ctx, uuid, true); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.volumeMountpoint("shop", "data"), "mark")); !os.IsNotExist(err) {
		t.Fatalf("purge kept the volume's data: %v", err)
	}
	for _, e := range h.imageEvents(since) {
		if e.Action == "pull" || e.Action == "delete" || e.Action == "untag" {
			t.Errorf("an action touched an image: %s %s", e.Action, e.Actor.ID)
		}
	}
	if err := a.RestartApp(h.ctx, "0123456789abcdef0123456789abcdef", false); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Errorf("restart of an unknown app: %v, want not_found", err)
	}
}

func svcStatus(st agent.Status, name string) string {
	for _, s := range st.Services {
		if s.Service == name {
			return s.Status
		}
	}
	return ""
}

func waitStatus(t *testing.T, h *harness, cond func(agent.Status) bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := h.main.Agent().Status()
		if cond(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status not reached in 2 min: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSupervisorAPIKeyInContainer: a service labelled
// io.reeve.features.supervisor-api gets its app's key and the agent's
// address in its environment; the key works over HTTP for its own app and
// is refused for another.
func TestSupervisorAPIKeyInContainer(t *testing.T) {
	h := newHarness(t)
	h.apply("other", "services:\n  x:\n    image: {{V1}}\n")
	h.apply("shop", `
services:
  web:
    image: {{V1}}
    labels:
      io.balena.features.supervisor-api: "1"
  plain:
    image: {{V1}}
`)
	cs := h.containers("shop")
	env := map[string]string{}
	res, err := h.engine.ContainerInspect(h.ctx, cs["web"].ID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range res.Container.Config.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	key := env["REEVE_SUPERVISOR_API_KEY"]
	if key == "" || env["BALENA_SUPERVISOR_API_KEY"] != key || env["RESIN_SUPERVISOR_API_KEY"] != key {
		t.Fatalf("labelled service env has no supervisor key under every name: %v", env)
	}
	if key == h.main.Agent().APIKey() {
		t.Fatal("the service got the device-wide key, not its app's")
	}
	if env["REEVE_SUPERVISOR_ADDRESS"] != "http://"+h.main.Addr() || env["BALENA_SUPERVISOR_PORT"] == "" {
		t.Fatalf("supervisor address %q, port %q; the agent listens on %s", env["REEVE_SUPERVISOR_ADDRESS"], env["BALENA_SUPERVISOR_PORT"], h.main.Addr())
	}
	plain, err := h.engine.ContainerInspect(h.ctx, cs["plain"].ID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range plain.Container.Config.Env {
		if strings.Contains(kv, "SUPERVISOR_API_KEY") {
			t.Fatalf("an unlabelled service got a key: %s", kv)
		}
	}

	ts, _, err := h.client.Target(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	shopUUID, _ := localapi.LocalApp("shop", reeve.Release{}, "x")
	otherUUID, _ := localapi.LocalApp("other", reeve.Release{}, "x")
	dev := ts[h.main.Agent().UUID()]
	shopID, otherID := dev.Apps[shopUUID].ID, dev.Apps[otherUUID].ID
	post := func(appID int64, apikey string) (int, string) {
		url := fmt.Sprintf("http://%s/v2/applications/%d/restart-service?apikey=%s", h.main.Addr(), appID, apikey)
		resp, err := http.Post(url, "application/json", strings.NewReader(`{"serviceName":"plain"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := post(shopID, ""); status != 401 {
		t.Fatalf("no key: %d %s", status, body)
	}
	if status, body := post(otherID, key); status != 403 {
		t.Fatalf("shop's key on another app: %d %s", status, body)
	}
	if c := h.containers("other")["x"]; !c.IsRunning() {
		t.Fatal("a refused request touched the other app")
	}
	if status, body := post(shopID, key); status != 200 {
		t.Fatalf("shop's key on shop: %d %s", status, body)
	}
	if c := h.containers("shop")["plain"]; c.ID == cs["plain"].ID || !c.IsRunning() {
		t.Fatalf("restart-service over HTTP did not recreate plain: %+v", c)
	}
}

// TestRebootRunsTheHostCommand: POST /v1/reboot runs the configured host
// command (a stand-in here), and is refused with 423 while a service holds
// its update lock unless forced.
func TestRebootRunsTheHostCommand(t *testing.T) {
	testimage.RequireDocker(t)
	ctx, cancel := context.WithCancel(context.Background())
	marker := filepath.Join(t.TempDir(), "rebooted")
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	m, err := agentd.New(ctx, agentd.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", Local: true, Logger: log, Namespace: "reboot-test",
		RebootCommand: []string{"sh", "-c", "echo reboot >> " + marker},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	reboot := func(body string) int {
		req, _ := http.NewRequest("POST", "http://"+m.Addr()+"/v1/reboot", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+m.Agent().APIKey())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// An app whose service holds its lock: a target with one app, and the
	// lock file where the agent looks for it.
	uuid, app := localapi.LocalApp("locked", reeve.Release{Services: map[string]reeve.Service{
		"web": {Image: "registry.invalid/web:1", Running: true}}}, "c0ffee00c0ffee00")
	a := m.Agent()
	if _, err := a.SetTarget(ctx, localapi.WithApp(nil, a.UUID(), "dev", uuid, app)); err != nil {
		t.Fatal(err)
	}
	lockDir := a.LockDir(uuid, "web")
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lockDir, "updates.lock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if status := reboot(`{}`); status != http.StatusLocked {
		t.Fatalf("reboot under a lock: %d, want 423", status)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatal("the host command ran although a service holds its lock")
	}
	if status := reboot(`{"force":true}`); status != http.StatusAccepted {
		t.Fatalf("forced reboot: %d, want 202", status)
	}
	b, err := os.ReadFile(marker)
	if err != nil || strings.TrimSpace(string(b)) != "reboot" {
		t.Fatalf("the host command did not run: %q %v", b, err)
	}
}

// TestCrashLoopIsRestartedNotAbandoned: a service that exits at once is
// started again and again (by the engine, with a growing delay), never
// given up on; its status says it is crash-looping, with its restart count
// and last exit code.
func TestCrashLoopIsRestartedNotAbandoned(t *testing.T) {
	h := newHarness(t)
	h.applyNoWait("crashy", `
services:
  boom:
    image: {{V1}}
    environment:
      TESTPROG_EXIT: "3"
`)
	var first string
	waitStatus(t, h, func(st agent.Status) bool {
		for _, s := range st.Services {
			if s.Service != "boom" {
				continue
			}
			if first == "" {
				first = s.ContainerID
			}
			return s.RestartCount >= 3 && s.ExitCode != nil && *s.ExitCode == 3
		}
		return false
	})
	st := h.main.Agent().Status()
	s := st.Services[0]
	if s.ContainerID != first && first != "" {
		t.Errorf("the crashing container was replaced (%s → %s): the engine should restart the same one", first, s.ContainerID)
	}
	if s.Status == agent.SvcRunning {
		t.Errorf("a crash-looping service shows as running: %+v", s)
	}
	if s.Status == agent.SvcRestarting && !strings.Contains(s.Detail, "crash loop") {
		t.Errorf("detail %q does not say it is crash-looping", s.Detail)
	}
	// Still being restarted later: the count keeps growing.
	n := s.RestartCount
	waitStatus(t, h, func(st agent.Status) bool { return len(st.Services) == 1 && st.Services[0].RestartCount > n })
}
