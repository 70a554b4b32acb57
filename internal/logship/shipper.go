package logship

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"reeve.dev/reeve"
)

// Source is what the shipper reads: the disk queue.
type Source interface {
	// Read returns up to max records (about maxBytes) with Seq > after.
	Read(after uint64, max, maxBytes int) ([]Record, error)
	// Wait is closed when records with Seq > after exist.
	Wait(after uint64) <-chan struct{}
	// Ack marks every record up to through as shipped.
	Ack(through uint64) error
	// Acked is the last record shipped.
	Acked() uint64
	// Stream names the queue's stream of lines for the server.
	Stream() string
}

// Upload sends one request's body (gzip-compressed NDJSON lines) to the
// server and returns once the server has answered: nil means every line of
// the body is stored, and lastSeq is the highest Seq the server holds for
// the stream.
type Upload func(ctx context.Context, stream string, body io.Reader) (lastSeq uint64, err error)

// ShipperConfig configures a Shipper. Zero values get the defaults.
type ShipperConfig struct {
	Source Source
	Upload Upload
	Logger *slog.Logger
	// FlushInterval is the least time between two flushes of a request's
	// body: lines gather meanwhile. Default 100 ms.
	FlushInterval time.Duration
	// IdleEnd ends a request when no line came for this long; MaxAge and
	// MaxBytes end it anyway, so that the server's answer acknowledges
	// lines often. Defaults 1 s, 10 s, 4 MiB.
	IdleEnd  time.Duration
	MaxAge   time.Duration
	MaxBytes int
	// BackoffMin and BackoffMax bound the wait after a failed request.
	// Defaults 1 s and 2 min.
	BackoffMin time.Duration
	BackoffMax time.Duration
}

func (c *ShipperConfig) defaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 100 * time.Millisecond
	}
	if c.IdleEnd <= 0 {
		c.IdleEnd = time.Second
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 10 * time.Second
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 4 << 20
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 2 * time.Minute
	}
}

// ShipperStatus is what the shipper has done.
type ShipperStatus struct {
	Shipped   uint64    `json:"shipped"`              // the last line the server has
	LastError string    `json:"last_error,omitempty"` // of the last request, "" when it succeeded
	RetryAt   time.Time `json:"retry_at,omitzero"`
}

// Shipper streams the queue's lines to the server: each request carries
// the lines not yet acknowledged, flushed as they come, and once the server
// answers they are acknowledged in the queue. Shipping is at least once;
// the server drops lines it has by their stream and sequence number.
type Shipper struct {
	cfg    ShipperConfig
	log    *slog.Logger
	mu     sync.Mutex
	status ShipperStatus
	cancel context.CancelFunc
	done   chan struct{}
}

// NewShipper makes a shipper; Start runs it.
func NewShipper(cfg ShipperConfig) *Shipper {
	cfg.defaults()
	return &Shipper{cfg: cfg, log: cfg.Logger.With("component", "logship")}
}

// Start ships until Close or ctx ends.
func (s *Shipper) Start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	s.status.Shipped = s.cfg.Source.Acked()
	go func() {
		defer close(s.done)
		s.run(ctx)
	}()
}

// Close stops shipping; lines not acknowledged stay queued.
func (s *Shipper) Close() error {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	return nil
}

