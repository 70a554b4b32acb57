package fleetlink

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"reeve.dev/reeve"
)

const testUUID = "5d6c4a0e2b8f4c1e9a7d3b6f0e1c2a4b"

var testKey = strings.Repeat("d", 64)

// provisionedHarness is a device registered before: config.json holds its
// identity and no provisioning key.
func provisionedHarness(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	h.writeConfig(map[string]string{"uuid": testUUID, "deviceApiKey": testKey, "deviceType": "raspberrypi4-64", "deviceName": "kitchen"})
	h.identity()
	h.srv.addDevice(testUUID, testKey)
	return h
}

func commitOf(ts reeve.TargetState) string {
	c, _, _ := ts[testUUID].Apps[testAppUUID].Release()
	return c
}

func TestPollSendsETagBackAndNotModifiedChangesNothing(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", nil))
	etag := h.srv.etag(testUUID)
	l := h.start(nil)

	waitFor(t, "three polls", func() bool { return len(h.srv.polls()) >= 3 })
	polls := h.srv.polls()
	if polls[0].IfNoneMatch != "" || polls[0].Status != http.StatusOK || polls[0].Wait != "" {
		t.Errorf("first poll = %+v, want a plain GET answered 200", polls[0])
	}
	for _, p := range polls[1:] {
		if p.IfNoneMatch != etag || p.Status != http.StatusNotModified {
			t.Errorf("polls = %s\nwant the ETag %s sent back and 304", describe(polls), etag)
			break
		}
	}
	if n := h.agent.setCount(); n != 1 {
		t.Errorf("SetTarget called %d times, want once: a 304 changes nothing", n)
	}
	if ts, _ := h.agent.Target(); commitOf(ts) != "c1" {
		t.Errorf("agent target = %+v, want commit c1", ts)
	}
	if st := l.Status(); st.LastPoll.IsZero() || st.PollError != "" || st.LongPolling || st.Unauthorized {
		t.Errorf("status = %+v, want a successful plain poll", st)
	}
	for _, w := range h.waitsOf(waitPoll) {
		if w.D != 5*time.Millisecond {
			t.Errorf("wait between polls = %v, want the poll interval", w.D)
		}
	}
	if got := readJSONFile(t, filepath.Join(h.dataDir, etagFile)); got["etag"] != etag {
		t.Errorf("cached ETag = %v, want %s", got, etag)
	}
}

func TestETagSurvivesRestart(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", nil))
	etag := h.srv.etag(testUUID)
	l := h.start(nil)
	waitFor(t, "the target to be applied", func() bool { return h.agent.setCount() == 1 })
	l.Close()

	n := len(h.srv.polls())
	h.start(nil)
	waitFor(t, "two more polls", func() bool { return len(h.srv.polls()) >= n+2 })
	if p := h.srv.polls()[n]; p.IfNoneMatch != etag || p.Status != http.StatusNotModified {
		t.Errorf("first poll after restart = %+v, want If-None-Match %s and 304", p, etag)
	}
	if got := h.agent.setCount(); got != 1 {
		t.Errorf("SetTarget called %d times, want once: a restart must not apply the same target again", got)
	}
}

// Without ETags every poll brings the target again; the agent is given it
// once.
func TestServerWithoutETags(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.set(func(s *fakeServer) { s.noETag = true })
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", nil))
	h.start(nil)
	waitFor(t, "five polls", func() bool { return len(h.srv.polls()) >= 5 })
	if n := h.agent.setCount(); n != 1 {
		t.Errorf("SetTarget called %d times with the same target, want once", n)
	}
	h.srv.setTarget(testUUID, testTarget(testUUID, "c2", nil))
	waitFor(t, "the new target", func() bool { return h.agent.setCount() == 2 })
}

// An agent that lost its target (a new database) gets it again, whatever
// the cached ETag says.
func TestETagIgnoredWhenTheAgentLostItsTarget(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", nil))
	l := h.start(nil)
	waitFor(t, "the target to be applied", func() bool { return h.agent.setCount() == 1 })
	l.Close()

	h.agent = newFakeAgent(testUUID)
	n := len(h.srv.polls())
	h.start(nil)
	waitFor(t, "the target to be applied again", func() bool { return h.agent.setCount() == 1 })
	if p := h.srv.polls()[n]; p.IfNoneMatch != "" {
		t.Errorf("first poll = %+v, want no If-None-Match", p)
	}
}

