package logship

import (
	"maps"
	"sync"
)

// MemorySink is the Sink of an agent that ships to no server: it numbers
// lines and keeps the cursors in memory, and keeps nothing else (the Tail
// is the local view).
type MemorySink struct {
	mu      sync.Mutex
	seq     uint64
	cursors map[string]Cursor
}

// NewMemorySink returns an empty MemorySink.
func NewMemorySink() *MemorySink { return &MemorySink{cursors: map[string]Cursor{}} }

// Append numbers recs and moves the cursors past them.
func (m *MemorySink) Append(recs []Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range recs {
		m.seq++
		recs[i].Seq = m.seq
		if c := recs[i].Container; c != "" {
			m.cursors[c] = m.cursors[c].Advance(recs[i].Stderr, recs[i].Timestamp)
		}
	}
	return nil
}

// Cursors returns a copy of the cursors.
func (m *MemorySink) Cursors() map[string]Cursor {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.cursors)
}
