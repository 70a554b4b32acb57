package storetest

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
)

// RunLogs runs the conformance suite of store.LogStore. open returns a new,
// empty log store for each subtest and closes it when that test ends
// (t.Cleanup); subtests run in parallel.
//
//	func TestLogStore(t *testing.T) {
//		storetest.RunLogs(t, func(t *testing.T) store.LogStore { return openEmptyLogStore(t) })
//	}
func RunLogs(t *testing.T, open func(t *testing.T) store.LogStore) {
	for _, tc := range []struct {
		name string
		test func(*testing.T, store.LogStore)
	}{
		{"AppendAndRead", testLogAppendAndRead},
		{"DuplicatesAcrossCalls", testLogDuplicatesAcrossCalls},
		{"DuplicatesWithinCall", testLogDuplicatesWithinCall},
		{"NoSeqNoStreamNeverDuplicates", testLogNeverDuplicates},
		{"NewStream", testLogNewStream},
		{"LastSeqWithoutLines", testLogLastSeqWithoutLines},
		{"Query", testLogQuery},
		{"QueryUnknownDevice", testLogQueryUnknownDevice},
		{"PruneByAge", testLogPruneByAge},
		{"TrimByCount", testLogTrimByCount},
		{"TrimAfterPrune", testLogTrimAfterPrune},
		{"DeleteDevice", testLogDeleteDevice},
		{"IDsNeverReused", testLogIDsNeverReused},
		{"SeqTooLarge", testLogSeqTooLarge},
		{"InvalidArguments", testLogInvalidArguments},
		{"ConcurrentAppends", testLogConcurrentAppends},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.test(t, open(t))
		})
	}
}

// Helpers.

// line is a log line of service with seq, written offset after at(0).
func line(seq uint64, service, msg string, offset time.Duration) reeve.LogLine {
	return reeve.LogLine{Seq: seq, Service: service, Message: msg, Timestamp: at(offset)}
}

// seqLines are lines with seqs from..to of service web.
func seqLines(from, to uint64) []reeve.LogLine {
	var out []reeve.LogLine
	for s := from; s <= to; s++ {
		out = append(out, line(s, "web", fmt.Sprint("line ", s), time.Duration(s)*time.Second))
	}
	return out
}

// asStored is l as a store returns it.
func asStored(l reeve.LogLine, id int64, device string) reeve.LogLine {
	l.ID, l.Device = id, device
	l.Timestamp = l.Timestamp.Truncate(time.Microsecond).UTC()
	return l
}

func appendLogs(t *testing.T, s store.LogStore, batches ...store.LogBatch) []store.LogAppended {
	t.Helper()
	got, err := s.AppendLogs(t.Context(), batches)
	ok(t, err, "append log lines")
	if len(got) != len(batches) {
		t.Fatalf("AppendLogs answered for %d batches, want %d", len(got), len(batches))
	}
	return got
}

func logLines(t *testing.T, s store.LogStore, device string, q store.LogQuery) []reeve.LogLine {
	t.Helper()
	got, err := s.LogLines(t.Context(), device, q)
	ok(t, err, "read log lines")
	if got == nil {
		t.Fatal("LogLines returned nil, want an empty list")
	}
	return got
}

// messages lists the messages of lines.
func messages(ls []reeve.LogLine) []string {
	out := []string{}
	for _, l := range ls {
		out = append(out, l.Message)
	}
	return out
}

// seqs lists the seqs of lines.
func seqs(ls []reeve.LogLine) []uint64 {
	out := []uint64{}
	for _, l := range ls {
		out = append(out, l.Seq)
	}
	return out
}

// appended checks what AppendLogs said of a batch.
func appended(t *testing.T, what string, got store.LogAppended, stored []uint64, dups int, last uint64) {
	t.Helper()
	same(t, what+": stored seqs", stored, seqs(got.Stored))
	if got.Duplicates != dups || got.LastSeq != last {
		t.Errorf("%s: %d duplicates, last seq %d; want %d, %d", what, got.Duplicates, got.LastSeq, dups, last)
	}
}

var (
	devA = uuidFor("logs/a")
	devB = uuidFor("logs/b")
)

