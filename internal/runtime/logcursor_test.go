package runtime

import (
	"testing"
	"time"
)

func TestLogCursorSince(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		c    LogCursor
		want time.Time
	}{
		{"nothing taken", LogCursor{}, time.Time{}},
		{"both streams: the earlier", LogCursor{Stdout: LogMark{t0.Add(time.Second), 1}, Stderr: LogMark{t0, 2}}, t0},
		{"stdout only: before it by the skew", LogCursor{Stdout: LogMark{t0, 1}}, t0.Add(-logSkew)},
		{"stderr only", LogCursor{Stderr: LogMark{t0, 1}}, t0.Add(-logSkew)},
	} {
		if got := tc.c.Since(); !got.Equal(tc.want) {
			t.Errorf("%s: Since %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The engine's log holds stdout and stderr lines out of timestamp order
// with each other. Taking some lines, then reading again from Since with a
// filter, must give exactly the lines not taken, whatever the cut.
func TestLogFilterResumesPerStream(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type line struct {
		stderr bool
		t      time.Time
	}
	// As the engine's file holds them: stderr stamped 5 written before
	// stdout stamped 4; three stdout lines share 6.
	log := []line{{false, at(1)}, {true, at(2)}, {true, at(5)}, {false, at(4)}, {false, at(6)}, {false, at(6)},
		{true, at(6)}, {false, at(6)}, {true, at(7)}, {false, at(7)}}
	for cut := 0; cut <= len(log); cut++ {
		var c LogCursor
		for _, l := range log[:cut] {
			c = c.Advance(l.stderr, l.t)
		}
		// The engine sends the lines stamped at or after since, in file order.
		since := c.Since()
		f := NewLogFilter(c)
		var got []int
		for i, l := range log {
			if l.t.Before(since) {
				continue
			}
			if f.New(l.stderr, l.t) {
				got = append(got, i)
			}
		}
		var want []int
		for i := cut; i < len(log); i++ {
			want = append(want, i)
		}
		if len(got) != len(want) {
			t.Fatalf("cut after %d: read again %v, want %v", cut, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("cut after %d: read again %v, want %v", cut, got, want)
			}
		}
	}
}
