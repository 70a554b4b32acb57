package logship

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	rt "reeve.dev/reeve/internal/runtime"
)

// qtLog collects a queue's log lines, and shows them in the test's log.
type qtLog struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *qtLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	l.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

func (l *qtLog) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.b.String(), s)
}

func qtOpen(t testing.TB, dir string, opts QueueOptions) (*Queue, *qtLog) {
	t.Helper()
	lg := &qtLog{t: t}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(lg, nil))
	}
	q, err := OpenQueue(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return q, lg
}

var qtT0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// qtRecs makes n records; their timestamps come in groups of 3 equal ones
// so that cursors count lines sharing a timestamp.
func qtRecs(from, n int, containers ...string) []Record {
	var out []Record
	for i := from; i < from+n; i++ {
		r := Record{LogLine: reeve.LogLine{
			Timestamp: qtT0.Add(time.Duration(i/3) * time.Millisecond),
			Service:   "svc",
			Stderr:    i%2 == 0,
			Message:   fmt.Sprintf("line %d of the log, with some text to make it look real", i),
		}}
		if len(containers) > 0 {
			r.Container = containers[i%len(containers)]
		}
		out = append(out, r)
	}
	return out
}

func qtAppend(t testing.TB, q *Queue, recs []Record) {
	t.Helper()
	if err := q.Append(recs); err != nil {
		t.Fatal(err)
	}
}

// qtReadAll reads everything after after.
func qtReadAll(t testing.TB, q *Queue, after uint64) []Record {
	t.Helper()
	var out []Record
	for {
		recs, err := q.Read(after, 97, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return out
		}
		for _, r := range recs {
			if r.Seq <= after {
				t.Fatalf("Read(%d) returned seq %d", after, r.Seq)
			}
			after = r.Seq
		}
		out = append(out, recs...)
	}
}

var qtDroppedRe = regexp.MustCompile(`^(\d+) log lines dropped`)

