package logship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// CollectorConfig configures a Collector. Runtime and Sink are required.
type CollectorConfig struct {
	Runtime runtime.Runtime
	Sink    Sink
	Logger  *slog.Logger // nil: slog.Default()
	// Tap, when set, is called with every batch after the sink took it
	// (the local API's live view). The collector does not reuse the
	// slice. Tap should not block for long: collection waits for it.
	Tap func([]Record)
	// NoHistory: containers without a cursor start from when the
	// collector started, not from their first line (for an agent that
	// keeps no queue).
	NoHistory bool
	// BatchDelay is how long lines gather before one Sink.Append; default
	// 100 ms.
	BatchDelay time.Duration
	// MaxBatch is the most lines one Sink.Append takes; default 1000.
	MaxBatch int
	Now      func() time.Time // nil: time.Now
}

// Collector follows the output of every container it is told of and puts
// it, with the agent's own lines, into a Sink.
//
// One goroutine per container reads its lines through Runtime.Logs and
// hands them to one batching goroutine over a bounded channel; the batcher
// appends a batch at most every BatchDelay (or when MaxBatch lines wait),
// so that the sink syncs once per batch. When the sink is slow or failing,
// followers block: at most 2×MaxBatch container lines wait in memory (one
// batch and the channel), plus one per follower, plus MaxBatch lines of
// the agent's own. A batch the sink refuses is retried, with a capped
// backoff, until it takes it.
//
// Where each container stands is a Cursor: read from the sink once at
// Start, then kept in memory as lines are handed to the batcher, so that a
// follower that fails resumes right after the last line it handed over.
type Collector struct {
	cfg        CollectorConfig
	log        *slog.Logger
	now        func() time.Time
	batchDelay time.Duration
	maxBatch   int

	lines    chan Record   // followers → batcher
	sysReady chan struct{} // a System line waits (capacity 1)
	stop     chan struct{} // closed by Close: the batcher ends
	batched  chan struct{} // closed when the batcher ended

	mu        sync.Mutex
	started   bool
	closed    bool
	ctx       context.Context // the followers' parent, cancelled by Close
	cancel    context.CancelFunc
	startTime time.Time
	cursors   map[string]Cursor // from the sink, of containers not followed yet
	followers map[string]*collectorFollower
	pending   []reeve.ServiceState // a Sync before Start
	synced    bool                 // Sync was called before Start
	system    []Record             // the agent's own lines, waiting for the batcher
	dropped   int                  // System lines dropped since the last one kept
	leftover  []Record             // what the batcher could not append before it ended
	wg        sync.WaitGroup       // followers
}

// collectorFollower is one container followed.
type collectorFollower struct {
	id      string
	service string
	cursor  Cursor // where it starts; then the goroutine's own
	cancel  context.CancelFunc
	done    chan struct{}
}

// Retry delays: of a follower whose Logs failed, and of a batch the sink
// refused. They double from the first to the cap.
const (
	collectorRetryMin = 500 * time.Millisecond
	collectorRetryMax = 30 * time.Second
)

// collectorMaxErrors bounds the distinct errors a follower logs.
const collectorMaxErrors = 8

