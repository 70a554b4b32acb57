package bench

// Logs is `reeve bench logs`: device logs end to end, from a container's
// output to a follower of the fleet server's log API, against the engine's
// own log follow (`docker logs -f`) of the same container, in the same run.
//
// The container is the reeve binary (`reeve example-app lines`) printing
// "line 1" … "line N" at a given rate, or as fast as it can. A `reeve agent`
// process provisioned to a fleet server in this process runs it, collects
// its output and ships it; this process follows the device's log on the
// server (reeve) and the container's log on the engine (docker) at once.
// Each side checks that every line arrives once and in order, and times it:
// lines per second from the first line received to the last, and the
// latency of each line from its engine timestamp to its arrival. The
// agent's memory is sampled from /proc while the load runs.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/selfimage"
	"reeve.dev/reeve/internal/serverapi"
)

// LogsOptions configures Logs. Zero values get the documented defaults.
type LogsOptions struct {
	// Loads are run one after the other, each by a release of its own.
	// Default: 60,000 lines at 2,000 lines/s, then 60,000 as fast as the
	// container prints them.
	Loads []LogLoad
	// Delay is how long the container waits before its first line, so
	// that both followers are on before it prints. Default 3 s.
	Delay time.Duration
	// Settle is how long the agent runs idle before its memory is read,
	// before each load. Default 2 s.
	Settle time.Duration
	// SampleEvery is how often the agent's memory is read during a load.
	// Default 200 ms.
	SampleEvery time.Duration
	// Binary is the reeve binary, static (CGO_ENABLED=0): it is packed into
	// the container's image and run as the `reeve agent` process. Default
	// os.Executable().
	Binary string
	// DockerHost is the engine address; "" means $DOCKER_HOST, else the
	// default socket.
	DockerHost string
	// Logger gets the in-process fleet server's logs; nil discards them.
	Logger *slog.Logger
}

// LogLoad is one run of the container: Lines lines at Rate lines a second,
// or as fast as it can when Rate is 0.
type LogLoad struct {
	Lines int
	Rate  int
}

func (l LogLoad) String() string {
	if l.Rate <= 0 {
		return fmt.Sprintf("burst, %d lines as fast as the container prints them", l.Lines)
	}
	return fmt.Sprintf("paced, %d lines at %d lines/s", l.Lines, l.Rate)
}

// DefaultLogLoads are the loads of `reeve bench logs` without flags.
func DefaultLogLoads() []LogLoad {
	return []LogLoad{{Lines: 60000, Rate: 2000}, {Lines: 60000, Rate: 0}}
}

func (o *LogsOptions) defaults() error {
	if len(o.Loads) == 0 {
		o.Loads = DefaultLogLoads()
	}
	for _, l := range o.Loads {
		if l.Lines <= 0 || l.Rate < 0 {
			return fmt.Errorf("load %q: want at least one line and a rate of 0 (as fast as it can) or more", l)
		}
	}
	if o.Delay <= 0 {
		o.Delay = 3 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 2 * time.Second
	}
	if o.SampleEvery <= 0 {
		o.SampleEvery = 200 * time.Millisecond
	}
	if err := selfBinary(&o.Binary); err != nil {
		return err
	}
	return nil
}

// LogsResult is what Logs measured.
type LogsResult struct {
	// IdleRSS is the agent's VmRSS (kB), registered and without an app.
	IdleRSS int64
	Loads   []LogLoadResult
}

// LogLoadResult is one load.
type LogLoadResult struct {
	Load          LogLoad
	Reeve, Docker LogSide
	// SourceRate is the lines a second the container printed, by the
	// engine's timestamps of the first and the last line.
	SourceRate float64
	// RSSBefore is the agent's VmRSS (kB) just before the release of the
	// load; RSSPeak the highest of Samples reads during it; HWM its VmHWM
	// at the end (the kernel's peak since the agent started, earlier loads
	// included; it can lag a sample by a little).
	RSSBefore, RSSPeak, HWM int64
	Samples                 int
	// AgentCPU is the agent's user + system time during the load.
	AgentCPU time.Duration
}