// qtDropCount is the count in a dropped-lines record, -1 if r is not one.
func qtDropCount(r Record) int {
	m := qtDroppedRe.FindStringSubmatch(r.Message)
	if !r.System || m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func qtSameRecord(t testing.TB, got, want Record) {
	t.Helper()
	if got.Seq != want.Seq || !got.Timestamp.Equal(want.Timestamp) || got.Message != want.Message ||
		got.Service != want.Service || got.Stderr != want.Stderr || got.System != want.System ||
		got.Device != want.Device || got.ID != want.ID || got.Container != want.Container {
		t.Fatalf("record\n got %+v\nwant %+v", got, want)
	}
}

func qtCopyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func qtSegments(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+queueSegSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// qtCursors is what the cursors are after recs.
func qtCursors(recs []Record) map[string]Cursor {
	c := map[string]Cursor{}
	for _, r := range recs {
		if r.Container != "" {
			c[r.Container] = c[r.Container].Advance(r.Stderr, r.Timestamp)
		}
	}
	return c
}

func sameMark(a, b rt.LogMark) bool { return a.Time.Equal(b.Time) && a.Count == b.Count }

func qtSameCursors(t testing.TB, what string, got, want map[string]Cursor) {
	t.Helper()
	ok := len(got) == len(want)
	for k, w := range want {
		g, found := got[k]
		ok = ok && found && sameMark(g.Stdout, w.Stdout) && sameMark(g.Stderr, w.Stderr)
	}
	if !ok {
		t.Fatalf("%s: cursors\n got %v\nwant %v", what, got, want)
	}
}

func TestQueueRoundTripAndReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "q")
	q, _ := qtOpen(t, dir, QueueOptions{SegmentBytes: 1 << 10})
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("queue dir: %v, %v", fi, err)
	}
	stream := q.Stream()
	if len(stream) != 16 {
		t.Fatalf("stream %q", stream)
	}
	all := qtRecs(0, 50, "c1", "c2", "")
	all[3].System, all[3].Device, all[3].ID = true, "dep-1", 42
	all[4].Timestamp = time.Date(2025, 3, 4, 7, 6, 7, 123456789, time.FixedZone("x", 2*3600))
	qtAppend(t, q, all[:20])
	qtAppend(t, q, all[20:21])
	qtAppend(t, q, all[21:])
	for i, r := range all {
		if r.Seq != uint64(i+1) {
			t.Fatalf("Append gave record %d seq %d", i, r.Seq)
		}
	}
	got := qtReadAll(t, q, 0)
	if len(got) != len(all) {
		t.Fatalf("read %d records, want %d", len(got), len(all))
	}
	for i := range all {
		qtSameRecord(t, got[i], all[i])
	}
	if len(qtSegments(t, dir)) < 3 {
		t.Fatalf("want several segments, have %d", len(qtSegments(t, dir)))
	}
	if st := q.Stats(); st.Lines != 50 || st.Dropped != 0 || st.Bytes <= 0 {
		t.Fatalf("stats %+v", st)
	}
	if err := q.Ack(30); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Lines != 20 {
		t.Fatalf("stats after ack %+v", st)
	}
	if got := qtReadAll(t, q, q.Acked()); len(got) != 20 || got[0].Seq != 31 {
		t.Fatalf("after ack read %d records from %v", len(got), got[0].Seq)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Read(0, 10, 100); !errors.Is(err, ErrQueueClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := q.Append(qtRecs(0, 1)); !errors.Is(err, ErrQueueClosed) {
		t.Fatalf("append after close: %v", err)
	}

	q, _ = qtOpen(t, dir, QueueOptions{SegmentBytes: 1 << 10})
	defer q.Close()
	if q.Stream() != stream || q.Acked() != 30 {
		t.Fatalf("reopened: stream %q acked %d", q.Stream(), q.Acked())
	}
	more := qtRecs(50, 5, "c1")
	qtAppend(t, q, more)
	if more[0].Seq != 51 {
		t.Fatalf("seq after reopen %d, want 51", more[0].Seq)
	}
	got = qtReadAll(t, q, 30)
	if len(got) != 25 || got[0].Seq != 31 || got[24].Seq != 55 {
		t.Fatalf("read after reopen: %d records", len(got))
	}
	for i, r := range append(all[30:], more...) {
		qtSameRecord(t, got[i], r)
	}
}

func TestQueueTruncatesLongMessages(t *testing.T) {
	q, _ := qtOpen(t, t.TempDir(), QueueOptions{})
	defer q.Close()
	long := strings.Repeat("x", 3*reeve.MaxLogLineBytes)
	qtAppend(t, q, []Record{{LogLine: reeve.LogLine{Timestamp: qtT0, Message: long}}})
	got := qtReadAll(t, q, 0)
	if len(got) != 1 || got[0].Message != reeve.TruncateLogMessage(long) {
		t.Fatalf("got %d records, message of %d bytes", len(got), len(got[0].Message))
	}
}

func TestQueueReadLimits(t *testing.T) {
	// Big segments, so that reads start from the offsets the index keeps.
	q, _ := qtOpen(t, t.TempDir(), QueueOptions{SegmentBytes: 256 << 10, MaxBytes: 64 << 20})
	defer q.Close()
	all := qtRecs(0, 5000, "c")
	for i := 0; i < len(all); i += 100 {
		qtAppend(t, q, all[i:i+100])
	}
	for _, after := range []uint64{0, 1, 99, 1000, 2047, 4998, 4999} {
		got, err := q.Read(after, 10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		want := min(10, 5000-int(after))
		if len(got) != want {
			t.Fatalf("Read(%d, 10): %d records", after, len(got))
		}
		for i, r := range got {
			qtSameRecord(t, r, all[int(after)+i])
		}
	}
	if got, _ := q.Read(5000, 10, 1<<20); len(got) != 0 {
		t.Fatalf("read past the end: %d records", len(got))
	}
	// maxBytes: messages are about 60 bytes.
	msgLen := len(all[0].Message)
	got, _ := q.Read(0, 1000, 5*msgLen+1)
	if len(got) != 5 {
		t.Fatalf("Read with room for 5 messages: %d records", len(got))
	}
	// At least one record, however small maxBytes.
	got, _ = q.Read(7, 1000, 1)
	if len(got) != 1 || got[0].Seq != 8 {
		t.Fatalf("Read with maxBytes 1: %v", got)
	}
}

func TestQueueWait(t *testing.T) {
	q, _ := qtOpen(t, t.TempDir(), QueueOptions{})
	select {
	case <-q.Wait(0):
		t.Fatal("Wait(0) on an empty queue is closed")
	default:
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-q.Wait(0)
			if recs, err := q.Read(0, 10, 1000); err != nil || len(recs) == 0 {
				t.Errorf("woken reader read %d records, %v", len(recs), err)
			}
		}()
	}
	qtAppend(t, q, qtRecs(0, 3))
	wg.Wait()
	select {
	case <-q.Wait(2):
	default:
		t.Fatal("Wait(2) with 3 records is not closed")
	}
	w := q.Wait(3)
	select {
	case <-w:
		t.Fatal("Wait(3) with 3 records is closed")
	default:
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	<-w // Close releases waiters
	<-q.Wait(100)
}

func TestQueueKeepsSeqAfterEverythingAcked(t *testing.T) {
	dir := t.TempDir()
	q, _ := qtOpen(t, dir, QueueOptions{SegmentBytes: 512})
	qtAppend(t, q, qtRecs(0, 40, "c"))
	if err := q.Ack(40); err != nil {
		t.Fatal(err)
	}
	if n := len(qtSegments(t, dir)); n != 1 {
		t.Fatalf("%d segments after acking everything, want the active one", n)
	}
	crashed := qtCopyDir(t, dir) // as a kill -9 leaves it
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, crashed} {
		q, _ := qtOpen(t, d, QueueOptions{SegmentBytes: 512})
		if q.Acked() != 40 {
			t.Fatalf("acked %d", q.Acked())
		}
		if got := qtReadAll(t, q, 40); len(got) != 0 {
			t.Fatalf("read %d records after everything was acked", len(got))
		}
		r := qtRecs(40, 1)
		qtAppend(t, q, r)
		if r[0].Seq != 41 {
			t.Fatalf("seq %d after reopen, want 41", r[0].Seq)
		}
		q.Close()
	}
}

func TestQueueTornTailAtEveryOffset(t *testing.T) {
	dir := t.TempDir()
	q, _ := qtOpen(t, dir, QueueOptions{})
	all := qtRecs(0, 10, "c")
	qtAppend(t, q, all[:9])
	qtAppend(t, q, all[9:])
	base := qtCopyDir(t, dir) // a crash right after the last append
	q.Close()
	segs := qtSegments(t, base)
	if len(segs) != 1 {
		t.Fatalf("%d segments", len(segs))
	}
	fi, _ := os.Stat(segs[0])
	size := fi.Size()
	last := all[9]
	frame := int64(len(queueAppendFrame(nil, &last, last.Seq, last.Message)))
	for cut := size - frame; cut < size; cut++ {
		d := qtCopyDir(t, base)
		seg := filepath.Join(d, filepath.Base(segs[0]))
		if err := os.Truncate(seg, cut); err != nil {
			t.Fatal(err)
		}
		q, lg := qtOpen(t, d, QueueOptions{})
		got := qtReadAll(t, q, 0)
		if len(got) != 9 {
			t.Fatalf("cut at %d: read %d records, want 9", cut, len(got))
		}
		for i := range got {
			qtSameRecord(t, got[i], all[i])
		}
		if cut > size-frame && !lg.has("torn") {
			t.Fatalf("cut at %d: the torn record was not logged", cut)
		}
		if fi, _ := os.Stat(seg); fi.Size() != size-frame {
			t.Fatalf("cut at %d: segment is %d bytes, want the torn record cut off", cut, fi.Size())
		}
		r := qtRecs(100, 1, "c")
		qtAppend(t, q, r)
		if r[0].Seq != 10 {
			t.Fatalf("cut at %d: new record seq %d, want 10", cut, r[0].Seq)
		}
		if got := qtReadAll(t, q, 9); len(got) != 1 {
			t.Fatalf("cut at %d: new record not readable", cut)
		} else {
			qtSameRecord(t, got[0], r[0])
		}
		qtSameCursors(t, "after the cut", q.Cursors(), qtCursors(append(all[:9:9], r...)))
		q.Close()
	}
}

func TestQueueLostDurableTailIsReportedDropped(t *testing.T) {
	// The state saved on Close says 10 records were stored; the last is
	// gone when the queue opens (storage damage): its Seq is not given
	// again, and a record says it was lost.
	dir := t.TempDir()
	q, _ := qtOpen(t, dir, QueueOptions{})
	all := qtRecs(0, 10)
	qtAppend(t, q, all)
	q.Close()
	seg := qtSegments(t, dir)[0]
	fi, _ := os.Stat(seg)
	os.Truncate(seg, fi.Size()-5)
	q, _ = qtOpen(t, dir, QueueOptions{})
	defer q.Close()
	got := qtReadAll(t, q, 0)
	if len(got) != 10 || qtDropCount(got[9]) != 1 || got[9].Seq != 10 {
		t.Fatalf("read %d records, last %+v", len(got), got[len(got)-1])
	}
	r := qtRecs(10, 1)
	qtAppend(t, q, r)
	if r[0].Seq != 11 {
		t.Fatalf("seq %d, want 11", r[0].Seq)
	}
	if q.Stats().Dropped != 1 {
		t.Fatalf("stats %+v", q.Stats())
	}
}

func TestQueueGarbageAtTheTail(t *testing.T) {
	for _, garbage := range [][]byte{
		bytes.Repeat([]byte{0}, 4096),                                                  // zeroed blocks
		[]byte("\x01\x02 not a record at all, really"),                                 // junk
		append(append([]byte{}, queueMagic[:]...), 0xff, 0xff, 0xff, 0x00, 1, 2, 3, 4), // a header that lies
	} {
		dir := t.TempDir()
		q, _ := qtOpen(t, dir, QueueOptions{})
		all := qtRecs(0, 10, "c")
		qtAppend(t, q, all)
		q.Close()
		seg := qtSegments(t, dir)[0]
		f, _ := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
		f.Write(garbage)
		f.Close()
		q, _ = qtOpen(t, dir, QueueOptions{})
		got := qtReadAll(t, q, 0)
		if len(got) != 10 {
			t.Fatalf("read %d records", len(got))
		}
		r := qtRecs(10, 2, "c")
		qtAppend(t, q, r)
		if r[0].Seq != 11 {
			t.Fatalf("seq %d", r[0].Seq)
		}
		q.Close()
		q, _ = qtOpen(t, dir, QueueOptions{})
		if got := qtReadAll(t, q, 0); len(got) != 12 {
			t.Fatalf("after reopen read %d records", len(got))
		}
		q.Close()
	}
}

func TestQueueCorruptRecordInTheMiddle(t *testing.T) {
	for _, lastSegment := range []bool{true, false} {
		t.Run(fmt.Sprintf("last=%v", lastSegment), func(t *testing.T) {
			dir := t.TempDir()
			q, _ := qtOpen(t, dir, QueueOptions{SegmentBytes: 4 << 10})
			all := qtRecs(0, 40, "c")
			qtAppend(t, q, all[:20]) // one segment
			if !lastSegment {
				q.rotate(21) // the next records go into another
				qtAppend(t, q, all[20:])
			}
			crashed := qtCopyDir(t, dir)
			q.Close()
			seg := qtSegments(t, crashed)[0]
			b, _ := os.ReadFile(seg)
			// Flip a byte in the message of the 8th record.
			i := bytes.Index(b, []byte(all[7].Message))
			b[i+5] ^= 0x20
			os.WriteFile(seg, b, 0o600)

			q, lg := qtOpen(t, crashed, QueueOptions{SegmentBytes: 4 << 10})
			defer q.Close()
			if !lg.has("damaged record") {
				t.Fatal("the damage was not logged")
			}
			got := qtReadAll(t, q, 0)
			for i := range 7 {
				qtSameRecord(t, got[i], all[i])
			}
			if qtDropCount(got[7]) != 13 || got[7].Seq != 20 {
				t.Fatalf("in place of the damage: %+v", got[7])
			}
			rest := got[8:]
			if !lastSegment {
				if len(rest) != 20 {
					t.Fatalf("%d records after the damaged segment", len(rest))
				}
				for i := range rest {
					qtSameRecord(t, rest[i], all[20+i])
				}
			} else if len(rest) != 0 {
				t.Fatalf("%d records after the damage", len(rest))
			}
			if q.Stats().Dropped != 13 {
				t.Fatalf("stats %+v", q.Stats())
			}
			// No Seq is given twice.
			r := qtRecs(100, 1)
			qtAppend(t, q, r)
			want := uint64(21)
			if !lastSegment {
				want = 41
			}
			if r[0].Seq != want {
				t.Fatalf("new record seq %d, want %d", r[0].Seq, want)
			}
			if got := qtReadAll(t, q, want-1); len(got) != 1 {
				t.Fatalf("new record not readable")
			}
		})
	}
}

func TestQueueFailedAppend(t *testing.T) {
	dir := t.TempDir()
	q, _ := qtOpen(t, dir, QueueOptions{})
	all := qtRecs(0, 10, "c")
	qtAppend(t, q, all[:5])
	// The segment's file fails every write, and cannot be cut back.
	ro, err := os.Open(q.activeSeg.path)
	if err != nil {
		t.Fatal(err)
	}
	q.active.Close()
	q.active = ro
	if err := q.Append(all[5:]); err == nil {
		t.Fatal("append into a failing file succeeded")
	}
	if err := q.Append(all[5:]); err == nil {
		t.Fatal("append after a failure left the segment in doubt succeeded")
	}
	qtSameCursors(t, "after the failure", q.Cursors(), qtCursors(all[:5]))
	if got := qtReadAll(t, q, 0); len(got) != 5 {
		t.Fatalf("read %d records", len(got))
	}
	q.Close()
	q, _ = qtOpen(t, dir, QueueOptions{})
	defer q.Close()
	qtAppend(t, q, all[5:])
	if all[5].Seq != 6 {
		t.Fatalf("seq %d after reopen", all[5].Seq)
	}
	if got := qtReadAll(t, q, 0); len(got) != 10 {
		t.Fatalf("read %d records after reopen", len(got))
	}
}

func TestQueueIgnoresJunkFiles(t *testing.T) {
	dir := t.TempDir()
	q, _ := qtOpen(t, dir, QueueOptions{})
	qtAppend(t, q, qtRecs(0, 3))
	q.Close()
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o600)
	os.WriteFile(filepath.Join(dir, "12.seg"), []byte("short name"), 0o600)
	os.WriteFile(filepath.Join(dir, "."+queueStateFile+".123"), []byte("{"), 0o600)
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	q, lg := qtOpen(t, dir, QueueOptions{})
	defer q.Close()
	if !lg.has("notes.txt") || !lg.has("12.seg") {
		t.Fatal("junk files were not logged")
	}
	if got := qtReadAll(t, q, 0); len(got) != 3 {
		t.Fatalf("read %d records", len(got))
	}
	if _, err := os.Stat(filepath.Join(dir, "."+queueStateFile+".123")); !os.IsNotExist(err) {
		t.Fatal("a leftover temporary state file was kept")
	}
	if _, err := os.Stat(filepath.Join(dir, "notes.txt")); err != nil {
		t.Fatal("a file that is not the queue's was touched")
	}
}

