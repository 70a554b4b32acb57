package agentd_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

// gatewayApp stands in for the gateway application (the edge node
// manager): it talks to the agent's API with the agent's key, as a
// service labelled for the supervisor API does, and receives hooks.
type gatewayApp struct {
	t    *testing.T
	api  string // the agent's API, http://host:port
	key  string
	hook *httptest.Server

	mu     sync.Mutex
	hooks  []gotHook
	answer map[string]int // method → status to answer hooks with
}

type gotHook struct {
	Method string
	UUID   string
	Body   map[string]any
}

func newGatewayApp(t *testing.T, api, key string) *gatewayApp {
	g := &gatewayApp{t: t, api: "http://" + api, key: key, answer: map[string]int{}}
	g.hook = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uuid, ok := strings.CutPrefix(r.URL.Path, "/v1/devices/")
		if !ok {
			http.Error(w, "no such route", http.StatusNotFound)
			return
		}
		var body map[string]any
		if r.Method == http.MethodPut {
			json.NewDecoder(r.Body).Decode(&body)
		}
		g.mu.Lock()
		g.hooks = append(g.hooks, gotHook{r.Method, uuid, body})
		code := g.answer[r.Method]
		g.mu.Unlock()
		if code == 0 {
			code = http.StatusOK
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(g.hook.Close)
	return g
}

// call sends a request to the agent's API (with the key unless noKey) and
// checks its status code.
func (g *gatewayApp) call(method, path, body string, want int, noKey ...bool) []byte {
	g.t.Helper()
	req, err := http.NewRequest(method, g.api+path, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	if len(noKey) == 0 {
		req.Header.Set("Authorization", "Bearer "+g.key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		g.t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, resp.StatusCode, want, b)
	}
	return b
}

// waitHook waits for a hook matching ok and returns it.
func (g *gatewayApp) waitHook(what string, ok func(gotHook) bool) gotHook {
	g.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		g.mu.Lock()
		for _, h := range g.hooks {
			if ok(h) {
				g.mu.Unlock()
				return h
			}
		}
		seen := fmt.Sprint(g.hooks)
		g.mu.Unlock()
		if time.Now().After(deadline) {
			g.t.Fatalf("no hook %s within 2 min; got %s", what, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (g *gatewayApp) hookCount(method, uuid string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, h := range g.hooks {
		if h.Method == method && h.UUID == uuid {
			n++
		}
	}
	return n
}

// eventually retries check until it returns "" or two minutes pass.
func eventually(t *testing.T, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDependentDevicesEndToEnd runs the whole sequence a gateway performs,
// against a real agent on the real engine and a real fleet server: the
// request sequence of the original edge node manager, with every status
// code checked, then hooks for a new release and a removal.
func TestDependentDevicesEndToEnd(t *testing.T) {
	r := newFleetRig(t)
	ctx := r.ctx
	g := newGatewayApp(t, r.agent.Addr(), r.agent.Agent().APIKey())

	// The gateway fleet runs the gateway application; its environment
	// says where hooks go.
	if _, err := r.op.SetVar(ctx, reeve.VarEnv, serverapi.SetVarRequest{Fleet: "e2e", Name: "REEVE_DEPENDENT_DEVICES_HOOK_ADDRESS", Value: g.hook.URL}); err != nil {
		t.Fatal(err)
	}
	gwImage := r.reg.Push(t, "enm", "1", map[string]string{"/version": "enm"})
	gwRel := r.push("services:\n  enm:\n    image: " + gwImage + "\n")
	gwContainer := r.waitRunning(gwRel.Commit)

	// A dependent fleet and its first firmware release.
	depFleet, err := r.op.CreateFleet(ctx, serverapi.CreateFleetRequest{Name: "sensors", Parent: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	fw1 := r.reg.Push(t, "firmware", "1", map[string]string{"/assets/sensor.bin": "FIRMWARE-ONE", "/assets/conf/rate.txt": "5"})
	rel1, _, err := r.op.Push(ctx, "sensors", []byte("services:\n  firmware:\n    image: "+fw1+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	appID := depFleet.ID

	// The edge node manager's sequence.
	// 1. Is the agent up? GET / without a key answers 401.
	g.call("GET", "/", "", http.StatusUnauthorized, true)
	// 2. Which dependent apps are there? (Waits for the target.)
	eventually(t, "the dependent app reaches the agent", func() string {
		var apps []map[string]any
		json.Unmarshal(g.call("GET", "/v1/dependent-apps", "", http.StatusOK), &apps)
		if len(apps) == 1 && apps[0]["commit"] == rel1.Commit && apps[0]["id"] == float64(appID) {
			return ""
		}
		return fmt.Sprintf("apps %v", apps)
	})
	// 3. Known devices: none yet.
	if b := g.call("GET", "/v1/devices", "", http.StatusOK); strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("devices before provisioning: %s", b)
	}
	// 4. Provisioning: bad appIds refused, then a device.
	g.call("POST", "/v1/devices", `{"appId": "sensors", "device_type": "esp32"}`, http.StatusBadRequest)
	g.call("POST", "/v1/devices", `{"appId": 999999, "device_type": "esp32"}`, http.StatusNotFound)
	var dev map[string]any
	json.Unmarshal(g.call("POST", "/v1/devices", fmt.Sprintf(`{"appId": %d, "device_type": "esp32", "local_id": "ab:cd:ef"}`, appID), http.StatusCreated), &dev)
	uuid, _ := dev["uuid"].(string)
	if !reeve.ValidUUID(uuid) || dev["name"] == "" {
		t.Fatalf("provisioned %v", dev)
	}
	// 5. It is listed, here and on the server.
	g.call("GET", "/v1/devices/"+uuid, "", http.StatusOK)
	g.call("GET", "/v1/devices/ffffffffffffffffffffffffffffffff", "", http.StatusNotFound)
	views, err := r.op.Devices(ctx, "sensors")
	if err != nil || len(views) != 1 || views[0].UUID != uuid || views[0].Gateway != r.uuid || views[0].LocalID != "ab:cd:ef" {
		t.Fatalf("server's dependent devices %+v, %v", views, err)
	}
	// 6. Status and is_online, bad types refused.
	g.call("PUT", "/v1/devices/"+uuid, `{"is_online": "yes"}`, http.StatusBadRequest)
	g.call("PUT", "/v1/devices/"+uuid, `{"environment": "A=1"}`, http.StatusBadRequest)
	g.call("PUT", "/v1/devices/"+uuid, `{}`, http.StatusBadRequest)
	g.call("PUT", "/v1/devices/"+uuid, `{"status": "Idle", "is_online": true}`, http.StatusOK)
	eventually(t, "the server hears the device's status", func() string {
		v, err := r.op.Device(ctx, uuid)
		if err == nil && v.State.Status != nil && *v.State.Status == "Idle" && v.State.IsOnline != nil && *v.State.IsOnline && v.Online {
			return ""
		}
		return fmt.Sprintf("device %+v, %v", v, err)
	})
	// 7. Logs, read back from the server as `reeve logs` does.
	g.call("POST", "/v1/devices/"+uuid+"/logs", `{"message": "sensor booted", "timestamp": 1767225600000, "isSystem": false}`, http.StatusAccepted)
	g.call("POST", "/v1/devices/"+uuid+"/logs", `{"message": 42}`, http.StatusBadRequest)
	eventually(t, "the device's log line reaches the server", func() string {
		var got []reeve.LogLine
		err := r.op.Logs(ctx, uuid, serverapi.LogQuery{}, func(l reeve.LogLine) error { got = append(got, l); return nil })
		if err == nil && len(got) == 1 && got[0].Message == "sensor booted" && got[0].Timestamp.Equal(time.UnixMilli(1767225600000)) {
			return ""
		}
		return fmt.Sprintf("lines %+v, %v", got, err)
	})

	// 8. A hook tells the gateway application to install release 1.
	h := g.waitHook("for release 1", func(h gotHook) bool { return h.Method == "PUT" && h.UUID == uuid })
	if h.Body["commit"] != rel1.Commit || h.Body["appId"] != float64(appID) {
		t.Fatalf("hook body %v, want commit %s app %d", h.Body, rel1.Commit, appID)
	}
	// 9. It downloads the firmware and checks its bytes.
	files := untar(t, g.call("GET", fmt.Sprintf("/v1/dependent-apps/%d/assets/%s", appID, rel1.Commit), "", http.StatusOK))
	if files["sensor.bin"] != "FIRMWARE-ONE" || files["conf/rate.txt"] != "5" || len(files) != 2 {
		t.Fatalf("firmware files %v", files)
	}
	g.call("GET", fmt.Sprintf("/v1/dependent-apps/%d/assets/%s", appID, "0000000"), "", http.StatusNotFound)
	// 10. It reports the device runs it: no more hooks for it.
	g.call("PUT", "/v1/devices/"+uuid, fmt.Sprintf(`{"commit": %q, "status": "Idle"}`, rel1.Commit), http.StatusOK)
	puts := g.hookCount("PUT", uuid)

	// A new release: a hook for it (answered 202, accepted).
	g.mu.Lock()
	g.answer["PUT"] = http.StatusAccepted
	g.mu.Unlock()
	fw2 := r.reg.Push(t, "firmware", "2", map[string]string{"/assets/sensor.bin": "FIRMWARE-TWO"})
	rel2, _, err := r.op.Push(ctx, "sensors", []byte("services:\n  firmware:\n    image: "+fw2+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	g.waitHook("for release 2", func(h gotHook) bool { return h.Method == "PUT" && h.UUID == uuid && h.Body["commit"] == rel2.Commit })
	if n := g.hookCount("PUT", uuid); n != puts+1 {
		t.Fatalf("%d hooks after release 2, want %d: one per target", n, puts+1)
	}
	files = untar(t, g.call("GET", fmt.Sprintf("/v1/dependent-apps/%d/assets/%s", appID, rel2.Commit), "", http.StatusOK))
	if files["sensor.bin"] != "FIRMWARE-TWO" {
		t.Fatalf("release 2 firmware %v", files)
	}

	// Removed on the server: the gateway application is told (DELETE); the
	// agent forgets the device once it answers 200.
	if err := r.op.DeleteDevice(ctx, uuid); err != nil {
		t.Fatal(err)
	}
	g.waitHook("DELETE", func(h gotHook) bool { return h.Method == "DELETE" && h.UUID == uuid })
	eventually(t, "the agent forgets the removed device", func() string {
		req, _ := http.NewRequest("GET", g.api+"/v1/devices/"+uuid, nil)
		req.Header.Set("Authorization", "Bearer "+g.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return ""
		}
		if resp.StatusCode != http.StatusGone {
			t.Fatalf("a device being deleted answered %d, want 410 then 404", resp.StatusCode)
		}
		return "still marked for deletion"
	})

	// The gateway's own service was never disturbed.
	snap, err := r.rt.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Containers) != 1 || snap.Containers[0].ID != gwContainer.ID || snap.Containers[0].Status != reeve.StatusRunning {
		t.Fatalf("the gateway's containers changed: %+v", snap.Containers)
	}
}

// untar returns the regular files of a tar, name → content.
func untar(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("firmware tar: %v", err)
		}
		if h.Typeflag == tar.TypeReg {
			c, _ := io.ReadAll(tr)
			out[h.Name] = string(c)
		}
	}
}
