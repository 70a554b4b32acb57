package logship

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/atomicfile"
)

// QueueOptions configures a Queue. Zero values get the defaults.
type QueueOptions struct {
	// MaxBytes caps the bytes of the queue's segments on disk; beyond it
	// the oldest lines are dropped, shipped or not. Default 32 MiB.
	MaxBytes int64
	// SegmentBytes is the size at which a segment file is full and the
	// next one begins. Default min(1 MiB, MaxBytes/8); at most MaxBytes/2.
	SegmentBytes int64
	Logger       *slog.Logger
}

// QueueStats is what a queue holds.
type QueueStats struct {
	// Lines counts the lines on disk not acknowledged yet (a record that
	// stands for dropped lines is not counted).
	Lines int64 `json:"lines"`
	// Bytes is the size of the queue's segments on disk.
	Bytes int64 `json:"bytes"`
	// Dropped counts every line dropped since the queue was made: for the
	// cap, or lost to damage of its files.
	Dropped int64 `json:"dropped"`
}

// ErrQueueClosed is the error of a call on a closed Queue.
var ErrQueueClosed = errors.New("logship: the log queue is closed")

// Queue is the agent's on-disk log queue: lines wait in it, numbered, until
// the server has them. It survives kill -9 and power cuts at any instant:
// a line Append returned for is kept (unless the cap drops it), its Seq is
// never given again, and Cursors never forgets it.
//
// The queue is a directory of append-only segment files (see
// queue_format.go) and one small state file replaced atomically (see
// queue_state.go). In memory it keeps only an index of each segment's
// Seqs and a few offsets into it.
//
// Why a crash loses nothing: a record counts (for Read, Wait, Cursors and
// the Seq counter) only once its segment is fsynced; a segment is removed
// only after the state file, whose cursors cover every record that
// counts, is renamed into place and the directory synced; on open the
// cursors are the saved ones advanced by every record on disk past the
// Seq they cover, and Seqs go on above the state's, every segment's name
// and every record found, even past damage. A power cut can only tear
// records whose Append had not returned: they are cut off.
//
// One goroutine appends, another reads, waits and acknowledges; Stats and
// Cursors may be called from anywhere.
type Queue struct {
	dir      string
	maxBytes int64
	segBytes int64
	segFixed bool // segBytes was given, not derived from maxBytes
	log      *slog.Logger

	// amu serialises Append and Close, the only writers of segment data.
	amu    sync.Mutex
	active *os.File // the active segment, open for appending
	buf    []byte   // a chunk's frames
	ends   []int    // where each frame in buf ends
	failed error    // a failed append left the active segment in doubt

	// mu guards what follows. What Append changes is changed under amu
	// too, so Append reads it without mu. Files are read and written
	// outside mu but for the state file, which is written under it.
	mu             sync.Mutex
	closed         bool
	stream         string
	segs           []*queueSeg // by Seq
	activeSeg      *queueSeg   // the last of segs, appended to; nil: none yet
	next           uint64      // the Seq of the next record
	acked          uint64
	bytes          int64
	dropped        int64
	droppedThrough uint64
	drops          []queueDrop
	cursors        map[string]Cursor // after every record before next
	notify         chan struct{}     // closed and replaced when next moves
	rotateNext     bool              // the active segment is damaged: start another
	readDamage     map[string]bool   // segments whose damage a Read logged
	dropLoggedAt   time.Time         // when dropping for the cap was last logged
	dropsUnlogged  int64             // lines dropped since

	// hook, in tests, is called at the points where a crash matters, with
	// the Seq through which records are durable.
	hook func(point string, durable uint64)
}

// queueSeg is the in-memory index of one segment file.
type queueSeg struct {
	name     uint64 // the Seq in the file's name
	path     string
	lo, hi   uint64 // Seqs of the readable records; lo 0: none
	hiTime   time.Time
	size     int64 // of the file
	readEnd  int64 // the end of the readable part
	marks    []queueMark
	lastMark int64
	beyond   uint64 // the highest Seq seen past damage, unreadable
}

// top is the highest Seq the segment holds.
func (s *queueSeg) top() uint64 { return max(s.hi, s.beyond) }

var _ Sink = (*Queue)(nil)