func TestQueueUnreadableStateStartsANewStream(t *testing.T) {
	dir := t.TempDir()
	q, _ := qtOpen(t, dir, QueueOptions{})
	qtAppend(t, q, qtRecs(0, 3, "c"))
	stream := q.Stream()
	q.Close()
	os.WriteFile(filepath.Join(dir, queueStateFile), []byte("{not json"), 0o600)
	q, lg := qtOpen(t, dir, QueueOptions{})
	defer q.Close()
	if q.Stream() == stream || !lg.has("state file is unreadable") {
		t.Fatalf("stream %q", q.Stream())
	}
	if got := qtReadAll(t, q, 0); len(got) != 3 {
		t.Fatalf("read %d records", len(got))
	}
	qtSameCursors(t, "rebuilt from the segments", q.Cursors(), qtCursors(qtRecs(0, 3, "c")))
}

func TestQueueAckErrors(t *testing.T) {
	q, _ := qtOpen(t, t.TempDir(), QueueOptions{})
	if err := q.Ack(1); err == nil {
		t.Fatal("ack on an empty queue")
	}
	qtAppend(t, q, qtRecs(0, 5))
	if err := q.Ack(6); err == nil {
		t.Fatal("ack beyond the last record")
	}
	if err := q.Ack(5); err != nil {
		t.Fatal(err)
	}
	if err := q.Ack(3); err != nil || q.Acked() != 5 {
		t.Fatalf("ack backwards: %v, acked %d", err, q.Acked())
	}
	q.Close()
	if err := q.Ack(5); !errors.Is(err, ErrQueueClosed) {
		t.Fatalf("ack after close: %v", err)
	}
}