func TestLongPoll(t *testing.T) {
	for _, tc := range []struct {
		name     string
		header   int
		wantWait string
	}{
		{"the poll interval is shorter", 300, "120"},
		{"the server holds less", 30, "30"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := provisionedHarness(t)
			h.srv.set(func(s *fakeServer) { s.longPoll = tc.header })
			h.srv.setTarget(testUUID, testTarget(testUUID, "c1", nil))
			etag := h.srv.etag(testUUID)
			l := h.start(func(c *LinkConfig) { c.PollInterval = 2 * time.Minute })

			waitFor(t, "three polls", func() bool { return len(h.srv.polls()) >= 3 })
			polls := h.srv.polls()
			if polls[0].Wait != "" {
				t.Errorf("first poll = %+v, want no wait: the server has not offered long polls yet", polls[0])
			}
			for _, p := range polls[1:] {
				if p.Wait != tc.wantWait || p.IfNoneMatch != etag {
					t.Errorf("polls = %s\nwant wait=%s and the ETag", describe(polls), tc.wantWait)
					break
				}
			}
			waitFor(t, "the status to say long polling", func() bool { return l.Status().LongPolling })

			// A change reaches the device through the long poll, without
			// the poll interval (two minutes) going by.
			h.srv.setTarget(testUUID, testTarget(testUUID, "c2", nil))
			waitFor(t, "the new target", func() bool { return h.agent.setCount() == 2 })
			if ts, _ := h.agent.Target(); commitOf(ts) != "c2" {
				t.Errorf("agent target = %+v, want commit c2", ts)
			}
			if w := h.waitsOf(waitPoll); len(w) != 0 {
				t.Errorf("waits of the poll interval = %v, want none while long polling", w)
			}
		})
	}
}

// A revoked key: the status says so, polls go on every BackoffMax, and the
// target (so the apps) is never touched.
func TestPollUnauthorizedKeepsTheTarget(t *testing.T) {
	h := provisionedHarness(t)
	h.agent.target, h.agent.version = testTarget(testUUID, "c1", nil), 1
	h.srv.setTarget(testUUID, testTarget(testUUID, "c2", nil))
	h.srv.setKey(testUUID, "") // revoked
	l := h.start(nil)

	waitFor(t, "five polls", func() bool { return len(h.srv.polls()) >= 5 })
	st := l.Status()
	if !st.Unauthorized || !strings.Contains(st.PollError, "provision the device again") || !strings.Contains(st.PollError, "apps keep running") {
		t.Errorf("status = %+v, want unauthorized with what to do", st)
	}
	if n := h.agent.setCount(); n != 0 {
		t.Errorf("SetTarget called %d times on a refused key, want never", n)
	}
	if ts, v := h.agent.Target(); commitOf(ts) != "c1" || v != 1 {
		t.Errorf("agent target = %+v (version %d), want the old one untouched", ts, v)
	}
	for _, w := range h.waitsOf(waitUnauthorized) {
		if w.D != 5*time.Millisecond {
			t.Errorf("wait after 401 = %v, want BackoffMax", w.D)
		}
	}
	if w := h.waitsOf(waitBackoff); len(w) != 0 {
		t.Errorf("backoff waits = %v, want the 401 retried at BackoffMax only", w)
	}
	// Logged when it starts (once by polling, once by reporting), not at
	// every poll.
	if n := strings.Count(h.logs.String(), "level=ERROR msg=\"the server refused this device's key"); n == 0 || n > 2 {
		t.Errorf("the refusal was logged %d times, want once per loop", n)
	}

	// Given its key back, the device polls, reports and applies again.
	h.srv.setKey(testUUID, testKey)
	waitFor(t, "the new target", func() bool { return h.agent.setCount() == 1 })
	waitFor(t, "the status to clear", func() bool { st := l.Status(); return !st.Unauthorized && st.PollError == "" })
}

