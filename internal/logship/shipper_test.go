package logship

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"reeve.dev/reeve"
)

// memSource is an in-memory Source.
type memSource struct {
	mu     sync.Mutex
	recs   []Record
	acked  uint64
	notify chan struct{}
}

func newMemSource() *memSource { return &memSource{notify: make(chan struct{})} }

func (m *memSource) add(msgs ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, msg := range msgs {
		seq := uint64(len(m.recs) + 1)
		m.recs = append(m.recs, Record{LogLine: reeve.LogLine{Seq: seq, Timestamp: time.Now(), Service: "web", Message: msg}})
	}
	close(m.notify)
	m.notify = make(chan struct{})
}

func (m *memSource) Read(after uint64, max, _ int) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Record
	for _, r := range m.recs {
		if r.Seq > after && len(out) < max {
			out = append(out, r)
		}
	}
	return out, nil
}

func (m *memSource) Wait(after uint64) <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if uint64(len(m.recs)) > after {
		c := make(chan struct{})
		close(c)
		return c
	}
	return m.notify
}

func (m *memSource) Ack(through uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if through > uint64(len(m.recs)) {
		return fmt.Errorf("ack %d beyond %d", through, len(m.recs))
	}
	m.acked = max(m.acked, through)
	return nil
}

func (m *memSource) Acked() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.acked
}

func (m *memSource) Stream() string { return "s1" }

// server is an Upload that keeps lines by seq, as the fleet server does,
// and can be told to fail.
type server struct {
	mu       sync.Mutex
	lines    []reeve.LogLine
	requests int
	sent     []reeve.LogLine   // every line of every request
	fail     func(n int) error // for request n (from 1; 0: one without lines): fail after reading the body
}