// qtCheckComplete checks that what Read yields from the acked line on
// accounts for every line up to last: stored or counted as dropped.
func qtCheckComplete(t testing.TB, q *Queue, last uint64) []Record {
	t.Helper()
	got := qtReadAll(t, q, q.Acked())
	lines := 0
	for _, r := range got {
		if n := qtDropCount(r); n >= 0 {
			lines += n
		} else {
			lines++
		}
	}
	if lines != int(last-q.Acked()) {
		t.Fatalf("read accounts for %d lines after %d, want %d", lines, q.Acked(), last-q.Acked())
	}
	return got
}

func TestQueueCap(t *testing.T) {
	dir := t.TempDir()
	opts := QueueOptions{MaxBytes: 16 << 10, SegmentBytes: 2 << 10}
	q, lg := qtOpen(t, dir, opts)
	all := qtRecs(0, 1000, "c")
	for i := 0; i < 1000; i += 10 {
		qtAppend(t, q, all[i:i+10])
		if st := q.Stats(); st.Bytes > opts.MaxBytes {
			t.Fatalf("%d bytes on disk, over the cap", st.Bytes)
		}
	}
	if !lg.has("over its cap") {
		t.Fatal("dropping was not logged")
	}
	check := func(q *Queue) (drop Record, dropped int) {
		t.Helper()
		got := qtCheckComplete(t, q, 1000)
		st := q.Stats()
		drop, rest := got[0], got[1:]
		n := qtDropCount(drop)
		if n <= 0 || !drop.System || drop.Seq != uint64(n) || !drop.Timestamp.Equal(all[n-1].Timestamp) ||
			!strings.Contains(drop.Message, "16 KiB cap") {
			t.Fatalf("first record %+v", drop)
		}
		if int64(n) != st.Dropped || int64(len(rest)) != st.Lines || n+len(rest) != 1000 {
			t.Fatalf("dropped %d, %d left; stats %+v", n, len(rest), st)
		}
		for i, r := range rest {
			qtSameRecord(t, r, all[n+i])
		}
		return drop, n
	}
	drop, n := check(q)
	q.Close()
	q, _ = qtOpen(t, dir, opts)
	if d, m := check(q); m != n || d.Message != drop.Message {
		t.Fatalf("after reopen the drop record is %+v", d)
	}
	// Acknowledging past the drop record ends it.
	if err := q.Ack(drop.Seq); err != nil {
		t.Fatal(err)
	}
	got := qtReadAll(t, q, q.Acked())
	if len(got) == 0 || qtDropCount(got[0]) >= 0 || got[0].Seq != drop.Seq+1 {
		t.Fatalf("after acking the drop record, first record %+v", got[0])
	}
	q.Close()
	q, _ = qtOpen(t, dir, opts)
	defer q.Close()
	if got := qtReadAll(t, q, 0); qtDropCount(got[0]) >= 0 {
		t.Fatalf("after reopen the acked drop record is back: %+v", got[0])
	}
	if q.Stats().Dropped != int64(n) {
		t.Fatalf("stats %+v", q.Stats())
	}
}

