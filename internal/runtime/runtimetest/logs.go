package runtimetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// The Logs cases. They check what the interface's doc promises, with
// testprog's numbered lines: order (per stream: a runtime may interleave
// stdout and stderr written close together either way), stderr flags,
// since, following, restarts, removal, unknown containers, long lines and
// cancellation.

// logFollow is one Logs call running in the background, collecting what
// it delivers. It is stopped when the test ends.
type logFollow struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Logs' result, once done is closed

	mu      sync.Mutex
	entries []runtime.LogEntry
}

// follow calls Logs(id, since) in the background.
func (s *suite) follow(t *testing.T, id string, since time.Time) *logFollow {
	return s.followFn(t, id, since, nil)
}

// followFn is follow with a hook on every entry: a non-nil error from it
// is what fn returns (the entry is still collected).
func (s *suite) followFn(t *testing.T, id string, since time.Time, hook func(runtime.LogEntry) error) *logFollow {
	t.Helper()
	c, cancel := context.WithCancel(ctx(t))
	f := &logFollow{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.err = s.rt.Logs(c, id, since, func(e runtime.LogEntry) error {
			f.mu.Lock()
			f.entries = append(f.entries, e)
			f.mu.Unlock()
			if hook != nil {
				return hook(e)
			}
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-f.done
	})
	return f
}

func (f *logFollow) got() []runtime.LogEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]runtime.LogEntry(nil), f.entries...)
}

