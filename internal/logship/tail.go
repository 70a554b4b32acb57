package logship

import (
	"sync"

	"reeve.dev/reeve"
)

// Tail keeps the device's most recent lines in memory and hands new ones
// to followers: the agent's local view of its log (GET /v2/local/logs),
// whether or not it ships to a server.
type Tail struct {
	mu   sync.Mutex
	ring []reeve.LogLine
	next int // where the next line goes once the ring is full
	full bool
	subs map[*Follower]struct{}
}

// Follower receives the lines added after it subscribed. A follower that
// does not keep up is ended: Lines is closed and Lagged reports it.
type Follower struct {
	Lines  <-chan reeve.LogLine
	ch     chan reeve.LogLine
	lagged bool
	t      *Tail
}

// followerBuffer is how many lines a follower may fall behind.
const followerBuffer = 4096

// NewTail keeps the last n lines.
func NewTail(n int) *Tail {
	return &Tail{ring: make([]reeve.LogLine, 0, max(n, 1)), subs: map[*Follower]struct{}{}}
}

// Add takes records as the collector hands them over.
func (t *Tail) Add(recs []Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range recs {
		line := r.LogLine
		if len(t.ring) < cap(t.ring) {
			t.ring = append(t.ring, line)
		} else {
			t.ring[t.next] = line
			t.next = (t.next + 1) % len(t.ring)
		}
		for f := range t.subs {
			select {
			case f.ch <- line:
			default:
				f.lagged = true
				close(f.ch)
				delete(t.subs, f)
			}
		}
	}
}

// Recent returns up to n of the most recent lines, oldest first.
func (t *Tail) Recent(n int) []reeve.LogLine {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.recent(n)
}

func (t *Tail) recent(n int) []reeve.LogLine {
	all := make([]reeve.LogLine, 0, len(t.ring))
	all = append(all, t.ring[t.next:]...)
	all = append(all, t.ring[:t.next]...)
	if n >= 0 && n < len(all) {
		all = all[len(all)-n:]
	}
	return all
}

// Follow returns up to n recent lines and a follower of the lines added
// after them (nothing falls between the two). Close the follower when done.
func (t *Tail) Follow(n int) ([]reeve.LogLine, *Follower) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan reeve.LogLine, followerBuffer)
	f := &Follower{Lines: ch, ch: ch, t: t}
	t.subs[f] = struct{}{}
	return t.recent(n), f
}

// Lagged reports whether the follower was ended for falling behind. Read
// it after Lines is closed.
func (f *Follower) Lagged() bool {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	return f.lagged
}

// Close ends the follower.
func (f *Follower) Close() {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	if _, ok := f.t.subs[f]; ok {
		delete(f.t.subs, f)
		close(f.ch)
	}
}