func TestQueueCapDropsAfterARead(t *testing.T) {
	// Drops while nothing is acknowledged make one record (a long outage
	// is one line), yet a reader that had the record before is told only
	// of the lines dropped after it.
	opts := QueueOptions{MaxBytes: 16 << 10, SegmentBytes: 2 << 10}
	q, _ := qtOpen(t, t.TempDir(), opts)
	defer q.Close()
	all := qtRecs(0, 3000, "c")
	for i := 0; i < 1000; i += 10 {
		qtAppend(t, q, all[i:i+10])
	}
	first, _ := q.Read(0, 1, 1<<20)
	n1 := qtDropCount(first[0])
	if n1 <= 0 {
		t.Fatalf("first record %+v", first[0])
	}
	for i := 1000; i < 2000; i += 10 {
		qtAppend(t, q, all[i:i+10])
	}
	got := qtCheckComplete(t, q, 2000)
	n := qtDropCount(got[0])
	if n <= n1 || got[0].Seq != uint64(n) || int64(n) != q.Stats().Dropped {
		t.Fatalf("merged drop record %+v (first had %d), stats %+v", got[0], n1, q.Stats())
	}
	// A reader that has the first record reads the rest of the drop next.
	got, _ = q.Read(first[0].Seq, 1, 1<<20)
	if qtDropCount(got[0]) != n-n1 {
		t.Fatalf("read after the first drop: %+v", got[0])
	}
	// A reader that has lines dropped since is told of the rest only.
	got, _ = q.Read(first[0].Seq+10, 1, 1<<20)
	if qtDropCount(got[0]) != n-n1-10 {
		t.Fatalf("read from within the drop: %+v", got[0])
	}
	// Once the server has the drop record, later drops get one of their
	// own: the acknowledged count never changes.
	if err := q.Ack(uint64(n)); err != nil {
		t.Fatal(err)
	}
	for i := 2000; i < 3000; i += 10 {
		qtAppend(t, q, all[i:i+10])
	}
	got, _ = q.Read(uint64(n), 1, 1<<20)
	if m := qtDropCount(got[0]); m <= 0 || got[0].Seq != uint64(n+m) || int64(n+m) != q.Stats().Dropped {
		t.Fatalf("drop after an acknowledged one: %+v, stats %+v", got[0], q.Stats())
	}
}

