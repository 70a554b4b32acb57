package docker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
	"reeve.dev/reeve/internal/testimage"
)

// What the conformance suite cannot reach through the interface: TTY
// containers, a log driver that keeps nothing, an engine that is not
// there, and the line splitting and resuming on their own.

type logLine struct {
	ts     time.Time
	stderr bool
	msg    string
}

func collectLines(out *[]logLine) func(time.Time, bool, string) error {
	return func(ts time.Time, stderr bool, msg string) error {
		*out = append(*out, logLine{ts, stderr, msg})
		return nil
	}
}

const ts1 = "2026-01-02T03:04:05.000000001Z"

func TestLineWriterSplits(t *testing.T) {
	stream := ts1 + " one\n" + ts1 + " two\r\n" + "2026-01-02T03:04:05.5Z \n" + "2026-01-02T03:04:06.000000000+01:00 tab\there\n"
	want := []string{"one", "two", "", "tab\there"}
	// Whatever the write boundaries, the same lines come out.
	for _, size := range []int{1, 2, 3, 7, 31, 32, 33, len(stream)} {
		var got []logLine
		w := &lineWriter{stderr: true, emit: collectLines(&got)}
		for p := stream; len(p) > 0; {
			n := min(size, len(p))
			if k, err := w.Write([]byte(p[:n])); err != nil || k != n {
				t.Fatalf("size %d: Write = %d, %v", size, k, err)
			}
			p = p[n:]
		}
		if len(got) != len(want) {
			t.Fatalf("size %d: got %+v", size, got)
		}
		for i, l := range got {
			if l.msg != want[i] || !l.stderr {
				t.Errorf("size %d: line %d = %+v, want %q on stderr", size, i, l, want[i])
			}
		}
		if !got[0].ts.Equal(time.Date(2026, 1, 2, 3, 4, 5, 1, time.UTC)) || !got[2].ts.Equal(time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC)) ||
			!got[3].ts.Equal(time.Date(2026, 1, 2, 2, 4, 6, 0, time.UTC)) {
			t.Errorf("size %d: timestamps %v %v %v", size, got[0].ts, got[2].ts, got[3].ts)
		}
	}
}

func TestLineWriterLongLines(t *testing.T) {
	var got []logLine
	w := &lineWriter{emit: collectLines(&got)}
	w.Write([]byte(ts1 + " "))
	// 10 MiB in one line, written in chunks: memory stays at one line's
	// first MaxLogLineBytes+1 bytes.
	chunk := []byte(strings.Repeat("é", 1<<14)) // two bytes each: the cut falls on a character boundary
	for range 10 << 20 / len(chunk) {
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if cap(w.msg) > 2*(reeve.MaxLogLineBytes+1) {
			t.Fatalf("the line buffer grew to %d bytes", cap(w.msg))
		}
	}
	// What the engine writes for a line it split (a timestamp in the
	// middle) is past the cut too.
	w.Write([]byte(ts1 + " tail\n" + ts1 + " next\n"))
	exact := strings.Repeat("a", reeve.MaxLogLineBytes)
	w.Write([]byte(ts1 + " " + exact + "\r\n"))
	w.Write([]byte(ts1 + " " + exact + "b\n"))
	if len(got) != 4 {
		t.Fatalf("got %d lines", len(got))
	}
	long := got[0].msg
	if len(long) > reeve.MaxLogLineBytes || !strings.HasSuffix(long, reeve.LogTruncatedMarker) ||
		strings.Trim(strings.TrimSuffix(long, reeve.LogTruncatedMarker), "é") != "" {
		t.Errorf("long line: %d bytes ending %q", len(long), long[len(long)-20:])
	}
	if got[1].msg != "next" {
		t.Errorf("the line after the long one = %q", got[1].msg)
	}
	if got[2].msg != exact {
		t.Errorf("a line of exactly MaxLogLineBytes (and a \\r) was changed: %d bytes", len(got[2].msg))
	}
	if m := got[3].msg; len(m) > reeve.MaxLogLineBytes || !strings.HasSuffix(m, reeve.LogTruncatedMarker) {
		t.Errorf("a line one byte too long: %d bytes ending %q", len(m), m[len(m)-20:])
	}
}

func TestLineWriterMalformed(t *testing.T) {
	for _, s := range []string{
		"no timestamp\n",
		"\n",
		"2026-13-45T00:00:00Z line\n",
		strings.Repeat("9", 100),
	} {
		var got []logLine
		w := &lineWriter{emit: collectLines(&got)}
		if _, err := w.Write([]byte(s)); err == nil || !strings.Contains(err.Error(), "malformed") {
			t.Errorf("Write(%.20q) = %v, want a malformed stream error", s, err)
		}
	}
}

