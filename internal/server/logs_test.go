package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
	"reeve.dev/reeve/internal/store/sqlite"
)

// logEnv is a server with device logs on real SQLite files (server.db and
// logs.db in a temporary directory), and two registered devices.
type logEnv struct {
	s     *Server
	l     *Logs
	ls    *gatedLogStore
	a, b  reeve.Device
	clock *fakeClock
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// gatedLogStore is a real log store whose AppendLogs calls can be held
// (gate) and counted, and whose LogLines can run a hook first.
type gatedLogStore struct {
	store.LogStore
	mu       sync.Mutex
	gate     chan struct{} // when not nil, AppendLogs waits for it to close
	entered  chan struct{} // gets a value as an AppendLogs call waits at the gate
	calls    [][]store.LogBatch
	beforeLL func()
}

func (g *gatedLogStore) AppendLogs(ctx context.Context, batches []store.LogBatch) ([]store.LogAppended, error) {
	g.mu.Lock()
	gate := g.gate
	g.calls = append(g.calls, batches)
	g.mu.Unlock()
	if gate != nil {
		g.entered <- struct{}{}
		<-gate
	}
	return g.LogStore.AppendLogs(ctx, batches)
}

func (g *gatedLogStore) LogLines(ctx context.Context, device string, q store.LogQuery) ([]reeve.LogLine, error) {
	g.mu.Lock()
	hook := g.beforeLL
	g.beforeLL = nil
	g.mu.Unlock()
	if hook != nil {
		hook()
	}
	return g.LogStore.LogLines(ctx, device, q)
}

func (g *gatedLogStore) commits() [][]store.LogBatch {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([][]store.LogBatch(nil), g.calls...)
}

func newLogEnv(t *testing.T, opts LogOptions, start bool) *logEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.New(t.Context(), filepath.Join(dir, "server.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lst, err := sqlite.NewLogStore(t.Context(), filepath.Join(dir, "logs.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lst.Close() })
	e := &logEnv{ls: &gatedLogStore{LogStore: lst, entered: make(chan struct{}, 100)}, clock: &fakeClock{t: time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC)}}
	opts.Store, opts.Now = e.ls, e.clock.now
	opts.Logger = slog.New(slog.DiscardHandler)
	if opts.PruneInterval == 0 {
		opts.PruneInterval = time.Hour // tests prune by hand
	}
	e.l = NewLogs(opts)
	e.s = New(Options{Store: st, Logs: e.l, Now: e.clock.now, Logger: slog.New(slog.DiscardHandler)})
	f, err := st.CreateFleet(t.Context(), reeve.Fleet{UUID: strings.Repeat("f", 32), Name: "lobby", DeviceType: reeve.DeviceTypeAny})
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range []*reeve.Device{&e.a, &e.b} {
		*d, err = st.CreateDevice(t.Context(), reeve.Device{UUID: strings.Repeat(fmt.Sprint(i+1), 32), Name: fmt.Sprint("dev", i), FleetID: f.ID})
		if err != nil {
			t.Fatal(err)
		}
	}
	if start {
		e.l.Start(context.Background())
		t.Cleanup(func() { e.l.Close() })
	}
	return e
}

