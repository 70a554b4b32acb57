package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// sysLog records the agent's system messages.
type sysLog struct {
	mu    sync.Mutex
	lines []string // "service: message"
}

func (l *sysLog) add(service, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, service+": "+msg)
}

func (l *sysLog) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.lines, func(x string) bool { return strings.Contains(x, s) })
}

func (l *sysLog) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, x := range l.lines {
		if strings.Contains(x, s) {
			n++
		}
	}
	return n
}

// The device's log tells the operator what the agent did: downloads,
// installs, kills, and an update held by a service's lock, once.
func TestSystemMessages(t *testing.T) {
	rt := newFake()
	log := &sysLog{}
	a, err := New(context.Background(), Config{DataDir: t.TempDir(), Runtime: rt, NoopDelay: 10 * time.Millisecond,
		ReconcileInterval: 20 * time.Millisecond, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		SystemLog: log.add})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := a.SetTarget(ctx, target(a, "c1", "registry.example.com/web:1", nil))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "install", func() bool { st := a.Status(); return st.TargetVersion == v && st.AppState == AppStateApplied })
	for _, want := range []string{
		"web: Downloading image registry.example.com/web:1 for service web",
		"web: Downloaded image registry.example.com/web:1",
		"web: Installing service web (registry.example.com/web:1)",
		"web: Started service web",
	} {
		if !log.has(want) {
			t.Errorf("no system line %q in %q", want, log.lines)
		}
	}

	// A service holds its lock: the update waits, and the log says so
	// once, however many rounds the loop waits.
	lock := filepath.Join(a.lockDir("app1", "web"), lockFile)
	if err := os.WriteFile(lock, []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetTarget(ctx, target(a, "c2", "registry.example.com/web:2", nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "locked state", func() bool { return a.Status().AppState == AppStateLocked })
	waitFor(t, "the lock in the log", func() bool { return log.has("Update locked by service web") })
	before := a.Status().UpdatedAt
	waitFor(t, "more rounds of the loop", func() bool { return a.Status().UpdatedAt.After(before.Add(100 * time.Millisecond)) })
	if n := log.count("Update locked by service web"); n != 1 {
		t.Errorf("the lock was told %d times, want once", n)
	}
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "update", func() bool { return a.Status().AppState == AppStateApplied && log.has("Killed service web") })
}
