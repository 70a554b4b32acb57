package mqtt

import (
	"fmt"
	"maps"
	"sync"
	"time"

	"reeve.dev/reeve/internal/gateway/driver"
)

// device is what the gateway knows of one device, from its messages.
type device struct {
	online     bool
	commit     string
	deviceType string
	info       map[string]string
	logs       logRing
	xfer       *inbox // the messages for the Update in progress; nil when none
}

// event is a message for an Update in progress.
type event struct {
	status  *statusMsg // the device's new status (merged into what is known)
	removed bool       // the device's status was deleted
	ack     *ackMsg
	result  *resultMsg
}

// inbox passes events from the link to an Update without ever blocking the
// link. Guarded by session.mu.
type inbox struct {
	events  []event
	wake    chan struct{} // 1-buffered
	dropped int
}

// maxInbox bounds an Update's unread events (a device flooding acks).
const maxInbox = 1024

func newInbox() *inbox { return &inbox{wake: make(chan struct{}, 1)} }

func (in *inbox) push(e event) {
	if len(in.events) >= maxInbox {
		in.dropped++
		return
	}
	in.events = append(in.events, e)
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

func (in *inbox) take() []event {
	ev := in.events
	in.events = nil
	return ev
}

// handle takes one message from the broker. It never blocks on anything
// but the session's lock: it runs on the link's goroutine. A message that
// does not fit the scheme is logged, with the device it names, and
// ignored.
func (s *session) handle(topic string, payload []byte, retained bool, now time.Time) {
	id, k, _, err := s.topics.parse(topic)
	if err != nil {
		s.warn(id, "mqtt: ignored a message on a topic outside the scheme", "topic", topic, "err", err)
		return
	}
	switch k {
	case kindCmd, kindChunk:
		// The gateway's own kinds (another client publishing them);
		// NoLocal keeps the gateway's own messages away.
		s.log.Debug("mqtt: ignored a gateway-to-device message", "device", id, "topic", topic)
	case kindStatus:
		s.onStatus(id, payload, retained, now)
	case kindLogs:
		lines, errs := parseLogs(payload, now)
		for _, err := range errs {
			s.warn(id, "mqtt: ignored a log line", "err", err)
		}
		s.mu.Lock()
		dev, ok := s.devices[id]
		if ok {
			for _, l := range lines {
				dev.logs.push(l, s.cfg.logBuffer)
			}
		}
		s.mu.Unlock()
		if !ok {
			s.warn(id, "mqtt: ignored logs of a device that has no status")
		}
	case kindAck:
		a, err := parseAck(payload)
		if err != nil {
			s.warn(id, "mqtt: ignored a firmware acknowledgement", "err", err)
			return
		}
		if why := s.toUpdate(id, event{ack: &a}); why != "" {
			chunk := "none"
			if a.Chunk != nil {
				chunk = fmt.Sprint(*a.Chunk)
			}
			s.warn(id, "mqtt: ignored a firmware acknowledgement: "+why, "commit", a.Commit, "chunk", chunk)
		}
	case kindResult:
		r, err := parseResult(payload)
		if err != nil {
			s.warn(id, "mqtt: ignored an update result", "err", err)
			return
		}
		if why := s.toUpdate(id, event{result: &r}); why != "" {
			if r.OK {
				s.log.Info("mqtt: the device reports an install", "device", id, "commit", r.Commit, "note", why)
			} else {
				s.warn(id, "mqtt: the device reports a failed install: "+why, "commit", r.Commit, "reason", r.Reason)
			}
		}
	}
}

// toUpdate passes e to the device's Update in progress; why says why it
// could not ("" when it did).
func (s *session) toUpdate(id string, e event) (why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dev, ok := s.devices[id]
	switch {
	case !ok:
		return "the device has no status"
	case dev.xfer == nil:
		return "no update is in progress (nothing was sent)"
	}
	dev.xfer.push(e)
	return ""
}

func (s *session) onStatus(id string, payload []byte, retained bool, now time.Time) {
	if len(payload) == 0 { // the retained status deleted: the device is gone
		s.mu.Lock()
		if dev, ok := s.devices[id]; ok {
			delete(s.devices, id)
			if dev.xfer != nil {
				dev.xfer.push(event{removed: true})
			}
		}
		s.mu.Unlock()
		s.log.Info("mqtt: device removed (its status was deleted)", "device", id)
		return
	}
	st, err := parseStatus(payload)
	if err != nil {
		s.warn(id, "mqtt: ignored a status", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	dev, known := s.devices[id]
	if !known {
		dev = &device{}
		s.devices[id] = dev
	}
	wasOnline, wasCommit := dev.online, dev.commit
	if st.Online { // the device's whole account of itself
		dev.commit, dev.deviceType, dev.info = deref(st.Commit), deref(st.DeviceType), maps.Clone(st.Info)
	} else { // a will: what it carries
		if st.Commit != nil {
			dev.commit = *st.Commit
		}
		if st.DeviceType != nil {
			dev.deviceType = *st.DeviceType
		}
		if st.Info != nil {
			dev.info = maps.Clone(st.Info)
		}
	}
	dev.online = st.Online
	if !retained && (!known || wasOnline != dev.online || wasCommit != dev.commit) {
		msg := "offline"
		if dev.online && dev.commit != "" {
			msg = "online, running " + dev.commit
		} else if dev.online {
			msg = "online, running no reeve firmware"
		}
		dev.logs.push(driver.LogLine{Time: now, Message: msg, System: true}, s.cfg.logBuffer)
	}
	if dev.xfer != nil {
		commit := dev.commit // a copy: the Update reads it without the lock
		dev.xfer.push(event{status: &statusMsg{Online: dev.online, Commit: &commit}})
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// logRing holds a device's unread log lines, the newest max; the oldest go
// first when it is full, and are counted.
type logRing struct {
	buf     []driver.LogLine
	start   int // the oldest line, once buf is full
	dropped int
}

func (r *logRing) push(l driver.LogLine, max int) {
	if len(r.buf) < max {
		r.buf = append(r.buf, l)
		return
	}
	r.buf[r.start] = l
	r.start = (r.start + 1) % len(r.buf)
	r.dropped++
}

// drain returns the lines oldest first (nil when none), preceded by a
// system line counting those dropped.
func (r *logRing) drain(now time.Time) []driver.LogLine {
	if len(r.buf) == 0 && r.dropped == 0 {
		return nil
	}
	out := make([]driver.LogLine, 0, len(r.buf)+1)
	if r.dropped > 0 {
		at := now
		if len(r.buf) > 0 {
			at = r.buf[r.start].Time
		}
		out = append(out, driver.LogLine{Time: at, System: true,
			Message: fmt.Sprintf("%d log lines dropped: the device logged faster than the gateway read them", r.dropped)})
	}
	out = append(out, r.buf[r.start:]...)
	out = append(out, r.buf[:r.start]...)
	*r = logRing{}
	return out
}

// warn logs a problem with a device's messages, at most warnBurst times
// per device and warnWindow, so that a device sending garbage in a loop
// does not flood the gateway's log.
func (s *session) warn(id, msg string, args ...any) {
	ok, suppressed := s.warns.allow(id, time.Now())
	if !ok {
		return
	}
	if id != "" {
		args = append([]any{"device", id}, args...)
	}
	if suppressed > 0 {
		args = append(args, "suppressed_before", suppressed)
	}
	s.log.Warn(msg, args...)
}

const (
	warnBurst  = 20
	warnWindow = time.Minute
)

type warnLimiter struct {
	mu sync.Mutex
	m  map[string]*warnWindowState
}

type warnWindowState struct {
	start time.Time
	n     int
}

func (w *warnLimiter) allow(id string, now time.Time) (ok bool, suppressed int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil || len(w.m) > 4096 {
		w.m = map[string]*warnWindowState{}
	}
	st := w.m[id]
	if st == nil || now.Sub(st.start) > warnWindow {
		if st != nil {
			suppressed = max(0, st.n-warnBurst)
		}
		w.m[id] = &warnWindowState{start: now, n: 1}
		return true, suppressed
	}
	st.n++
	return st.n <= warnBurst, 0
}
