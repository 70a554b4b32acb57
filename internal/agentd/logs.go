package agentd

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"path/filepath"
	"sync"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/fleetlink"
	"reeve.dev/reeve/internal/logship"
	"reeve.dev/reeve/internal/runtime"
)

// LogsConfig tunes the log pipeline.
type LogsConfig struct {
	// Shipper tunes shipping to the fleet server; Source, Upload and
	// Logger are filled in.
	Shipper logship.ShipperConfig
	// TailLines is how many recent lines the local API keeps; default 1000.
	TailLines int
}

// logPipeline carries the device's log: the collector follows every
// container and takes the agent's own lines; with a fleet server they go
// to the disk queue and the shipper streams them out; either way the tail
// keeps the recent ones for the local API.
type logPipeline struct {
	log       *slog.Logger
	queue     *logship.Queue // nil without a fleet server
	collector *logship.Collector
	shipper   *logship.Shipper // nil without a fleet server
	tail      *logship.Tail

	mu         sync.Mutex
	containers map[string]bool // the containers of the last snapshot
	queueMax   int64
}

// queueDir is where the log queue lives in the data directory.
func queueDir(dataDir string) string { return filepath.Join(dataDir, "logs", "queue") }

// newLogPipeline opens the queue (when there is a server to ship to) and
// makes the collector; the shipper comes with the link (startShipping).
func newLogPipeline(cfg Config, rt runtime.Runtime, ship bool) (*logPipeline, error) {
	p := &logPipeline{log: cfg.Logger, tail: logship.NewTail(orDefault(cfg.Logs.TailLines, 1000)), queueMax: reeve.DefaultLogQueueMax}
	var sink logship.Sink = logship.NewMemorySink()
	if ship {
		q, err := logship.OpenQueue(queueDir(cfg.DataDir), logship.QueueOptions{MaxBytes: p.queueMax, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		p.queue, sink = q, q
	}
	p.collector = logship.NewCollector(logship.CollectorConfig{Runtime: rt, Sink: sink, Logger: cfg.Logger,
		Tap: p.tail.Add, NoHistory: !ship})
	return p, nil
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// startShipping makes the shipper that streams the queue to the server.
func (p *logPipeline) startShipping(cfg LogsConfig, link *fleetlink.Link) {
	if p.queue == nil {
		return
	}
	sc := cfg.Shipper
	sc.Source, sc.Upload, sc.Logger = p.queue, link.UploadLogs, p.log
	p.shipper = logship.NewShipper(sc)
}

func (p *logPipeline) start(ctx context.Context) {
	p.collector.Start(ctx)
	if p.shipper != nil {
		p.shipper.Start(ctx)
	}
}

// system takes one of the agent's own lines; it never blocks.
func (p *logPipeline) system(service, message string) { p.collector.System(service, message) }

// add takes a line of a dependent device; it never blocks.
func (p *logPipeline) add(line reeve.LogLine) { p.collector.Add(line) }

// observe follows the containers of a snapshot, forgets the cursors of the
// ones gone, and applies the log queue's cap from the device config.
func (p *logPipeline) observe(snap reeve.Snapshot, config map[string]string) {
	p.collector.Sync(snap.Containers)
	if p.queue == nil {
		return
	}
	ids := make(map[string]bool, len(snap.Containers))
	for _, c := range snap.Containers {
		ids[c.ID] = true
	}
	dc, _ := reeve.ParseDeviceConfig(config, reeve.DefaultDeviceConfig())
	p.mu.Lock()
	changed := !maps.Equal(ids, p.containers)
	p.containers = ids
	capChanged := dc.LogQueueMax != p.queueMax
	p.queueMax = dc.LogQueueMax
	p.mu.Unlock()
	if changed {
		if err := p.queue.ForgetCursors(func(id string) bool { return ids[id] }); err != nil {
			p.log.Warn("forget the log cursors of removed containers", "err", err)
		}
	}
	if capChanged {
		if err := p.queue.SetMaxBytes(dc.LogQueueMax); err != nil {
			p.log.Warn("apply the log queue's cap", "err", err)
		}
	}
}

// status is what the pipeline tells `reeve local status`.
func (p *logPipeline) status() *logship.Status {
	if p.queue == nil {
		return nil
	}
	st := &logship.Status{Queue: p.queue.Stats()}
	if p.shipper != nil {
		sh := p.shipper.Status()
		st.Shipper = &sh
	}
	return st
}

// close stops collecting (writing what was collected) and shipping.
func (p *logPipeline) close() error {
	var errs []error
	if p.shipper != nil {
		errs = append(errs, p.shipper.Close())
	}
	errs = append(errs, p.collector.Close())
	if p.queue != nil {
		errs = append(errs, p.queue.Close())
	}
	return errors.Join(errs...)
}