// waitFor waits until what Logs delivered satisfies cond, failing the test
// if Logs returns or a generous deadline passes first.
func (f *logFollow) waitFor(t *testing.T, what string, cond func([]runtime.LogEntry) bool) []runtime.LogEntry {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := f.got()
		if cond(got) {
			return got
		}
		select {
		case <-f.done:
			if got := f.got(); cond(got) {
				return got
			}
			t.Fatalf("Logs returned (%v) before %s; got:\n%s", f.err, what, dump(f.got()))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Logs did not deliver %s within 60 s; got:\n%s", what, dump(got))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitStarted waits until testprog in container id has said it started,
// which it does once its signal handlers are in place: a container the
// engine reports running may not have got that far, and a SIGTERM before
// then is ignored (it is PID 1).
func (s *suite) waitStarted(t *testing.T, id string) {
	t.Helper()
	f := s.follow(t, id, time.Time{})
	f.waitFor(t, "testprog's started line", func(es []runtime.LogEntry) bool {
		for _, e := range es {
			if strings.HasPrefix(e.Message, "testprog ") && strings.HasSuffix(e.Message, " started") {
				return true
			}
		}
		return false
	})
	_ = f.stop(t)
}

// hasMessage is a waitFor condition: n entries with message msg.
func hasMessage(msg string, n int) func([]runtime.LogEntry) bool {
	return func(es []runtime.LogEntry) bool {
		k := 0
		for _, e := range es {
			if e.Message == msg {
				k++
			}
		}
		return k >= n
	}
}

// ended waits for Logs to return on its own and returns its error.
func (f *logFollow) ended(t *testing.T, what string) error {
	t.Helper()
	select {
	case <-f.done:
		return f.err
	case <-time.After(60 * time.Second):
		t.Fatalf("Logs did not return within 60 s after %s", what)
		return nil
	}
}

// stop cancels Logs and returns its error.
func (f *logFollow) stop(t *testing.T) error {
	t.Helper()
	f.cancel()
	return f.ended(t, "its context was cancelled")
}

func dump(es []runtime.LogEntry) string {
	var b strings.Builder
	for _, e := range es {
		stream := "out"
		if e.Stderr {
			stream = "err"
		}
		msg := e.Message
		if len(msg) > 60 {
			msg = fmt.Sprintf("%s… (%d bytes)", msg[:60], len(msg))
		}
		fmt.Fprintf(&b, "  %s %s %q\n", e.Time.Format(time.RFC3339Nano), stream, msg)
	}
	return b.String()
}

// stream returns the messages of es written to stderr (or stdout).
func stream(es []runtime.LogEntry, stderr bool) []string {
	var out []string
	for _, e := range es {
		if e.Stderr == stderr {
			out = append(out, e.Message)
		}
	}
	return out
}

func messages(es []runtime.LogEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Message
	}
	return out
}

// inOrder checks that timestamps do not go back within each stream.
func inOrder(t *testing.T, es []runtime.LogEntry) {
	t.Helper()
	last := map[bool]time.Time{}
	for _, e := range es {
		if e.Time.IsZero() {
			t.Errorf("entry %q has no timestamp", e.Message)
		}
		if e.Time.Before(last[e.Stderr]) {
			t.Errorf("entry %q at %v comes after one at %v", e.Message, e.Time, last[e.Stderr])
		}
		last[e.Stderr] = e.Time
	}
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(got) != len(want) {
		t.Errorf("%s:\ngot  %q\nwant %q", what, got, want)
	}
}

// exitedWithLines runs a container that prints n lines (even ones to
// stderr when stderr), then exits 0, and waits until it has exited.
func (s *suite) exitedWithLines(t *testing.T, service string, n int, stderr bool, extra map[string]string) string {
	t.Helper()
	env := map[string]string{
		"TESTPROG_LINES":         fmt.Sprint(n),
		"TESTPROG_LINE_INTERVAL": "20ms",
		"TESTPROG_EXIT":          "0",
	}
	if stderr {
		env["TESTPROG_STDERR"] = "1"
	}
	for k, v := range extra {
		env[k] = v
	}
	id := s.create(t, spec(s.app(t), service, "c1", s.images.V1, env))
	s.start(t, id)
	s.waitState(t, id, "exited", exited)
	return id
}

func (s *suite) testLogsInOrder(t *testing.T) {
	id := s.exitedWithLines(t, "printer", 6, true, nil)
	f := s.follow(t, id, time.Time{})
	got := f.waitFor(t, "the exit line", hasMessage("testprog exiting with code 0", 1))
	if err := f.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Logs after cancel = %v, want context.Canceled", err)
	}
	got = f.got()
	equal(t, "stdout", stream(got, false), []string{"testprog v1 started", "line 1", "line 3", "line 5", "testprog exiting with code 0"})
	equal(t, "stderr", stream(got, true), []string{"line 2", "line 4", "line 6"})
	inOrder(t, got)
	if t.Failed() {
		t.Logf("got:\n%s", dump(got))
	}
}

func (s *suite) testLogsSince(t *testing.T) {
	id := s.exitedWithLines(t, "printer", 6, true, nil)
	f := s.follow(t, id, time.Time{})
	all := f.waitFor(t, "the exit line", hasMessage("testprog exiting with code 0", 1))
	f.stop(t)
	all = f.got()
	if len(all) != 8 {
		t.Fatalf("Logs from the start delivered %d entries, want 8:\n%s", len(all), dump(all))
	}
	// Resuming at any line's timestamp gives that line and every later
	// one: since is inclusive, nothing is lost.
	for _, k := range []int{0, 3, len(all) - 1} {
		since := all[k].Time
		var want []runtime.LogEntry
		for _, e := range all {
			if !e.Time.Before(since) {
				want = append(want, e)
			}
		}
		g := s.follow(t, id, since)
		g.waitFor(t, fmt.Sprintf("%d entries from %v", len(want), since), func(es []runtime.LogEntry) bool { return len(es) >= len(want) })
		g.stop(t)
		got := g.got()
		equal(t, fmt.Sprintf("since the timestamp of %q", all[k].Message), messages(got), messages(want))
		for i := range min(len(got), len(want)) {
			if !got[i].Time.Equal(want[i].Time) || got[i].Stderr != want[i].Stderr {
				t.Errorf("since %v: entry %d is %+v, want %+v", since, i, got[i], want[i])
			}
		}
	}
	// After the last line: nothing.
	g := s.follow(t, id, all[len(all)-1].Time.Add(time.Millisecond))
	// A line the runtime would deliver would come with the others: wait
	// for a later one, a restart, to be sure nothing came before.
	s.start(t, id)
	got := g.waitFor(t, "the second run's exit line", hasMessage("testprog exiting with code 0", 1))
	if len(got) == 0 || got[0].Message != "testprog v1 started" {
		t.Errorf("since just after the last line, Logs delivered first %q, want the second run's first line", messages(got))
	}
}

