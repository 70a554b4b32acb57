// Package logship carries a device's log lines from where they are written
// to the fleet server: the collector follows every service's output and
// takes the agent's own messages, the queue keeps lines on disk until the
// server has them, and the shipper streams them to the server.
package logship

import (
	"time"

	"reeve.dev/reeve"
)

// Record is a line in the agent's log queue: the line as it is shipped,
// and the container it came from, so that collection resumes after a
// restart without repeating or skipping lines. The line's Timestamp is the
// runtime's timestamp of it.
type Record struct {
	reeve.LogLine
	// Container is the runtime's ID of the container that wrote the line;
	// "" for the agent's own lines.
	Container string `json:"container,omitempty"`
}

// Cursor is where collection of one container's output stands: the
// runtime timestamp of the last line taken, and how many lines with
// exactly that timestamp were taken (lines can share one).
type Cursor struct {
	Time  time.Time `json:"time"`
	Count int       `json:"count"`
}

// After reports whether a line with timestamp t, the n-th (from 1) of the
// lines with that timestamp, comes after the cursor: it was not taken yet.
func (c Cursor) After(t time.Time, n int) bool {
	return t.After(c.Time) || (t.Equal(c.Time) && n > c.Count)
}

// Advance returns the cursor after taking a line with timestamp t.
func (c Cursor) Advance(t time.Time) Cursor {
	if t.Equal(c.Time) {
		return Cursor{Time: c.Time, Count: c.Count + 1}
	}
	if t.After(c.Time) {
		return Cursor{Time: t, Count: 1}
	}
	return c // a line from the past (a clock step): the cursor stays
}

// Sink is where the collector puts lines: the disk queue on a device that
// ships to a server.
type Sink interface {
	// Append adds records in order, giving each the next Seq, and returns
	// once they are durable.
	Append(recs []Record) error
	// Cursors returns, per container, the cursor after the last line of
	// it the sink has taken.
	Cursors() map[string]Cursor
}
