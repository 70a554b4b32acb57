package docker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// Logs follows a container's output (see runtime.Runtime).
//
// It reads the engine's log stream of the container with timestamps,
// following it. The engine ends that stream when the container stops;
// Logs then reads once more from the last line it delivered (a follow cut
// short by the stop may have missed the last lines), and waits for the
// container's next start by watching the engine's events for it. Events
// rather than inspecting every second: a start is seen at once, and a
// container that stays stopped for days costs one idle connection instead
// of a request a second. After a start it reads on from the last line it
// delivered: since is that line's timestamp, and the lines at exactly that
// timestamp already delivered are skipped (several lines can share one).
//
// A line is split off at '\n' (a trailing '\r' is dropped); a line longer
// than reeve.MaxLogLineBytes is cut with reeve.TruncateLogMessage and the
// rest of it is skipped unread, so that memory stays bounded whatever the
// container prints. An unfinished line at the end of a stream is dropped:
// the engine ends every line it stores with '\n', so only a stream cut
// short leaves one, and the next read from the last delivered line reads
// it whole.
func (r *Runtime) Logs(ctx context.Context, id string, since time.Time, fn func(runtime.LogEntry) error) error {
	res, err := r.c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return r.wrap(err, "logs of container %s", shortID(id))
	}
	info := res.Container
	if info.State == nil {
		info.State = &container.State{}
	}
	f := &logFollower{r: r, id: info.ID, fn: fn, since: since}
	for {
		if err := readable(info); err != nil {
			return err
		}
		started, wasRunning := info.State.StartedAt, isRunning(info)
		readErr := f.read(ctx, info.Config != nil && info.Config.Tty)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if f.fnErr != nil {
			return f.fnErr
		}
		next, gone, err := r.inspectForLogs(ctx, f.id)
		switch {
		case gone:
			return nil
		case err != nil:
			return err
		case next.State.Status == container.StateRemoving || next.State.Dead:
			// On its way out (the engine refuses to read its logs): wait
			// for its removal.
			next, gone, err = r.waitStart(ctx, f.id, next.State.StartedAt)
			if gone {
				return nil
			}
			if err != nil {
				return err
			}
			info = next
			continue
		case readErr != nil:
			return readErr // the stream failed while the container is there
		}
		switch {
		case isRunning(next) && wasRunning && next.State.StartedAt == started:
			// The engine ended the stream of a run that goes on: follow
			// again, without spinning should it keep doing so.
			if err := sleepCtx(ctx, time.Second); err != nil {
				return err
			}
		case isRunning(next) || wasRunning || next.State.StartedAt != started:
			// It ran during the read: read again from the last line.
		default:
			// Stopped before the read began and since: everything it
			// wrote is delivered. Wait for its next run.
			next, gone, err = r.waitStart(ctx, f.id, started)
			if gone {
				return nil
			}
			if err != nil {
				return err
			}
		}
		info = next
	}
}

// isRunning reports whether the container's process runs (paused
// included); the engine also reports Running while a restart policy waits
// to start it again, which is not.
func isRunning(c container.InspectResponse) bool {
	return c.State != nil && c.State.Running && !c.State.Restarting
}

// readable refuses a container whose log driver keeps nothing to read.
func readable(c container.InspectResponse) error {
	if c.HostConfig != nil && c.HostConfig.LogConfig.Type == "none" {
		return fmt.Errorf("logs of container %s cannot be read: its logging driver is %q, which keeps nothing: %w", shortID(c.ID), "none", runtime.ErrLogsUnreadable)
	}
	return nil
}

// inspectForLogs inspects container id; gone reports that it is removed.
// The result always has a State.
func (r *Runtime) inspectForLogs(ctx context.Context, id string) (c container.InspectResponse, gone bool, err error) {
	res, err := r.c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if isNotFound(err) {
		return c, true, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return c, false, ctx.Err()
		}
		return c, false, r.wrap(err, "logs of container %s", shortID(id))
	}
	c = res.Container
	if c.State == nil {
		c.State = &container.State{}
	}
	return c, false, nil
}

// waitStart waits until container id has run since it was seen stopped
// with StartedAt started, and returns it inspected; gone reports that it
// was removed instead.
func (r *Runtime) waitStart(ctx context.Context, id, started string) (container.InspectResponse, bool, error) {
	for {
		c, gone, err := r.waitEvents(ctx, id, started)
		if gone || err != nil || isRunning(c) || c.State.StartedAt != started {
			return c, gone, err
		}
		// The event stream ended with the engine still there (it
		// restarted): subscribe again, without spinning.
		if err := sleepCtx(ctx, time.Second); err != nil {
			return c, false, err
		}
	}
}