// queueMaxDrops bounds the drop episodes kept: past it a new one merges
// into the one before even if that one was read already.
const queueMaxDrops = 64

// OpenQueue opens the queue in dir, making it if needed. Damage found in
// the files (a torn record at the end of the last segment after a power
// cut, a corrupt record in the middle of one, stray files) is logged and
// worked around, never an error: lines lost to it are reported as
// dropped.
func OpenQueue(dir string, opts QueueOptions) (*Queue, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 32 << 20
	}
	segFixed := opts.SegmentBytes > 0
	opts.SegmentBytes = queueSegmentBytes(opts.MaxBytes, opts.SegmentBytes)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("logship: open the log queue: %w", err)
	}
	q := &Queue{
		dir:        dir,
		maxBytes:   opts.MaxBytes,
		segBytes:   opts.SegmentBytes,
		segFixed:   segFixed,
		log:        opts.Logger.With("component", "logqueue", "dir", dir),
		notify:     make(chan struct{}),
		readDamage: map[string]bool{},
	}
	if err := q.open(); err != nil {
		if q.active != nil {
			q.active.Close()
		}
		return nil, fmt.Errorf("logship: open the log queue: %w", err)
	}
	return q, nil
}

// queueSegmentBytes is the segment size for a cap: the one given, else
// min(1 MiB, cap/8); at most cap/2.
func queueSegmentBytes(maxBytes, given int64) int64 {
	if given <= 0 {
		given = min(1<<20, maxBytes/8)
	}
	return max(min(given, maxBytes/2), 1)
}

// SetMaxBytes changes the cap (the device config can); a lower one drops
// the oldest lines at the next Append.
func (q *Queue) SetMaxBytes(n int64) error {
	if n <= 0 {
		return fmt.Errorf("logship: a log queue cap of %d bytes: give more than 0", n)
	}
	q.amu.Lock()
	defer q.amu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrQueueClosed
	}
	if !q.segFixed {
		q.segBytes = queueSegmentBytes(n, 0)
	}
	q.segBytes = queueSegmentBytes(n, q.segBytes)
	q.maxBytes = n
	return nil
}

