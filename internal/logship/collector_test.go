package logship_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/logship"
	"reeve.dev/reeve/internal/runtime"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/testimage"
)

// ---- a runtime that only has logs ----

// collRuntime is a runtime.Runtime whose containers are in-memory logs;
// only Logs is implemented. Logs follows like the interface says: every
// entry at or after since, then new ones as they are added, until ctx
// ends (ctx.Err()) or the container is removed (nil).
type collRuntime struct {
	runtime.Runtime

	mu   sync.Mutex
	logs map[string]*collLog
}

type collLog struct {
	entries   []runtime.LogEntry
	changed   chan struct{} // closed and replaced on every change
	removed   bool
	since     []time.Time // of every Logs call
	failAfter []int       // the next calls fail after this many fn calls
	fnCalls   int         // fn calls begun, over all Logs calls
	active    int         // Logs calls running
	ended     int         // Logs calls returned
}

var errColl = errors.New("the engine hiccuped")

func newCollRuntime() *collRuntime { return &collRuntime{logs: map[string]*collLog{}} }

func (r *collRuntime) log(id string) *collLog {
	l := r.logs[id]
	if l == nil {
		l = &collLog{changed: make(chan struct{})}
		r.logs[id] = l
	}
	return l
}

func (r *collRuntime) change(l *collLog) {
	close(l.changed)
	l.changed = make(chan struct{})
}

// add appends entries to container id's output (creating it).
func (r *collRuntime) add(id string, es ...runtime.LogEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.log(id)
	l.entries = append(l.entries, es...)
	r.change(l)
}

func (r *collRuntime) remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.log(id)
	l.removed = true
	r.change(l)
}

// failNext makes the next Logs calls of id fail after n[i] fn calls.
func (r *collRuntime) failNext(id string, n ...int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log(id).failAfter = append(r.log(id).failAfter, n...)
}

// stat returns a copy of container id's counters.
func (r *collRuntime) stat(id string) collLog {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.logs[id]
	if l == nil {
		return collLog{}
	}
	c := *l
	c.since = append([]time.Time(nil), l.since...)
	return c
}

func (r *collRuntime) Logs(ctx context.Context, id string, since time.Time, fn func(runtime.LogEntry) error) error {
	r.mu.Lock()
	l, ok := r.logs[id]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("logs of container %s: %w", id, runtime.ErrNotFound)
	}
	l.since = append(l.since, since)
	failAfter := -1
	if len(l.failAfter) > 0 {
		failAfter, l.failAfter = l.failAfter[0], l.failAfter[1:]
	}
	l.active++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		l.active--
		l.ended++
		r.mu.Unlock()
	}()
	calls := 0
	for i := 0; ; {
		r.mu.Lock()
		for i < len(l.entries) && l.entries[i].Time.Before(since) {
			i++
		}
		if i < len(l.entries) {
			if calls == failAfter {
				r.mu.Unlock()
				return fmt.Errorf("logs of container %s: %w", id, errColl)
			}
			e := l.entries[i]
			i++
			calls++
			l.fnCalls++
			r.mu.Unlock()
			if err := fn(e); err != nil {
				return err
			}
			continue
		}
		removed, changed := l.removed, l.changed
		r.mu.Unlock()
		if removed {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ---- an in-memory sink ----

// collSink is a Sink in memory: it keeps what it took and its cursors
// (moved as the queue moves them), counts Append calls, and can fail or
// block them.
type collSink struct {
	mu      sync.Mutex
	recs    []logship.Record
	cursors map[string]logship.Cursor
	appends int // Append calls that succeeded
	tries   int // Append calls
	fail    int // the next Append calls that fail
	biggest int // the largest batch
	block   chan struct{}
	entered chan struct{} // gets a value when a blocked Append starts waiting
}

var errCollSink = errors.New("disk full")

func newCollSink(cursors map[string]logship.Cursor) *collSink {
	if cursors == nil {
		cursors = map[string]logship.Cursor{}
	}
	return &collSink{cursors: cursors, entered: make(chan struct{}, 1)}
}

func (s *collSink) Append(recs []logship.Record) error {
	s.mu.Lock()
	s.tries++
	block := s.block
	s.mu.Unlock()
	if block != nil {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-block
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		return errCollSink
	}
	s.appends++
	s.biggest = max(s.biggest, len(recs))
	for _, r := range recs {
		r.Seq = uint64(len(s.recs) + 1)
		s.recs = append(s.recs, r)
		if r.Container != "" {
			s.cursors[r.Container] = s.cursors[r.Container].Advance(r.Stderr, r.Timestamp)
		}
	}
	return nil
}

func (s *collSink) Cursors() map[string]logship.Cursor {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]logship.Cursor{}
	for k, v := range s.cursors {
		out[k] = v
	}
	return out
}

func (s *collSink) records() []logship.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]logship.Record(nil), s.recs...)
}