// waitEvents is waitStart on one subscription to the engine's events; it
// returns the container as it last saw it when the event stream ends.
func (r *Runtime) waitEvents(ctx context.Context, id, started string) (container.InspectResponse, bool, error) {
	ectx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the client's events goroutine
	events := r.c.Events(ectx, client.EventsListOptions{Filters: client.Filters{}.
		Add("type", "container").
		Add("container", id).
		Add("event", "start", "restart", "destroy")})
	// Subscribed first, inspected next: a start in between is not missed.
	for {
		c, gone, err := r.inspectForLogs(ctx, id)
		if gone || err != nil || isRunning(c) || c.State.StartedAt != started {
			return c, gone, err
		}
		select {
		case <-ctx.Done():
			return c, false, ctx.Err()
		case <-events.Messages:
			// A start, restart or removal: the next inspect says which.
		case err := <-events.Err:
			if ctx.Err() != nil {
				return c, false, ctx.Err()
			}
			r.log.Debug("event stream ended while waiting for a container to start", "container", shortID(id), "err", err)
			// Inspected again: an engine that is gone says so.
			c, gone, err := r.inspectForLogs(ctx, id)
			return c, gone, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// logFollower is one Logs call: where it stands and what it delivers to.
type logFollower struct {
	r     *Runtime
	id    string
	fn    func(runtime.LogEntry) error
	fnErr error     // what fn returned, ending Logs
	since time.Time // Logs' since: no line before it is delivered

	// cursor is past the lines delivered; filter, during a read, passes
	// the lines after it (a read starts a little before: see
	// runtime.LogCursor).
	cursor runtime.LogCursor
	filter *runtime.LogFilter
}

// read reads the container's log from the last line delivered until the
// engine ends the stream, delivering every line not delivered yet.
func (f *logFollower) read(ctx context.Context, tty bool) error {
	opts := client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true}
	s := f.since
	if !f.cursor.IsZero() {
		s = f.cursor.Since()
	}
	if !s.IsZero() && s.Unix() > 0 {
		opts.Since = fmt.Sprintf("%d.%09d", s.Unix(), s.Nanosecond())
	}
	f.filter = runtime.NewLogFilter(f.cursor)
	body, err := f.r.c.ContainerLogs(ctx, f.id, opts)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cerrdefs.IsNotImplemented(err) {
			return fmt.Errorf("logs of container %s cannot be read: %w (%w)", shortID(f.id), f.r.wrap(err, "its logging driver keeps nothing to read"), runtime.ErrLogsUnreadable)
		}
		return f.r.wrap(err, "logs of container %s", shortID(f.id))
	}
	defer body.Close()
	if tty {
		w := &lineWriter{emit: f.line}
		_, err = io.CopyBuffer(w, body, make([]byte, 32<<10))
	} else {
		_, err = stdcopy.StdCopy(&lineWriter{emit: f.line}, &lineWriter{stderr: true, emit: f.line}, body)
	}
	if err != nil && f.fnErr == nil && ctx.Err() == nil {
		return fmt.Errorf("read logs of container %s: %w", shortID(f.id), err)
	}
	return nil
}

// line takes one line of the stream: it skips what an earlier read
// delivered and delivers the rest.
func (f *logFollower) line(ts time.Time, stderr bool, msg string) error {
	if !f.filter.New(stderr, ts) || ts.Before(f.since) {
		return nil
	}
	if err := f.fn(runtime.LogEntry{Time: ts, Stderr: stderr, Message: msg}); err != nil {
		f.fnErr = err
		return err
	}
	f.cursor = f.cursor.Advance(stderr, ts)
	return nil
}

// maxTimestampBytes bounds the timestamp the engine puts before each line
// ("2006-01-02T15:04:05.000000000Z07:00 ").
const maxTimestampBytes = 64

// lineWriter splits one output stream, as the engine writes it with
// timestamps, into lines. It holds at most one line's first
// reeve.MaxLogLineBytes+1 bytes.
type lineWriter struct {
	stderr bool
	emit   func(ts time.Time, stderr bool, msg string) error

	inMessage bool      // the timestamp of the current line is read
	ts        []byte    // the timestamp read so far
	time      time.Time // the current line's timestamp
	msg       []byte    // the current line, at most MaxLogLineBytes+1 bytes
	over      bool      // bytes of the current line past msg were skipped
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if !w.inMessage {
			i := bytes.IndexAny(p, " \n")
			if i < 0 || p[i] == '\n' || len(w.ts)+i > maxTimestampBytes {
				if i < 0 && len(w.ts)+len(p) <= maxTimestampBytes {
					w.ts = append(w.ts, p...)
					return n, nil
				}
				return 0, fmt.Errorf("malformed log stream: a line does not start with a timestamp: %q", truncateForError(append(w.ts, p[:min(len(p), 81)]...)))
			}
			w.ts = append(w.ts, p[:i]...)
			t, err := time.Parse(time.RFC3339Nano, string(w.ts))
			if err != nil {
				return 0, fmt.Errorf("malformed log stream: bad timestamp %q", truncateForError(w.ts))
			}
			w.time, w.ts, w.inMessage = t, w.ts[:0], true
			p = p[i+1:]
			continue
		}
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := reeve.MaxLogLineBytes + 1 - len(w.msg); len(chunk) > room {
			w.msg = append(w.msg, chunk[:room]...)
			w.over = true
		} else {
			w.msg = append(w.msg, chunk...)
		}
		if i < 0 {
			return n, nil
		}
		p = p[i+1:]
		if err := w.end(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// end delivers the current line.
func (w *lineWriter) end() error {
	m := w.msg
	if !w.over && len(m) > 0 && m[len(m)-1] == '\r' {
		m = m[:len(m)-1]
	}
	msg := reeve.TruncateLogMessage(string(m))
	w.msg, w.over, w.inMessage = w.msg[:0], false, false
	return w.emit(w.time, w.stderr, msg)
}

func truncateForError(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}