// ship checks and appends lines of dev's stream as one request would.
func (e *logEnv) ship(t *testing.T, dev reeve.Device, stream string, lines ...reeve.LogLine) store.LogAppended {
	t.Helper()
	in, err := e.s.LogIngest(dev, stream)
	if err != nil {
		t.Fatal(err)
	}
	for i := range lines {
		if err := in.Check(t.Context(), &lines[i]); err != nil {
			t.Fatal(err)
		}
	}
	res, err := in.Append(t.Context(), lines)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func msgLines(msgs ...string) []reeve.LogLine {
	var out []reeve.LogLine
	for _, m := range msgs {
		out = append(out, reeve.LogLine{Service: "web", Message: m})
	}
	return out
}

func msgsOf(ls []reeve.LogLine) []string {
	out := []string{}
	for _, l := range ls {
		out = append(out, l.Message)
	}
	return out
}

// next waits for the follower's next lines, failing after 30 s.
func next(t *testing.T, f *LogFollower) []reeve.LogLine {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	lines, err := f.Next(ctx, 0)
	if err != nil {
		t.Fatalf("follow: %v", err)
	}
	return lines
}

// collect reads from the follower until it has n lines.
func collect(t *testing.T, f *LogFollower, n int) []reeve.LogLine {
	t.Helper()
	var got []reeve.LogLine
	for len(got) < n {
		got = append(got, next(t, f)...)
	}
	return got
}

func TestLogsCheck(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, false)
	in, err := e.s.LogIngest(e.a, "")
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", reeve.MaxLogLineBytes+10)
	l := reeve.LogLine{ID: 7, Device: e.a.UUID, Message: long}
	if err := in.Check(t.Context(), &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Message) > reeve.MaxLogLineBytes || !strings.HasSuffix(l.Message, reeve.LogTruncatedMarker) {
		t.Errorf("a long message was not cut: %d bytes", len(l.Message))
	}
	if l.ID != 0 || l.Device != "" || !l.Timestamp.Equal(e.clock.now()) {
		t.Errorf("checked line: id %d, device %q, timestamp %v; want 0, \"\" and the time of receipt", l.ID, l.Device, l.Timestamp)
	}
	other := reeve.LogLine{Device: e.b.UUID, Message: "x"}
	if err := in.Check(t.Context(), &other); reeve.ErrorCode(err) != reeve.CodeInvalid || !strings.Contains(err.Error(), "device") {
		t.Errorf("a line of another device: %v, want invalid naming device", err)
	}
	big := reeve.LogLine{Seq: 1 << 63, Message: "x"}
	if err := in.Check(t.Context(), &big); reeve.ErrorCode(err) != reeve.CodeInvalid || !strings.Contains(err.Error(), "seq") {
		t.Errorf("seq 2^63: %v, want invalid naming seq", err)
	}
	for _, bad := range []string{"has space", strings.Repeat("a", 65), "ü"} {
		if _, err := e.s.LogIngest(e.a, bad); reeve.ErrorCode(err) != reeve.CodeInvalid {
			t.Errorf("stream %q: %v, want invalid", bad, err)
		}
	}
}

func TestLogsWithoutStart(t *testing.T) {
	// Before Start, lines are committed by the caller: the logic works on
	// its own.
	e := newLogEnv(t, LogOptions{}, false)
	res := e.ship(t, e.a, "s1", reeve.LogLine{Seq: 1, Message: "one"}, reeve.LogLine{Seq: 1, Message: "one again"})
	if len(res.Stored) != 1 || res.Duplicates != 1 || res.LastSeq != 1 {
		t.Fatalf("%+v", res)
	}
	got, err := e.s.DeviceLogs(t.Context(), e.a.UUID, LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"one"}, msgsOf(got)); diff != "" {
		t.Error(diff)
	}
}

// Requests of many devices that queue while a commit is made share the
// next commit.
func TestLogsGroupCommit(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, true)
	gate := make(chan struct{})
	e.ls.mu.Lock()
	e.ls.gate = gate
	e.ls.mu.Unlock()

	// The first request's commit is held at the gate.
	first := make(chan error, 1)
	go func() {
		in, _ := e.s.LogIngest(e.a, "s1")
		_, err := in.Append(context.Background(), msgLines("first"))
		first <- err
	}()
	<-e.ls.entered
	// Meanwhile requests of 40 devices queue up.
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		dev := reeve.Device{UUID: fmt.Sprintf("%032x", i+100)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, err := e.s.LogIngest(dev, "s1")
			if err == nil {
				_, err = in.Append(context.Background(), msgLines("a", "b"))
			}
			errs <- err
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(e.l.queue) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", len(e.l.queue), n)
		}
		time.Sleep(time.Millisecond)
	}
	e.ls.mu.Lock()
	e.ls.gate = nil
	e.ls.mu.Unlock()
	close(gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	commits := e.ls.commits()
	if len(commits) != 2 || len(commits[1]) != n {
		sizes := []int{}
		for _, c := range commits {
			sizes = append(sizes, len(c))
		}
		t.Fatalf("commits of %v batches, want 1 then %d", sizes, n)
	}
}