func (s *suite) testLogsFollow(t *testing.T) {
	id := s.create(t, spec(s.app(t), "ticker", "c1", s.images.V1, map[string]string{
		"TESTPROG_LINES":         "0",
		"TESTPROG_LINE_INTERVAL": "100ms",
	}))
	f := s.follow(t, id, time.Time{}) // before it ever ran
	s.start(t, id)
	got := f.waitFor(t, "line 5", hasMessage("line 5", 1))
	want := []string{"testprog v1 started", "line 1", "line 2", "line 3", "line 4", "line 5"}
	if len(got) < len(want) {
		t.Fatalf("got %q", messages(got))
	}
	equal(t, "the first lines", messages(got[:len(want)]), want)
	// Removed while running: Logs ends with nil.
	if err := s.rt.Remove(ctx(t), id); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := f.ended(t, "the container was removed"); err != nil {
		t.Errorf("Logs of a container removed while running = %v, want nil", err)
	}
	got = f.got()
	for i, e := range got[1:] {
		if want := fmt.Sprintf("line %d", i+1); e.Message != want && !strings.HasPrefix(e.Message, "testprog ") {
			t.Errorf("entry %d is %q, want %q: lines lost or repeated", i+1, e.Message, want)
			break
		}
	}
	inOrder(t, got)
}

func (s *suite) testLogsAcrossRestart(t *testing.T) {
	id := s.exitedWithLines(t, "job", 3, false, nil)
	f := s.follow(t, id, time.Time{})
	f.waitFor(t, "the first run's exit line", hasMessage("testprog exiting with code 0", 1))
	s.start(t, id)
	f.waitFor(t, "the second run's exit line", hasMessage("testprog exiting with code 0", 2))
	s.waitState(t, id, "exited", exited)
	// Once more, started while Logs waits: a third run.
	s.start(t, id)
	f.waitFor(t, "the third run's exit line", hasMessage("testprog exiting with code 0", 3))
	s.waitState(t, id, "exited", exited)
	// Removed while stopped: Logs ends with nil.
	if err := s.rt.Remove(ctx(t), id); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := f.ended(t, "the container was removed"); err != nil {
		t.Errorf("Logs of a container removed while stopped = %v, want nil", err)
	}
	run := []string{"testprog v1 started", "line 1", "line 2", "line 3", "testprog exiting with code 0"}
	want := append(append(append([]string(nil), run...), run...), run...)
	got := f.got()
	equal(t, "three runs", messages(got), want)
	inOrder(t, got)
}

func (s *suite) testLogsRestartPolicy(t *testing.T) {
	sp := spec(s.app(t), "flaky", "c1", s.images.V1, map[string]string{"TESTPROG_LINES": "2", "TESTPROG_EXIT": "1"})
	sp.Service.Composition.Restart = "on-failure:2"
	id := s.create(t, sp)
	f := s.follow(t, id, time.Time{})
	s.start(t, id)
	f.waitFor(t, "the third run's exit line", hasMessage("testprog exiting with code 1", 3))
	s.waitState(t, id, "exited after 2 restarts", func(st reeve.ServiceState) bool {
		return exited(st) && st.RestartCount == 2
	})
	if err := s.rt.Remove(ctx(t), id); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := f.ended(t, "the container was removed"); err != nil {
		t.Errorf("Logs = %v, want nil", err)
	}
	run := []string{"testprog v1 started", "line 1", "line 2", "testprog exiting with code 1"}
	want := append(append(append([]string(nil), run...), run...), run...)
	got := f.got()
	equal(t, "three runs", messages(got), want)
	inOrder(t, got)
}