func (q *Queue) open() error {
	statePath := filepath.Join(q.dir, queueStateFile)
	st, haveState, err := queueLoadState(statePath)
	if err != nil {
		if !errors.Is(err, errQueueState) {
			return err
		}
		q.log.Error("the log queue's state file is unreadable: starting a new stream", "err", err)
	}
	dirty := false // the state must be saved
	if !haveState || st.Stream == "" {
		st = queueState{Stream: queueNewStream()}
		dirty = true
	}

	ents, err := os.ReadDir(q.dir)
	if err != nil {
		return err
	}
	var segs []*queueSeg // os.ReadDir sorts by name, so by Seq
	for _, e := range ents {
		name := e.Name()
		switch {
		case name == queueStateFile:
		case strings.HasPrefix(name, "."+queueStateFile+"."):
			os.Remove(filepath.Join(q.dir, name)) // a replacement cut short
		default:
			if n, ok := queueParseSegName(name); ok && e.Type().IsRegular() {
				segs = append(segs, &queueSeg{name: n, path: filepath.Join(q.dir, name)})
			} else {
				q.log.Warn("ignoring a file that is not the log queue's", "file", name)
			}
		}
	}
	if !haveState && len(segs) > 0 {
		q.log.Warn("the log queue has lines but no state: they are kept under a new stream id", "segments", len(segs))
	}

	// Scan every segment: index it, rebuild the cursors past the saved
	// ones, and cut a torn tail off the last.
	cursors := maps.Clone(st.Cursors)
	if cursors == nil {
		cursors = map[string]Cursor{}
	}
	var minSeq uint64
	lastUsable := false
	beyondTime := map[uint64]time.Time{} // of the last record seen past damage
	loTime := map[*queueSeg]time.Time{}
	for i, s := range segs {
		last := i == len(segs)-1
		sc, err := queueScanSegment(s.path, minSeq, func(r *Record) {
			if r.Seq > st.CursorsThrough && r.Container != "" {
				cursors[r.Container] = cursors[r.Container].Advance(r.Stderr, r.Timestamp)
			}
		})
		if err != nil {
			// The segment cannot be read whole: what was read is kept
			// and the rest is treated as damaged.
			q.log.Error("reading a log queue segment failed", "file", filepath.Base(s.path), "err", err)
			sc.bad, sc.why = true, err.Error()
			last = false // not appended to
		}
		s.lo, s.hi, s.hiTime, s.size, s.readEnd = sc.lo, sc.hi, sc.hiTime, sc.size, sc.readEnd
		s.marks, s.beyond, s.lastMark = sc.marks, sc.beyond, -queueMarkEvery
		if sc.beyond != 0 {
			beyondTime[sc.beyond] = sc.beyondTime
		}
		loTime[s] = sc.loTime
		if len(s.marks) > 0 {
			s.lastMark = s.marks[len(s.marks)-1].off
		}
		switch {
		case !sc.bad:
			lastUsable = last
		case last && sc.beyond == 0:
			// A record torn by a power cut while it was written: it was
			// never durable, so nobody was told it was stored.
			if err := queueTruncate(s.path, sc.readEnd); err != nil {
				q.log.Error("cutting a torn record off the log queue failed", "file", filepath.Base(s.path), "err", err)
				break
			}
			q.log.Warn("cut a torn record off the end of the log queue", "file", filepath.Base(s.path),
				"offset", sc.readEnd, "bytes", sc.size-sc.readEnd, "why", sc.why)
			s.size = sc.readEnd
			lastUsable = true
		default:
			q.log.Error("damaged record in the log queue: the rest of its segment is unreadable", "file", filepath.Base(s.path),
				"offset", sc.readEnd, "why", sc.why, "last_readable_seq", sc.hi, "lost_through_seq", sc.beyond)
		}
		minSeq = max(minSeq, s.top())
	}

	next := max(st.Next, st.Acked+1, st.DroppedThrough+1)
	for _, d := range st.Drops {
		next = max(next, d.Last+1)
	}
	for _, s := range segs {
		next = max(next, s.name, s.top()+1)
	}
	if n := len(segs); n > 0 && !lastUsable && segs[n-1].name >= next {
		next = segs[n-1].name + 1 // a new segment must not take its name
	}

	// Segments all acknowledged or dropped whose removal a crash cut
	// short go now (the saved cursors cover them).
	var gone, kept []*queueSeg
	for i, s := range segs {
		if i < len(segs)-1 && s.top() <= max(st.Acked, st.DroppedThrough) && s.top() <= st.CursorsThrough {
			gone = append(gone, s)
		} else {
			kept = append(kept, s)
		}
	}

	// Drops, and Seqs that are nowhere: lost to damage.
	drops := slices.DeleteFunc(slices.Clone(st.Drops), func(d queueDrop) bool { return d.Last <= st.Acked })
	type span struct {
		first, last         uint64
		firstTime, lastTime time.Time
	}
	var spans []span
	for _, d := range drops {
		spans = append(spans, span{d.First, d.Last, d.Time, d.Time})
	}
	for _, s := range kept {
		if s.lo != 0 {
			spans = append(spans, span{s.lo, s.hi, loTime[s], s.hiTime})
		}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].first < spans[j].first })
	covered, prevTime := st.Acked, time.Time{}
	// lost reports the lines first to last lost; their time is unknown
	// but for the last seen past damage: the time of the line after is
	// the best guess, then of the line before.
	lost := func(first, last uint64, nextTime time.Time) {
		t := beyondTime[last]
		if t.IsZero() {
			t = nextTime
		}
		if t.IsZero() {
			t = prevTime
		}
		if t.IsZero() {
			t = time.Now().Round(0)
		}
		n := int64(last - first + 1)
		q.log.Error("log lines were lost to damage of the log queue's files", "lines", n, "from_seq", first, "to_seq", last)
		drops = append(drops, queueDrop{First: first, Last: last, Count: n, Time: t})
		st.Dropped += n
		dirty = true
	}
	for _, sp := range spans {
		if sp.first > covered+1 {
			lost(covered+1, sp.first-1, sp.firstTime)
		}
		covered, prevTime = max(covered, sp.last), sp.lastTime
	}
	if next-1 > covered {
		lost(covered+1, next-1, time.Time{})
	}
	sort.Slice(drops, func(i, j int) bool { return drops[i].First < drops[j].First })

	q.stream, q.segs, q.next, q.acked = st.Stream, kept, next, st.Acked
	q.dropped, q.droppedThrough, q.drops, q.cursors = st.Dropped, st.DroppedThrough, drops, cursors
	for _, s := range kept {
		q.bytes += s.size
	}
	if n := len(kept); n > 0 && lastUsable && kept[n-1] == segs[len(segs)-1] {
		f, err := os.OpenFile(kept[n-1].path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		q.active, q.activeSeg = f, kept[n-1]
	}
	if dirty {
		st := q.stateLocked()
		if err := queueSaveState(statePath, &st); err != nil {
			return err
		}
	}
	for _, s := range gone {
		if err := os.Remove(s.path); err != nil {
			q.log.Warn("removing a log queue segment failed", "file", filepath.Base(s.path), "err", err)
		}
	}
	return nil
}