// of returns the messages taken of container id.
func (s *collSink) of(id string) []string {
	var out []string
	for _, r := range s.records() {
		if r.Container == id {
			out = append(out, r.Message)
		}
	}
	return out
}

func (s *collSink) count() (appends, tries int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appends, s.tries
}

// ---- helpers ----

var collT0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// collCursor is a cursor after n stdout lines stamped t, and every
// stderr line before t.
func collCursor(t time.Time, n int) logship.Cursor {
	return logship.Cursor{Stdout: runtime.LogMark{Time: t, Count: n}, Stderr: runtime.LogMark{Time: t}}
}

func collAt(ms int) time.Time { return collT0.Add(time.Duration(ms) * time.Millisecond) }

// collLines are n entries "<prefix> 1".."<prefix> n", a millisecond apart
// from ms, odd ones on stderr.
func collLines(prefix string, ms, n int) []runtime.LogEntry {
	out := make([]runtime.LogEntry, n)
	for i := range out {
		out[i] = runtime.LogEntry{Time: collAt(ms + i), Stderr: i%2 == 1, Message: fmt.Sprintf("%s %d", prefix, i+1)}
	}
	return out
}

func collMessages(es []runtime.LogEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Message
	}
	return out
}

func collWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within 30 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func collEqual(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "|") != strings.Join(want, "|") || len(got) != len(want) {
		t.Errorf("%s:\ngot  %q\nwant %q", what, got, want)
	}
}

func collLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newColl starts a collector on rt and sink, closed when t ends.
func newColl(t *testing.T, cfg logship.CollectorConfig) *logship.Collector {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = collLogger(t)
	}
	c := logship.NewCollector(cfg)
	c.Start(t.Context())
	t.Cleanup(func() { c.Close() })
	return c
}

func collCtr(id, service string) reeve.ServiceState {
	return reeve.ServiceState{ID: id, ServiceName: service, AppUUID: "app-1"}
}

// ---- tests ----

func TestCollectorLinesInOrderPerContainer(t *testing.T) {
	rt := newCollRuntime()
	sink := newCollSink(nil)
	want := map[string][]runtime.LogEntry{
		"c-web": collLines("web", 0, 300),
		"c-db":  collLines("db", 0, 200), // the same timestamps as web's
		"c-mq":  collLines("mq", 150, 100),
	}
	for id, es := range want {
		rt.add(id, es[:len(es)/2]...)
	}
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, BatchDelay: time.Millisecond, MaxBatch: 64})
	c.Sync([]reeve.ServiceState{collCtr("c-web", "web"), collCtr("c-db", "db"), collCtr("c-mq", "mq")})
	for id, es := range want {
		rt.add(id, es[len(es)/2:]...) // while followed
	}
	collWait(t, "all lines taken", func() bool { return len(sink.records()) >= 600 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	byID := map[string][]logship.Record{}
	for _, r := range sink.records() {
		byID[r.Container] = append(byID[r.Container], r)
	}
	for id, es := range want {
		got := byID[id]
		if len(got) != len(es) {
			t.Errorf("%s: %d lines, want %d", id, len(got), len(es))
			continue
		}
		service := strings.TrimPrefix(id, "c-")
		for i, r := range got {
			e := es[i]
			if r.Message != e.Message || !r.Timestamp.Equal(e.Time) || r.Stderr != e.Stderr || r.Service != service || r.System {
				t.Errorf("%s line %d = %+v, want %+v of service %s", id, i, r, e, service)
				break
			}
		}
	}
}

func TestCollectorResumesFromSinkCursor(t *testing.T) {
	es := []runtime.LogEntry{
		{Time: collAt(1), Message: "a"},
		{Time: collAt(2), Message: "b"},
		{Time: collAt(2), Message: "c"},
		{Time: collAt(2), Message: "d"},
		{Time: collAt(3), Message: "e"},
	}
	for _, tc := range []struct {
		name   string
		cursor logship.Cursor
		want   []string
	}{
		{"zero cursor: from the first line", logship.Cursor{}, []string{"a", "b", "c", "d", "e"}},
		{"after a", collCursor(collAt(1), 1), []string{"b", "c", "d", "e"}},
		{"after b, of three at one timestamp", collCursor(collAt(2), 1), []string{"c", "d", "e"}},
		{"after c", collCursor(collAt(2), 2), []string{"d", "e"}},
		{"after d", collCursor(collAt(2), 3), []string{"e"}},
		{"between timestamps", collCursor(collAt(2).Add(time.Microsecond), 0), []string{"e"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := newCollRuntime()
			rt.add("x", es...)
			sink := newCollSink(map[string]logship.Cursor{"x": tc.cursor, "gone": collCursor(collAt(9), 1)})
			c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, BatchDelay: time.Millisecond})
			c.Sync([]reeve.ServiceState{collCtr("x", "web")})
			collWait(t, "e taken", func() bool { return len(sink.of("x")) > 0 && sink.of("x")[len(sink.of("x"))-1] == "e" })
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			collEqual(t, "lines taken", sink.of("x"), tc.want)
			if st := rt.stat("x"); len(st.since) != 1 || !st.since[0].Equal(tc.cursor.Since()) {
				t.Errorf("Logs called with since %v, want once with %v", st.since, tc.cursor.Since())
			}
		})
	}
}