// Tests.

func testLogAppendAndRead(t *testing.T, s store.LogStore) {
	in := []reeve.LogLine{
		{Seq: 1, Timestamp: at(0), Service: "web", Message: "listening on :80"},
		{Seq: 2, Timestamp: at(time.Millisecond + 1), Service: "web", Stderr: true, Message: "warning: ünïcode ✓\ttab"},
		{Seq: 3, Timestamp: at(2 * time.Second), System: true, Message: "Killed service db"},
		{Seq: 4, Timestamp: at(3 * time.Second), Service: "db", System: true, Message: ""},
		// Only ID and Device are the store's: what the caller put there
		// is replaced.
		{ID: 999, Device: "someone else", Timestamp: at(4 * time.Second), Service: "db", Message: "no seq"},
	}
	got := appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", ReceivedAt: at(time.Hour), Lines: in})[0]
	if len(got.Stored) != len(in) || got.Duplicates != 0 || got.LastSeq != 4 {
		t.Fatalf("stored %d lines, %d duplicates, last seq %d; want %d, 0, 4", len(got.Stored), got.Duplicates, got.LastSeq, len(in))
	}
	var want []reeve.LogLine
	for i, l := range got.Stored {
		if l.ID <= 0 || (i > 0 && l.ID <= got.Stored[i-1].ID) {
			t.Fatalf("line %d has ID %d: IDs must be positive and increase in the order stored", i, l.ID)
		}
		want = append(want, asStored(in[i], l.ID, devA))
		utc(t, "stored line", l.Timestamp)
	}
	same(t, "lines as AppendLogs returned them", want, got.Stored)
	read := logLines(t, s, devA, store.LogQuery{})
	same(t, "lines as LogLines returns them", want, read)
	for _, l := range read {
		utc(t, "read line", l.Timestamp)
	}
}

func testLogDuplicatesAcrossCalls(t *testing.T, s store.LogStore) {
	first := appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(1, 3)})[0]
	appended(t, "first call", first, []uint64{1, 2, 3}, 0, 3)
	// The agent sends 2..5 again (its acknowledgement of 1..3 was lost
	// after 1 was forgotten, say): 2 and 3 are skipped.
	second := appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(2, 5)})[0]
	appended(t, "second call", second, []uint64{4, 5}, 2, 5)
	// All of it again: nothing new.
	third := appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(1, 5)})[0]
	appended(t, "third call", third, []uint64{}, 5, 5)
	same(t, "stored lines", []uint64{1, 2, 3, 4, 5}, seqs(logLines(t, s, devA, store.LogQuery{})))
	// A duplicate keeps the first line: the resent one's message differs.
	again := seqLines(1, 1)
	again[0].Message = "changed"
	appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: again})
	same(t, "messages", []string{"line 1", "line 2", "line 3", "line 4", "line 5"}, messages(logLines(t, s, devA, store.LogQuery{})))
}

func testLogDuplicatesWithinCall(t *testing.T, s store.LogStore) {
	// Within one batch.
	lines := append(seqLines(1, 2), seqLines(2, 3)...)
	got := appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: lines})[0]
	appended(t, "one batch with seq 2 twice", got, []uint64{1, 2, 3}, 1, 3)
	// Across two batches of one call (two requests of the same stream
	// committed together).
	res := appendLogs(t, s,
		store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(4, 6)},
		store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(5, 8)},
	)
	appended(t, "first batch of the call", res[0], []uint64{4, 5, 6}, 0, 6)
	appended(t, "second batch of the call", res[1], []uint64{7, 8}, 2, 8)
	same(t, "stored lines", []uint64{1, 2, 3, 4, 5, 6, 7, 8}, seqs(logLines(t, s, devA, store.LogQuery{})))
}