func (s *suite) testLogsNotFound(t *testing.T) {
	err := s.rt.Logs(ctx(t), "rtt-no-such-container-"+randomHex(8), time.Time{}, func(runtime.LogEntry) error {
		return errors.New("fn called")
	})
	if !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Logs of a container that never existed = %v, want runtime.ErrNotFound", err)
	}
}

func (s *suite) testLogsLongLine(t *testing.T) {
	id := s.exitedWithLines(t, "chatty", 2, false, map[string]string{"TESTPROG_LINE_BYTES": fmt.Sprint(reeve.MaxLogLineBytes*2 + 100)})
	f := s.follow(t, id, time.Time{})
	got := f.waitFor(t, "the exit line", hasMessage("testprog exiting with code 0", 1))
	f.stop(t)
	if len(got) != 4 {
		t.Fatalf("got %d entries, want 4 (started, line 1, line 2, exiting):\n%s", len(got), dump(got))
	}
	for i, e := range got[1:3] {
		prefix := fmt.Sprintf("line %d xxx", i+1)
		if !strings.HasPrefix(e.Message, prefix) || !strings.HasSuffix(e.Message, reeve.LogTruncatedMarker) ||
			len(e.Message) > reeve.MaxLogLineBytes || len(e.Message) < reeve.MaxLogLineBytes-8 {
			t.Errorf("long line %d: %d bytes, prefix %q, suffix %q; want %d bytes (give or take a character) starting %q and ending with %q",
				i+1, len(e.Message), e.Message[:min(len(e.Message), 12)], e.Message[max(0, len(e.Message)-20):],
				reeve.MaxLogLineBytes, prefix, reeve.LogTruncatedMarker)
		}
		if strings.Trim(e.Message[len(prefix):len(e.Message)-len(reeve.LogTruncatedMarker)], "x") != "" {
			t.Errorf("long line %d holds more than its own text (the rest of the line, or a timestamp)", i+1)
		}
	}
	if got[3].Message != "testprog exiting with code 0" {
		t.Errorf("after the long lines: %q, want the exit line", got[3].Message)
	}
}

func (s *suite) testLogsCancel(t *testing.T) {
	// Cancelled while following a running container.
	id := s.create(t, spec(s.app(t), "ticker", "c1", s.images.V1, map[string]string{
		"TESTPROG_LINES":         "0",
		"TESTPROG_LINE_INTERVAL": "100ms",
	}))
	s.start(t, id)
	f := s.follow(t, id, time.Time{})
	f.waitFor(t, "line 2", hasMessage("line 2", 1))
	if err := f.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Logs cancelled while following = %v, want context.Canceled", err)
	}

	// Cancelled while waiting for a stopped container to run again.
	stopped := s.exitedWithLines(t, "job", 1, false, nil)
	g := s.follow(t, stopped, time.Time{})
	g.waitFor(t, "the exit line", hasMessage("testprog exiting with code 0", 1))
	if err := g.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Logs cancelled while the container is stopped = %v, want context.Canceled", err)
	}

	// fn failing ends Logs with its error.
	errStop := errors.New("enough")
	h := s.followFn(t, id, time.Time{}, func(e runtime.LogEntry) error {
		if e.Message == "line 3" {
			return errStop
		}
		return nil
	})
	if err := h.ended(t, "fn failed"); !errors.Is(err, errStop) {
		t.Errorf("Logs whose fn fails = %v, want fn's error", err)
	}
	if got := h.got(); len(got) == 0 || got[len(got)-1].Message != "line 3" {
		t.Errorf("Logs went on after fn failed: %q", messages(got))
	}
}