// LogSide is what one follower received.
type LogSide struct {
	Side  string
	Lines int
	// Span is from the first line received to the last.
	Span time.Duration
	// P50 and P99 are of the latency of each line: its arrival minus its
	// engine timestamp.
	P50, P99 time.Duration
}

// PerSecond is lines per second over the span.
func (s LogSide) PerSecond() float64 {
	if s.Span <= 0 {
		return 0
	}
	return float64(s.Lines) / s.Span.Seconds()
}

const (
	logsFleet = "bench-logs"
	// linesDone is what `reeve example-app lines` prints after its last
	// line.
	linesDone = "lines done"
)

// errLogsComplete ends a follower that received every line.
var errLogsComplete = errors.New("every line arrived")

// Logs runs the log benchmark and writes its results to out as plain text.
// It fails when a side misses a line, receives one twice or out of order.
func Logs(ctx context.Context, opts LogsOptions, out io.Writer) (LogsResult, error) {
	var res LogsResult
	if err := opts.defaults(); err != nil {
		return res, err
	}
	b := &logBench{opts: opts, out: out}
	b.deviceRig = deviceRig{ns: "bench-logs-" + randomHex(3), binary: opts.Binary, dockerHost: opts.DockerHost, logger: opts.Logger}
	defer func() {
		if err := b.close(); err != nil {
			fmt.Fprintf(out, "warning: cleaning up: %v\n", err)
		}
	}()
	if err := b.setup(ctx); err != nil {
		return res, err
	}
	if err := pause(ctx, opts.Settle); err != nil {
		return res, err
	}
	rss, _, err := procMemory(b.agent.pid())
	if err != nil {
		return res, err
	}
	res.IdleRSS = rss
	b.printf("agent idle: VmRSS %s (registered, no app, after %s)\n", mib(rss), opts.Settle)
	for i, load := range opts.Loads {
		if i > 0 {
			if err := pause(ctx, opts.Settle); err != nil {
				return res, err
			}
		}
		lr, err := b.runLoad(ctx, i+1, load)
		if err != nil {
			return res, fmt.Errorf("load %d (%s): %w", i+1, load, err)
		}
		res.Loads = append(res.Loads, lr)
	}
	return res, nil
}

// logBench is one run of Logs: what it set up, undone by close.
type logBench struct {
	deviceRig
	opts   LogsOptions
	out    io.Writer
	engine *client.Client
	images []string // one per load
}

func (b *logBench) printf(format string, args ...any) {
	fmt.Fprintf(b.out, format, args...)
}