// NewCollector returns a Collector; Start starts it.
func NewCollector(cfg CollectorConfig) *Collector {
	c := &Collector{
		cfg:        cfg,
		log:        cfg.Logger,
		now:        cfg.Now,
		batchDelay: cfg.BatchDelay,
		maxBatch:   cfg.MaxBatch,
		sysReady:   make(chan struct{}, 1),
		stop:       make(chan struct{}),
		batched:    make(chan struct{}),
		followers:  map[string]*collectorFollower{},
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("component", "log collector")
	if c.now == nil {
		c.now = time.Now
	}
	if c.batchDelay <= 0 {
		c.batchDelay = 100 * time.Millisecond
	}
	if c.maxBatch <= 0 {
		c.maxBatch = 1000
	}
	c.lines = make(chan Record, c.maxBatch)
	return c
}

// Start reads the sink's cursors and starts the batcher, and the followers
// of the containers a Sync before it named. Followers stop when ctx ends;
// Close is still needed to flush and end the batcher.
func (c *Collector) Start(ctx context.Context) {
	if c.cfg.Runtime == nil || c.cfg.Sink == nil {
		c.log.Error("log collector not started: it needs a runtime and a sink")
		return
	}
	c.mu.Lock()
	if c.started || c.closed {
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	cursors := c.cfg.Sink.Cursors() // no lock held while calling the sink

	c.mu.Lock()
	if c.started || c.closed {
		c.mu.Unlock()
		return
	}
	c.started = true
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.startTime = c.now()
	c.cursors = map[string]Cursor{}
	for id, cur := range cursors {
		c.cursors[id] = cur
	}
	go c.batch()
	if c.synced {
		c.syncLocked(c.pending) // stops nothing: nothing is followed yet
	}
	c.pending = nil
	c.mu.Unlock()
}

// Sync is told the containers that exist: it follows every one it does not
// follow yet, from its cursor, and stops following (and forgets the
// cursors of) the containers not named. A Sync before Start takes effect
// at Start. It is safe to call often and concurrently; the last call's
// list is what is followed. When it returns, the followers it stopped have
// ended.
func (c *Collector) Sync(containers []reeve.ServiceState) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if !c.started {
		c.pending = append([]reeve.ServiceState(nil), containers...)
		c.synced = true
		c.mu.Unlock()
		return
	}
	stopped := c.syncLocked(containers)
	c.mu.Unlock()
	for _, f := range stopped {
		<-f.done
	}
}

// syncLocked is Sync with c.mu held; it returns the followers it stopped.
func (c *Collector) syncLocked(containers []reeve.ServiceState) []*collectorFollower {
	exists := make(map[string]bool, len(containers))
	for _, ctr := range containers {
		if ctr.ID == "" || exists[ctr.ID] {
			continue
		}
		exists[ctr.ID] = true
		if _, ok := c.followers[ctr.ID]; ok {
			continue
		}
		cur, ok := c.cursors[ctr.ID]
		delete(c.cursors, ctr.ID)
		if !ok && c.cfg.NoHistory {
			from := runtime.LogMark{Time: c.startTime}
			cur = Cursor{Stdout: from, Stderr: from}
		}
		ctx, cancel := context.WithCancel(c.ctx)
		f := &collectorFollower{id: ctr.ID, service: ctr.ServiceName, cursor: cur, cancel: cancel, done: make(chan struct{})}
		c.followers[ctr.ID] = f
		c.wg.Add(1)
		go c.follow(ctx, f)
	}
	var stopped []*collectorFollower
	for id, f := range c.followers {
		if !exists[id] {
			f.cancel()
			delete(c.followers, id)
			stopped = append(stopped, f)
		}
	}
	for id := range c.cursors {
		if !exists[id] {
			delete(c.cursors, id)
		}
	}
	return stopped
}

// System adds one of the agent's own lines (System: true) for a service
// ("" for none), timestamped with Now. It never blocks (see Add).
func (c *Collector) System(service, message string) {
	c.Add(reeve.LogLine{Service: service, System: true, Message: message})
}

// Add adds a line no container wrote: the agent's own, or a dependent
// device's (Device set). A zero Timestamp is Now; the message is cut to
// reeve.MaxLogLineBytes. It never blocks: while the sink does not keep up
// and MaxBatch of these lines wait, more are dropped (and counted in a
// line added once there is room).
func (c *Collector) Add(line reeve.LogLine) {
	if line.Timestamp.IsZero() {
		line.Timestamp = c.now()
	}
	line.Message = reeve.TruncateLogMessage(line.Message)
	rec := Record{LogLine: line}
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		c.log.Debug("log line after close dropped", "service", line.Service, "device", line.Device, "message", line.Message)
		return
	case len(c.system) >= c.maxBatch:
		if c.dropped == 0 {
			c.log.Warn("agent log lines dropped: the log sink does not keep up")
		}
		c.dropped++
		c.mu.Unlock()
		return
	case c.dropped > 0:
		c.system = append(c.system, Record{LogLine: reeve.LogLine{
			Timestamp: c.now(),
			System:    true,
			Message:   fmt.Sprintf("%d agent log lines dropped: the log sink did not keep up", c.dropped),
		}})
		c.dropped = 0
	}
	c.system = append(c.system, rec)
	c.mu.Unlock()
	select {
	case c.sysReady <- struct{}{}:
	default:
	}
}

// takeSystem takes up to n waiting System lines.
func (c *Collector) takeSystem(n int) []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	n = min(n, len(c.system))
	out := append([]Record(nil), c.system[:n]...)
	c.system = append(c.system[:0], c.system[n:]...)
	if len(c.system) > 0 {
		select {
		case c.sysReady <- struct{}{}:
		default:
		}
	}
	return out
}

// Close stops every follower, then appends what was collected and not
// appended yet, in one last attempt, and returns that attempt's error.
func (c *Collector) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	started := c.started
	if c.cancel != nil {
		c.cancel()
	}
	c.followers = map[string]*collectorFollower{}
	c.mu.Unlock()

	if !started {
		return c.flush(c.takeSystem(math.MaxInt))
	}
	c.wg.Wait() // no follower sends any more
	close(c.stop)
	<-c.batched
	recs := c.leftover
	c.leftover = nil
	for more := true; more; {
		select {
		case r := <-c.lines:
			recs = append(recs, r)
		default:
			more = false
		}
	}
	recs = append(recs, c.takeSystem(math.MaxInt)...)
	return c.flush(recs)
}