func TestQueueCapCountsOnlyUnshippedLines(t *testing.T) {
	opts := QueueOptions{MaxBytes: 16 << 10, SegmentBytes: 2 << 10}
	q, _ := qtOpen(t, t.TempDir(), opts)
	defer q.Close()
	all := qtRecs(0, 1000, "c")
	qtAppend(t, q, all[:100])
	if err := q.Ack(50); err != nil {
		t.Fatal(err)
	}
	for i := 100; i < 1000; i += 10 {
		qtAppend(t, q, all[i:i+10])
	}
	got := qtCheckComplete(t, q, 1000)
	if n := qtDropCount(got[0]); int64(n) != q.Stats().Dropped || got[0].Seq != uint64(50+n) {
		t.Fatalf("drop record %+v, stats %+v", got[0], q.Stats())
	}
}

func TestQueueCursors(t *testing.T) {
	dir := t.TempDir()
	opts := QueueOptions{SegmentBytes: 1 << 10}
	q, _ := qtOpen(t, dir, opts)
	all := qtRecs(0, 100, "a", "b", "c", "")
	qtAppend(t, q, all[:60])
	qtSameCursors(t, "after append", q.Cursors(), qtCursors(all[:60]))
	q.Close()
	q, _ = qtOpen(t, dir, opts)
	qtSameCursors(t, "after reopen", q.Cursors(), qtCursors(all[:60]))
	qtAppend(t, q, all[60:])
	// Acking removes segments; their cursors stay.
	if err := q.Ack(95); err != nil {
		t.Fatal(err)
	}
	crashed := qtCopyDir(t, dir)
	q.Close()
	for _, d := range []string{dir, crashed} {
		q, _ := qtOpen(t, d, opts)
		qtSameCursors(t, "after ack and reopen", q.Cursors(), qtCursors(all))
		q.Close()
	}
	q, _ = qtOpen(t, dir, opts)
	if err := q.ForgetCursors(func(c string) bool { return c != "b" }); err != nil {
		t.Fatal(err)
	}
	want := qtCursors(all)
	delete(want, "b")
	qtSameCursors(t, "after forget", q.Cursors(), want)
	q.Close()
	q, _ = qtOpen(t, dir, opts)
	defer q.Close()
	qtSameCursors(t, "after forget and reopen", q.Cursors(), want)
}