// Status returns what the shipper has done.
func (s *Shipper) Status() ShipperStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Shipper) run(ctx context.Context) {
	failures := 0
	var loggedErr string
	var loggedAt time.Time
	// After a start and after a failed request the server may hold lines
	// it did not acknowledge (it stores them as they come): it is asked
	// where it stands first, so that they are not sent again, and so that
	// a count of dropped lines leaves them out.
	resync := true
	for ctx.Err() == nil {
		acked := s.cfg.Source.Acked()
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Source.Wait(acked):
		}
		var sent uint64
		var err error
		if resync {
			// Any failure here, even a refusal, is waited out: a
			// question without lines has nothing to give up.
			sent, err = s.serverSeq(ctx)
			if err == nil {
				resync = false
				if sent > acked {
					if aerr := s.cfg.Source.Ack(sent); aerr != nil {
						// The server is ahead of the queue: another
						// queue's stream. Ship from the queue's own.
						s.log.Warn("the server holds more of this log stream than the queue ever had", "server_seq", sent, "err", aerr)
						sent = acked
					}
				}
				// The server answers again: it may already hold every
				// line (it stored them, and its answer was lost).
				failures, loggedErr = s.recovered(failures, sent), ""
				continue
			}
		} else {
			sent, err = s.request(ctx, acked)
			switch {
			case refused(err):
				// Sending the same lines again would be refused again,
				// and every line after them would wait for ever: they
				// are given up, loudly.
				s.log.Error("the server refused log lines: they are dropped", "from_seq", acked+1, "to_seq", sent, "err", err)
				err = nil
			case err != nil:
				resync = true
			}
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if sent > acked {
				err = s.cfg.Source.Ack(sent)
			}
			if err == nil {
				failures, loggedErr = s.recovered(failures, sent), ""
				continue
			}
		}
		failures++
		wait := backoff(s.cfg.BackoffMin, s.cfg.BackoffMax, failures)
		// Told when it starts or changes, then once a minute: a server
		// away for hours is one line an hour's worth, not thousands.
		if msg := err.Error(); msg != loggedErr || time.Since(loggedAt) >= time.Minute {
			s.log.Warn("shipping logs failed", "err", err, "retry_in", wait.Round(time.Millisecond), "failures", failures)
			loggedErr, loggedAt = msg, time.Now()
		}
		s.mu.Lock()
		s.status.LastError, s.status.RetryAt = err.Error(), time.Now().Add(wait)
		s.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// serverSeq asks the server for the highest Seq it holds of the stream
// (a request without lines).
func (s *Shipper) serverSeq(ctx context.Context) (uint64, error) {
	var empty bytes.Buffer
	_ = gzip.NewWriter(&empty).Close()
	return s.cfg.Upload(ctx, s.cfg.Source.Stream(), &empty)
}

// request sends the lines after acked in one streamed request and returns
// the last one sent once the server has answered.
func (s *Shipper) request(ctx context.Context, acked uint64) (uint64, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	answered := make(chan error, 1)
	go func() {
		_, err := s.cfg.Upload(rctx, s.cfg.Source.Stream(), pr)
		pr.CloseWithError(errors.New("the request ended"))
		answered <- err
	}()
	sent, werr := s.write(rctx, pw, acked, answered)
	if werr != nil {
		pw.CloseWithError(werr)
		cancel()
		<-answered
		return acked, werr
	}
	pw.Close()
	select {
	case err := <-answered:
		return sent, err
	case <-ctx.Done():
		return acked, ctx.Err()
	}
}

// recovered records a request the server answered: the status loses its
// error and says what the server holds. It returns the new failure count.
func (s *Shipper) recovered(failures int, sent uint64) int {
	if failures > 0 {
		s.log.Info("shipping logs again", "after_failures", failures)
	}
	s.mu.Lock()
	s.status = ShipperStatus{Shipped: sent}
	s.mu.Unlock()
	return 0
}

// refused reports whether the server refused a request for what it
// carried (not for who sent it or when).
func refused(err error) bool {
	c := reeve.ErrorCode(err)
	return c == reeve.CodeInvalid || c == reeve.CodeTooLarge
}

// errAnswered is a write that found the request already answered.
var errAnswered = errors.New("the server answered before the body ended")

// write streams records into the request body until the request has
// lasted MaxAge, carried MaxBytes, or no line came for IdleEnd.
func (s *Shipper) write(ctx context.Context, w io.Writer, after uint64, answered chan error) (uint64, error) {
	gz := gzip.NewWriter(w)
	enc := json.NewEncoder(gz)
	start := time.Now()
	sent, size := after, 0
	lastFlush := time.Time{}
	unflushed := false
	full := func() bool { return time.Since(start) >= s.cfg.MaxAge || size >= s.cfg.MaxBytes }
	for {
		// Everything queued goes into the body (up to MaxBytes), however
		// much came since the last flush: a burst is not held to a number
		// of reads per flush.
		for !full() {
			recs, err := s.cfg.Source.Read(sent, 1000, 1<<20)
			if err != nil {
				return after, fmt.Errorf("read the log queue: %w", err)
			}
			if len(recs) == 0 {
				break
			}
			for _, r := range recs {
				line := r.LogLine
				line.Message = reeve.TruncateLogMessage(line.Message)
				if err := enc.Encode(line); err != nil {
					return after, s.writeErr(err, answered)
				}
				sent = r.Seq
				size += len(line.Message) + 64
			}
			unflushed = true
		}
		if unflushed {
			// Flushes are at least FlushInterval apart: lines that come
			// meanwhile go out together.
			if wait := s.cfg.FlushInterval - time.Since(lastFlush); wait > 0 && !lastFlush.IsZero() && !full() {
				if !sleep(ctx, wait) {
					return after, ctx.Err()
				}
				continue // take what came meanwhile into this flush
			}
			if err := gz.Flush(); err != nil {
				return after, s.writeErr(err, answered)
			}
			lastFlush, unflushed = time.Now(), false
		}
		if full() {
			break
		}
		idle := time.NewTimer(s.cfg.IdleEnd)
		select {
		case <-s.cfg.Source.Wait(sent):
			idle.Stop()
			continue
		case <-idle.C:
		case err := <-answered:
			idle.Stop()
			answered <- err // for request() to read
			if err == nil {
				err = errAnswered
			}
			return after, err
		case <-ctx.Done():
			idle.Stop()
			return after, ctx.Err()
		}
		break
	}
	if err := gz.Close(); err != nil {
		return after, s.writeErr(err, answered)
	}
	return sent, nil
}

// writeErr explains a failed write into the body: usually the request
// ended, and its error says why.
func (s *Shipper) writeErr(err error, answered chan error) error {
	select {
	case aerr := <-answered:
		answered <- aerr
		if aerr != nil {
			return aerr
		}
		return errAnswered
	default:
		return err
	}
}

// sleep waits d, or less if ctx ends first (false then).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// backoff is the wait after n failures in a row: doubling from minD, capped
// at maxD, with up to 20 % jitter so that a fleet that lost its server
// does not come back all at once.
func backoff(minD, maxD time.Duration, n int) time.Duration {
	d := minD
	for i := 1; i < n && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}
