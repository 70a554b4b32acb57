package agentd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/compose"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/testimage"
)

// harness runs the real agent wiring (agentd) against the real engine, with
// images from an in-process registry.
type harness struct {
	t        *testing.T
	ctx      context.Context
	reg      *testimage.Registry
	main     *agentd.Main
	client   *localapi.Client
	rt       *docker.Runtime
	engine   *client.Client
	ns       string
	hostDir  string // bind-mounted into test services at /host
	v1, v2   string
	cancel   context.CancelFunc
	finished chan error
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	testimage.RequireDocker(t)
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, ctx: ctx, cancel: cancel, reg: testimage.StartRegistry(t), finished: make(chan error, 1)}
	h.v1 = h.reg.Push(t, "svc", "v1", map[string]string{"/version": "v1"})
	h.v2 = h.reg.Push(t, "svc", "v2", map[string]string{"/version": "v2"})
	h.ns = "e2e-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	h.hostDir = t.TempDir()
	if err := os.Chmod(h.hostDir, 0o777); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	m, err := agentd.New(ctx, agentd.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", Local: true, Logger: log, Namespace: h.ns,
		Agent: agent.Config{NoopDelay: 100 * time.Millisecond, ReconcileInterval: time.Second,
			BackoffMin: 100 * time.Millisecond, BackoffMax: 2 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	h.main = m
	h.client = localapi.NewClient(m.Addr()).WithKey(m.Agent().APIKey())
	go func() { h.finished <- m.Run(ctx) }()
	h.rt, err = docker.New(ctx, docker.Options{Namespace: h.ns})
	if err != nil {
		t.Fatal(err)
	}
	h.engine, err = client.New(client.FromEnv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.close)
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// close stops the agent and removes everything it made.
func (h *harness) close() {
	h.cancel()
	select {
	case err := <-h.finished:
		if err != nil {
			h.t.Errorf("agent stopped with: %v", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Error("agent did not stop within 30 s")
	}
	// Images pulled from this test's registry go too.
	fromRegistry := func(ref string) bool { return strings.HasPrefix(ref, h.reg.Host()+"/") }
	if err := h.rt.RemoveAll(context.Background(), fromRegistry); err != nil {
		h.t.Errorf("cleanup: %v", err)
		h.dumpContainers()
	}
	h.rt.Close()
	h.engine.Close()
}

// dumpContainers logs every container on the engine, to tell what held
// on to something a cleanup could not remove.
func (h *harness) dumpContainers() {
	list, err := h.engine.ContainerList(context.Background(), client.ContainerListOptions{All: true})
	if err != nil {
		h.t.Logf("list containers: %v", err)
		return
	}
	for _, c := range list.Items {
		h.t.Logf("container %.12s image %s (%.19s) names %v state %s %q created %s labels %v", c.ID, c.Image, c.ImageID, c.Names, c.State, c.Status,
			time.Unix(c.Created, 0).UTC().Format(time.RFC3339), c.Labels)
	}
}

// apply sets a compose file (with {{V1}}, {{V2}} and {{HOST}} replaced) as
// the target of app name and waits until it is applied.
func (h *harness) apply(name, yml string) reeve.Release {
	h.t.Helper()
	rel := h.applyNoWait(name, yml)
	h.waitApplied()
	return rel
}

func (h *harness) applyNoWait(name, yml string) reeve.Release {
	h.t.Helper()
	yml = strings.NewReplacer("{{V1}}", h.v1, "{{V2}}", h.v2, "{{HOST}}", h.hostDir).Replace(yml)
	rel, err := compose.Load(h.ctx, []byte(yml), compose.Options{ProjectName: name})
	if err != nil {
		h.t.Fatalf("compose: %v", err)
	}
	if _, _, err := h.client.ApplyApp(h.ctx, name, rel, compose.Commit([]byte(yml))); err != nil {
		h.t.Fatalf("set target: %v", err)
	}
	return rel
}

// waitApplied waits until the agent reports the newest target applied.
func (h *harness) waitApplied() agent.Status {
	h.t.Helper()
	_, version, err := h.client.Target(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	var st localapi.StatusResponse
	for time.Now().Before(deadline) {
		st, err = h.client.Status(h.ctx)
		if err == nil && st.TargetVersion >= version && st.AppState == agent.AppStateApplied {
			return st.Status
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.t.Fatalf("target version %d not applied within 2 min: %+v (err %v)", version, st.Status, err)
	return agent.Status{}
}

// containers returns the app's containers by service name, failing on
// duplicates.
func (h *harness) containers(app string) map[string]reeve.ServiceState {
	h.t.Helper()
	uuid, _ := localapi.LocalApp(app, reeve.Release{}, "x")
	snap, err := h.rt.Snapshot(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]reeve.ServiceState{}
	for _, c := range snap.Containers {
		if c.AppUUID != uuid {
			continue
		}
		if _, dup := out[c.ServiceName]; dup {
			h.t.Fatalf("two containers for service %s", c.ServiceName)
		}
		out[c.ServiceName] = c
	}
	return out
}

func (h *harness) readHost(name string) string {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.hostDir, name))
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

// engineName is the engine's name of an app's network or volume.
func (h *harness) engineName(app, name string) string {
	uuid, _ := localapi.LocalApp(app, reeve.Release{}, "x")
	return h.ns + "_" + uuid + "_" + name
}

// volumeMountpoint is where an app volume's data is on the host.
func (h *harness) volumeMountpoint(app, volume string) string {
	h.t.Helper()
	res, err := h.engine.VolumeInspect(h.ctx, h.engineName(app, volume), client.VolumeInspectOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return res.Volume.Mountpoint
}

// volumeData reads a file from an app volume through its mount point.
func (h *harness) volumeData(app, volume, file string) string {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.volumeMountpoint(app, volume), file))
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

const threeServices = `
services:
  db:
    image: {{V1}}
    environment:
      TESTPROG_NAME: db
      TESTPROG_STARTLOG: /host/starts
      TESTPROG_HEALTHY_AFTER: 300ms
    healthcheck:
      test: ["CMD", "/testprog", "health"]
      interval: 200ms
      retries: 30
    volumes:
      - data:/data
      - {{HOST}}:/host
  api:
    image: {{V1}}
    environment:
      TESTPROG_NAME: api
      TESTPROG_STARTLOG: /host/starts
    depends_on:
      db:
        condition: service_healthy
    volumes:
      - {{HOST}}:/host
    networks: [back, front]
  web:
    image: {{V1}}
    environment:
      TESTPROG_NAME: web
      TESTPROG_STARTLOG: /host/starts
    depends_on: [api]
    volumes:
      - {{HOST}}:/host
    networks: [front]
networks:
  back: {}
  front: {}
volumes:
  data: {}
`

func TestInstallThreeServicesInDependencyOrder(t *testing.T) {
	h := newHarness(t)
	h.apply("shop", threeServices)
	cs := h.containers("shop")
	if len(cs) != 3 {
		t.Fatalf("want 3 containers, got %d", len(cs))
	}
	for name, c := range cs {
		if c.Status != reeve.StatusRunning {
			t.Errorf("%s: status %s, want running", name, c.Status)
		}
	}
	if cs["db"].Health != reeve.HealthHealthy {
		t.Errorf("db health %q, want healthy", cs["db"].Health)
	}
	// Start order from the services' own start log: db, then api once db is
	// healthy, then web.
	var order []string
	for _, line := range strings.Split(strings.TrimSpace(h.readHost("starts")), "\n") {
		order = append(order, strings.Fields(line)[0])
	}
	if strings.Join(order, ",") != "db,api,web" {
		t.Fatalf("start order %v, want db,api,web", order)
	}
	if !(cs["db"].StartedAt.Before(cs["api"].StartedAt) && cs["api"].StartedAt.Before(cs["web"].StartedAt)) {
		t.Errorf("engine start times out of order: db %v api %v web %v", cs["db"].StartedAt, cs["api"].StartedAt, cs["web"].StartedAt)
	}
}

// imageID returns the engine's ID of an image reference.
func (h *harness) imageID(ref string) string {
	h.t.Helper()
	want, _ := reeve.NormalizeImage(ref)
	snap, err := h.rt.Snapshot(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, img := range snap.Images {
		for _, r := range img.Refs {
			if r == want {
				return img.ID
			}
		}
	}
	return ""
}

// imageEvents returns the engine's image events between since and now.
func (h *harness) imageEvents(since time.Time) []events.Message {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	res := h.engine.Events(ctx, client.EventsListOptions{
		Since:   fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		Until:   fmt.Sprintf("%d.%09d", time.Now().Unix(), time.Now().Nanosecond()),
		Filters: client.Filters{}.Add("type", "image"),
	})
	var out []events.Message
	for {
		select {
		case m, ok := <-res.Messages:
			if !ok {
				return out
			}
			out = append(out, m)
		case err := <-res.Err:
			if err != nil && !errors.Is(err, io.EOF) {
				h.t.Fatalf("engine events: %v", err)
			}
			return out
		}
	}
}

// TestUpdateOneServiceUnderEachStrategy changes web's image under each
// strategy and checks that web is replaced in the strategy's order while db
// and api are untouched.
func TestUpdateOneServiceUnderEachStrategy(t *testing.T) {
	for _, strategy := range []string{reeve.StrategyDownloadThenKill, reeve.StrategyKillThenDownload,
		reeve.StrategyDeleteThenDownload, reeve.StrategyHandOver} {
		t.Run(strategy, func(t *testing.T) {
			h := newHarness(t)
			w1 := h.reg.Push(t, "web", "w1", map[string]string{"/version": "w1"})
			w2 := h.reg.Push(t, "web", "w2", map[string]string{"/version": "w2"})
			yml := func(image string) string {
				return fmt.Sprintf(`
services:
  db:
    image: {{V1}}
  api:
    image: {{V1}}
    depends_on: [db]
  web:
    image: %s
    environment:
      TESTPROG_HANDOVER: /tmp/reeve/handover-complete
      TESTPROG_HANDOVER_AFTER: 1s
    labels:
      io.reeve.update.strategy: %s
      io.reeve.update.handover-timeout: "30000"
`, image, strategy)
			}
			h.apply("app", yml(w1))
			if strategy == reeve.StrategyHandOver {
				// The first web signals too, 1 s after it starts: let it do
				// so before the update, so that only the new one's signal
				// can end the hand-over.
				time.Sleep(1500 * time.Millisecond)
			}
			before := h.containers("app")
			oldImage := h.imageID(w1)
			since := time.Now()
			h.apply("app", yml(w2))
			after := h.containers("app")
			if len(after) != 3 {
				t.Fatalf("want 3 containers after update, got %d", len(after))
			}
			for _, svc := range []string{"db", "api"} {
				if after[svc].ID != before[svc].ID || !after[svc].StartedAt.Equal(before[svc].StartedAt) {
					t.Errorf("%s was touched by an update of web", svc)
				}
			}
			web := after["web"]
			if web.ID == before["web"].ID {
				t.Fatal("web was not replaced")
			}
			if want, _ := reeve.NormalizeImage(w2); web.Image != want || web.Status != reeve.StatusRunning {
				t.Fatalf("web runs %s (%s), want %s running", web.Image, web.Status, want)
			}
			// The order of the strategy, from the engine's own events: the
			// pull of w2 (other tests on the engine pull too; a pull's
			// actor is the reference pulled).
			var pulled, deleted time.Time
			for _, m := range h.imageEvents(since) {
				at := time.Unix(0, m.TimeNano)
				switch {
				case m.Action == events.ActionPull && pulled.IsZero() && strings.HasPrefix(m.Actor.ID, h.reg.Host()+"/web"):
					pulled = at
				case m.Action == events.ActionDelete && m.Actor.ID == oldImage && deleted.IsZero():
					deleted = at
				}
			}
			switch strategy {
			case reeve.StrategyDeleteThenDownload:
				if deleted.IsZero() || pulled.IsZero() || !deleted.Before(pulled) {
					t.Errorf("delete-then-download: old image deleted at %v, new pulled at %v: want delete first", deleted, pulled)
				}
			default:
				if pulled.IsZero() {
					t.Errorf("%s: no pull event for the new image", strategy)
				}
				if !deleted.IsZero() && deleted.Before(pulled) {
					t.Errorf("%s: old image deleted before the new one was pulled", strategy)
				}
			}
			if strategy == reeve.StrategyHandOver {
				// The new container ran beside the old one until it signalled.
				oldGone := h.containerEvent(since, before["web"].ID, events.ActionDestroy)
				if oldGone.Before(web.StartedAt.Add(900 * time.Millisecond)) {
					t.Errorf("hand-over: old container removed at %v, before the new one (started %v) signalled after 1 s", oldGone, web.StartedAt)
				}
			} else {
				oldGone := h.containerEvent(since, before["web"].ID, events.ActionDestroy)
				if !oldGone.Before(web.CreatedAt) {
					t.Errorf("%s: old container removed at %v, after the new one was created at %v", strategy, oldGone, web.CreatedAt)
				}
			}
		})
	}
}

// containerEvent returns when a container had an event since a time.
func (h *harness) containerEvent(since time.Time, id string, action events.Action) time.Time {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	now := time.Now()
	res := h.engine.Events(ctx, client.EventsListOptions{
		Since:   fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		Until:   fmt.Sprintf("%d.%09d", now.Unix(), now.Nanosecond()),
		Filters: client.Filters{}.Add("type", "container").Add("container", id).Add("event", string(action)),
	})
	for {
		select {
		case m, ok := <-res.Messages:
			if !ok {
				h.t.Fatalf("no %s event for container %s", action, id)
			}
			return time.Unix(0, m.TimeNano)
		case err := <-res.Err:
			h.t.Fatalf("no %s event for container %s (%v)", action, id, err)
		}
	}
}

func TestRemoveService(t *testing.T) {
	h := newHarness(t)
	h.apply("app", `
services:
  a:
    image: {{V1}}
  b:
    image: {{V1}}
`)
	before := h.containers("app")
	h.apply("app", `
services:
  a:
    image: {{V1}}
`)
	after := h.containers("app")
	if len(after) != 1 || after["a"].ID != before["a"].ID {
		t.Fatalf("after removing b: %v", after)
	}
}

func TestChangeNetwork(t *testing.T) {
	h := newHarness(t)
	h.apply("app", `
services:
  a:
    image: {{V1}}
    networks: [net]
  b:
    image: {{V1}}
networks:
  net: {}
`)
	before := h.containers("app")
	h.apply("app", `
services:
  a:
    image: {{V1}}
    networks: [net]
  b:
    image: {{V1}}
networks:
  net:
    labels:
      tier: back
`)
	after := h.containers("app")
	if after["a"].ID == before["a"].ID {
		t.Error("a uses the changed network but was not recreated")
	}
	if after["b"].ID != before["b"].ID {
		t.Error("b does not use the changed network but was recreated")
	}
	res, err := h.engine.NetworkInspect(h.ctx, h.engineName("app", "net"), client.NetworkInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Network.Labels["tier"] != "back" {
		t.Errorf("network labels %v, want tier=back", res.Network.Labels)
	}
}

func TestChangeVolumeDefinitionKeepsData(t *testing.T) {
	h := newHarness(t)
	yml := func(label, write string) string {
		return fmt.Sprintf(`
services:
  a:
    image: {{V1}}
    environment:
      TESTPROG_WRITE: /data/f=%s
    volumes: [data:/data]
volumes:
  data:
    labels:
      gen: "%s"
`, write, label)
	}
	h.apply("app", yml("1", "first"))
	if got := h.volumeData("app", "data", "f"); got != "first\n" {
		t.Fatalf("volume holds %q", got)
	}
	h.apply("app", yml("2", "second"))
	if got := h.volumeData("app", "data", "f"); got != "first\nsecond\n" {
		t.Fatalf("after the volume's definition changed it holds %q, want both lines", got)
	}
	res, err := h.engine.VolumeInspect(h.ctx, h.engineName("app", "data"), client.VolumeInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Volume.Labels["gen"] != "2" {
		t.Errorf("volume labels %v, want gen=2", res.Volume.Labels)
	}
}

func TestUnpullableImageKeepsRunningRelease(t *testing.T) {
	h := newHarness(t)
	h.apply("app", `
services:
  a:
    image: {{V1}}
`)
	before := h.containers("app")
	missing := h.reg.Host() + "/nope:v9"
	h.applyNoWait("app", `
services:
  a:
    image: `+missing+`
`)
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := h.client.Status(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Services) == 1 && st.Services[0].Error != "" {
			if !strings.Contains(st.Services[0].Error, "nope") {
				t.Errorf("error %q does not name the image", st.Services[0].Error)
			}
			if st.Services[0].Status != agent.SvcRunning {
				t.Errorf("status %q, want the old release still running", st.Services[0].Status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no download error shown: %+v", st.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	after := h.containers("app")
	if after["a"].ID != before["a"].ID || after["a"].Status != reeve.StatusRunning {
		t.Fatal("the running release was touched although the new image cannot be pulled")
	}
}

func TestSameConfigNewReleaseOnlyUpdatesMetadata(t *testing.T) {
	h := newHarness(t)
	h.apply("app", `
services:
  a:
    image: {{V1}}
`)
	before := h.containers("app")
	// A comment changes the commit, not the service.
	h.apply("app", `
# release 2
services:
  a:
    image: {{V1}}
`)
	after := h.containers("app")
	if after["a"].ID != before["a"].ID || !after["a"].StartedAt.Equal(before["a"].StartedAt) {
		t.Fatal("the container was restarted for a release that changed nothing in it")
	}
	if after["a"].Commit == before["a"].Commit {
		t.Fatal("the container's release commit was not updated")
	}
}