func testLogNeverDuplicates(t *testing.T, s store.LogStore) {
	noSeq := []reeve.LogLine{line(0, "web", "a", 0), line(0, "web", "a", 0)}
	got := appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: noSeq})[0]
	if len(got.Stored) != 2 || got.Duplicates != 0 || got.LastSeq != 0 {
		t.Errorf("lines without seq: %d stored, %d duplicates, last seq %d; want 2, 0, 0", len(got.Stored), got.Duplicates, got.LastSeq)
	}
	got = appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: noSeq})[0]
	if len(got.Stored) != 2 || got.Duplicates != 0 {
		t.Errorf("lines without seq, again: %d stored, %d duplicates; want 2, 0", len(got.Stored), got.Duplicates)
	}
	// A seq without a stream is not de-duplicated either.
	for range 2 {
		got = appendLogs(t, s, store.LogBatch{Device: devA, Lines: seqLines(1, 2)})[0]
		appended(t, "lines without a stream", got, []uint64{1, 2}, 0, 0)
	}
	if n := len(logLines(t, s, devA, store.LogQuery{})); n != 8 {
		t.Errorf("%d lines stored, want 8", n)
	}
}

func testLogNewStream(t *testing.T, s store.LogStore) {
	appended(t, "stream s1", appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(1, 5)})[0], []uint64{1, 2, 3, 4, 5}, 0, 5)
	// The agent started a new stream (its queue was reset): its seqs
	// start again at 1 and are new lines.
	appended(t, "stream s2", appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s2", Lines: seqLines(1, 3)})[0], []uint64{1, 2, 3}, 0, 3)
	// Another device with the same stream name is another stream.
	appended(t, "device b, stream s1", appendLogs(t, s, store.LogBatch{Device: devB, Stream: "s1", Lines: seqLines(1, 2)})[0], []uint64{1, 2}, 0, 2)
	// Each keeps its own duplicates and last seq.
	res := appendLogs(t, s,
		store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(5, 6)},
		store.LogBatch{Device: devA, Stream: "s2", Lines: seqLines(3, 4)},
		store.LogBatch{Device: devB, Stream: "s1", Lines: seqLines(1, 1)},
	)
	appended(t, "s1 again", res[0], []uint64{6}, 1, 6)
	appended(t, "s2 again", res[1], []uint64{4}, 1, 4)
	appended(t, "device b again", res[2], []uint64{}, 1, 2)
	if n := len(logLines(t, s, devA, store.LogQuery{})); n != 10 {
		t.Errorf("device a has %d lines, want 10", n)
	}
	if n := len(logLines(t, s, devB, store.LogQuery{})); n != 2 {
		t.Errorf("device b has %d lines, want 2", n)
	}
}

func testLogLastSeqWithoutLines(t *testing.T, s store.LogStore) {
	res := appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1"}, store.LogBatch{Device: devA})
	appended(t, "an unknown stream", res[0], []uint64{}, 0, 0)
	appended(t, "no stream", res[1], []uint64{}, 0, 0)
	appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(1, 7)})
	res = appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1"})
	appended(t, "a known stream", res[0], []uint64{}, 0, 7)
}