// A target that does not parse is refused once, shown, and not fetched in
// a hot loop, even from a server that ignores If-None-Match.
func TestInvalidTargetIsNotRetriedInAHotLoop(t *testing.T) {
	for _, ignoreETag := range []bool{false, true} {
		name := "server honours ETags"
		if ignoreETag {
			name = "server ignores ETags"
		}
		t.Run(name, func(t *testing.T) {
			h := provisionedHarness(t)
			h.agent.target, h.agent.version = testTarget(testUUID, "c1", nil), 1
			h.srv.set(func(s *fakeServer) { s.ignoreETag, s.longPoll = ignoreETag, 300 })
			h.srv.setRawTarget(testUUID, []byte(`{"`+testUUID+`":{"name":"pi","apps":{},"surprise":true}}`))
			bad := h.srv.etag(testUUID)
			l := h.start(nil)

			waitFor(t, "six polls", func() bool { return len(h.srv.polls()) >= 6 })
			polls := h.srv.polls()
			if n := h.agent.setCount(); n != 0 {
				t.Errorf("SetTarget called %d times with a target that does not parse", n)
			}
			if ts, _ := h.agent.Target(); commitOf(ts) != "c1" {
				t.Errorf("agent target = %+v, want it untouched", ts)
			}
			if st := l.Status(); !strings.Contains(st.TargetError, "surprise") || st.PollError != "" {
				t.Errorf("status = %+v, want the refusal in target_error", st)
			}
			if n := strings.Count(h.logs.String(), "target state refused"); n != 1 {
				t.Errorf("the refusal was logged %d times, want once", n)
			}
			for _, p := range polls[1:] {
				if p.IfNoneMatch != bad || (!ignoreETag && p.Status != http.StatusNotModified) {
					t.Errorf("polls = %s\nwant the refused ETag sent back (and 304 from a server that honours it)", describe(polls))
					break
				}
			}
			if ignoreETag {
				assertNoHotLoop(t, h, polls)
			} else if w := h.waitsOf(waitRefused); len(w) != 1 || w[0].D != 5*time.Millisecond {
				t.Errorf("waits after the refusal = %v, want one of the poll interval, then long polls the server holds", w)
			}
		})
	}
}

// A target the agent refuses is offered once, shown, and the apps run on.
func TestTargetRefusedByTheAgent(t *testing.T) {
	h := provisionedHarness(t)
	h.agent.refuse = &reeve.ValidationError{Problems: []reeve.Problem{{Path: "apps", Message: "the agent says no"}}}
	h.srv.set(func(s *fakeServer) { s.ignoreETag = true }) // the worst case: the same target again and again
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", nil))
	l := h.start(nil)

	waitFor(t, "six polls", func() bool { return len(h.srv.polls()) >= 6 })
	polls := h.srv.polls()
	if n := h.agent.setCount(); n != 1 {
		t.Errorf("SetTarget called %d times with the same refused target, want once", n)
	}
	if st := l.Status(); !strings.Contains(st.TargetError, "the agent says no") {
		t.Errorf("status = %+v, want the refusal in target_error", st)
	}
	if n := strings.Count(h.logs.String(), "target state refused"); n != 1 {
		t.Errorf("the refusal was logged %d times, want once", n)
	}
	assertNoHotLoop(t, h, polls)
	if _, err := os.Stat(filepath.Join(h.dataDir, etagFile)); !os.IsNotExist(err) {
		t.Errorf("the refused target's ETag was cached (%v): a restart must look at it again", err)
	}

	// Fixed on the server: applied, and the error goes.
	h.agent.mu.Lock()
	h.agent.refuse = nil
	h.agent.mu.Unlock()
	h.srv.setTarget(testUUID, testTarget(testUUID, "c2", nil))
	waitFor(t, "the fixed target", func() bool { return h.agent.setCount() == 2 })
	waitFor(t, "the error to clear", func() bool { return l.Status().TargetError == "" })
}