func queueTruncate(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func queueNewStream() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// stateLocked is the state to save: the cursors in memory cover every
// record before next, all durable.
func (q *Queue) stateLocked() queueState {
	return queueState{
		Version:        1,
		Stream:         q.stream,
		Next:           q.next,
		Acked:          q.acked,
		Dropped:        q.dropped,
		DroppedThrough: q.droppedThrough,
		Drops:          q.drops,
		CursorsThrough: q.next - 1,
		Cursors:        q.cursors,
	}
}

func (q *Queue) saveLocked(st *queueState) error {
	return queueSaveState(filepath.Join(q.dir, queueStateFile), st)
}

func (q *Queue) testHook(point string, durable uint64) {
	if q.hook != nil {
		q.hook(point, durable)
	}
}

// Append stores recs in order, giving each the next Seq (set in recs too),
// and returns once they are durable: one fsync for the lot, unless they
// fill a segment. Messages longer than reeve.MaxLogLineBytes are stored
// cut. On an error, records before the failed one may be stored: Cursors
// says which.
func (q *Queue) Append(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	for i := range recs {
		r := &recs[i]
		if queueRecordSize(r, r.Message[:min(len(r.Message), reeve.MaxLogLineBytes)]) > queueMaxPayload {
			return fmt.Errorf("logship: log record %d of %d is too large for the log queue", i+1, len(recs))
		}
	}
	q.amu.Lock()
	defer q.amu.Unlock()
	q.mu.Lock()
	closed := q.closed
	q.mu.Unlock()
	if closed {
		return ErrQueueClosed
	}
	if q.failed != nil {
		return q.failed
	}
	for len(recs) > 0 {
		n, err := q.appendChunk(recs)
		if err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

// appendChunk stores the first records of recs that go into one segment,
// and returns how many.
func (q *Queue) appendChunk(recs []Record) (int, error) {
	next := q.next
	q.buf = queueAppendFrame(q.buf[:0], &recs[0], next, reeve.TruncateLogMessage(recs[0].Message))
	q.ends = append(q.ends[:0], len(q.buf))
	q.mu.Lock()
	damaged := q.rotateNext
	q.mu.Unlock()
	if seg := q.activeSeg; seg == nil || seg.size > 0 && (damaged || seg.size+int64(len(q.buf)) > q.segBytes) {
		if err := q.rotate(next); err != nil {
			return 0, err
		}
	}
	seg := q.activeSeg
	for n := 1; n < len(recs); n++ {
		l := len(q.buf)
		q.buf = queueAppendFrame(q.buf, &recs[n], next+uint64(n), reeve.TruncateLogMessage(recs[n].Message))
		if seg.size+int64(len(q.buf)) > q.segBytes {
			q.buf = q.buf[:l]
			break
		}
		q.ends = append(q.ends, len(q.buf))
	}
	n := len(q.ends)
	if err := q.makeRoom(int64(len(q.buf))); err != nil {
		return 0, err
	}
	_, err := q.active.Write(q.buf)
	if err == nil {
		err = q.active.Sync()
	}
	if err != nil {
		if terr := q.active.Truncate(seg.size); terr != nil {
			q.failed = fmt.Errorf("logship: the log queue's segment %s is in doubt after a failed write (%w): reopen the queue", filepath.Base(seg.path), err)
		}
		return 0, fmt.Errorf("logship: append to the log queue: %w", err)
	}
	last := next + uint64(n) - 1
	q.testHook("synced", last)

	q.mu.Lock()
	defer q.mu.Unlock()
	start := 0
	for i, end := range q.ends {
		at := seg.size + int64(start)
		if at-seg.lastMark >= queueMarkEvery {
			seg.marks = append(seg.marks, queueMark{seq: next + uint64(i), off: at})
			seg.lastMark = at
		}
		start = end
		r := &recs[i]
		r.Seq = next + uint64(i)
		if r.Container != "" {
			q.cursors[r.Container] = q.cursors[r.Container].Advance(r.Stderr, r.Timestamp)
		}
	}
	if seg.lo == 0 {
		seg.lo = next
	}
	seg.hi, seg.hiTime = last, recs[n-1].Timestamp
	seg.size += int64(len(q.buf))
	seg.readEnd = seg.size
	q.bytes += int64(len(q.buf))
	q.next = last + 1
	close(q.notify)
	q.notify = make(chan struct{})
	return n, nil
}

// rotate starts a new segment, named next, and makes it the active one.
func (q *Queue) rotate(next uint64) error {
	path := filepath.Join(q.dir, queueSegName(next))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("logship: start a log queue segment: %w", err)
	}
	atomicfile.SyncDir(q.dir)
	if q.active != nil {
		q.active.Close() // synced when its last records were appended
	}
	q.active = f
	seg := &queueSeg{name: next, path: path, lastMark: -queueMarkEvery}
	q.mu.Lock()
	q.segs = append(q.segs, seg)
	q.activeSeg = seg
	q.rotateNext = false
	q.mu.Unlock()
	q.testHook("created", next-1)
	return nil
}

// makeRoom drops the oldest segments until need more bytes fit under the
// cap. The active segment stays.
func (q *Queue) makeRoom(need int64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	over := q.bytes + need - q.maxBytes
	var victims []*queueSeg
	for _, s := range q.segs {
		if over <= 0 || s == q.activeSeg {
			break
		}
		victims = append(victims, s)
		over -= s.size
	}
	if len(victims) == 0 {
		return nil
	}
	drops, through, lines := slices.Clone(q.drops), q.droppedThrough, int64(0)
	for _, s := range victims {
		through = max(through, s.top())
		if s.lo == 0 || s.hi <= q.acked {
			continue
		}
		first := max(s.lo, q.acked+1)
		n := int64(s.hi - first + 1)
		lines += n
		drops = queueAddDrop(drops, queueDrop{First: first, Last: s.hi, Count: n, Time: s.hiTime, Cap: q.maxBytes}, q.acked)
	}
	st := q.stateLocked()
	st.Drops, st.Dropped, st.DroppedThrough = drops, q.dropped+lines, through
	if err := q.saveLocked(&st); err != nil {
		return err
	}
	q.drops, q.dropped, q.droppedThrough = drops, st.Dropped, through
	q.testHook("saved", q.next-1)
	q.removeLocked(victims)
	if lines > 0 {
		// Once a minute at most: while the server is away this happens
		// with every segment.
		q.dropsUnlogged += lines
		if now := time.Now(); now.Sub(q.dropLoggedAt) >= time.Minute {
			q.log.Warn("the log queue is over its cap: its oldest lines are dropped", "lines", q.dropsUnlogged, "cap", queueSize(q.maxBytes))
			q.dropLoggedAt, q.dropsUnlogged = now, 0
		}
	}
	return nil
}

// queueAddDrop adds d to drops (by Seq). It merges into the drop just
// before it when they are consecutive and that one is not acknowledged:
// while the server is away the shipper reads the same records again and
// again, and a long outage is one line saying how many went, not one per
// segment. A reader that had the earlier record is given, after it, only
// the lines dropped after it (see queueDrop.record); only if the server
// stored a request whose answer was lost does a merged count repeat the
// lines of the earlier record.
func queueAddDrop(drops []queueDrop, d queueDrop, acked uint64) []queueDrop {
	i := sort.Search(len(drops), func(i int) bool { return drops[i].First > d.First })
	if i > 0 {
		p := &drops[i-1]
		if p.Cap > 0 && p.Last+1 == d.First && (p.Last > acked || len(drops) >= queueMaxDrops) {
			p.Last, p.Count, p.Time, p.Cap = d.Last, p.Count+d.Count, d.Time, d.Cap
			return drops
		}
	}
	return slices.Insert(drops, i, d)
}

// removeLocked removes segments from the index and their files. The state
// saved before covers them.
func (q *Queue) removeLocked(victims []*queueSeg) {
	q.segs = slices.DeleteFunc(q.segs, func(s *queueSeg) bool { return slices.Contains(victims, s) })
	for _, s := range victims {
		q.bytes -= s.size
		delete(q.readDamage, s.path)
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			q.log.Warn("removing a log queue segment failed", "file", filepath.Base(s.path), "err", err)
		}
		q.testHook("removed", q.next-1)
	}
}

// Read returns records with Seq > after, oldest first: at most max of
// them and about maxBytes of messages, but at least one if there is any.
// Where lines were dropped, one system record stands in their place, with
// the Seq of the last of them. max <= 0 means 1000 and maxBytes <= 0
// 1 MiB. Memory stays bounded by the result: records are read from the
// segment files.
func (q *Queue) Read(after uint64, max int, maxBytes int) ([]Record, error) {
	if max <= 0 {
		max = 1000
	}
	if maxBytes <= 0 {
		maxBytes = 1 << 20
	}
	for try := 0; ; try++ {
		out, retry, err := q.read(after, max, maxBytes)
		if !retry {
			return out, err
		}
		if try == 100 {
			return nil, errors.New("logship: the log queue kept changing under a read")
		}
	}
}

type queueSegView struct {
	path    string
	hi      uint64
	hiTime  time.Time
	readEnd int64
	marks   []queueMark
}

// read is one attempt of Read; retry: a segment went meanwhile.
func (q *Queue) read(after uint64, maxRecs, maxBytes int) (out []Record, retry bool, err error) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, false, ErrQueueClosed
	}
	var views []queueSegView
	for _, s := range q.segs {
		if s.lo != 0 && s.hi > after {
			views = append(views, queueSegView{s.path, s.hi, s.hiTime, s.readEnd, s.marks})
		}
	}
	var drops []queueDrop
	for _, d := range q.drops {
		if d.Last > after {
			drops = append(drops, d)
		}
	}
	q.mu.Unlock()

	size, di := 0, 0
	add := func(r Record) bool {
		if len(out) >= maxRecs || len(out) > 0 && size+len(r.Message) > maxBytes {
			return false
		}
		out = append(out, r)
		size += len(r.Message)
		return true
	}
	// dropsBefore adds the drops before seq; false: the result is full.
	dropsBefore := func(seq uint64) bool {
		for ; di < len(drops) && drops[di].Last < seq; di++ {
			if !add(drops[di].record(after)) {
				return false
			}
		}
		return true
	}
	for _, v := range views {
		full, retry, err := q.readSeg(v, after, add, dropsBefore, func(seq uint64) bool {
			return di < len(drops) && drops[di].First <= seq
		})
		if retry || err != nil {
			return nil, retry, err
		}
		if full {
			break
		}
	}
	if len(out) < maxRecs {
		dropsBefore(math.MaxUint64)
	}
	return out, false, nil
}

