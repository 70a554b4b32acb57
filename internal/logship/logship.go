// Package logship carries a device's log lines from where they are written
// to the fleet server: the collector follows every service's output and
// takes the agent's own messages, the queue keeps lines on disk until the
// server has them, and the shipper streams them to the server.
package logship

import (
	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
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

// Cursor is where collection of one container's output stands, per
// stream (see runtime.LogCursor).
type Cursor = runtime.LogCursor

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

// Status says how shipping the device's log is doing.
type Status struct {
	Queue   QueueStats     `json:"queue"`
	Shipper *ShipperStatus `json:"shipper,omitempty"`
}
