package server

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
)

// Device logs: what agents ship is stored in a store.LogStore (logs.db
// beside the fleet's database) and handed to whoever follows the device.
//
// Writes. Every request's lines go to one writer goroutine, which commits
// the lines of every request that queued while it committed the last
// ones in one transaction: many devices streaming lines cost one fsync
// per commit, not one per device and batch. A request's answer waits for
// the commit of its lines, so an acknowledged line is a stored line.
//
// Followers. Each follower of a device subscribes before it reads the
// device's history, then skips what it has seen by ID, so that no line
// falls between history and live lines. Lines are handed to followers
// after their commit, in ID order, without waiting: a follower whose
// buffer is full is unhooked and, on its next read, catches up from the
// store (after the last ID it sent) and hooks on again. A slow reader thus
// never holds up ingestion, and loses no line but those pruned before it
// got to them.
//
// Retention. Every PruneInterval the lines received more than MaxAge ago
// (by the server's clock: a device's clock may be wrong) go, and so do the
// lines of each device beyond its newest MaxLines.

// LogOptions configures the device logs (NewLogs).
type LogOptions struct {
	Store  store.LogStore
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// MaxLines is how many lines a device keeps at most. Default
	// DefaultLogMaxLines.
	MaxLines int
	// MaxAge is how long a line is kept after the server got it.
	// Default DefaultLogMaxAge.
	MaxAge time.Duration
	// PruneInterval is how often lines are pruned. Default 1 min.
	PruneInterval time.Duration
}

const (
	// DefaultLogMaxLines is how many lines a device keeps by default.
	DefaultLogMaxLines = 10_000
	// DefaultLogMaxAge is how long lines are kept by default.
	DefaultLogMaxAge = 7 * 24 * time.Hour
	// DefaultLogLimit is how many lines of history a query returns
	// unless it says otherwise; MaxLogLimit is the most it may ask for.
	DefaultLogLimit = 1000
	MaxLogLimit     = 10_000

	// maxLogCommitLines bounds how many lines share one commit, and
	// logQueue how many requests wait for the writer.
	maxLogCommitLines = 8192
	logQueue          = 1024
	// followerBuffer is how many batches of lines a follower may be
	// behind before it is unhooked (and catches up from the store).
	followerBuffer = 64
)

// LogQuery chooses lines of a device's log: see store.LogQuery. For the
// server a Limit of 0 means DefaultLogLimit, and it may be at most
// MaxLogLimit.
type LogQuery = store.LogQuery

var (
	errLogsClosed  = reeve.Errorf(reeve.CodeUnavailable, "the server is shutting down: send the log lines again")
	errNoLogs      = reeve.Errorf(reeve.CodeUnavailable, "this server keeps no device logs")
	errDeviceGone  = reeve.Errorf(reeve.CodeUnauthorized, "this device was removed from the fleet server: its log lines are no longer taken")
	errFollowEnded = reeve.Errorf(reeve.CodeNotFound, "the device was removed: its log ends here")
)

// ErrNotCarried is Check's error for a line that names a device which is
// neither the sender nor a dependent device it carries: most likely one
// removed since the agent queued the line. The line is skipped, not
// refused: refusing would make the agent give up the lines after it too.
var ErrNotCarried = reeve.Errorf(reeve.CodeInvalid, "the line names a device that is neither this device nor a dependent device it carries")