// readSeg adds the records of one segment.
func (q *Queue) readSeg(v queueSegView, after uint64, add func(Record) bool,
	dropsBefore func(uint64) bool, dropped func(uint64) bool) (full, retry bool, err error) {
	f, err := os.Open(v.path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, true, nil // dropped or acknowledged meanwhile
	}
	if err != nil {
		return false, false, fmt.Errorf("logship: read the log queue: %w", err)
	}
	defer f.Close()
	var start int64
	if i := sort.Search(len(v.marks), func(i int) bool { return v.marks[i].seq > after+1 }); i > 0 {
		start = v.marks[i-1].off
	}
	fr := newQueueFrameReader(f, start, v.readEnd, 32<<10)
	var last uint64
	for {
		p, off, err := fr.next()
		if err == io.EOF {
			return false, false, nil
		}
		var r Record
		if err == nil {
			seq, ok := queuePayloadSeq(p)
			if ok && seq <= after {
				last = seq
				continue
			}
			r, err = queueDecode(p)
		}
		if err != nil {
			if !errors.Is(err, errQueueFrame) {
				return false, false, fmt.Errorf("logship: read the log queue: %w", err)
			}
			// Damaged since it was written: what is left of the segment
			// is reported lost, and appending moves to a new segment.
			from := max(last, after) + 1
			if from > v.hi {
				return false, false, nil
			}
			q.damaged(v.path, off, from, v.hi, err)
			d := queueDrop{First: from, Last: v.hi, Count: int64(v.hi - from + 1), Time: v.hiTime}
			if !dropsBefore(d.Last) || !add(d.record(after)) {
				return true, false, nil
			}
			return false, false, nil
		}
		last = r.Seq
		if !dropsBefore(r.Seq) {
			return true, false, nil
		}
		if dropped(r.Seq) {
			continue
		}
		if !add(r) {
			return true, false, nil
		}
	}
}

