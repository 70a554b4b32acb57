package agentd_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/dependent"
	"reeve.dev/reeve/internal/fleetlink"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd"
	"reeve.dev/reeve/internal/serverd/serverdtest"
	"reeve.dev/reeve/internal/testimage"
)

// fleetRig is a real fleet server and a real agent on the real engine,
// talking over loopback HTTP, as on a device.
type fleetRig struct {
	t      *testing.T
	ctx    context.Context
	srv    *serverd.Main
	op     *serverapi.Client
	agent  *agentd.Main
	local  *localapi.Client
	rt     *docker.Runtime
	engine *client.Client
	reg    *testimage.Registry
	fleet  reeve.Fleet
	uuid   string
	log    *slog.Logger
}

func newFleetRig(t *testing.T) *fleetRig {
	t.Helper()
	testimage.RequireDocker(t)
	ctx, cancel := context.WithCancel(context.Background())
	r := &fleetRig{t: t, ctx: ctx, reg: testimage.StartRegistry(t)}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r.log = log

	const token = "fleet-e2e-admin-token-0123456789"
	r.srv = serverdtest.Start(t, token, log.With("role", "server"))
	var err error
	r.op = serverapi.NewClient(r.srv.URL(), token, nil)

	r.fleet, err = r.op.CreateFleet(ctx, serverapi.CreateFleetRequest{Name: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := r.op.CreateKey(ctx, "e2e", serverapi.CreateKeyRequest{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// config.json as `reeve key create` prints it.
	confPath := filepath.Join(t.TempDir(), "config.json")
	conf, _ := json.Marshal(map[string]string{"apiEndpoint": r.srv.URL(), "provisioningKey": key.Key})
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := "fleet-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	r.agent, err = agentd.New(ctx, agentd.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", ConfigPath: confPath, Logger: log.With("role", "agent"), Namespace: ns,
		Agent: agent.Config{NoopDelay: 100 * time.Millisecond, ReconcileInterval: time.Second,
			BackoffMin: 100 * time.Millisecond, BackoffMax: 2 * time.Second},
		Link: fleetlink.LinkConfig{ReportInterval: 200 * time.Millisecond, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second},
		// Hooks are paced as on a device, only faster.
		Dependents: dependent.Config{HookInterval: 2 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- r.agent.Run(ctx) }()
	r.uuid = r.agent.Agent().UUID()
	r.local = localapi.NewClient(r.agent.Addr()).WithKey(r.agent.Agent().APIKey())
	if r.rt, err = docker.New(ctx, docker.Options{Namespace: ns}); err != nil {
		t.Fatal(err)
	}
	if r.engine, err = client.New(client.FromEnv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-agentDone:
			if err != nil {
				t.Errorf("agent stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("agent did not stop within 30 s")
		}
		fromRegistry := func(ref string) bool { return strings.HasPrefix(ref, r.reg.Host()+"/") }
		if err := r.rt.RemoveAll(context.Background(), fromRegistry); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		r.rt.Close()
		r.engine.Close()
	})
	return r
}

func (r *fleetRig) push(yml string) reeve.FleetRelease {
	r.t.Helper()
	rel, created, err := r.op.Push(r.ctx, "e2e", []byte(yml))
	if err != nil || !created {
		r.t.Fatalf("push: created=%v err=%v", created, err)
	}
	return rel
}

// waitRunning waits until the device's one service runs release commit,
// as the server sees it (reported by the agent) and as the engine does.
func (r *fleetRig) waitRunning(commit string) reeve.ServiceState {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		d, derr := r.op.Device(r.ctx, r.uuid)
		snap, serr := r.rt.Snapshot(r.ctx)
		var running []reeve.ServiceState
		if serr == nil {
			for _, c := range snap.Containers {
				if c.Status == reeve.StatusRunning {
					running = append(running, c)
				}
			}
		}
		reported := derr == nil && d.State.Commit != nil && *d.State.Commit == commit
		if reported && len(running) == 1 && running[0].Commit == commit {
			return running[0]
		}
		if time.Now().After(deadline) {
			st, _ := r.local.Status(r.ctx)
			r.t.Fatalf("release %s not running and reported in 2 min: device %+v (err %v), containers %v (err %v), agent %+v",
				commit, d.State, derr, running, serr, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *fleetRig) env(id string) []string {
	r.t.Helper()
	res, err := r.engine.ContainerInspect(r.ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	return res.Container.Config.Env
}

// TestFleetEndToEnd: a device provisions itself from config.json, runs
// each release pushed to its fleet, gets fleet variables in its
// containers, goes back to a release it is pinned to, and keeps its apps
// when its key is revoked.
func TestFleetEndToEnd(t *testing.T) {
	r := newFleetRig(t)
	v1 := r.reg.Push(t, "svc", "v1", map[string]string{"/version": "v1"})
	v2 := r.reg.Push(t, "svc", "v2", map[string]string{"/version": "v2"})

	// Provisioned: the device is in the fleet and online.
	waitUntil(t, "the device registers and polls", func() bool {
		d, err := r.op.Device(r.ctx, r.uuid)
		return err == nil && d.Online && d.Fleet == "e2e"
	})

	rel1 := r.push("services:\n  web:\n    image: " + v1 + "\n")
	c1 := r.waitRunning(rel1.Commit)
	rel2 := r.push("services:\n  web:\n    image: " + v2 + "\n")
	c2 := r.waitRunning(rel2.Commit)
	if c2.ID == c1.ID || c2.Image != v2 {
		t.Fatalf("v2 runs in %s (%s), v1 was %s", c2.ID, c2.Image, c1.ID)
	}

	// A fleet variable recreates the service with it.
	if _, err := r.op.SetVar(r.ctx, reeve.VarEnv, serverapi.SetVarRequest{Fleet: "e2e", Name: "GREETING", Value: "hello fleet"}); err != nil {
		t.Fatal(err)
	}
	var c3 reeve.ServiceState
	waitUntil(t, "the service is recreated with the fleet variable", func() bool {
		c3 = r.waitRunning(rel2.Commit)
		return c3.ID != c2.ID && slices.Contains(r.env(c3.ID), "GREETING=hello fleet")
	})
	// A device+service variable wins over it.
	if _, err := r.op.SetVar(r.ctx, reeve.VarEnv, serverapi.SetVarRequest{Device: r.uuid, Service: "web", Name: "GREETING", Value: "hello device"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the device+service variable wins", func() bool {
		c := r.waitRunning(rel2.Commit)
		return slices.Contains(r.env(c.ID), "GREETING=hello device")
	})

	// Pinned to v1, the device goes back.
	if _, err := r.op.UpdateDevice(r.ctx, r.uuid, serverapi.UpdateDeviceRequest{PinnedRelease: &rel1.Commit}); err != nil {
		t.Fatal(err)
	}
	back := r.waitRunning(rel1.Commit)
	if back.Image != v1 {
		t.Fatalf("pinned to v1, runs %s", back.Image)
	}

	// An app on the device tags it through the agent's API.
	req, _ := http.NewRequest("PATCH", "http://"+r.agent.Addr()+"/v2/device/tags?apikey="+r.agent.Agent().APIKey(),
		strings.NewReader(`{"tags":{"site":"berlin"}}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PATCH /v2/device/tags through the agent: %d", resp.StatusCode)
	}
	if d, err := r.op.Device(r.ctx, r.uuid); err != nil || d.Tags["site"] != "berlin" {
		t.Fatalf("the server's device after the agent tagged it: %+v (%v)", d.Tags, err)
	}

	// Revoked: the device says so and keeps running what it runs.
	if err := r.op.RevokeDeviceKey(r.ctx, r.uuid); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the agent reports it was refused", func() bool {
		st, err := r.local.Status(r.ctx)
		return err == nil && st.Fleet != nil && st.Fleet.Unauthorized
	})
	st, _ := r.local.Status(r.ctx)
	if !strings.Contains(st.Fleet.PollError+st.Fleet.ReportError, "revoked") {
		t.Errorf("the agent's status does not say its key was revoked: %+v", st.Fleet)
	}
	snap, err := r.rt.Snapshot(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Containers) != 1 || snap.Containers[0].ID != back.ID || snap.Containers[0].Status != reeve.StatusRunning {
		t.Fatalf("after its key was revoked the device runs %v; it must keep %s running", snap.Containers, back.ID)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