// setup packs and pre-pulls the images, starts the registry, the fleet
// server and the agent, and waits until the device is registered.
func (b *logBench) setup(ctx context.Context) error {
	o := b.opts
	var err error
	if b.workDir, err = os.MkdirTemp("", "reeve-bench-logs-*"); err != nil {
		return err
	}
	b.cleanup = append(b.cleanup, func() error { return os.RemoveAll(b.workDir) })

	clientOpts := []client.Opt{client.FromEnv}
	if o.DockerHost != "" {
		clientOpts = append(clientOpts, client.WithHost(o.DockerHost))
	}
	if b.engine, err = client.New(clientOpts...); err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	b.cleanup = append(b.cleanup, b.engine.Close)
	info, err := b.engine.Info(ctx, client.InfoOptions{})
	if err != nil {
		return fmt.Errorf("the Docker Engine does not answer: %w", err)
	}
	rt, err := docker.New(ctx, docker.Options{Host: o.DockerHost, Namespace: b.ns, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	b.cleanup = append(b.cleanup, rt.Close)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the benchmark registry: %w", err)
	}
	reg := selfimage.Serve(ln)
	b.cleanup = append(b.cleanup, reg.Close)
	host := ln.Addr().String()
	// Everything of the namespace, and the images; the agent is stopped
	// before (its cleanup comes later, so it runs first).
	b.cleanup = append(b.cleanup, func() error {
		return rt.RemoveAll(context.Background(), func(ref string) bool { return strings.HasPrefix(ref, host+"/") })
	})
	for _, l := range o.Loads {
		img, err := selfimage.Push(ctx, host, "reeve/bench-logs", o.Binary, []string{"example-app", "lines",
			"--count", strconv.Itoa(l.Lines), "--rate", strconv.Itoa(l.Rate), "--delay", o.Delay.String()})
		if err != nil {
			return err
		}
		// Pulled here, so that no load waits for a download.
		if err := rt.Fetch(ctx, img, nil); err != nil {
			return fmt.Errorf("pre-pull the benchmark image: %w", err)
		}
		b.images = append(b.images, img)
	}

	if err := b.startServer(ctx, logsFleet); err != nil {
		return err
	}
	if err := b.startAgent(ctx); err != nil {
		return err
	}

	b.printf("reeve bench logs: binary %s, image %s/reeve/bench-logs (the binary: `reeve example-app lines --count N --rate R --delay %s`, pre-pulled)\n", o.Binary, host, o.Delay)
	b.printf("machine: %d CPUs, %s/%s, %s; Docker Engine %s, log driver %s; the container, the engine, the agent, the fleet server and both followers share it\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), info.Info.ServerVersion, info.Info.LoggingDriver)
	b.printf("reeve: container → engine → `reeve agent` (pid %s: collector, disk queue, gzip NDJSON stream) → fleet server (in this process, logs.db) → GET /api/v1/devices/{uuid}/logs?follow=true (in this process)\n", b.agent.pid())
	b.printf("docker: container → engine → ContainerLogs with follow and timestamps (`docker logs -f -t`, in this process)\n")
	b.printf("latency: arrival − the line's engine timestamp (reeve: LogLine.Timestamp, the timestamp the agent read from the engine; docker: the timestamp before the line)\n")
	b.printf("lines/s: lines / (last arrival − first arrival); both sides follow the same container at once\n\n")
	return nil
}

// pause waits d; it returns ctx's error when ctx ends first.
func pause(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// logTally checks one side's lines as they arrive ("line 1" … "line N",
// each once, in order, then "lines done") and times them. One goroutine
// adds; got may be read by any.
type logTally struct {
	side            string
	lines           int
	next            int // the line due; lines+1: "lines done" is due
	first, last     time.Time
	firstTS, lastTS time.Time
	lat             []time.Duration
	got             atomic.Int64
}

func newLogTally(side string, lines int) *logTally {
	return &logTally{side: side, lines: lines, next: 1, lat: make([]time.Duration, 0, lines)}
}

// add takes one line that arrived at recv; it returns errLogsComplete
// after the last one.
func (t *logTally) add(recv, ts time.Time, msg string) error {
	if t.next > t.lines {
		if msg == linesDone {
			return errLogsComplete
		}
		return fmt.Errorf("%s: %q after line %d, where %q was due", t.side, msg, t.lines, linesDone)
	}
	if msg != "line "+strconv.Itoa(t.next) {
		return fmt.Errorf("%s: %q arrived where \"line %d\" was due (every line must arrive once, in order)", t.side, msg, t.next)
	}
	if t.next == 1 {
		t.first, t.firstTS = recv, ts
	}
	t.last, t.lastTS = recv, ts
	t.lat = append(t.lat, recv.Sub(ts))
	t.next++
	t.got.Add(1)
	return nil
}

func (t *logTally) result() LogSide {
	n := t.next - 1
	s := LogSide{Side: t.side, Lines: n, P50: percentile(t.lat, 50), P99: percentile(t.lat, 99)}
	if n > 0 {
		s.Span = t.last.Sub(t.first)
	}
	return s
}

// timestampedLines splits the engine's log stream of one output (each
// line "<RFC 3339 timestamp> <message>\n") into lines for a tally; all
// lines of one Write arrived at the same moment.
type timestampedLines struct {
	tally   *logTally
	partial []byte
}

func (w *timestampedLines) Write(p []byte) (int, error) {
	now := time.Now()
	n := len(p)
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.partial = append(w.partial, p...)
			return n, nil
		}
		line := p[:i]
		if len(w.partial) > 0 {
			line = append(w.partial, line...)
		}
		p = p[i+1:]
		stamp, msg, ok := bytes.Cut(line, []byte{' '})
		ts, err := time.Parse(time.RFC3339Nano, string(stamp))
		if !ok || err != nil {
			return 0, fmt.Errorf("%s: a line without a timestamp: %q", w.tally.side, line)
		}
		if err := w.tally.add(now, ts, string(msg)); err != nil {
			return 0, err
		}
		w.partial = w.partial[:0]
	}
}

// stderrLines refuses what the container writes to standard error: the
// load writes none.
type stderrLines struct{}

func (stderrLines) Write(p []byte) (int, error) {
	return 0, fmt.Errorf("docker: the container wrote to standard error: %q", p)
}

// rssSampler reads a process's VmRSS every interval until stopped.
type rssSampler struct {
	peak, n int64
	stop    chan struct{}
	done    chan struct{}
}

func sampleRSS(pid string, every time.Duration) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() { // owned by s: end waits for it
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if rss, _, err := procMemory(pid); err == nil {
				s.peak, s.n = max(s.peak, rss), s.n+1
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// end stops sampling and returns the peak (kB) and the number of samples.
func (s *rssSampler) end() (int64, int) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return s.peak, int(s.n)
}

// runLoad releases load i as service load<i> and follows it on both sides
// until each has every line.
func (b *logBench) runLoad(ctx context.Context, i int, load LogLoad) (LogLoadResult, error) {
	res := LogLoadResult{Load: load}
	service := fmt.Sprintf("load%d", i)
	reeveT, dockerT := newLogTally("reeve", load.Lines), newLogTally("docker", load.Lines)
	var err error
	if res.RSSBefore, _, err = procMemory(b.agent.pid()); err != nil {
		return res, err
	}
	b.printf("Load %d: %s (service %s; the container waits %s before its first line)\n", i, load, service, b.opts.Delay)

	fctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	// The device's log on the server, from before the release on.
	reeveDone := make(chan error, 1)
	wg.Go(func() {
		reeveDone <- b.op.Logs(fctx, b.uuid, serverapi.LogQuery{Services: []string{service}, Follow: true}, func(l reeve.LogLine) error {
			now := time.Now()
			switch {
			case l.System:
				return nil // the agent's own lines ("Started service …")
			case l.Stderr:
				return fmt.Errorf("reeve: a line on standard error: %q", l.Message)
			}
			return reeveT.add(now, l.Timestamp, l.Message)
		})
	})
	sampler := sampleRSS(b.agent.pid(), b.opts.SampleEvery)
	defer sampler.end()
	cpu0 := procCPU(b.agent.pid())

	compose := fmt.Sprintf("services:\n  %s:\n    image: %s\n", service, b.images[i-1])
	if _, _, err := b.op.Push(ctx, logsFleet, []byte(compose)); err != nil {
		return res, fmt.Errorf("push the release: %w", err)
	}
	// The engine's follow of the same container, attached as soon as it
	// runs.
	// Time to print the lines twice over, and to receive them at no less
	// than 1,000 a second, after two minutes to start.
	timeout := b.opts.Delay + 2*time.Minute + time.Duration(load.Lines)*time.Millisecond
	if load.Rate > 0 {
		timeout += 2 * time.Duration(load.Lines) * time.Second / time.Duration(load.Rate)
	}
	var attached time.Time
	dockerDone := make(chan error, 1)
	wg.Go(func() {
		dockerDone <- b.followDocker(fctx, service, timeout, dockerT, &attached)
	})

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	pending := 2
	for pending > 0 {
		var err error
		select {
		case err = <-reeveDone:
		case err = <-dockerDone:
		case <-ctx.Done():
			return res, ctx.Err()
		case <-deadline.C:
			return res, fmt.Errorf("after %s: reeve has %d of %d lines, docker %d\n%s", timeout,
				reeveT.got.Load(), load.Lines, dockerT.got.Load(), b.agent.logTail())
		case err := <-b.agent.exited:
			b.agent.exited <- err
			return res, fmt.Errorf("the agent exited: %v\n%s", err, b.agent.logTail())
		}
		switch {
		case errors.Is(err, errLogsComplete):
			pending--
		case err == nil:
			return res, fmt.Errorf("a follower ended early: reeve has %d of %d lines, docker %d", reeveT.got.Load(), load.Lines, dockerT.got.Load())
		default:
			return res, err
		}
	}
	res.AgentCPU = procCPU(b.agent.pid()) - cpu0
	res.RSSPeak, res.Samples = sampler.end()
	if _, res.HWM, err = procMemory(b.agent.pid()); err != nil {
		return res, err
	}
	cancel()
	wg.Wait()

	res.Reeve, res.Docker = reeveT.result(), dockerT.result()
	if src := dockerT.lastTS.Sub(dockerT.firstTS); src > 0 {
		res.SourceRate = float64(load.Lines) / src.Seconds()
	}
	b.printLoad(res)
	if attached.After(dockerT.firstTS) {
		b.printf("warning: docker logs attached %s after the first line was printed: the first lines' latency includes that wait (raise --delay)\n",
			ms(attached.Sub(dockerT.firstTS)))
	}
	b.printf("\n")
	return res, nil
}

// followDocker waits for the service's container to run, then follows its
// log on the engine into t. attached is set when the follow is on.
func (b *logBench) followDocker(ctx context.Context, service string, timeout time.Duration, t *logTally, attached *time.Time) error {
	filters := client.Filters{}.Add("label", docker.LabelManaged+"="+b.ns, docker.LabelServiceName+"="+service)
	deadline := time.Now().Add(timeout)
	id := ""
	for id == "" {
		list, err := b.engine.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filters})
		if err != nil {
			return fmt.Errorf("docker: find the container of %s: %w", service, err)
		}
		for _, c := range list.Items {
			if c.State == "running" {
				id = c.ID
			}
		}
		if id != "" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("docker: no running container of %s after %s", service, timeout)
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	body, err := b.engine.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true})
	if err != nil {
		return fmt.Errorf("docker: logs of %s: %w", service, err)
	}
	defer body.Close()
	*attached = time.Now()
	_, err = stdcopy.StdCopy(&timestampedLines{tally: t}, stderrLines{}, body)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// printLoad prints one load's table.