// damaged notes a segment found damaged by a read.
func (q *Queue) damaged(path string, off int64, from, to uint64, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.activeSeg != nil && q.activeSeg.path == path {
		q.rotateNext = true
	}
	if !q.readDamage[path] {
		q.readDamage[path] = true
		q.log.Error("damaged record in the log queue: the rest of its segment is unreadable", "file", filepath.Base(path),
			"offset", off, "from_seq", from, "to_seq", to, "err", err)
	}
}

// Wait returns a channel closed once records with Seq > after exist: at
// once if they do already, or when the queue is closed. Any number of
// goroutines may wait.
func (q *Queue) Wait(after uint64) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.next-1 > after {
		return queueClosedChan
	}
	return q.notify
}

var queueClosedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Ack records that the server has every record up to through, durably,
// and removes the segments (but the active one) that hold nothing else.
func (q *Queue) Ack(through uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrQueueClosed
	}
	if through >= q.next {
		return fmt.Errorf("logship: acknowledged line %d is beyond the last line queued, %d", through, q.next-1)
	}
	if through <= q.acked {
		return nil
	}
	drops := slices.DeleteFunc(slices.Clone(q.drops), func(d queueDrop) bool { return d.Last <= through })
	var victims []*queueSeg
	for _, s := range q.segs {
		if s != q.activeSeg && s.top() <= through {
			victims = append(victims, s)
		}
	}
	st := q.stateLocked()
	st.Acked, st.Drops = through, drops
	if err := q.saveLocked(&st); err != nil {
		return err
	}
	q.acked, q.drops = through, drops
	if len(victims) > 0 {
		q.testHook("saved", q.next-1)
		q.removeLocked(victims)
	}
	return nil
}

