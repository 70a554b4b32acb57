package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/server"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd/serverdtest"
)

// TestOperatorCLIAgainstTheRealServer runs an operator's session with the
// CLI against a real `reeve server` (SQLite file, HTTP over loopback),
// with a device registered through the device API as an agent would.
func TestOperatorCLIAgainstTheRealServer(t *testing.T) {
	isolate(t)
	ctx := context.Background()
	const token = "cli-real-admin-token-0123456789"
	m := serverdtest.Start(t, token, nil)

	mustFail(t, 1, []string{"fleets"}, "unknown command") // a typo is not a crash
	mustFail(t, 1, []string{"fleet", "ls"}, "not logged in")
	mustRun(t, "login", m.URL(), "--token", token)
	mustRun(t, "fleet", "create", "lobby", "--strategy", "hand-over")
	if out := mustRun(t, "fleet", "ls"); !strings.Contains(out, "lobby") || !strings.Contains(out, "hand-over") {
		t.Fatalf("fleet ls:\n%s", out)
	}
	mustFail(t, 1, []string{"fleet", "create", "lobby"}, "already exists")

	// A key as a device config.json, and a device registering with it.
	conf := filepath.Join(t.TempDir(), "config.json")
	mustRun(t, "key", "create", "--fleet", "lobby", "--name", "factory", "-o", conf)
	var dc map[string]string
	b, _ := os.ReadFile(conf)
	if err := json.Unmarshal(b, &dc); err != nil || dc["apiEndpoint"] != m.URL() || len(dc["provisioningKey"]) != 64 {
		t.Fatalf("config.json %s (%v)", b, err)
	}
	uuid := strings.Repeat("ab", 16)
	dev := serverapi.NewClient(m.URL(), dc["provisioningKey"], nil)
	devKey := server.NewSecret()
	if _, err := dev.Register(ctx, serverapi.RegisterRequest{UUID: uuid, DeviceType: "generic-amd64", APIKey: devKey}); err != nil {
		t.Fatal(err)
	}

	// Push: an invalid file is refused here, a valid one lands.
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.yml", "services:\n  web:\n    image: nginx\n    build: .\n")
	mustFail(t, 2, []string{"push", "--fleet", "lobby", "-f", bad}, "build")
	good := writeFile(t, dir, "docker-compose.yml", "services:\n  web:\n    image: registry.example.com/web:1\n")
	if out := mustRun(t, "push", "--fleet", "lobby", "-f", good); !strings.Contains(out, "1 service") {
		t.Fatalf("push:\n%s", out)
	}
	var rels []reeve.FleetRelease
	if err := json.Unmarshal([]byte(mustRun(t, "releases", "--fleet", "lobby", "--json")), &rels); err != nil || len(rels) != 1 {
		t.Fatalf("releases --json: %v %+v", err, rels)
	}

	// Devices, by a prefix of their UUID.
	if out := mustRun(t, "devices", "--fleet", "lobby"); !strings.Contains(out, uuid[:7]) {
		t.Fatalf("devices:\n%s", out)
	}
	mustRun(t, "device", "rename", uuid[:8], "hall-1")
	mustRun(t, "device", "tag", uuid[:8], "site=berlin")
	mustRun(t, "device", "pin", uuid[:8], rels[0].Commit)
	var dv serverapi.DeviceView
	if err := json.Unmarshal([]byte(mustRun(t, "device", "show", uuid, "--json")), &dv); err != nil {
		t.Fatal(err)
	}
	if dv.Name != "hall-1" || dv.Tags["site"] != "berlin" || dv.PinnedRelease != rels[0].Commit || dv.TargetCommit != rels[0].Commit || dv.Fleet != "lobby" {
		t.Fatalf("device show: %+v", dv)
	}

	// Variables at every scope, and the config scope rule.
	mustRun(t, "env", "set", "A=fleet", "--fleet", "lobby")
	mustRun(t, "env", "set", "A=service", "--fleet", "lobby", "--service", "web")
	mustRun(t, "env", "set", "A=device", "--device", uuid[:8])
	mustRun(t, "env", "set", "A=both", "--device", uuid[:8], "--service", "web")
	mustRun(t, "config", "set", "REEVE_SUPERVISOR_POLL_INTERVAL=30000", "--fleet", "lobby")
	mustFail(t, 2, []string{"config", "set", "X=1", "--fleet", "lobby", "--service", "web"}, "no service scope")
	if out := mustRun(t, "env", "ls", "--device", uuid[:8], "--service", "web"); !strings.Contains(out, "both") || strings.Contains(out, "fleet") {
		t.Fatalf("env ls at device+service scope:\n%s", out)
	}
	// What the device is served reflects all of it.
	webEnv := func() (string, string) {
		t.Helper()
		st, err := dev.WithToken(devKey).State(ctx, uuid, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		d := st.Target[uuid]
		for _, app := range d.Apps {
			for _, rel := range app.Releases {
				return rel.Services["web"].Environment["A"], d.Config["REEVE_SUPERVISOR_POLL_INTERVAL"]
			}
		}
		t.Fatalf("no release served: %+v", st.Target)
		return "", ""
	}
	if a, poll := webEnv(); a != "both" || poll != "30000" {
		t.Fatalf("served A=%q poll=%q, want the device+service value and the fleet config", a, poll)
	}
	mustRun(t, "env", "rm", "A", "--device", uuid[:8], "--service", "web")
	if a, _ := webEnv(); a != "device" {
		t.Fatalf("served A=%q after removing the device+service value, want the device one", a)
	}
	if out := mustRun(t, "env", "ls", "--device", uuid[:8], "--service", "web", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("env ls after rm: %s", out)
	}

	// A fleet of dependent devices under lobby, whose device carries one.
	out := mustRun(t, "fleet", "create", "sensors", "--parent", "lobby", "--type", "esp32")
	if !strings.Contains(out, "created dependent fleet sensors") {
		t.Fatalf("fleet create --parent:\n%s", out)
	}
	if out := mustRun(t, "fleet", "ls"); !strings.Contains(out, "dependent") {
		t.Fatalf("fleet ls shows no dependent fleet:\n%s", out)
	}
	twoServices := writeFile(t, dir, "two.yml", "services:\n  fw:\n    image: registry.example.com/fw:1\n  web:\n    image: registry.example.com/web:1\n")
	mustFail(t, 2, []string{"push", "--fleet", "sensors", "-f", twoServices}, "the server refused", "exactly one service")
	firmware := writeFile(t, dir, "firmware.yml", "services:\n  firmware:\n    image: registry.example.com/fw:1\n")
	mustRun(t, "push", "--fleet", "sensors", "-f", firmware)
	var fleets []reeve.Fleet
	if err := json.Unmarshal([]byte(mustRun(t, "fleet", "ls", "--json")), &fleets); err != nil || len(fleets) != 2 || fleets[1].Name != "sensors" {
		t.Fatalf("fleet ls --json: %v %+v", err, fleets)
	}
	sensors := fleets[1]
	if !sensors.Dependent() || sensors.ParentID != fleets[0].ID {
		t.Fatalf("fleet ls --json shows sensors as %+v", sensors)
	}
	probe, err := dev.WithToken(devKey).RegisterDependent(ctx, uuid, serverapi.RegisterDependentRequest{AppID: sensors.ID, DeviceType: "esp32", Name: "probe", LocalID: "serial-1"})
	if err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, "devices", "--fleet", "sensors"); !strings.Contains(out, "probe") || !strings.Contains(out, "GATEWAY") || !strings.Contains(out, uuid[:7]) {
		t.Fatalf("devices --fleet sensors:\n%s", out)
	}
	if out := mustRun(t, "device", "show", probe.UUID); !strings.Contains(out, "Gateway:") || !strings.Contains(out, "serial-1") {
		t.Fatalf("device show of a dependent device:\n%s", out)
	}
	mustFail(t, 1, []string{"fleet", "rm", "lobby"}, "device")
	mustFail(t, 1, []string{"device", "rm", uuid}, "remove them first")
	mustRun(t, "device", "rm", probe.UUID)
	mustRun(t, "fleet", "rm", "sensors")

	// Revoke and remove.
	mustRun(t, "device", "revoke-key", uuid[:8])
	mustFail(t, 1, []string{"fleet", "rm", "lobby"}, "device")
	mustRun(t, "device", "rm", uuid[:8])
	mustRun(t, "fleet", "rm", "lobby")
	if out := mustRun(t, "fleet", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("fleet ls after rm: %s", out)
	}
}