func TestCollectorNoHistory(t *testing.T) {
	rt := newCollRuntime()
	rt.add("old", collLines("old", 0, 3)...)
	rt.add("new", collLines("new", 0, 3)...)
	sink := newCollSink(map[string]logship.Cursor{"old": collCursor(collAt(0), 1)})
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, NoHistory: true, Now: func() time.Time { return collAt(2) }, BatchDelay: time.Millisecond})
	c.Sync([]reeve.ServiceState{collCtr("old", "old"), collCtr("new", "new")})
	collWait(t, "lines taken", func() bool { return len(sink.of("old")) == 2 && len(sink.of("new")) == 1 })
	c.Close()
	// A cursor is a cursor; without one, only lines from the start on.
	collEqual(t, "with a cursor", sink.of("old"), []string{"old 2", "old 3"})
	collEqual(t, "without one", sink.of("new"), []string{"new 3"})
}

func TestCollectorRetriesFollowerErrors(t *testing.T) {
	rt := newCollRuntime()
	// Lines 4 to 7 share one timestamp: a resume in their midst must skip
	// exactly those taken.
	es := collLines("line", 0, 10)
	for i := 3; i < 7; i++ {
		es[i].Time = collAt(3)
	}
	rt.add("x", es...)
	rt.failNext("x", 5, 3) // fails after line 5, then after line 6 (4 and 5 read again and skipped)
	sink := newCollSink(nil)
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, BatchDelay: time.Millisecond})
	c.Sync([]reeve.ServiceState{collCtr("x", "web")})
	collWait(t, "all lines taken", func() bool { return len(sink.of("x")) >= 10 })
	var system []string
	collWait(t, "the system line", func() bool {
		system = nil
		for _, r := range sink.records() {
			if r.System {
				system = append(system, r.Service+": "+r.Message)
			}
		}
		return len(system) > 0
	})
	c.Close()
	collEqual(t, "lines", sink.of("x"), collMessages(es))
	if st := rt.stat("x"); len(st.since) != 3 || !st.since[1].Equal(collAt(3)) || !st.since[2].Equal(collAt(3)) {
		t.Errorf("Logs called with since %v, want the first line's then twice the shared timestamp", st.since)
	}
	// The same error twice: said once.
	if len(system) != 1 || !strings.HasPrefix(system[0], "web: logs of service web cannot be read: ") || !strings.Contains(system[0], errColl.Error()) {
		t.Errorf("system lines %q, want one saying the logs of web cannot be read", system)
	}
}

func TestCollectorRetriesSinkErrors(t *testing.T) {
	rt := newCollRuntime()
	rt.add("x", collLines("line", 0, 20)...)
	sink := newCollSink(nil)
	sink.fail = 2
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, MaxBatch: 20, BatchDelay: time.Hour})
	c.Sync([]reeve.ServiceState{collCtr("x", "web")})
	collWait(t, "all lines taken", func() bool { return len(sink.of("x")) >= 20 })
	c.Close()
	collEqual(t, "lines", sink.of("x"), collMessages(collLines("line", 0, 20)))
	if appends, tries := sink.count(); appends != 1 || tries != 3 {
		t.Errorf("%d appends in %d tries, want the one batch taken at the third try", appends, tries)
	}
}