// assertNoHotLoop checks that every poll after a refusal came after a wait
// of the poll interval: the link asked no faster than its interval.
func assertNoHotLoop(t *testing.T, h *harness, polls []fakeRequest) {
	t.Helper()
	refused := h.waitsOf(waitRefused)
	if len(refused) < len(polls)-1 {
		t.Errorf("%d polls but only %d waits of the poll interval: the link polled without waiting", len(polls), len(refused))
	}
	for _, w := range refused {
		if w.D != 5*time.Millisecond {
			t.Errorf("wait after a refused target = %v, want the poll interval", w.D)
		}
	}
	for _, kind := range []string{waitLongPoll, waitBackoff} {
		if w := h.waitsOf(kind); len(w) != 0 {
			t.Errorf("%s waits = %v, want none: a refused target is asked for again after the poll interval", kind, w)
		}
	}
}

func TestServerErrorsBackOff(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.set(func(s *fakeServer) { s.stateFail = http.StatusServiceUnavailable })
	l := h.start(nil)
	waitFor(t, "five failed polls", func() bool { return len(h.srv.polls()) >= 5 })
	waits := h.waitsOf(waitBackoff)
	// BackoffMin 1 ms doubling to BackoffMax 5 ms, with Rand fixed at 0.5
	// (the jitter takes the upper half: 0.75 of each).
	want := []time.Duration{750 * time.Microsecond, 1500 * time.Microsecond, 3 * time.Millisecond, 3750 * time.Microsecond, 3750 * time.Microsecond}
	for i, w := range want {
		if i < len(waits) && waits[i].D != w {
			t.Errorf("backoff %d = %v, want %v", i+1, waits[i].D, w)
		}
	}
	if st := l.Status(); !strings.Contains(st.PollError, "503") {
		t.Errorf("status = %+v, want the failure shown", st)
	}
	h.srv.set(func(s *fakeServer) { s.stateFail = 0 })
	waitFor(t, "the error to clear", func() bool { st := l.Status(); return st.PollError == "" && !st.LastPoll.IsZero() })
}

func TestBackoff(t *testing.T) {
	l := &Link{cfg: LinkConfig{BackoffMin: time.Second, BackoffMax: 5 * time.Minute, Rand: func() float64 { return 0.999999 }}}
	prev := time.Duration(0)
	for n := 1; n < 100; n++ {
		d := l.backoff(n)
		if d < prev || d > 5*time.Minute {
			t.Fatalf("backoff(%d) = %v after %v: want growing, at most BackoffMax", n, d, prev)
		}
		prev = d
	}
	l.cfg.Rand = func() float64 { return 0 }
	if d := l.backoff(100); d != 150*time.Second {
		t.Errorf("backoff(100) with the lowest jitter = %v, want half of BackoffMax", d)
	}
}

func TestPokeEndsTheWait(t *testing.T) {
	h := provisionedHarness(t)
	l := h.start(func(c *LinkConfig) { c.PollInterval = time.Hour })
	waitFor(t, "the wait after the first poll", func() bool { return len(h.waitsOf(waitPoll)) == 1 })
	l.Poke()
	waitFor(t, "a second poll, long before the hour is up", func() bool { return len(h.srv.polls()) >= 2 })
}

// A poke cancels a long poll in flight and polls at once without waiting.
func TestPokeReplacesALongPoll(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.set(func(s *fakeServer) { s.longPoll, s.hold = 300, time.Hour })
	l := h.start(func(c *LinkConfig) { c.PollInterval = 2 * time.Minute })
	waitFor(t, "a long poll held by the server", func() bool { return h.srv.holdingCount() == 1 })
	l.Poke()
	waitFor(t, "the next long poll", func() bool {
		return len(h.srv.polls()) >= 3 && h.srv.holdingCount() == 1
	})
	polls := h.srv.polls()
	// The first plain poll, then the cancelled long poll and the plain
	// poll the poke asked for (the server may record them in either order).
	cancelled, plain := 0, 0
	for _, p := range polls[1:3] {
		switch {
		case p.Wait == "120" && p.Status == 0:
			cancelled++
		case p.Wait == "" && p.Status == http.StatusNotModified:
			plain++
		}
	}
	if polls[0].Wait != "" || cancelled != 1 || plain != 1 {
		t.Errorf("polls = %s\nwant: plain, then a long poll cancelled and a plain poll", describe(polls))
	}
	if st := l.Status(); st.PollError != "" {
		t.Errorf("status = %+v: a poke is not an error", st)
	}
}

