package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/gateway/driver/drivertest"
)

// peer is the boards of a lab, as the suite sees them.
type peer struct{ lab *Lab }

func (p peer) board(t testing.TB, id string) Board {
	t.Helper()
	b, ok := p.lab.Get(id)
	if !ok {
		t.Fatalf("no board %s", id)
	}
	return b
}

func (p peer) Add(_ testing.TB, id, commit string)    { p.lab.Add(id, "sim", commit) }
func (p peer) Remove(_ testing.TB, id string)         { p.lab.Update(id, func(b *Board) { b.Online = false }) }
func (p peer) Running(t testing.TB, id string) string { return p.board(t, id).Commit }
func (p peer) Restarts(t testing.TB, id string) int   { return p.board(t, id).Restarts }
func (p peer) Identified(t testing.TB, id string) int { return p.board(t, id).Identified }
func (p peer) Log(_ testing.TB, id, message string)   { p.lab.Log(id, message) }
func (p peer) Configured(t testing.TB, id string) (env, config map[string]string) {
	b := p.board(t, id)
	return b.Env, b.Config
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) drivertest.Setup {
		lab := NewLab()
		return drivertest.Setup{Driver: NewDriver(lab), Peer: peer{lab}, App: driver.App{ID: 1, UUID: "app", Name: "sensors", HostType: "sim"}}
	})
}

func fw(t *testing.T, commit string, size int) driver.Firmware {
	dir := t.TempDir()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i)
	}
	if err := os.WriteFile(filepath.Join(dir, "fw.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return driver.Firmware{Commit: commit, Dir: dir, File: "fw.bin", Size: int64(size), SHA256: hex.EncodeToString(sum[:])}
}

func TestFaults(t *testing.T) {
	d, err := New(map[string]string{"devices": "4", "commit": "c1", "chunk_size": "1000", "faults": "sim-0001=reject,sim-0002=drop,sim-0003=brownout,sim-0004=offline"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d.Open(ctx, driver.App{})
	lab := d.(*Driver).Lab()
	f := fw(t, "c2", 10_000)
	var ue *driver.UpdateError
	if err := d.Update(ctx, "sim-0001", f, func(int) {}); !errors.As(err, &ue) || ue.Reason == "" {
		t.Errorf("reject: %v, want an UpdateError with a reason", err)
	}
	// A drop breaks the link half way; the retry resumes from there.
	var first []int
	if err := d.Update(ctx, "sim-0002", f, func(p int) { first = append(first, p) }); !errors.Is(err, driver.ErrOffline) {
		t.Fatalf("drop: %v, want ErrOffline", err)
	}
	var second []int
	if err := d.Update(ctx, "sim-0002", f, func(p int) { second = append(second, p) }); err != nil {
		t.Fatalf("retry after a drop: %v", err)
	}
	if len(second) == 0 || second[0] < 40 {
		t.Errorf("the retry started at %v %%, want it to resume near half", second)
	}
	if b, _ := lab.Get("sim-0002"); b.Commit != "c2" {
		t.Errorf("after the retry the board runs %q", b.Commit)
	}
	// A brown-out: the board reboots on its old firmware.
	if err := d.Update(ctx, "sim-0003", f, func(int) {}); !errors.As(err, &ue) {
		t.Errorf("brown-out: %v, want an UpdateError", err)
	}
	if b, _ := lab.Get("sim-0003"); b.Commit != "c1" || b.Restarts != 1 {
		t.Errorf("after a brown-out: %+v", b)
	}
	if err := d.Update(ctx, "sim-0004", f, func(int) {}); !errors.Is(err, driver.ErrOffline) {
		t.Errorf("offline: %v, want ErrOffline", err)
	}
	// A damaged image is refused by the board.
	bad := f
	bad.SHA256 = "00"
	if err := d.Update(ctx, "sim-0002", bad, func(int) {}); !errors.As(err, &ue) {
		t.Errorf("checksum mismatch: %v, want an UpdateError", err)
	}
	if _, err := New(map[string]string{"faults": "nobody=reject"}); err == nil {
		t.Error("a fault for a board that does not exist was taken")
	}
}