func TestLogsFollowHistoryThenLive(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, true)
	e.ship(t, e.a, "s1", msgLines("h1", "h2", "h3")...)
	e.ship(t, e.b, "s1", msgLines("other device")...)
	f, hist, err := e.s.FollowLogs(t.Context(), e.a.UUID, LogQuery{Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if diff := cmp.Diff([]string{"h2", "h3"}, msgsOf(hist)); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	// Nothing yet: the wait ends with no lines.
	if lines, err := f.Next(t.Context(), time.Millisecond); err != nil || lines != nil {
		t.Errorf("Next with nothing new: %v, %v", lines, err)
	}
	e.ship(t, e.b, "s1", msgLines("other device again")...)
	e.ship(t, e.a, "s1", msgLines("live1", "live2")...)
	got := collect(t, f, 2)
	if diff := cmp.Diff([]string{"live1", "live2"}, msgsOf(got)); diff != "" {
		t.Errorf("live lines (-want +got):\n%s", diff)
	}
	for _, l := range got {
		if l.ID == 0 || l.Device != e.a.UUID {
			t.Errorf("live line %+v lacks its ID or device", l)
		}
	}
}

func TestLogsFollowFilters(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, true)
	f, _, err := e.s.FollowLogs(t.Context(), e.a.UUID, LogQuery{Services: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e.ship(t, e.a, "", reeve.LogLine{Service: "web", Message: "w"}, reeve.LogLine{Service: "db", Message: "d1"})
	e.ship(t, e.a, "", reeve.LogLine{Service: "web", Message: "w"})
	e.ship(t, e.a, "", reeve.LogLine{Service: "db", Message: "d2"})
	got := collect(t, f, 2)
	if diff := cmp.Diff([]string{"d1", "d2"}, msgsOf(got)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// A line stored while the follower reads its history comes once: in the
// history and not again live.
func TestLogsFollowNoGapNoDuplicate(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, true)
	e.ship(t, e.a, "s1", msgLines("before")...)
	e.ls.mu.Lock()
	e.ls.beforeLL = func() { e.ship(t, e.a, "s1", msgLines("during")...) }
	e.ls.mu.Unlock()
	f, hist, err := e.s.FollowLogs(t.Context(), e.a.UUID, LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if diff := cmp.Diff([]string{"before", "during"}, msgsOf(hist)); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	e.ship(t, e.a, "s1", msgLines("after")...)
	if diff := cmp.Diff([]string{"after"}, msgsOf(next(t, f))); diff != "" {
		t.Errorf("live (-want +got):\n%s", diff)
	}
}

// A follower that does not read is unhooked without holding anyone up,
// then catches up from the store with every line, in order, once.
func TestLogsSlowFollowerCatchesUp(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, true)
	f, _, err := e.s.FollowLogs(t.Context(), e.a.UUID, LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []string
	for i := range 3 * followerBuffer {
		msg := fmt.Sprint("line ", i)
		want = append(want, msg)
		e.ship(t, e.a, "s1", msgLines(msg)...) // returns although no one reads
	}
	got := collect(t, f, len(want))
	if diff := cmp.Diff(want, msgsOf(got)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// And it is hooked on again.
	e.ship(t, e.a, "s1", msgLines("later")...)
	if diff := cmp.Diff([]string{"later"}, msgsOf(next(t, f))); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestLogsCloseEndsFollowersAndRefusesLines(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, true)
	f, _, err := e.s.FollowLogs(t.Context(), e.a.UUID, LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	done := make(chan error, 1)
	go func() {
		_, err := f.Next(context.Background(), 0)
		done <- err
	}()
	if err := e.l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if reeve.ErrorCode(err) != reeve.CodeUnavailable {
			t.Errorf("follower ended with %v, want unavailable", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not end the follower")
	}
	in, _ := e.s.LogIngest(e.a, "")
	if _, err := in.Append(t.Context(), msgLines("late")); reeve.ErrorCode(err) != reeve.CodeUnavailable {
		t.Errorf("append after Close: %v, want unavailable", err)
	}
	if _, _, err := e.s.FollowLogs(t.Context(), e.a.UUID, LogQuery{}); reeve.ErrorCode(err) != reeve.CodeUnavailable {
		t.Errorf("follow after Close: %v, want unavailable", err)
	}
}

func TestLogsDeleteDevice(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, true)
	e.ship(t, e.a, "s1", msgLines("a1", "a2")...)
	e.ship(t, e.b, "s1", msgLines("b1")...)
	f, _, err := e.s.FollowLogs(t.Context(), e.a.UUID, LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A request of the device that began before its removal.
	inflight, err := e.s.LogIngest(e.a, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.DeleteDevice(t.Context(), e.a.UUID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Next(t.Context(), 0); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Errorf("the follower of a removed device ended with %v, want not_found", err)
	}
	if _, err := inflight.Append(t.Context(), msgLines("too late")); reeve.ErrorCode(err) != reeve.CodeUnauthorized {
		t.Errorf("lines of a removed device: %v, want unauthorized", err)
	}
	lines, err := e.ls.LogLines(t.Context(), e.a.UUID, store.LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 0 {
		t.Errorf("the removed device still has lines %v", msgsOf(lines))
	}
	if _, err := e.s.DeviceLogs(t.Context(), e.a.UUID, LogQuery{}); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Errorf("logs of a removed device: %v, want not_found", err)
	}
	got, err := e.s.DeviceLogs(t.Context(), e.b.UUID, LogQuery{})
	if err != nil || len(got) != 1 {
		t.Errorf("the other device's lines: %v, %v", msgsOf(got), err)
	}
}

func TestLogsPrune(t *testing.T) {
	e := newLogEnv(t, LogOptions{MaxLines: 3, MaxAge: time.Hour}, true)
	e.ship(t, e.a, "s1", msgLines("old a")...)
	e.ship(t, e.b, "s1", msgLines("old b")...)
	e.clock.add(50 * time.Minute)
	e.ship(t, e.a, "s1", msgLines("a1", "a2", "a3")...)
	e.ship(t, e.b, "s1", msgLines("b1")...)
	if err := e.l.Prune(t.Context()); err != nil {
		t.Fatal(err)
	}
	a, _ := e.s.DeviceLogs(t.Context(), e.a.UUID, LogQuery{})
	b, _ := e.s.DeviceLogs(t.Context(), e.b.UUID, LogQuery{})
	if diff := cmp.Diff([]string{"a1", "a2", "a3"}, msgsOf(a)); diff != "" {
		t.Errorf("device a over its cap (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"old b", "b1"}, msgsOf(b)); diff != "" {
		t.Errorf("device b (-want +got):\n%s", diff)
	}
	// By the server's clock: lines timestamped long ago by the device
	// stay while the server got them recently.
	e.ship(t, e.b, "s1", reeve.LogLine{Message: "device clock in 1970", Timestamp: time.Unix(0, 0)})
	e.clock.add(20 * time.Minute)
	if err := e.l.Prune(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, _ = e.s.DeviceLogs(t.Context(), e.b.UUID, LogQuery{})
	if diff := cmp.Diff([]string{"b1", "device clock in 1970"}, msgsOf(b)); diff != "" {
		t.Errorf("device b after an hour (-want +got):\n%s", diff)
	}
}

// The pruning loop runs on its own once started.
func TestLogsPruneLoop(t *testing.T) {
	e := newLogEnv(t, LogOptions{MaxLines: 1, PruneInterval: time.Millisecond}, true)
	e.ship(t, e.a, "s1", msgLines("1", "2", "3")...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := e.s.DeviceLogs(t.Context(), e.a.UUID, LogQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 1 && got[0].Message == "3" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lines %v after 30 s, want only the newest", msgsOf(got))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLogsQueryErrors(t *testing.T) {
	e := newLogEnv(t, LogOptions{}, false)
	for _, tc := range []struct {
		uuid string
		q    LogQuery
		code string
	}{
		{e.a.UUID, LogQuery{Limit: MaxLogLimit + 1}, reeve.CodeInvalid},
		{e.a.UUID, LogQuery{Limit: -1}, reeve.CodeInvalid},
		{strings.Repeat("9", 32), LogQuery{}, reeve.CodeNotFound},
		{"not-a-uuid", LogQuery{}, reeve.CodeInvalid},
	} {
		if _, err := e.s.DeviceLogs(t.Context(), tc.uuid, tc.q); reeve.ErrorCode(err) != tc.code {
			t.Errorf("DeviceLogs(%s, %+v): %v, want %s", tc.uuid, tc.q, err, tc.code)
		}
		if _, _, err := e.s.FollowLogs(t.Context(), tc.uuid, tc.q); reeve.ErrorCode(err) != tc.code {
			t.Errorf("FollowLogs(%s, %+v): %v, want %s", tc.uuid, tc.q, err, tc.code)
		}
	}
	// A server without logs says so.
	bare := New(Options{Store: e.s.Store()})
	if _, err := bare.LogIngest(e.a, ""); reeve.ErrorCode(err) != reeve.CodeUnavailable {
		t.Errorf("ingest without logs: %v", err)
	}
	if _, err := bare.DeviceLogs(t.Context(), e.a.UUID, LogQuery{}); !errors.Is(err, errNoLogs) {
		t.Errorf("query without logs: %v", err)
	}
}
