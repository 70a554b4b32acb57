package runtime

import "time"

// LogCursor is where a reader of a container's output stands, for each of
// its two streams: a container's stdout and stderr lines can come out of
// timestamp order with each other (the engine stamps each stream as it
// reads it, and writes whichever comes first), never within one stream. A
// single position would skip a stdout line stamped just before a stderr
// line it follows; one per stream skips nothing.
type LogCursor struct {
	Stdout LogMark `json:"stdout,omitzero"`
	Stderr LogMark `json:"stderr,omitzero"`
}

// LogMark is a position in one stream: the timestamp of the last line
// taken, and how many lines taken have exactly that timestamp (lines can
// share one).
type LogMark struct {
	Time  time.Time `json:"time"`
	Count int       `json:"count"`
}

// logSkew is how far apart in time the two streams can be written: a
// stream with no line taken yet is read from this much before the other's
// mark.
const logSkew = 2 * time.Second

// Since is where a read must start so that no line after the cursor is
// missed: the earlier of the two marks. The zero time: from the first line.
func (c LogCursor) Since() time.Time {
	out, errs := c.Stdout.Time, c.Stderr.Time
	switch {
	case out.IsZero() && errs.IsZero():
		return time.Time{}
	case out.IsZero():
		return errs.Add(-logSkew)
	case errs.IsZero():
		return out.Add(-logSkew)
	case errs.Before(out):
		return errs
	}
	return out
}

// IsZero reports whether nothing was taken.
func (c LogCursor) IsZero() bool { return c.Stdout.Time.IsZero() && c.Stderr.Time.IsZero() }

// Advance returns the cursor after taking a line of a stream stamped t.
func (c LogCursor) Advance(stderr bool, t time.Time) LogCursor {
	m := &c.Stdout
	if stderr {
		m = &c.Stderr
	}
	switch {
	case t.Equal(m.Time):
		m.Count++
	case t.After(m.Time):
		*m = LogMark{Time: t, Count: 1}
	}
	// A line from the past (a clock step) leaves the mark: it is not
	// read again, being before it.
	return c
}

// LogFilter passes, of one read of a container's output from
// cursor.Since(), the lines after the cursor: those not taken before.
type LogFilter struct {
	cursor LogCursor
	seen   [2]LogMark // per stream: the last timestamp read, and how many lines in a row had it
}

// NewLogFilter starts a read after cursor.
func NewLogFilter(cursor LogCursor) *LogFilter { return &LogFilter{cursor: cursor} }

// New reports whether a line read (in order) is after the cursor.
func (f *LogFilter) New(stderr bool, t time.Time) bool {
	i, m := 0, f.cursor.Stdout
	if stderr {
		i, m = 1, f.cursor.Stderr
	}
	s := &f.seen[i]
	if s.Count > 0 && t.Equal(s.Time) {
		s.Count++
	} else {
		*s = LogMark{Time: t, Count: 1}
	}
	return t.After(m.Time) || (t.Equal(m.Time) && s.Count > m.Count)
}