// Logs keeps and serves device logs. Start it to commit lines and prune;
// Close ends every follower and stops it. Give it to the Server in
// Options.Logs.
type Logs struct {
	st  store.LogStore
	log *slog.Logger
	now func() time.Time
	opt LogOptions
	hub *logHub

	queue   chan *logReq
	running atomic.Bool // the writer runs: requests go through it
	direct  sync.Mutex  // serializes commits while it does not

	mu sync.Mutex
	// epochs counts each device's removals: lines received under an
	// earlier epoch than the device's are of a removed device.
	epochs map[string]uint64
	// undeleted are removed devices whose lines could not be deleted
	// yet: each prune tries again.
	undeleted map[string]bool

	closed    chan struct{}
	closeOnce sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// NewLogs returns device logs on opts.Store.
func NewLogs(opts LogOptions) *Logs {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxLines <= 0 {
		opts.MaxLines = DefaultLogMaxLines
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultLogMaxAge
	}
	if opts.PruneInterval <= 0 {
		opts.PruneInterval = time.Minute
	}
	return &Logs{
		st: opts.Store, log: opts.Logger, now: opts.Now, opt: opts,
		hub:       newLogHub(),
		queue:     make(chan *logReq, logQueue),
		epochs:    map[string]uint64{},
		undeleted: map[string]bool{},
		closed:    make(chan struct{}),
	}
}

// Start starts the writer and the pruning (a first prune at once, then
// every PruneInterval).
func (l *Logs) Start(ctx context.Context) {
	ctx, l.cancel = context.WithCancel(ctx)
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		l.write(ctx)
	}()
	l.running.Store(true)
	go func() {
		defer l.wg.Done()
		t := time.NewTicker(l.opt.PruneInterval)
		defer t.Stop()
		for {
			if err := l.Prune(ctx); err != nil && ctx.Err() == nil {
				l.log.Warn("prune device logs", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// Close ends every follower, refuses lines from now on (the agent sends
// them again) and waits for the writer and the pruning to stop. It may be
// called more than once.
func (l *Logs) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		l.hub.close(errLogsClosed)
	})
	if l.cancel != nil {
		l.cancel()
	}
	l.wg.Wait()
	return nil
}

// Prune removes the lines received more than MaxAge ago and the lines of
// each device beyond its newest MaxLines, and the lines of removed devices
// that could not be removed with them.
func (l *Logs) Prune(ctx context.Context) error {
	aged, err := l.st.PruneLogs(ctx, l.now().Add(-l.opt.MaxAge))
	if err != nil {
		return err
	}
	trimmed, err := l.st.TrimLogs(ctx, l.opt.MaxLines)
	if err != nil {
		return err
	}
	if aged+trimmed > 0 {
		l.log.Debug("pruned device logs", "older", aged, "over_cap", trimmed)
	}
	l.mu.Lock()
	var retry []string
	for uuid := range l.undeleted {
		retry = append(retry, uuid)
	}
	l.mu.Unlock()
	for _, uuid := range retry {
		if err := l.deleteLines(ctx, uuid); err != nil {
			return err
		}
	}
	return nil
}

// logReq is a request to the writer: lines to store, in batches of one
// device each, the first the device's that sent them (a gateway's
// request also holds batches of the dependent devices it carries); or
// (del) all of the first batch's device's lines to delete.
type logReq struct {
	batches []store.LogBatch
	// epochs are the epochs of the batches' devices when the request
	// began.
	epochs []uint64
	del    bool
	done   chan logRes
}

// device is the device the request is of.
func (r *logReq) device() string { return r.batches[0].Device }

// lines counts the request's lines.
func (r *logReq) lines() int {
	n := 0
	for _, b := range r.batches {
		n += len(b.Lines)
	}
	return n
}

type logRes struct {
	res store.LogAppended
	err error
}

// do has the writer carry out r and returns what came of it. Before
// Start (in tests of the logic alone) it carries r out itself.
func (l *Logs) do(ctx context.Context, r *logReq) (store.LogAppended, error) {
	select {
	case <-l.closed:
		return store.LogAppended{}, errLogsClosed
	default:
	}
	r.done = make(chan logRes, 1)
	if !l.running.Load() {
		l.direct.Lock()
		l.commit(ctx, []*logReq{r})
		l.direct.Unlock()
	} else {
		select {
		case l.queue <- r:
		case <-ctx.Done():
			return store.LogAppended{}, ctx.Err()
		case <-l.closed:
			return store.LogAppended{}, errLogsClosed
		}
	}
	select {
	case res := <-r.done:
		return res.res, res.err
	case <-ctx.Done():
		return store.LogAppended{}, ctx.Err()
	case <-l.closed:
		return store.LogAppended{}, errLogsClosed
	}
}

// write commits queued requests, as many lines per commit as queued up
// while the last commit was made.
func (l *Logs) write(ctx context.Context) {
	reqs := make([]*logReq, 0, logQueue)
	for {
		reqs = reqs[:0]
		select {
		case <-ctx.Done():
			return
		case r := <-l.queue:
			reqs = append(reqs, r)
		}
		lines := reqs[0].lines()
	more:
		for lines < maxLogCommitLines && len(reqs) < cap(reqs) {
			select {
			case r := <-l.queue:
				reqs = append(reqs, r)
				lines += r.lines()
			default:
				break more
			}
		}
		l.commit(ctx, reqs)
	}
}

// commit carries out reqs in order: runs of appends in one transaction
// each, deletions between them.
func (l *Logs) commit(ctx context.Context, reqs []*logReq) {
	var (
		run     []*logReq
		batches []store.LogBatch
		counts  []int // how many of batches each request of run has
	)
	flush := func() {
		if len(run) == 0 {
			return
		}
		res, err := l.st.AppendLogs(ctx, batches)
		at := 0 // the first batch of run[i]
		for i, r := range run {
			if err != nil {
				r.done <- logRes{err: err}
				continue
			}
			mine := res[at : at+counts[i]]
			for j, b := range batches[at : at+counts[i]] {
				l.hub.publish(b.Device, mine[j].Stored)
			}
			at += counts[i]
			r.done <- logRes{res: joinAppended(mine)}
		}
		run, batches, counts = run[:0], batches[:0], counts[:0]
	}
	for _, r := range reqs {
		switch {
		case r.del:
			flush()
			_, err := l.st.DeleteDeviceLogs(ctx, r.device())
			r.done <- logRes{err: err}
		case r.epochs[0] != l.epoch(r.device()):
			// The device was removed since its request began; its
			// removal is queued after this and deletes what was
			// committed before.
			r.done <- logRes{err: errDeviceGone}
		default:
			live := l.liveBatches(r)
			run, batches, counts = append(run, r), append(batches, live...), append(counts, len(live))
		}
	}
	flush()
}

// liveBatches are the batches of r whose devices were not removed since
// r began: a dependent device removed meanwhile loses its lines, not its
// gateway.
func (l *Logs) liveBatches(r *logReq) []store.LogBatch {
	out := r.batches[:1:1]
	for i, b := range r.batches[1:] {
		if r.epochs[i+1] == l.epoch(b.Device) {
			out = append(out, b)
		}
	}
	return out
}

// joinAppended is what became of a request's batches, as one: the lines
// stored, the duplicates, and the highest LastSeq of any, so that an
// agent acknowledging by it never acknowledges less than it sent.
func joinAppended(res []store.LogAppended) store.LogAppended {
	if len(res) == 1 {
		return res[0]
	}
	var out store.LogAppended
	for _, r := range res {
		out.Stored = append(out.Stored, r.Stored...)
		out.Duplicates += r.Duplicates
		out.LastSeq = max(out.LastSeq, r.LastSeq)
	}
	if out.Stored == nil {
		out.Stored = []reeve.LogLine{}
	}
	return out
}

func (l *Logs) epoch(uuid string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epochs[uuid]
}

// removeDevice deletes a removed device's lines, refuses lines still on
// their way from it and ends its followers.
func (l *Logs) removeDevice(ctx context.Context, uuid string) error {
	l.mu.Lock()
	l.epochs[uuid]++
	l.mu.Unlock()
	l.hub.endDevice(uuid, errFollowEnded)
	return l.deleteLines(ctx, uuid)
}

// deleteLines deletes a device's lines; when that fails, the next prune
// tries again.
func (l *Logs) deleteLines(ctx context.Context, uuid string) error {
	_, err := l.do(ctx, &logReq{batches: []store.LogBatch{{Device: uuid}}, del: true})
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.undeleted[uuid] = true
		return fmt.Errorf("delete log lines of device %s: %w", uuid, err)
	}
	delete(l.undeleted, uuid)
	return nil
}

// deleteDeviceLogs removes the lines of a device just removed. A failure
// is logged, not returned: the device is gone, and the next prune tries
// again.
func (s *Server) deleteDeviceLogs(ctx context.Context, uuid string) {
	if s.opt.Logs == nil {
		return
	}
	if err := s.opt.Logs.removeDevice(ctx, uuid); err != nil {
		s.log.Warn("device removed; its log lines will be deleted at the next prune", "uuid", uuid, "err", err)
	}
}

// Ingestion.

var logStreamID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// LogIngest takes the lines of one request of a device (one shipment of
// its log stream): its own, and for a gateway those of the dependent
// devices it carries, each stored under its own device.
type LogIngest struct {
	s      *Server
	l      *Logs
	device reeve.Device
	stream string
	epoch  uint64
	// carried are the dependent devices the device carries, with their
	// epochs, read at the first line of one (nil until then).
	carried map[string]uint64
}

// LogIngest starts taking lines from an authenticated device. stream is
// the agent's stream ID ("" for none: its lines are never de-duplicated).
func (s *Server) LogIngest(dev reeve.Device, stream string) (*LogIngest, error) {
	l := s.opt.Logs
	if l == nil {
		return nil, errNoLogs
	}
	if stream != "" && !logStreamID.MatchString(stream) {
		return nil, reeve.Errorf(reeve.CodeInvalid, "%q is not a log stream ID: use 1 to 64 letters, digits, '_' or '-'", stream)
	}
	return &LogIngest{s: s, l: l, device: dev, stream: stream, epoch: l.epoch(dev.UUID)}, nil
}

// loadCarried reads the dependent devices the device carries now, with
// their epochs. A device's epoch must be read before the store says it
// exists: one removed after its epoch was read has its lines dropped at
// their commit, and one removed before is not in the store any more. So
// the store is read, the epochs, and the store again.
func (in *LogIngest) loadCarried(ctx context.Context) error {
	before, err := in.s.st.DependentDevices(ctx, in.device.ID)
	if err != nil {
		return err
	}
	epochs := make(map[string]uint64, len(before))
	for _, d := range before {
		epochs[d.UUID] = in.l.epoch(d.UUID)
	}
	after, err := in.s.st.DependentDevices(ctx, in.device.ID)
	if err != nil {
		return err
	}
	carried := make(map[string]uint64, len(after))
	for _, d := range after {
		if e, ok := epochs[d.UUID]; ok { // one registered meanwhile waits for the next read
			carried[d.UUID] = e
		}
	}
	in.carried = carried
	return nil
}

// Check checks a line received from the device and makes it what is
// stored: a message over reeve.MaxLogLineBytes is cut, a line without a
// timestamp gets the time of now, an ID given is dropped. A line whose
// device is a dependent device the device carries keeps it (Append
// stores it under that device; if the device is removed before, its
// lines are dropped there, and the request goes on); a line of any other
// device gets ErrNotCarried, to be skipped. Another error of code invalid
// says what is wrong with the line; any other is the server's.
func (in *LogIngest) Check(ctx context.Context, line *reeve.LogLine) error {
	if line.Device == in.device.UUID {
		line.Device = ""
	}
	if line.Device != "" {
		carried, err := in.carries(ctx, line.Device)
		if err != nil {
			return err
		}
		if !carried {
			return fmt.Errorf("device %q: %w", line.Device, ErrNotCarried)
		}
	}
	if line.Seq > math.MaxInt64 {
		return reeve.Errorf(reeve.CodeInvalid, "seq: %d is larger than %d", line.Seq, int64(math.MaxInt64))
	}
	line.ID = 0
	if line.Timestamp.IsZero() {
		line.Timestamp = in.l.now()
	}
	line.Message = reeve.TruncateLogMessage(line.Message)
	return nil
}

// carries reports whether the device carries the dependent device uuid,
// reading its dependent devices again when uuid is not among those it
// knows (it may have been registered since).
func (in *LogIngest) carries(ctx context.Context, uuid string) (bool, error) {
	if _, ok := in.carried[uuid]; ok {
		return true, nil
	}
	if in.device.GatewayID != 0 || !reeve.ValidUUID(uuid) {
		return false, nil
	}
	if err := in.loadCarried(ctx); err != nil {
		return false, err
	}
	_, ok := in.carried[uuid]
	return ok, nil
}

// Append stores checked lines (Check) and returns once they are committed,
// in one commit: the device's own lines under it, each dependent device's
// under that device, all in the device's stream. With no lines it returns
// how far the stream is stored. LastSeq is the highest of the devices' in
// the stream.
func (in *LogIngest) Append(ctx context.Context, lines []reeve.LogLine) (store.LogAppended, error) {
	now := in.l.now()
	r := &logReq{
		batches: []store.LogBatch{{Device: in.device.UUID, Stream: in.stream, ReceivedAt: now}},
		epochs:  []uint64{in.epoch},
	}
	if !slices.ContainsFunc(lines, func(l reeve.LogLine) bool { return l.Device != "" }) {
		r.batches[0].Lines = lines // the device's own lines alone: no copy
		lines = nil
	}
	index := map[string]int{in.device.UUID: 0}
	add := func(device string) int {
		i, ok := index[device]
		if !ok {
			i = len(r.batches)
			index[device] = i
			r.batches = append(r.batches, store.LogBatch{Device: device, Stream: in.stream, ReceivedAt: now})
			r.epochs = append(r.epochs, in.carried[device])
		}
		return i
	}
	for _, line := range lines {
		dev := in.device.UUID
		if line.Device != "" {
			dev, line.Device = line.Device, ""
		}
		i := add(dev)
		r.batches[i].Lines = append(r.batches[i].Lines, line)
	}
	if r.lines() == 0 && in.stream != "" && in.device.GatewayID == 0 {
		// How far the stream is stored: its dependent devices' lines
		// are in it too.
		if err := in.loadCarried(ctx); err != nil {
			return store.LogAppended{}, err
		}
		for _, uuid := range sortedKeys(in.carried) {
			add(uuid)
		}
	}
	return in.l.do(ctx, r)
}

// Reading and following.

// logsOf returns the server's logs and checks that the device exists.
func (s *Server) logsOf(ctx context.Context, uuid string, q *LogQuery) (*Logs, error) {
	if s.opt.Logs == nil {
		return nil, errNoLogs
	}
	switch {
	case q.Limit == 0:
		q.Limit = DefaultLogLimit
	case q.Limit < 0 || q.Limit > MaxLogLimit:
		return nil, reeve.Errorf(reeve.CodeInvalid, "limit: %d is not a number of lines from 1 to %d", q.Limit, MaxLogLimit)
	}
	if _, err := s.device(ctx, uuid); err != nil {
		return nil, err
	}
	return s.opt.Logs, nil
}

// DeviceLogs returns the newest lines of a device that match q, oldest
// first.
func (s *Server) DeviceLogs(ctx context.Context, uuid string, q LogQuery) ([]reeve.LogLine, error) {
	l, err := s.logsOf(ctx, uuid, &q)
	if err != nil {
		return nil, err
	}
	return l.st.LogLines(ctx, uuid, q)
}

// FollowLogs returns the lines of a device that match q, as DeviceLogs
// does, and a follower that returns the lines stored after them. Close
// the follower when done.
func (s *Server) FollowLogs(ctx context.Context, uuid string, q LogQuery) (*LogFollower, []reeve.LogLine, error) {
	l, err := s.logsOf(ctx, uuid, &q)
	if err != nil {
		return nil, nil, err
	}
	sub, err := l.hub.subscribe(uuid)
	if err != nil {
		return nil, nil, err
	}
	f := &LogFollower{l: l, device: uuid, q: q, sub: sub, last: max(q.After, 0)}
	hist, err := l.st.LogLines(ctx, uuid, q)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if n := len(hist); n > 0 && hist[n-1].ID > f.last {
		f.last = hist[n-1].ID
	}
	f.q.Limit = 0 // catching up takes everything after the last line sent
	return f, hist, nil
}

// LogFollower returns a device's lines as they are stored. It is for one
// goroutine.
type LogFollower struct {
	l      *Logs
	device string
	q      LogQuery
	sub    *logSub // nil while unhooked
	last   int64   // the ID of the last line returned (or skipped)
}

// Next waits up to wait (0: for ever) for lines stored after those
// returned so far, and returns them in ID order; nil lines when the wait
// is over without any. An error ends the follow: the context's, or one
// saying the server is shutting down or the device was removed.
func (f *LogFollower) Next(ctx context.Context, wait time.Duration) ([]reeve.LogLine, error) {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		if f.sub == nil {
			// Unhooked for falling behind: hook on again, then catch
			// up from the store.
			sub, err := f.l.hub.subscribe(f.device)
			if err != nil {
				return nil, err
			}
			f.sub = sub
			q := f.q
			q.After = f.last
			lines, err := f.l.st.LogLines(ctx, f.device, q)
			if err != nil {
				return nil, err
			}
			if n := len(lines); n > 0 {
				f.last = lines[n-1].ID
				return lines, nil
			}
		}
		select {
		case lines, ok := <-f.sub.ch:
			if !ok {
				end := f.sub.end
				f.sub = nil
				if end != nil {
					return nil, end
				}
				continue
			}
			if out := f.pick(lines); len(out) > 0 {
				return out, nil
			}
		case <-timeout:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// pick returns the lines not returned yet that match the query.
func (f *LogFollower) pick(lines []reeve.LogLine) []reeve.LogLine {
	var out []reeve.LogLine
	for _, l := range lines {
		if l.ID > f.last && f.q.Match(l) {
			out = append(out, l)
		}
	}
	if n := len(lines); n > 0 && lines[n-1].ID > f.last {
		f.last = lines[n-1].ID
	}
	return out
}

// Close unhooks the follower.
func (f *LogFollower) Close() {
	if f.sub != nil {
		f.l.hub.unsubscribe(f.device, f.sub)
		f.sub = nil
	}
}

// logHub hands stored lines to the followers of their device.
type logHub struct {
	mu   sync.Mutex
	subs map[string]map[*logSub]bool
	end  error // set by close: no one subscribes any more
}

// logSub is one follower's hook. ch is closed when the follower is
// unhooked: with end nil because it fell behind, else for the reason in
// end (set before ch is closed).
type logSub struct {
	ch  chan []reeve.LogLine
	end error
}

func newLogHub() *logHub { return &logHub{subs: map[string]map[*logSub]bool{}} }

func (h *logHub) subscribe(device string) (*logSub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.end != nil {
		return nil, h.end
	}
	s := &logSub{ch: make(chan []reeve.LogLine, followerBuffer)}
	if h.subs[device] == nil {
		h.subs[device] = map[*logSub]bool{}
	}
	h.subs[device][s] = true
	return s, nil
}

func (h *logHub) unsubscribe(device string, s *logSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[device][s] {
		h.drop(device, s, nil)
	}
}

// drop unhooks s (h.mu held).
func (h *logHub) drop(device string, s *logSub, end error) {
	delete(h.subs[device], s)
	if len(h.subs[device]) == 0 {
		delete(h.subs, device)
	}
	s.end = end
	close(s.ch)
}

// publish hands lines (stored, of device) to its followers without
// waiting: one whose buffer is full is unhooked.
func (h *logHub) publish(device string, lines []reeve.LogLine) {
	if len(lines) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[device] {
		select {
		case s.ch <- lines:
		default:
			h.drop(device, s, nil)
		}
	}
}

// endDevice ends every follower of device with end.
func (h *logHub) endDevice(device string, end error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[device] {
		h.drop(device, s, end)
	}
}

// close ends every follower with end and refuses new ones.
func (h *logHub) close(end error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.end = end
	for device, subs := range h.subs {
		for s := range subs {
			h.drop(device, s, end)
		}
	}
}