func TestCollectorBatches(t *testing.T) {
	rt := newCollRuntime()
	rt.add("a", collLines("a", 0, 500)...)
	rt.add("b", collLines("b", 0, 500)...)
	sink := newCollSink(nil)
	// A batch goes only when full: 1000 lines are 10 appends.
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, MaxBatch: 100, BatchDelay: time.Hour})
	c.Sync([]reeve.ServiceState{collCtr("a", "a"), collCtr("b", "b")})
	collWait(t, "all lines taken", func() bool { return len(sink.records()) >= 1000 })
	if appends, _ := sink.count(); appends != 10 {
		t.Errorf("1000 lines in %d appends, want 10 of 100", appends)
	}
	// What does not fill a batch goes after BatchDelay.
	rt2 := newCollRuntime()
	rt2.add("a", collLines("a", 0, 1000)...)
	sink2 := newCollSink(nil)
	c2 := newColl(t, logship.CollectorConfig{Runtime: rt2, Sink: sink2, MaxBatch: 5000, BatchDelay: 10 * time.Millisecond})
	c2.Sync([]reeve.ServiceState{collCtr("a", "a")})
	collWait(t, "all lines taken", func() bool { return len(sink2.records()) >= 1000 })
	if appends, _ := sink2.count(); appends >= 1000 {
		t.Errorf("1000 lines in %d appends: not batched", appends)
	}
	c.Close()
	c2.Close()
}

func TestCollectorSlowSinkBlocksFollowers(t *testing.T) {
	rt := newCollRuntime()
	const n = 5000
	rt.add("x", collLines("line", 0, n)...)
	sink := newCollSink(nil)
	release := make(chan struct{})
	sink.block = release
	const maxBatch = 10
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, MaxBatch: maxBatch, BatchDelay: time.Hour})
	c.Sync([]reeve.ServiceState{collCtr("x", "web")})
	<-sink.entered
	// One batch in the sink, a channel's worth waiting, and the follower
	// blocked handing over the next line: then reading stops.
	const bound = maxBatch + maxBatch + 1
	collWait(t, "the follower blocked", func() bool { return rt.stat("x").fnCalls >= bound })
	time.Sleep(200 * time.Millisecond) // a chance to read more, which it must not take
	if got := rt.stat("x").fnCalls; got != bound {
		t.Errorf("with the sink blocked, %d lines read, want %d", got, bound)
	}
	sink.mu.Lock()
	sink.block = nil
	sink.mu.Unlock()
	close(release)
	collWait(t, "all lines taken", func() bool { return len(sink.records()) >= n })
	c.Close()
	collEqual(t, "lines", sink.of("x"), collMessages(collLines("line", 0, n)))
	if sink.biggest > maxBatch {
		t.Errorf("a batch of %d lines, more than MaxBatch %d", sink.biggest, maxBatch)
	}
}

func TestCollectorSystemLinesAndTap(t *testing.T) {
	rt := newCollRuntime()
	rt.add("x", collLines("line", 0, 3)...)
	sink := newCollSink(nil)
	var (
		mu     sync.Mutex
		tapped []logship.Record
	)
	now := collAt(1000)
	c := logship.NewCollector(logship.CollectorConfig{
		Runtime: rt, Sink: sink, Logger: collLogger(t), BatchDelay: time.Millisecond, Now: func() time.Time { return now },
		Tap: func(recs []logship.Record) {
			// After the sink took them.
			have := map[string]bool{}
			for _, r := range sink.records() {
				have[r.Message] = true
			}
			for _, r := range recs {
				if !have[r.Message] {
					t.Errorf("Tap got %q before the sink took it", r.Message)
				}
			}
			mu.Lock()
			tapped = append(tapped, recs...)
			mu.Unlock()
		},
	})
	c.System("", "before start") // kept until Start
	c.Start(t.Context())
	defer c.Close()
	c.System("web", "Killed service web")
	c.Sync([]reeve.ServiceState{collCtr("x", "web")})
	collWait(t, "all lines taken", func() bool { return len(sink.records()) >= 5 })
	c.Close()
	var system []string
	for _, r := range sink.records() {
		if r.System {
			system = append(system, r.Service+"|"+r.Message)
			if !r.Timestamp.Equal(now) || r.Container != "" || r.Stderr {
				t.Errorf("system line %+v", r)
			}
		}
	}
	collEqual(t, "system lines", system, []string{"|before start", "web|Killed service web"})
	mu.Lock()
	defer mu.Unlock()
	if len(tapped) != len(sink.records()) {
		t.Errorf("Tap got %d records, the sink %d", len(tapped), len(sink.records()))
	}
}