// TestQueueCrashAtEveryPoint copies the queue's directory at every point
// where a crash matters (segment started, records synced, state saved,
// each segment removed, by ack and by the cap) and opens each copy: the
// cursors cover exactly the durable records, no Seq is given twice and
// every line is accounted for.
func TestQueueCrashAtEveryPoint(t *testing.T) {
	dir := t.TempDir()
	opts := QueueOptions{MaxBytes: 8 << 10, SegmentBytes: 1 << 10}
	q, _ := qtOpen(t, dir, opts)
	type snap struct {
		dir     string
		point   string
		durable uint64
	}
	var snaps []snap
	q.hook = func(point string, durable uint64) {
		snaps = append(snaps, snap{qtCopyDir(t, dir), point, durable})
	}
	// Each container writes a run of lines, so that a segment may hold
	// the last lines of one; a tenth of the lines are the agent's.
	all := qtRecs(0, 600)
	for i := range all {
		if i%10 != 0 {
			all[i].Container = fmt.Sprintf("c%d", i/25)
		}
	}
	for i := 0; i < len(all); i += 7 {
		qtAppend(t, q, all[i:min(i+7, len(all))])
		// The first half is shipped nearly as it comes, so that acks
		// remove segments; then the server is away, and the cap drops.
		if i < 300 && i%21 == 14 {
			if err := q.Ack(uint64(i + 7 - 5)); err != nil {
				t.Fatal(err)
			}
		}
	}
	q.hook = nil
	q.Close()
	points := map[string]int{}
	for _, s := range snaps {
		points[s.point]++
		q, _ := qtOpen(t, s.dir, opts)
		what := fmt.Sprintf("crash at %s with %d records durable", s.point, s.durable)
		qtSameCursors(t, what, q.Cursors(), qtCursors(all[:s.durable]))
		for _, r := range qtCheckComplete(t, q, s.durable) {
			if r.System && !strings.Contains(r.Message, "over its 8 KiB cap") {
				t.Fatalf("%s: %+v", what, r) // nothing was damaged
			}
		}
		r := qtRecs(1000, 1, "z")
		qtAppend(t, q, r)
		if r[0].Seq != s.durable+1 {
			t.Fatalf("%s: next seq %d", what, r[0].Seq)
		}
		q.Close()
	}
	for _, p := range []string{"created", "synced", "saved", "removed"} {
		if points[p] == 0 {
			t.Errorf("no crash at %q was tried (%v)", p, points)
		}
	}
}

