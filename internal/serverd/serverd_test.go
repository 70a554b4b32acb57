package serverd_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/server"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd"
	"reeve.dev/reeve/internal/serverd/serverdtest"
)

const token = "serverd-test-admin-token-0123456789"

// The logs live in logs.db beside server.db, and the log options reach
// the pruning: a device keeps no more lines than --log-max-lines.
func TestLogsWiring(t *testing.T) {
	dir := t.TempDir()
	m, _ := serverdtest.StartConfig(t, serverd.Config{DataDir: dir, AdminToken: token, Logs: server.LogOptions{MaxLines: 2, PruneInterval: time.Millisecond}})
	for _, f := range []string{"server.db", "logs.db"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	ctx := t.Context()
	op := serverapi.NewClient(m.URL(), token, nil)
	if _, err := op.CreateFleet(ctx, serverapi.CreateFleetRequest{Name: "lobby"}); err != nil {
		t.Fatal(err)
	}
	k, err := op.CreateKey(ctx, "lobby", serverapi.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	uuid, key := strings.Repeat("e", 32), server.NewSecret()
	if _, err := serverapi.NewClient(m.URL(), k.Key, nil).Register(ctx, serverapi.RegisterRequest{UUID: uuid, DeviceType: "x", APIKey: key}); err != nil {
		t.Fatal(err)
	}
	body := `{"message":"1"}` + "\n" + `{"message":"2"}` + "\n" + `{"message":"3"}` + "\n" + `{"message":"4"}` + "\n"
	if ack, err := serverapi.NewClient(m.URL(), key, nil).LogStream(ctx, uuid, "", strings.NewReader(body), false); err != nil || ack.Stored != 4 {
		t.Fatalf("%+v %v", ack, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got []string
		err := op.Logs(ctx, uuid, serverapi.LogQuery{}, func(l reeve.LogLine) error {
			got = append(got, l.Message)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, ",") == "3,4" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lines %v after 30 s, want the newest 2", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBadLogOptions(t *testing.T) {
	for _, o := range []server.LogOptions{{MaxLines: -1}, {MaxAge: -time.Hour}} {
		_, err := serverd.New(t.Context(), serverd.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", AdminToken: token, Logs: o})
		if err == nil {
			t.Errorf("options %+v were taken", o)
		}
	}
}