func TestCollectorSyncStopsFollowers(t *testing.T) {
	rt := newCollRuntime()
	rt.add("x", collLines("x", 0, 2)...)
	rt.add("y", collLines("y", 0, 2)...)
	sink := newCollSink(nil)
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, BatchDelay: time.Millisecond})
	both := []reeve.ServiceState{collCtr("x", "x"), collCtr("y", "y")}
	c.Sync(both)
	c.Sync(both) // already followed: nothing new
	collWait(t, "lines taken", func() bool { return len(sink.records()) >= 4 })
	if x, y := rt.stat("x"), rt.stat("y"); len(x.since) != 1 || len(y.since) != 1 {
		t.Errorf("Logs calls: x %d, y %d; want one each", len(x.since), len(y.since))
	}
	c.Sync([]reeve.ServiceState{collCtr("y", "y")})
	if x := rt.stat("x"); x.active != 0 || x.ended != 1 {
		t.Errorf("after a Sync without x: %d Logs calls of x running, %d ended; want it stopped", x.active, x.ended)
	}
	if y := rt.stat("y"); y.active != 1 {
		t.Errorf("after a Sync with y: %d Logs calls of y running, want 1", y.active)
	}
	// A follower whose container is gone ends, and is not started again
	// while a Sync still names the container.
	rt.remove("y")
	collWait(t, "y's follower ended", func() bool { return rt.stat("y").ended == 1 })
	c.Sync([]reeve.ServiceState{collCtr("y", "y")})
	if y := rt.stat("y"); len(y.since) != 1 {
		t.Errorf("Logs of removed y called %d times, want once", len(y.since))
	}
	c.Close()
	if y := rt.stat("y"); y.active != 0 {
		t.Error("a follower runs after Close")
	}
}

func TestCollectorCloseFlushes(t *testing.T) {
	rt := newCollRuntime()
	rt.add("x", collLines("line", 0, 5)...)
	sink := newCollSink(nil)
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, MaxBatch: 1000, BatchDelay: time.Hour})
	c.Sync([]reeve.ServiceState{collCtr("x", "web")})
	c.System("", "bye")
	collWait(t, "lines handed over", func() bool { return rt.stat("x").fnCalls >= 5 })
	if appends, _ := sink.count(); appends != 0 {
		t.Fatalf("%d appends before the batch delay", appends)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := len(sink.records()); got != 6 {
		t.Errorf("after Close the sink has %d lines, want 6", got)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	c.Sync([]reeve.ServiceState{collCtr("x", "web")}) // after Close: nothing
	c.System("", "after close")
	if st := rt.stat("x"); len(st.since) != 1 {
		t.Errorf("Sync after Close followed again")
	}

	// Closed without a start: its own lines still go.
	sink2 := newCollSink(nil)
	c2 := logship.NewCollector(logship.CollectorConfig{Runtime: rt, Sink: sink2, Logger: collLogger(t)})
	c2.System("", "never started")
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := sink2.records(); len(got) != 1 || got[0].Message != "never started" {
		t.Errorf("sink after a Close without Start: %+v", got)
	}

	// A sink that fails at Close: the error says so.
	sink3 := newCollSink(nil)
	c3 := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink3, BatchDelay: time.Hour})
	c3.System("", "doomed")
	sink3.mu.Lock()
	sink3.fail = 1
	sink3.mu.Unlock()
	if err := c3.Close(); !errors.Is(err, errCollSink) {
		t.Errorf("Close with a failing sink = %v, want its error", err)
	}
}