func testLogQuery(t *testing.T, s store.LogStore) {
	// Stored in this order; the device's clock stepped back for the
	// fourth line, which still comes fourth.
	in := []reeve.LogLine{
		line(1, "web", "w1", 1*time.Second),
		line(2, "db", "d1", 2*time.Second),
		{Seq: 3, Timestamp: at(3 * time.Second), System: true, Message: "s1"},
		line(4, "web", "w2", -time.Hour),
		{Seq: 5, Timestamp: at(5 * time.Second), Service: "db", System: true, Message: "s2"},
		line(6, "cache", "c1", 6*time.Second),
		line(7, "web", "w3", 7*time.Second),
	}
	res := appendLogs(t, s,
		store.LogBatch{Device: devA, Stream: "s1", Lines: in[:3]},
		store.LogBatch{Device: devB, Stream: "s1", Lines: seqLines(1, 3)}, // another device's lines in between
		store.LogBatch{Device: devA, Stream: "s1", Lines: in[3:]},
	)
	ids := map[string]int64{}
	for _, b := range []store.LogAppended{res[0], res[2]} {
		for _, l := range b.Stored {
			ids[l.Message] = l.ID
		}
	}
	for _, tc := range []struct {
		name string
		q    store.LogQuery
		want []string
	}{
		{"all, in stored order", store.LogQuery{}, []string{"w1", "d1", "s1", "w2", "s2", "c1", "w3"}},
		{"one service", store.LogQuery{Services: []string{"web"}}, []string{"w1", "w2", "w3"}},
		{"two services", store.LogQuery{Services: []string{"db", "cache"}}, []string{"d1", "s2", "c1"}},
		{"an unknown service", store.LogQuery{Services: []string{"nope"}}, []string{}},
		{"system lines", store.LogQuery{System: true}, []string{"s1", "s2"}},
		{"system lines of a service", store.LogQuery{System: true, Services: []string{"db"}}, []string{"s2"}},
		{"since", store.LogQuery{Since: at(3 * time.Second).Truncate(time.Microsecond)}, []string{"s1", "s2", "c1", "w3"}},
		{"since, a microsecond later", store.LogQuery{Since: at(3*time.Second + time.Microsecond)}, []string{"s2", "c1", "w3"}},
		{"since, between microseconds", store.LogQuery{Since: at(3 * time.Second).Truncate(time.Microsecond).Add(1)}, []string{"s2", "c1", "w3"}},
		{"after", store.LogQuery{After: ids["w2"]}, []string{"s2", "c1", "w3"}},
		{"after the last", store.LogQuery{After: ids["w3"]}, []string{}},
		{"limit: the newest, oldest first", store.LogQuery{Limit: 3}, []string{"s2", "c1", "w3"}},
		{"limit over the count", store.LogQuery{Limit: 100}, []string{"w1", "d1", "s1", "w2", "s2", "c1", "w3"}},
		{"limit of a service", store.LogQuery{Services: []string{"web"}, Limit: 2}, []string{"w2", "w3"}},
		{"after and limit", store.LogQuery{After: ids["d1"], Limit: 2}, []string{"c1", "w3"}},
		{"everything", store.LogQuery{Services: []string{"web", "db"}, Since: at(0), After: ids["w1"], Limit: 2}, []string{"s2", "w3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := logLines(t, s, devA, tc.q)
			same(t, "messages", tc.want, messages(got))
			for i := 1; i < len(got); i++ {
				if got[i].ID <= got[i-1].ID {
					t.Errorf("line %d (ID %d) comes after ID %d: want ID order", i, got[i].ID, got[i-1].ID)
				}
			}
			for _, l := range got {
				if l.Device != devA {
					t.Errorf("line %q is of device %q", l.Message, l.Device)
				}
				if !tc.q.Match(l) {
					t.Errorf("line %q does not match the query by LogQuery.Match", l.Message)
				}
			}
		})
	}
}

func testLogQueryUnknownDevice(t *testing.T, s store.LogStore) {
	appendLogs(t, s, store.LogBatch{Device: devA, Lines: seqLines(1, 2)})
	if got := logLines(t, s, devB, store.LogQuery{}); len(got) != 0 {
		t.Errorf("device b has lines %v", got)
	}
}

func testLogPruneByAge(t *testing.T, s store.LogStore) {
	base := at(0)
	appendLogs(t, s,
		store.LogBatch{Device: devA, ReceivedAt: base.Add(-2 * time.Hour), Lines: []reeve.LogLine{line(0, "web", "a-old", time.Hour)}},
		store.LogBatch{Device: devB, ReceivedAt: base.Add(-90 * time.Minute), Lines: []reeve.LogLine{line(0, "web", "b-old", time.Hour)}},
		store.LogBatch{Device: devA, ReceivedAt: base.Add(-time.Minute), Lines: []reeve.LogLine{line(0, "web", "a-new", -48*time.Hour)}},
		store.LogBatch{Device: devB, ReceivedAt: base, Lines: []reeve.LogLine{line(0, "web", "b-new", 0)}},
	)
	// By when the server got them, not by the device's timestamps.
	n, err := s.PruneLogs(t.Context(), base.Add(-time.Hour))
	ok(t, err, "prune")
	if n != 2 {
		t.Errorf("pruned %d lines, want 2", n)
	}
	same(t, "device a", []string{"a-new"}, messages(logLines(t, s, devA, store.LogQuery{})))
	same(t, "device b", []string{"b-new"}, messages(logLines(t, s, devB, store.LogQuery{})))
	n, err = s.PruneLogs(t.Context(), base.Add(-time.Hour))
	ok(t, err, "prune again")
	if n != 0 {
		t.Errorf("pruned %d lines the second time, want 0", n)
	}
	// More lines than one chunk of a prune may hold.
	many := make([]reeve.LogLine, 12_000)
	for i := range many {
		many[i] = line(0, "web", "many", 0)
	}
	appendLogs(t, s, store.LogBatch{Device: devA, ReceivedAt: base.Add(time.Minute), Lines: many})
	n, err = s.PruneLogs(t.Context(), base.Add(time.Hour))
	ok(t, err, "prune many")
	if n != int64(len(many))+2 {
		t.Errorf("pruned %d lines, want %d", n, len(many)+2)
	}
	if got := logLines(t, s, devA, store.LogQuery{}); len(got) != 0 {
		t.Errorf("%d lines left", len(got))
	}
}

