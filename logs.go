package reeve

import (
	"time"
	"unicode/utf8"
)

// LogLine is one line of a device's log, as the agent ships it to the
// server (one JSON object a line in the body of
// POST /device/v2/{uuid}/log-stream) and as the operator API serves it.
type LogLine struct {
	// ID is the server's number for a stored line, increasing in the order
	// lines were stored; a follower resumes after the last ID it saw. The
	// agent does not send it.
	ID int64 `json:"id,omitempty"`
	// Device is the device the line is of, in what the server serves. A
	// line the agent sends carries it only when it is of one of the
	// device's dependent devices.
	Device string `json:"device,omitempty"`
	// Seq is the line's number in its log stream, from 1 up with no gaps
	// but those the agent reports as dropped; the server stores a line at
	// most once per stream and number. 0: no number (never de-duplicated).
	Seq uint64 `json:"seq,omitempty"`
	// Timestamp is when the line was written, by the device's clock.
	Timestamp time.Time `json:"timestamp"`
	// Service is the service that wrote the line; "" for the agent's own
	// lines that concern no service.
	Service string `json:"service,omitempty"`
	// Stderr marks a line written to standard error.
	Stderr bool `json:"stderr,omitempty"`
	// System marks the agent's own lines ("Killed service db").
	System bool `json:"system,omitempty"`
	// Message is the line, without its newline.
	Message string `json:"message"`
}

// MaxLogLineBytes is the longest message a log line keeps. A longer one is
// cut to this size, ending with LogTruncatedMarker, by the agent and again
// by the server.
const MaxLogLineBytes = 16 * 1024

// LogTruncatedMarker ends a message that was cut to MaxLogLineBytes.
const LogTruncatedMarker = " …[truncated]"

// TruncateLogMessage cuts msg to MaxLogLineBytes (on a character boundary),
// marking the cut; it returns msg unchanged when it fits.
func TruncateLogMessage(msg string) string {
	if len(msg) <= MaxLogLineBytes {
		return msg
	}
	cut := MaxLogLineBytes - len(LogTruncatedMarker)
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + LogTruncatedMarker
}
