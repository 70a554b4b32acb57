package agentd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/gateway"
	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/gateway/driver/sim"
	"reeve.dev/reeve/internal/serverapi"
)

// TestGatewayUpdatesSimulatedDevices runs reeve gateway with simulated
// boards against a real agent on the real engine and a real fleet server:
// 20 boards found, provisioned and updated; a faulty one retried and left
// failed with its reason, one whose link drops resumed; pause and resume;
// restart; delete.
func TestGatewayUpdatesSimulatedDevices(t *testing.T) {
	r := newFleetRig(t)
	ctx := r.ctx

	lab := sim.NewLab()
	lab.ChunkSize = 2048
	const boards = 20
	for i := 1; i <= boards; i++ {
		lab.Add(fmt.Sprintf("sim-%04d", i), "sim", "")
	}
	lab.Update("sim-0003", func(b *sim.Board) { b.Fault.DropAt, b.Fault.DropTimes = 0.5, 1 })
	lab.Update("sim-0007", func(b *sim.Board) { b.Fault.BrownOutTimes = 1000 })
	var (
		drvMu sync.Mutex
		drv   *sim.Driver
	)
	g, err := gateway.New(ctx, gateway.Config{
		AgentAddress: "http://" + r.agent.Addr(), AgentKey: r.agent.Agent().APIKey(),
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", LoopDelay: 300 * time.Millisecond, UpdateRetries: 2,
		LockFile: t.TempDir() + "/updates.lock",
		Drivers: map[string]driver.Factory{"sim": func(map[string]string) (driver.Driver, error) {
			drvMu.Lock()
			defer drvMu.Unlock()
			drv = sim.NewDriver(lab)
			return drv, nil
		}},
		Driver: "sim",
		Logger: r.log.With("role", "gateway"),
	})
	if err != nil {
		t.Fatal(err)
	}
	gwDone := make(chan error, 1)
	gctx, stop := context.WithCancel(ctx)
	go func() { gwDone <- g.Run(gctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-gwDone; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})
	gw := "http://" + g.Addr()

	// The agent's hooks go to the gateway (the device's config says where).
	if _, err := r.op.SetVar(ctx, reeve.VarConfig, serverapi.SetVarRequest{Device: r.uuid, Name: "REEVE_DEPENDENT_DEVICES_HOOK_ADDRESS", Value: gw}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.op.CreateFleet(ctx, serverapi.CreateFleetRequest{Name: "sensors", Parent: "e2e"}); err != nil {
		t.Fatal(err)
	}
	push := func(tag, content string) reeve.FleetRelease {
		img := r.reg.Push(t, "sensor-fw", tag, map[string]string{"/assets/firmware.bin": strings.Repeat(content, 3000)})
		rel, _, err := r.op.Push(ctx, "sensors", []byte("services:\n  firmware:\n    image: "+img+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		return rel
	}
	rel1 := push("1", "one ")

	// Every board is provisioned and updated, but sim-0007, which fails
	// every install and is left failed after two attempts.
	views := func() map[string]serverapi.DeviceView {
		vs, err := r.op.Devices(ctx, "sensors")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]serverapi.DeviceView{}
		for _, v := range vs {
			out[v.LocalID] = v
		}
		return out
	}
	waitFleet := func(what string, ok func(map[string]serverapi.DeviceView) string) map[string]serverapi.DeviceView {
		t.Helper()
		var vs map[string]serverapi.DeviceView
		eventually(t, what, func() string {
			vs = views()
			return ok(vs)
		})
		return vs
	}
	runs := func(commit string, except ...string) func(map[string]serverapi.DeviceView) string {
		return func(vs map[string]serverapi.DeviceView) string {
			if len(vs) != boards {
				return fmt.Sprintf("%d devices on the server, want %d", len(vs), boards)
			}
			for id, v := range vs {
				if strings.Contains(strings.Join(except, ","), id) {
					continue
				}
				if v.State.Commit == nil || *v.State.Commit != commit || v.State.Status == nil || *v.State.Status != "Idle" || !v.Online {
					return fmt.Sprintf("%s: %s", id, stateText(v))
				}
			}
			return ""
		}
	}
	vs := waitFleet("19 boards run release 1", runs(rel1.Commit, "sim-0007"))
	for id, v := range vs {
		if v.Gateway != r.uuid {
			t.Errorf("%s is carried by %q, want this gateway %s", id, v.Gateway, r.uuid)
		}
	}
	waitFleet("sim-0007 failed with its reason", func(vs map[string]serverapi.DeviceView) string {
		v := vs["sim-0007"]
		if v.State.Status != nil && strings.HasPrefix(*v.State.Status, "Update failed (brown-out") {
			return ""
		}
		return stateText(v)
	})
	if b, _ := lab.Get("sim-0003"); b.Commit != rel1.Commit {
		t.Errorf("sim-0003, whose link dropped once, runs %q", b.Commit)
	}
	if b, _ := lab.Get("sim-0007"); b.Commit != "" || b.Restarts != 2 {
		t.Errorf("sim-0007 after its failed installs: commit %q, %d restarts (want none, 2)", b.Commit, b.Restarts)
	}
	// A board's log lines reach the server.
	lab.Log("sim-0002", "temperature 21.5")
	eventually(t, "sim-0002's log line on the server", func() string {
		var got []string
		err := r.op.Logs(ctx, vs["sim-0002"].UUID, serverapi.LogQuery{}, func(l reeve.LogLine) error { got = append(got, l.Message); return nil })
		if err == nil && strings.Contains(strings.Join(got, "\n"), "temperature 21.5") {
			return ""
		}
		return fmt.Sprintf("lines %q, %v", got, err)
	})

	// Pause: the links are released within one round; a new release
	// waits; resume, and it goes out.
	gwCall(t, "PUT", gw+"/v1/enm/status", `{"targetStatus": "Paused"}`, http.StatusOK)
	eventually(t, "the gateway paused", func() string {
		var st gateway.EnmStatus
		json.Unmarshal(gwCall(t, "GET", gw+"/v1/enm/status", "", http.StatusOK), &st)
		drvMu.Lock()
		_, scanErr := drv.Scan(ctx)
		drvMu.Unlock()
		if st.CurrentStatus == gateway.Paused && scanErr != nil {
			return ""
		}
		return fmt.Sprintf("status %+v, driver scan error %v", st, scanErr)
	})
	gwCall(t, "PUT", gw+"/v1/enm/status", `{"targetStatus": "Sleeping"}`, http.StatusBadRequest)
	rel2 := push("2", "two ")
	if b, _ := lab.Get("sim-0001"); b.Commit != rel1.Commit {
		t.Fatalf("a board was updated while the gateway was paused: %q", b.Commit)
	}
	gwCall(t, "PUT", gw+"/v1/enm/status", `{"targetStatus": "Running"}`, http.StatusOK)
	waitFleet("19 boards run release 2", runs(rel2.Commit, "sim-0007"))

	// Restart, by the gateway's own API (by local ID or UUID).
	var dv gateway.DeviceView
	json.Unmarshal(gwCall(t, "GET", gw+"/v1/devices/sim-0005", "", http.StatusOK), &dv)
	before, _ := lab.Get("sim-0005")
	gwCall(t, "PUT", gw+"/v1/devices/"+dv.UUID+"/restart", "", http.StatusAccepted)
	eventually(t, "sim-0005 restarted", func() string {
		if b, _ := lab.Get("sim-0005"); b.Restarts != before.Restarts+1 {
			return fmt.Sprintf("%d restarts, want %d", b.Restarts, before.Restarts+1)
		}
		return ""
	})
	gwCall(t, "PUT", gw+"/v1/devices/nobody/restart", "", http.StatusNotFound)

	// Delete on the server: the agent tells the gateway, which forgets the
	// board and does not provision it again.
	gone := vs["sim-0001"].UUID
	if err := r.op.DeleteDevice(ctx, gone); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the gateway forgets sim-0001", func() string {
		var list []gateway.DeviceView
		json.Unmarshal(gwCall(t, "GET", gw+"/v1/devices", "", http.StatusOK), &list)
		for _, d := range list {
			if d.LocalID == "sim-0001" {
				return "still listed"
			}
		}
		if len(list) != boards-1 {
			return fmt.Sprintf("%d devices listed, want %d", len(list), boards-1)
		}
		return ""
	})
	time.Sleep(time.Second) // a few rounds: it must not come back
	if vs := views(); len(vs) != boards-1 {
		t.Fatalf("%d devices on the server after a removal, want %d", len(vs), boards-1)
	}
}

func stateText(v serverapi.DeviceView) string {
	s := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	return fmt.Sprintf("commit %s status %s online %v", s(v.State.Commit), s(v.State.Status), v.Online)
}

func gwCall(t *testing.T, method, url, body string, want int) []byte {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d, want %d: %s", method, url, resp.StatusCode, want, b.String())
	}
	return b.Bytes()
}