func testLogTrimByCount(t *testing.T, s store.LogStore) {
	appendLogs(t, s,
		store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(1, 6)},
		store.LogBatch{Device: devB, Stream: "s1", Lines: seqLines(1, 3)},
		store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(7, 10)},
	)
	n, err := s.TrimLogs(t.Context(), 4)
	ok(t, err, "trim")
	if n != 6 {
		t.Errorf("trimmed %d lines, want 6", n)
	}
	same(t, "device a keeps its newest", []uint64{7, 8, 9, 10}, seqs(logLines(t, s, devA, store.LogQuery{})))
	same(t, "device b under the cap", []uint64{1, 2, 3}, seqs(logLines(t, s, devB, store.LogQuery{})))
	n, err = s.TrimLogs(t.Context(), 4)
	ok(t, err, "trim again")
	if n != 0 {
		t.Errorf("trimmed %d lines the second time, want 0", n)
	}
	// The counts follow later appends.
	appendLogs(t, s, store.LogBatch{Device: devB, Stream: "s1", Lines: seqLines(4, 6)})
	n, err = s.TrimLogs(t.Context(), 4)
	ok(t, err, "trim after more lines")
	if n != 2 {
		t.Errorf("trimmed %d lines, want 2", n)
	}
	same(t, "device b keeps its newest", []uint64{3, 4, 5, 6}, seqs(logLines(t, s, devB, store.LogQuery{})))
	n, err = s.TrimLogs(t.Context(), 1)
	ok(t, err, "trim to one")
	if n != 6 {
		t.Errorf("trimmed %d lines, want 6", n)
	}
	same(t, "device a", []uint64{10}, seqs(logLines(t, s, devA, store.LogQuery{})))
	same(t, "device b", []uint64{6}, seqs(logLines(t, s, devB, store.LogQuery{})))
}

func testLogTrimAfterPrune(t *testing.T, s store.LogStore) {
	base := at(0)
	appendLogs(t, s,
		store.LogBatch{Device: devA, Stream: "s1", ReceivedAt: base.Add(-time.Hour), Lines: seqLines(1, 5)},
		store.LogBatch{Device: devA, Stream: "s1", ReceivedAt: base, Lines: seqLines(6, 8)},
	)
	if _, err := s.PruneLogs(t.Context(), base.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Three lines are left: under a cap of 3 nothing goes, over 2 one.
	n, err := s.TrimLogs(t.Context(), 3)
	ok(t, err, "trim")
	if n != 0 {
		t.Errorf("trimmed %d lines, want 0", n)
	}
	n, err = s.TrimLogs(t.Context(), 2)
	ok(t, err, "trim")
	if n != 1 {
		t.Errorf("trimmed %d lines, want 1", n)
	}
	same(t, "left", []uint64{7, 8}, seqs(logLines(t, s, devA, store.LogQuery{})))
}

func testLogDeleteDevice(t *testing.T, s store.LogStore) {
	appendLogs(t, s,
		store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(1, 4)},
		store.LogBatch{Device: devB, Stream: "s1", Lines: seqLines(1, 2)},
	)
	n, err := s.DeleteDeviceLogs(t.Context(), devA)
	ok(t, err, "delete device a's lines")
	if n != 4 {
		t.Errorf("deleted %d lines, want 4", n)
	}
	if got := logLines(t, s, devA, store.LogQuery{}); len(got) != 0 {
		t.Errorf("device a still has %d lines", len(got))
	}
	same(t, "device b", []uint64{1, 2}, seqs(logLines(t, s, devB, store.LogQuery{})))
	n, err = s.DeleteDeviceLogs(t.Context(), devA)
	ok(t, err, "delete again")
	if n != 0 {
		t.Errorf("deleted %d lines the second time, want 0", n)
	}
	// What the stream held went with the lines: a device registered
	// again under this UUID starts afresh.
	appended(t, "after the deletion", appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: seqLines(1, 2)})[0], []uint64{1, 2}, 0, 2)
	// The count went too: a trim sees two lines, not six.
	n, err = s.TrimLogs(t.Context(), 2)
	ok(t, err, "trim")
	if n != 0 {
		t.Errorf("trimmed %d lines, want 0", n)
	}
}