// TestCollectorDockerResume: a real container prints numbered lines; the
// collector is closed midway and a new one on the same sink takes the rest,
// without losing or repeating a line.
func TestCollectorDockerResume(t *testing.T) {
	testimage.RequireDocker(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	b := make([]byte, 4)
	rand.Read(b)
	ns := "logship-" + hex.EncodeToString(b)
	rt, err := docker.New(ctx, docker.Options{Namespace: ns, Logger: collLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	reg := testimage.StartRegistry(t)
	image := reg.Push(t, "reeve/logship", "v1", map[string]string{"/version": "v1", "/run": ns})
	if err := rt.Fetch(ctx, image, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if snap, err := rt.Snapshot(c); err == nil {
			for _, ctr := range snap.Containers {
				if err := rt.Remove(c, ctr.ID); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
		if err := rt.RemoveImage(c, image); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	const n = 400
	id, err := rt.Create(ctx, reeve.ServiceSpec{
		AppUUID: "logship-app-" + ns, AppID: 1, AppName: "logship", Commit: "c1", ReleaseID: 1, ServiceName: "printer",
		Service: reeve.Service{ID: 1, ImageID: 1, Image: image, Running: true,
			Environment: map[string]string{"TESTPROG_LINES": fmt.Sprint(n), "TESTPROG_LINE_INTERVAL": "5ms", "TESTPROG_STDERR": "1", "TESTPROG_EXIT": "0"},
			Composition: reeve.Composition{Restart: "no"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	syncWith := func(c *logship.Collector) {
		snap, err := rt.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.Sync(snap.Containers)
	}
	sink := newCollSink(nil)
	first := logship.NewCollector(logship.CollectorConfig{Runtime: rt, Sink: sink, Logger: collLogger(t), BatchDelay: 10 * time.Millisecond})
	first.Start(ctx)
	syncWith(first)
	if err := rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	collWait(t, "some lines taken", func() bool { return len(sink.of(id)) >= 50 })
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	midway := len(sink.of(id))
	t.Logf("the first collector took %d lines", midway)

	second := logship.NewCollector(logship.CollectorConfig{Runtime: rt, Sink: sink, Logger: collLogger(t), BatchDelay: 10 * time.Millisecond})
	second.Start(ctx)
	defer second.Close()
	syncWith(second)
	collWait(t, "the last lines taken", func() bool {
		got := strings.Join(sink.of(id), "|")
		return strings.Contains(got, "testprog exiting with code 0") && strings.Contains(got, fmt.Sprintf("line %d", n))
	})
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	if midway >= n {
		t.Errorf("the first collector took everything (%d lines): the resume was not tested", midway)
	}
	// Per stream, lines come in order; stdout and stderr written close
	// together may interleave either way.
	var out, errs []string
	for _, r := range sink.records() {
		if r.Container != id {
			continue
		}
		if r.Service != "printer" {
			t.Errorf("record of service %q", r.Service)
		}
		if r.Stderr {
			errs = append(errs, r.Message)
		} else {
			out = append(out, r.Message)
		}
	}
	wantOut, wantErr := []string{"testprog v1 started"}, []string(nil)
	for i := 1; i <= n; i++ {
		if i%2 == 1 {
			wantOut = append(wantOut, fmt.Sprintf("line %d", i))
		} else {
			wantErr = append(wantErr, fmt.Sprintf("line %d", i))
		}
	}
	wantOut = append(wantOut, "testprog exiting with code 0")
	collEqual(t, "stdout", out, wantOut)
	collEqual(t, "stderr", errs, wantErr)
}

// unreadableRuntime's containers log to nowhere the runtime can read back.
type unreadableRuntime struct {
	runtime.Runtime
	calls atomic.Int32
}

func (r *unreadableRuntime) Logs(context.Context, string, time.Time, func(runtime.LogEntry) error) error {
	r.calls.Add(1)
	return fmt.Errorf("logging driver none: %w", runtime.ErrLogsUnreadable)
}

// A container whose logs cannot be read back is said once and not asked
// about again (it would fail the same way every time).
func TestCollectorGivesUpUnreadableLogs(t *testing.T) {
	rt := &unreadableRuntime{}
	sink := newCollSink(nil)
	c := newColl(t, logship.CollectorConfig{Runtime: rt, Sink: sink, BatchDelay: time.Millisecond})
	c.Sync([]reeve.ServiceState{collCtr("x", "web")})
	collWait(t, "the system line", func() bool { return len(sink.records()) > 0 })
	c.Sync([]reeve.ServiceState{collCtr("x", "web")}) // still there: not followed again
	time.Sleep(50 * time.Millisecond)
	c.Close()
	recs := sink.records()
	if len(recs) != 1 || !recs[0].System || !strings.Contains(recs[0].Message, "logs of service web are not collected") {
		t.Errorf("records %+v, want one system line", recs)
	}
	if n := rt.calls.Load(); n != 1 {
		t.Errorf("Logs called %d times, want once", n)
	}
}