// flush is Close's one attempt to append recs.
func (c *Collector) flush(recs []Record) error {
	if len(recs) == 0 || c.cfg.Sink == nil {
		return nil
	}
	if err := c.cfg.Sink.Append(recs); err != nil {
		c.log.Error("log lines lost at close: the sink refused them", "lines", len(recs), "err", err)
		return fmt.Errorf("log collector: append %d lines at close: %w", len(recs), err)
	}
	if c.cfg.Tap != nil {
		c.cfg.Tap(recs)
	}
	return nil
}

// follow reads one container's lines until ctx ends or the container is
// gone, retrying with backoff when Runtime.Logs fails.
func (c *Collector) follow(ctx context.Context, f *collectorFollower) {
	defer c.wg.Done()
	defer close(f.done)
	log := c.log.With("service", f.service, "container", collectorShortID(f.id))
	cur := f.cursor
	delay := collectorRetryMin
	logged := map[string]bool{}
	for {
		handed := false
		filter := runtime.NewLogFilter(cur)
		err := c.cfg.Runtime.Logs(ctx, f.id, cur.Since(), func(e runtime.LogEntry) error {
			if !filter.New(e.Stderr, e.Time) {
				return nil // taken before
			}
			rec := Record{
				LogLine: reeve.LogLine{
					Timestamp: e.Time,
					Service:   f.service,
					Stderr:    e.Stderr,
					Message:   reeve.TruncateLogMessage(e.Message),
				},
				Container: f.id,
			}
			select {
			case c.lines <- rec:
			case <-ctx.Done():
				return ctx.Err()
			}
			cur = cur.Advance(e.Stderr, e.Time)
			handed = true
			return nil
		})
		switch {
		case ctx.Err() != nil:
			return
		case err == nil || errors.Is(err, runtime.ErrNotFound):
			// Gone: the follower stays ended until a Sync no longer
			// names the container.
			log.Debug("container gone: its log is read to the end")
			return
		case errors.Is(err, runtime.ErrLogsUnreadable):
			// Said once; asking again will not help while it exists.
			log.Warn("the logs of a container cannot be read back: not collected", "err", err)
			c.System(f.service, fmt.Sprintf("logs of service %s are not collected: %v", f.service, err))
			return
		}
		if handed {
			delay = collectorRetryMin
		}
		if msg := err.Error(); !logged[msg] && len(logged) < collectorMaxErrors {
			logged[msg] = true
			log.Warn("cannot read the logs of a container; retrying", "err", err)
			c.System(f.service, fmt.Sprintf("logs of service %s cannot be read: %v", f.service, err))
		}
		if !sleep(ctx, delay) {
			return
		}
		delay = min(2*delay, collectorRetryMax)
	}
}

// batch gathers lines and appends them to the sink until Close.
func (c *Collector) batch() {
	defer close(c.batched)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		// Wait for a first line.
		var recs []Record
		select {
		case r := <-c.lines:
			recs = append(recs, r)
		case <-c.sysReady:
			recs = c.takeSystem(c.maxBatch)
		case <-c.stop:
			return
		}
		// Gather more for BatchDelay, up to MaxBatch.
		timer.Reset(c.batchDelay)
	gather:
		for len(recs) < c.maxBatch {
			select {
			case r := <-c.lines:
				recs = append(recs, r)
			case <-c.sysReady:
				recs = append(recs, c.takeSystem(c.maxBatch-len(recs))...)
			case <-timer.C:
				break gather
			case <-c.stop:
				c.leftover = recs
				return
			}
		}
		if !timer.Stop() {
			select { // drain a fire that raced with a full batch
			case <-timer.C:
			default:
			}
		}
		if len(recs) == 0 {
			continue
		}
		if !c.append(recs) {
			c.leftover = recs
			return
		}
	}
}

// append appends recs, retrying until the sink takes them; false when
// Close came first.
func (c *Collector) append(recs []Record) bool {
	delay := collectorRetryMin
	var failed error
	for {
		err := c.cfg.Sink.Append(recs)
		if err == nil {
			if failed != nil {
				c.log.Info("the log sink takes lines again")
			}
			if c.cfg.Tap != nil {
				c.cfg.Tap(recs)
			}
			return true
		}
		if failed == nil || failed.Error() != err.Error() {
			c.log.Error("cannot append log lines; retrying (collection waits meanwhile)", "lines", len(recs), "err", err)
		}
		failed = err
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.stop:
			t.Stop()
			return false
		}
		delay = min(2*delay, collectorRetryMax)
	}
}

func collectorShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