// Acked returns the last Seq acknowledged.
func (q *Queue) Acked() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.acked
}

// Stream returns the queue's stream id, made with the queue.
func (q *Queue) Stream() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stream
}

// Stats returns what the queue holds.
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := QueueStats{Bytes: q.bytes, Dropped: q.dropped}
	for _, s := range q.segs {
		if s.lo != 0 && s.hi > q.acked {
			st.Lines += int64(s.hi - max(s.lo-1, q.acked))
		}
	}
	return st
}

// Cursors returns, per container, the cursor after the last line of it
// the queue has taken.
func (q *Queue) Cursors() map[string]Cursor {
	q.mu.Lock()
	defer q.mu.Unlock()
	return maps.Clone(q.cursors)
}

// ForgetCursors drops the cursors of the containers keep says no to, and
// saves the rest.
func (q *Queue) ForgetCursors(keep func(container string) bool) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrQueueClosed
	}
	c := maps.Clone(q.cursors)
	maps.DeleteFunc(c, func(k string, _ Cursor) bool { return !keep(k) })
	if len(c) == len(q.cursors) {
		return nil
	}
	st := q.stateLocked()
	st.Cursors = c
	if err := q.saveLocked(&st); err != nil {
		return err
	}
	q.cursors = c
	return nil
}

// Close saves the state and closes the files. Waiters are released; the
// queue is unusable after.
func (q *Queue) Close() error {
	q.amu.Lock()
	defer q.amu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	close(q.notify)
	st := q.stateLocked()
	err := q.saveLocked(&st)
	if q.active != nil {
		if cerr := q.active.Close(); err == nil {
			err = cerr
		}
		q.active = nil
	}
	return err
}
