package mqtt

import (
	"strings"
	"testing"
)

func TestPlan(t *testing.T) {
	p := newPlan(2500, 1024)
	if p.Chunks != 3 {
		t.Fatalf("chunks %d", p.Chunks)
	}
	for n, want := range [][2]int64{{0, 1024}, {1024, 1024}, {2048, 452}} {
		if off, l := p.span(n); off != want[0] || int64(l) != want[1] {
			t.Errorf("span(%d) = %d, %d; want %v", n, off, l, want)
		}
	}
	for next, want := range []int{0, 40, 81, 100} {
		if got := p.percent(next); got != want {
			t.Errorf("percent(%d) = %d, want %d", next, got, want)
		}
	}
	if p := newPlan(2048, 1024); p.Chunks != 2 {
		t.Errorf("exact fit: %d chunks", p.Chunks)
	}
	if p := newPlan(0, 1024); p.Chunks != 0 || p.percent(0) != 100 {
		t.Errorf("empty image: %+v", p)
	}
}

func ack(commit string, next int) ackMsg { return ackMsg{Commit: commit, Next: next} }

func chunkAck(commit string, n, next int, crc uint32) ackMsg {
	return ackMsg{Commit: commit, Next: next, Chunk: &n, CRC32: &crc}
}

func newSender(chunks int) *sender {
	return &sender{plan: newPlan(int64(chunks)*100, 100), commit: "c2", crc: func(n int) uint32 { return uint32(1000 + n) }}
}

// step checks one acknowledgement's verdict and where the sender stands.
func step(t *testing.T, s *sender, a ackMsg, want verdict, cur int, why string) {
	t.Helper()
	v, got := s.onAck(a)
	if v != want || (s.started && s.cur != cur) || !strings.Contains(got, why) {
		t.Fatalf("ack %+v: verdict %v (%q), at %d; want %v (%q), at %d", a, v, got, s.cur, want, why, cur)
	}
}

func TestSenderInOrder(t *testing.T) {
	s := newSender(3)
	step(t, s, ack("c2", 0), ackNext, 0, "")
	for n := range 3 {
		s.sending(n)
		step(t, s, chunkAck("c2", n, n+1, uint32(1000+n)), ackNext, n+1, "")
	}
	if !s.done() {
		t.Fatal("not done after every chunk")
	}
}

func TestSenderResumes(t *testing.T) {
	s := newSender(10)
	step(t, s, ack("c2", 6), ackNext, 6, "") // the device kept 0…5
	s.sending(6)
	step(t, s, chunkAck("c2", 6, 7, 1006), ackNext, 7, "")
	// The same answer to the command sent again changes nothing.
	step(t, s, ack("c2", 6), ackStale, 7, "")

	// A device that held everything goes straight to installing.
	s = newSender(4)
	step(t, s, ack("c2", 4), ackNext, 4, "")
	if !s.done() {
		t.Fatal("a device holding every chunk: not done")
	}
}

func TestSenderRetriesAndGoesBack(t *testing.T) {
	s := newSender(10)
	step(t, s, ack("c2", 0), ackNext, 0, "")
	s.sending(0)
	step(t, s, chunkAck("c2", 0, 1, 1000), ackNext, 1, "")
	s.sending(1)
	// Stored wrong: send it again.
	step(t, s, chunkAck("c2", 1, 2, 7), ackResend, 1, "crc32")
	s.sending(1)
	step(t, s, chunkAck("c2", 1, 2, 1001), ackNext, 2, "")
	// A late duplicate of an earlier acknowledgement.
	step(t, s, chunkAck("c2", 1, 2, 1001), ackStale, 2, "")
	s.sending(2)
	// The device rebooted and kept only chunk 0: it says so, the
	// transfer goes back to 1.
	step(t, s, ackMsg{Commit: "c2", Chunk: ptr(2), Next: 1}, ackNext, 1, "")
	// Resends of a chunk the device does not store (next stays).
	s.sending(1)
	step(t, s, ackMsg{Commit: "c2", Chunk: ptr(1), Next: 1}, ackNext, 1, "")
}

func TestSenderRejectsWhatCannotBe(t *testing.T) {
	s := newSender(5)
	step(t, s, chunkAck("c2", 0, 1, 1000), ackInvalid, 0, "never sent") // before the command's answer
	step(t, s, ack("c2", 6), ackInvalid, 0, "holds 6 chunks of 5")
	step(t, s, ack("c1", 0), ackInvalid, 0, `commit "c1"`)
	step(t, s, ack("c2", 0), ackNext, 0, "")
	s.sending(0)
	step(t, s, chunkAck("c2", 3, 4, 1003), ackInvalid, 0, "chunk 3, which was never sent")
	step(t, s, ackMsg{Commit: "c2", Chunk: ptr(0), Next: 1}, ackInvalid, 0, "without its crc32")
	step(t, s, chunkAck("c2", 0, 1, 1000), ackNext, 1, "")
}