func TestQueueConcurrentUse(t *testing.T) {
	opts := QueueOptions{MaxBytes: 1 << 20, SegmentBytes: 8 << 10}
	q, _ := qtOpen(t, t.TempDir(), opts)
	defer q.Close()
	const total = 3000
	all := qtRecs(0, total, "a", "b")
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the collector
		defer wg.Done()
		for i := 0; i < total; i += 30 {
			if err := q.Append(all[i : i+30]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() { // someone looking
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			_ = q.Stats()
			_ = q.Cursors()
		}
	}()
	// The shipper.
	next := uint64(1)
	for next <= total {
		<-q.Wait(q.Acked())
		recs, err := q.Read(q.Acked(), 100, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Seq != next || r.Message != all[next-1].Message {
				t.Fatalf("read seq %d %q, want %d", r.Seq, r.Message, next)
			}
			next++
		}
		if len(recs) > 0 {
			if err := q.Ack(recs[len(recs)-1].Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
	if st := q.Stats(); st.Lines != 0 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// qtBenchRecs is a realistic batch: 100 lines of a web service.
func qtBenchRecs() []Record {
	recs := make([]Record, 100)
	for i := range recs {
		recs[i] = Record{
			LogLine: reeve.LogLine{
				Timestamp: time.Now(),
				Service:   "web",
				Message:   fmt.Sprintf(`10.0.0.%d - - [04/Mar/2025:05:06:07 +0000] "GET /api/v1/items/%d HTTP/1.1" 200 512 "-" "curl/8.5.0"`, i, i*7),
			},
			Container: "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c",
		}
	}
	return recs
}

func BenchmarkAppend(b *testing.B) {
	q, err := OpenQueue(b.TempDir(), QueueOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	recs := qtBenchRecs()
	b.ResetTimer()
	for b.Loop() {
		if err := q.Append(recs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "lines/s")
}

func BenchmarkRead(b *testing.B) {
	q, err := OpenQueue(b.TempDir(), QueueOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	recs := qtBenchRecs()
	for range 1000 {
		if err := q.Append(recs); err != nil {
			b.Fatal(err)
		}
	}
	lines, after := 0, uint64(0)
	b.ResetTimer()
	for b.Loop() {
		// As the shipper reads.
		got, err := q.Read(after, 500, 256<<10)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) == 0 {
			after = 0
			continue
		}
		lines += len(got)
		after = got[len(got)-1].Seq
	}
	b.ReportMetric(float64(lines)/b.Elapsed().Seconds(), "lines/s")
}