func testLogIDsNeverReused(t *testing.T, s store.LogStore) {
	first := appendLogs(t, s, store.LogBatch{Device: devA, Lines: seqLines(1, 3)})[0]
	last := first.Stored[2].ID
	if _, err := s.DeleteDeviceLogs(t.Context(), devA); err != nil {
		t.Fatal(err)
	}
	again := appendLogs(t, s, store.LogBatch{Device: devA, Lines: seqLines(1, 1)})[0]
	if again.Stored[0].ID <= last {
		t.Errorf("a line stored after every line was deleted got ID %d, not above the last ID %d", again.Stored[0].ID, last)
	}
}

func testLogSeqTooLarge(t *testing.T, s store.LogStore) {
	big := line(math.MaxInt64+1, "web", "too far", 0)
	_, err := s.AppendLogs(t.Context(), []store.LogBatch{
		{Device: devB, Stream: "s1", Lines: seqLines(1, 2)},
		{Device: devA, Stream: "s1", Lines: []reeve.LogLine{big}},
	})
	wantCode(t, err, reeve.CodeInvalid, "seq")
	for _, d := range []string{devA, devB} {
		if got := logLines(t, s, d, store.LogQuery{}); len(got) != 0 {
			t.Errorf("a refused call stored %d lines of %s", len(got), d)
		}
	}
	// The largest seq there is is fine.
	largest := line(math.MaxInt64, "web", "far", 0)
	appended(t, "the largest seq", appendLogs(t, s, store.LogBatch{Device: devA, Stream: "s1", Lines: []reeve.LogLine{largest}})[0],
		[]uint64{math.MaxInt64}, 0, math.MaxInt64)
}

func testLogInvalidArguments(t *testing.T, s store.LogStore) {
	_, err := s.TrimLogs(t.Context(), 0)
	wantCode(t, err, reeve.CodeInvalid)
	_, err = s.LogLines(t.Context(), devA, store.LogQuery{Limit: -1})
	wantCode(t, err, reeve.CodeInvalid)
}

func testLogConcurrentAppends(t *testing.T, s store.LogStore) {
	const workers, calls = 8, 20
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ids  []int64
		errs []error
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range calls {
				res, err := s.AppendLogs(t.Context(), []store.LogBatch{{
					Device: devA, Stream: fmt.Sprint("w", w),
					Lines: seqLines(uint64(2*c+1), uint64(2*c+2)),
				}})
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					for _, l := range res[0].Stored {
						ids = append(ids, l.ID)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d appends failed, the first with %v", len(errs), errs[0])
	}
	slices.Sort(ids)
	if len(slices.Compact(ids)) != workers*calls*2 {
		t.Errorf("%d distinct IDs, want %d", len(slices.Compact(ids)), workers*calls*2)
	}
	if got := logLines(t, s, devA, store.LogQuery{}); len(got) != workers*calls*2 {
		t.Errorf("%d lines stored, want %d", len(got), workers*calls*2)
	}
}