// A second read from the last line delivered skips exactly the lines
// delivered, also when several share its timestamp, and also when the
// engine wrote a stdout line stamped before a stderr line after it.
func TestLogFollowerResumes(t *testing.T) {
	at := func(ns int) time.Time { return time.Date(2026, 1, 1, 0, 0, 0, ns, time.UTC) }
	type in struct {
		ns     int
		stderr bool
		msg    string
	}
	first := []in{{1, false, "a"}, {2, false, "b"}, {2, false, "c"}, {5, true, "d"}}
	// The engine's read from the cursor's Since (stdout's 2): everything
	// stamped 2 and on, in the order of its file.
	second := []in{{2, false, "b"}, {2, false, "c"}, {5, true, "d"}, {4, false, "e"}, {2, false, "f"}, {6, true, "g"}}
	var got []string
	f := &logFollower{fn: func(e runtime.LogEntry) error { got = append(got, e.Message); return nil }}
	f.filter = runtime.NewLogFilter(f.cursor)
	for _, l := range first {
		f.line(at(l.ns), l.stderr, l.msg)
	}
	if since := f.cursor.Since(); !since.Equal(at(2)) {
		t.Fatalf("after the first read: since %v", since)
	}
	f.filter = runtime.NewLogFilter(f.cursor) // as read does
	for _, l := range second {
		f.line(at(l.ns), l.stderr, l.msg)
	}
	// f, stamped 2 after c, is out of order within stdout: the engine
	// never writes that; it is skipped as taken.
	if strings.Join(got, "") != "abcdeg" {
		t.Errorf("delivered %q, want abcdeg", got)
	}
	// Since filters what comes before it.
	got = nil
	g := &logFollower{since: at(5), fn: f.fn, filter: runtime.NewLogFilter(runtime.LogCursor{})}
	g.line(at(4), false, "old")
	g.line(at(5), true, "h")
	if strings.Join(got, "") != "h" {
		t.Errorf("delivered %q, want h", got)
	}
}

func TestLogsEngineUnavailable(t *testing.T) {
	r, err := New(t.Context(), Options{Host: "unix:///nonexistent/reeve-test.sock"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.Logs(t.Context(), "abc", time.Time{}, func(runtime.LogEntry) error { return nil })
	if !errors.Is(err, runtime.ErrUnavailable) {
		t.Errorf("Logs with no engine = %v, want runtime.ErrUnavailable", err)
	}
}

// engineContainer creates (and removes at the end) a container with the
// plain client, for what the runtime cannot create.
func engineContainer(t *testing.T, r *Runtime, cfg *container.Config, host *container.HostConfig) string {
	t.Helper()
	ctx := t.Context()
	res, err := r.c.ContainerCreate(ctx, client.ContainerCreateOptions{Config: cfg, HostConfig: host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := r.c.ContainerRemove(c, res.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return res.ID
}

func logsImage(t *testing.T, r *Runtime) string {
	t.Helper()
	reg := testimage.StartRegistry(t)
	ref := reg.Push(t, "reeve/logs", "v1", map[string]string{"/version": "logs-" + randomToken()})
	if err := r.Fetch(t.Context(), ref, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.RemoveImage(c, ref); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ref
}

func waitExited(t *testing.T, r *Runtime, id string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; {
		res, err := r.c.ContainerInspect(t.Context(), id, client.ContainerInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s := res.Container.State; s != nil && !s.Running && s.FinishedAt != "" && !strings.HasPrefix(s.FinishedAt, "0001") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the container did not exit within 60 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The output of a TTY container is one raw stream, its lines ending with
// "\r\n".
func TestLogsTTY(t *testing.T) {
	testimage.RequireDocker(t)
	r, err := New(t.Context(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	image := logsImage(t, r)
	id := engineContainer(t, r, &container.Config{
		Image: image, Tty: true,
		Env: []string{"TESTPROG_VERSION=tty", "TESTPROG_LINES=3", "TESTPROG_STDERR=1", "TESTPROG_EXIT=0"},
	}, nil)
	if _, err := r.c.ContainerStart(t.Context(), id, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitExited(t, r, id)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var got []runtime.LogEntry
	err = r.Logs(ctx, id, time.Time{}, func(e runtime.LogEntry) error {
		got = append(got, e)
		if e.Message == "testprog exiting with code 0" {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Logs = %v", err)
	}
	want := []string{"testprog tty started", "line 1", "line 2", "line 3", "testprog exiting with code 0"}
	var msgs []string
	for _, e := range got {
		msgs = append(msgs, e.Message)
		if e.Stderr {
			t.Errorf("%q marked stderr: a TTY has one stream", e.Message)
		}
	}
	if fmt.Sprint(msgs) != fmt.Sprint(want) {
		t.Errorf("got %q, want %q", msgs, want)
	}
}

func TestLogsDriverNone(t *testing.T) {
	testimage.RequireDocker(t)
	r, err := New(t.Context(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	image := logsImage(t, r)
	id := engineContainer(t, r, &container.Config{Image: image}, &container.HostConfig{LogConfig: container.LogConfig{Type: "none"}})
	err = r.Logs(t.Context(), id, time.Time{}, func(runtime.LogEntry) error { return nil })
	if err == nil || !strings.Contains(err.Error(), `"none"`) || !strings.Contains(err.Error(), "cannot be read") || errors.Is(err, runtime.ErrNotFound) || !errors.Is(err, runtime.ErrLogsUnreadable) {
		t.Errorf("Logs of a container logging to none = %v, want an error saying its logs cannot be read", err)
	}
}