func (s *server) upload(ctx context.Context, stream string, body io.Reader) (uint64, error) {
	zr, err := gzip.NewReader(body)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(zr)
	var got []reeve.LogLine
	for sc.Scan() {
		var l reeve.LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return 0, err
		}
		got = append(got, l)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	n := 0 // requests with lines are counted; a request without is a question
	if len(got) > 0 {
		s.requests++
		n = s.requests
		s.sent = append(s.sent, got...)
	}
	s.mu.Unlock()
	if s.fail != nil {
		if err := s.fail(n); err != nil {
			return 0, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range got {
		if len(s.lines) == 0 || l.Seq > s.lines[len(s.lines)-1].Seq {
			s.lines = append(s.lines, l)
		}
	}
	var last uint64
	if len(s.lines) > 0 {
		last = s.lines[len(s.lines)-1].Seq
	}
	return last, nil
}

func (s *server) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.lines {
		out = append(out, l.Message)
	}
	return out
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testShipper(src Source, up Upload) *Shipper {
	return NewShipper(ShipperConfig{Source: src, Upload: up, FlushInterval: 5 * time.Millisecond,
		IdleEnd: 20 * time.Millisecond, MaxAge: 200 * time.Millisecond, BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond})
}

func TestShipperShipsInOrderAndAcks(t *testing.T) {
	src, srv := newMemSource(), &server{}
	sh := testShipper(src, srv.upload)
	sh.Start(context.Background())
	defer sh.Close()
	var want []string
	for i := range 50 {
		msg := fmt.Sprintf("line %d", i+1)
		want = append(want, msg)
		src.add(msg)
		if i%10 == 0 {
			time.Sleep(3 * time.Millisecond) // lines come over time, across flushes and requests
		}
	}
	waitUntil(t, "every line acked", func() bool { return src.Acked() == 50 })
	got := srv.messages()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("server has %q, want %q", got, want)
	}
	if st := sh.Status(); st.Shipped != 50 || st.LastError != "" {
		t.Errorf("status %+v", st)
	}
}

// A request that fails is sent again from the last acknowledged line:
// nothing is lost, and the server's de-duplication hides the repeat.
func TestShipperRetriesFailedRequests(t *testing.T) {
	src, srv := newMemSource(), &server{}
	srv.fail = func(n int) error {
		if n >= 1 && n <= 2 {
			return errors.New("connection reset")
		}
		return nil
	}
	sh := testShipper(src, srv.upload)
	src.add("a", "b", "c")
	sh.Start(context.Background())
	defer sh.Close()
	waitUntil(t, "lines acked", func() bool { return src.Acked() == 3 })
	if got := srv.messages(); fmt.Sprint(got) != "[a b c]" {
		t.Fatalf("server has %q", got)
	}
	srv.mu.Lock()
	n := srv.requests
	srv.mu.Unlock()
	if n < 3 {
		t.Errorf("%d requests, want the two failures and a success", n)
	}
}

// Lines the server refuses for what they are would be refused for ever:
// they are given up so that the lines after them flow.
func TestShipperGivesUpRefusedLines(t *testing.T) {
	src, srv := newMemSource(), &server{}
	srv.fail = func(n int) error {
		if n == 1 {
			return reeve.Errorf(reeve.CodeInvalid, "line 1: not JSON")
		}
		return nil
	}
	sh := testShipper(src, srv.upload)
	src.add("bad")
	sh.Start(context.Background())
	defer sh.Close()
	waitUntil(t, "the refused line given up", func() bool { return src.Acked() == 1 })
	src.add("good")
	waitUntil(t, "the next line shipped", func() bool { return src.Acked() == 2 })
	if got := srv.messages(); fmt.Sprint(got) != "[good]" {
		t.Fatalf("server has %q", got)
	}
}

// A server that is down: the shipper backs off, says why in its status,
// and ships everything once the server is back.
func TestShipperStatusWhileServerDown(t *testing.T) {
	src, srv := newMemSource(), &server{}
	var isDown atomic.Bool
	isDown.Store(true)
	srv.fail = func(int) error {
		if isDown.Load() {
			return errors.New("dial tcp: connection refused")
		}
		return nil
	}
	sh := testShipper(src, srv.upload)
	src.add("1", "2")
	sh.Start(context.Background())
	defer sh.Close()
	waitUntil(t, "the error in the status", func() bool { return sh.Status().LastError != "" })
	isDown.Store(false)
	waitUntil(t, "lines acked", func() bool { return src.Acked() == 2 })
	if st := sh.Status(); st.LastError != "" {
		t.Errorf("status after recovery: %+v", st)
	}
}

// A server that stored lines it did not acknowledge (the agent was killed,
// or the answer lost) is asked where it stands: those lines are not sent
// again.
func TestShipperAsksTheServerWhereItStands(t *testing.T) {
	src, srv := newMemSource(), &server{}
	src.add("a", "b", "c", "d")
	for i, m := range []string{"a", "b", "c"} {
		srv.lines = append(srv.lines, reeve.LogLine{Seq: uint64(i + 1), Message: m})
	}
	sh := testShipper(src, srv.upload)
	sh.Start(context.Background())
	defer sh.Close()
	waitUntil(t, "every line acked", func() bool { return src.Acked() == 4 })
	if got := srv.messages(); fmt.Sprint(got) != "[a b c d]" {
		t.Fatalf("server has %q", got)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.sent) != 1 || srv.sent[0].Message != "d" {
		t.Errorf("lines sent %+v, want only d", srv.sent)
	}
}

// A server that refuses even the question of where the stream stands is
// waited out with backoff, not asked again in a tight loop.
func TestShipperBacksOffWhenTheQuestionIsRefused(t *testing.T) {
	src := newMemSource()
	src.add("a")
	var asked atomic.Int32
	up := func(ctx context.Context, stream string, body io.Reader) (uint64, error) {
		asked.Add(1)
		return 0, reeve.Errorf(reeve.CodeInvalid, "no such route")
	}
	sh := NewShipper(ShipperConfig{Source: src, Upload: up, BackoffMin: time.Hour, BackoffMax: time.Hour})
	sh.Start(context.Background())
	defer sh.Close()
	waitUntil(t, "the error in the status", func() bool { return sh.Status().LastError != "" })
	if n := asked.Load(); n != 1 {
		t.Errorf("asked %d times, want once before the backoff", n)
	}
	if src.Acked() != 0 {
		t.Error("lines given up after a refused question")
	}
}