// The interval set in the device config paces the polls and is reported.
func TestPollIntervalFromDeviceConfig(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", map[string]string{"REEVE_SUPERVISOR_POLL_INTERVAL": "120000"}))
	l := h.start(nil)
	waitFor(t, "a wait of the configured interval", func() bool {
		for _, w := range h.waitsOf(waitPoll) {
			if w.D == 2*time.Minute {
				return true
			}
		}
		return false
	})
	if st := l.Status(); st.PollInterval.D() != 2*time.Minute {
		t.Errorf("status poll interval = %v, want 2m", st.PollInterval.D())
	}
	waitFor(t, "the interval to be reported", func() bool {
		for _, r := range h.srv.reports(http.StatusOK) {
			if r.Report.PollInterval != nil && r.Report.PollInterval.D() == 2*time.Minute {
				return true
			}
		}
		return false
	})
}

// A poll interval that is not a number is warned about once; the default
// applies.
func TestBadPollIntervalInDeviceConfig(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", map[string]string{"REEVE_SUPERVISOR_POLL_INTERVAL": "soon"}))
	l := h.start(nil)
	waitFor(t, "three polls", func() bool { return len(h.srv.polls()) >= 3 })
	if n := strings.Count(h.logs.String(), "the device config has values the agent cannot use"); n != 1 {
		t.Errorf("the bad interval was warned about %d times, want once", n)
	}
	if st := l.Status(); st.PollInterval.D() != 5*time.Millisecond {
		t.Errorf("status poll interval = %v, want the default", st.PollInterval.D())
	}
}

// With REEVE_SUPERVISOR_INSTANT_UPDATES=0 the link polls at its interval
// and never long-polls, though the server offers it.
func TestInstantUpdatesOff(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.set(func(s *fakeServer) { s.longPoll = 300 })
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", map[string]string{"REEVE_SUPERVISOR_INSTANT_UPDATES": "0"}))
	h.start(nil)
	waitFor(t, "four polls", func() bool { return len(h.srv.polls()) >= 4 })
	for _, p := range h.srv.polls() {
		if p.Wait != "" {
			t.Fatalf("polls = %s\nwant no long poll with instant updates off", describe(h.srv.polls()))
		}
	}
	if len(h.waitsOf(waitPoll)) == 0 || len(h.waitsOf(waitLongPoll)) != 0 {
		t.Errorf("waits: %d poll, %d long poll; want plain poll intervals only", len(h.waitsOf(waitPoll)), len(h.waitsOf(waitLongPoll)))
	}
}

// Healthy fails once the poll loop has made no attempt for longer than a
// backoff, a poll interval and a long poll together can take.
func TestHealthyWhilePolling(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", nil))
	var offset atomic.Int64
	l := h.start(func(c *LinkConfig) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	if err := l.Healthy(); err != nil {
		waitFor(t, "a poll", func() bool { return l.Healthy() == nil })
	}
	l.Close() // the loop stops: no more attempts
	offset.Store(int64(2 * time.Hour))
	if err := l.Healthy(); err == nil || !strings.Contains(err.Error(), "has not polled") {
		t.Fatalf("Healthy after two hours without a poll: %v", err)
	}
}

// While the fleet's device config says local mode, the server's targets
// are not applied (the local API sets the target); when it no longer
// does, the server's target applies again.
func TestLocalModeFromTheFleet(t *testing.T) {
	h := provisionedHarness(t)
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", map[string]string{"REEVE_SUPERVISOR_LOCAL_MODE": "1"}))
	l := h.start(nil)
	waitFor(t, "local mode in the status", func() bool { return l.LocalMode() && l.Status().LocalMode })
	waitFor(t, "a few more polls", func() bool { return len(h.srv.polls()) >= 3 })
	if n := h.agent.setCount(); n != 0 {
		t.Fatalf("a target from the server was applied %d times in local mode", n)
	}
	h.srv.setTarget(testUUID, testTarget(testUUID, "c2", nil))
	waitFor(t, "the server's target applied once local mode ends", func() bool {
		ts, _ := h.agent.Target()
		return !l.LocalMode() && commitOf(ts) == "c2"
	})
}
