package store

import (
	"context"
	"time"

	"reeve.dev/reeve"
)

// LogStore keeps devices' log lines, apart from the fleet's model (on
// SQLite in its own file, so that log writes never wait on the fleet's
// database). Every implementation passes storetest.RunLogs. Methods are
// safe for concurrent use; times come back in UTC. It also holds to these:
//
//   - every stored line gets an ID greater than any ID given before, also
//     after lines were pruned or deleted (IDs are never reused), so that a
//     reader can resume after the last ID it saw;
//   - a line with a Seq (not 0) in a batch with a Stream (not "") is kept
//     at most once per device, stream and Seq: while a line with those is
//     held, another one is a duplicate, skipped and counted, whether it
//     comes in a later call or in the same call;
//   - lines without a Seq or without a Stream are never duplicates;
//   - a line's Timestamp is kept to the microsecond; a Seq is at most
//     math.MaxInt64 (AppendLogs refuses a larger one as invalid, storing
//     nothing).
type LogStore interface {
	// AppendLogs stores the batches' lines in one transaction, in order,
	// and returns for each batch what became of it. An error is for the
	// call as a whole: then nothing was stored.
	AppendLogs(ctx context.Context, batches []LogBatch) ([]LogAppended, error)
	// LogLines returns a device's lines that match q, in ID order (the
	// order they were stored); an empty list (not nil) when there are
	// none, also for a device the store never heard of.
	LogLines(ctx context.Context, device string, q LogQuery) ([]reeve.LogLine, error)
	// PruneLogs removes the lines received before receivedBefore, of
	// every device, and returns how many it removed. It may remove them
	// in several transactions, so that writes do not wait long for it.
	PruneLogs(ctx context.Context, receivedBefore time.Time) (int64, error)
	// TrimLogs removes, of every device, each line but its newest
	// maxLines (at least 1), and returns how many it removed. It may use
	// several transactions; its cost grows with the devices over the
	// cap, not with all the lines held.
	TrimLogs(ctx context.Context, maxLines int) (int64, error)
	// DeleteDeviceLogs removes every line of a device, and with them what
	// de-duplication knew of its streams. A device without lines is no
	// error. It may use several transactions.
	DeleteDeviceLogs(ctx context.Context, device string) (int64, error)

	Close() error
}

// LogBatch is lines of one device, received together.
type LogBatch struct {
	Device string
	// Stream names the agent's log stream the lines are of; "" for none
	// (the lines are then never de-duplicated).
	Stream string
	// ReceivedAt is when the server got the lines, by its clock: what
	// PruneLogs goes by. Zero: the time of the call.
	ReceivedAt time.Time
	// Lines are stored as given but for ID and Device (the store's).
	Lines []reeve.LogLine
}

// LogAppended is what AppendLogs made of one batch.
type LogAppended struct {
	// Stored are the lines stored, as LogLines will return them: with
	// their ID and Device.
	Stored []reeve.LogLine
	// Duplicates counts the lines skipped as duplicates.
	Duplicates int
	// LastSeq is the highest Seq the store holds for the batch's device
	// and stream after the call (0 when it holds none, or the batch has
	// no stream); given also for a batch without lines.
	LastSeq uint64
}

// LogQuery chooses a device's lines. Zero fields do not filter.
type LogQuery struct {
	// Services keeps the lines of any of these services.
	Services []string
	// System keeps only the agent's own lines.
	System bool
	// Since keeps the lines whose Timestamp is not before it.
	Since time.Time
	// After keeps the lines stored after the line with this ID.
	After int64
	// Limit keeps the newest Limit lines that match (still returned
	// oldest first); 0 keeps all.
	Limit int
}

// Match reports whether a line passes q's filters (all but After and
// Limit, which concern stored order).
func (q LogQuery) Match(l reeve.LogLine) bool {
	if q.System && !l.System {
		return false
	}
	if !q.Since.IsZero() && l.Timestamp.Before(q.Since) {
		return false
	}
	if len(q.Services) == 0 {
		return true
	}
	for _, s := range q.Services {
		if l.Service == s {
			return true
		}
	}
	return false
}
