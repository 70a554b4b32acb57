package logship

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/atomicfile"
)

// queueStateFile is the queue's small state, replaced whole (atomically)
// when a shipment is acknowledged, before segments are removed, when
// cursors are forgotten and on Close.
const queueStateFile = "state.json"

type queueState struct {
	Version int `json:"version"`
	// Stream is the queue's stream id, made when the queue was created.
	Stream string `json:"stream"`
	// Next is the Seq the next record gets (at least: segments' names and
	// records may say more).
	Next  uint64 `json:"next"`
	Acked uint64 `json:"acked"`
	// Dropped counts every line dropped since the queue was created.
	Dropped int64 `json:"dropped"`
	// DroppedThrough is the highest Seq of a segment removed by the cap:
	// a segment left over by a power cut at or below it is removed again.
	DroppedThrough uint64 `json:"dropped_through,omitempty"`
	// Drops are the drop episodes not acknowledged yet, by Seq.
	Drops []queueDrop `json:"drops,omitempty"`
	// Cursors are the cursors after every record up to CursorsThrough.
	CursorsThrough uint64            `json:"cursors_through"`
	Cursors        map[string]Cursor `json:"cursors,omitempty"`
}

// queueDrop is a run of lines that were dropped: their Seqs are First to
// Last, and the queue yields one system record in their place.
type queueDrop struct {
	First uint64    `json:"first"`
	Last  uint64    `json:"last"`
	Count int64     `json:"count"`
	Time  time.Time `json:"time"`
	// Cap is the queue's cap when lines were dropped to keep to it; 0:
	// the lines were lost to damage of the queue's files.
	Cap int64 `json:"cap,omitempty"`
}

// record is the system record that stands for the drop, for a reader that
// has what comes up to after.
func (d queueDrop) record(after uint64) Record {
	n := d.Count
	if after >= d.First {
		n = min(n, int64(d.Last-after))
	}
	var msg string
	if d.Cap > 0 {
		msg = fmt.Sprintf("%d log lines dropped: the log queue was over its %s cap while the server could not be reached", n, queueSize(d.Cap))
	} else {
		msg = fmt.Sprintf("%d log lines dropped: they were lost to damage of the log queue's files (power cut or storage fault)", n)
	}
	return Record{LogLine: reeve.LogLine{Seq: d.Last, System: true, Timestamp: d.Time, Message: msg}}
}

// queueSize formats a byte count for people.
func queueSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// queueLoadState reads the state file; ok false when there is none (or it
// is unreadable, which is logged by the caller through err).
func queueLoadState(path string) (st queueState, ok bool, err error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return queueState{}, false, fmt.Errorf("%w: %v", errQueueState, err)
	}
	return st, true, nil
}

var errQueueState = errors.New("unreadable queue state")

func queueSaveState(path string, st *queueState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("logship: save queue state: %w", err)
	}
	return nil
}