func (b *logBench) printLoad(r LogLoadResult) {
	b.printf("%-8s %8s %10s %10s %10s\n", "side", "lines", "lines/s", "p50", "p99")
	for _, s := range []LogSide{r.Reeve, r.Docker} {
		b.printf("%-8s %8d %10.0f %10s %10s\n", s.Side, s.Lines, s.PerSecond(), msOrS(s.P50), msOrS(s.P99))
	}
	b.printf("ratio reeve/docker: lines/s %.2f, latency p50 %.1f, p99 %.1f\n", ratio(r.Reeve.PerSecond(), r.Docker.PerSecond()),
		ratio(float64(r.Reeve.P50), float64(r.Docker.P50)), ratio(float64(r.Reeve.P99), float64(r.Docker.P99)))
	b.printf("every line 1..%d arrived once, in order, on both sides; the container printed %.0f lines/s (engine timestamps, first to last line)\n",
		r.Load.Lines, r.SourceRate)
	b.printf("agent: VmRSS %s before, peak %s during the load (%d samples every %s); VmHWM %s (the kernel's peak since the agent started); CPU %.1f s during the load\n",
		mib(r.RSSBefore), mib(r.RSSPeak), r.Samples, b.opts.SampleEvery, mib(r.HWM), r.AgentCPU.Seconds())
}
