package bench

// Server is `reeve bench server`: the fleet server under load, run as a
// `reeve server` child process (so that its memory can be read from /proc
// and the load generator does not share its CPU accounting).
//
// Part 1, poll throughput: K registered devices, C concurrent keep-alive
// clients reading GET /device/v3/{uuid}/state, without If-None-Match (the
// 200 path) and with the current ETag (the 304 path), against reeve and
// against a peer: a bare net/http handler in another child process
// (`reeve bench server peer`) serving the very same bytes and ETag per
// device, from memory. The two sides alternate, round after round.
//
// Part 2, a fleet of N simulated devices on a fresh server: each keeps a
// long poll open (?wait= with its ETag) and reports its state every R
// seconds; halfway through, a release is pushed and the time until every
// device's long poll answered 200 with the new target is measured (fan-out).

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

// ServerOptions configures Server. Zero values get the documented defaults.
type ServerOptions struct {
	// Binary is the reeve binary run as `reeve server` and as the peer
	// (`reeve bench server peer`). Default os.Executable().
	Binary string
	// DataDir keeps the servers' databases and logs (in new
	// subdirectories). Default: a temporary directory, removed after.
	DataDir string

	// PollDevices is K, the devices the poll throughput is measured with.
	// Default 100.
	PollDevices int
	// Concurrency is C, the concurrent clients of the throughput runs.
	// Default 32.
	Concurrency int
	// Duration is how long each throughput run lasts (one per round, path
	// and side). Default 10 s.
	Duration time.Duration
	// Rounds is how many times each side runs each path; the sides
	// alternate. Default 2.
	Rounds int

	// Devices is N, the simulated devices of part 2. Default 10,000.
	Devices int
	// DevicesDuration is how long part 2 runs; the release is pushed
	// halfway. Default 60 s.
	DevicesDuration time.Duration
	// ReportEvery is how often each simulated device reports. Default 10 s.
	ReportEvery time.Duration
	// Wait is the long poll's ?wait=. Default 60 s.
	Wait time.Duration
	// RegisterConcurrency is how many registrations run at once. Default 64.
	RegisterConcurrency int

	// SkipPoll and SkipDevices leave out part 1 or part 2.
	SkipPoll, SkipDevices bool
}

func (o *ServerOptions) defaults() error {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.PollDevices, 100)
	def(&o.Concurrency, 32)
	def(&o.Rounds, 2)
	def(&o.Devices, 10000)
	def(&o.RegisterConcurrency, 64)
	defD(&o.Duration, 10*time.Second)
	defD(&o.DevicesDuration, 60*time.Second)
	defD(&o.ReportEvery, 10*time.Second)
	defD(&o.Wait, 60*time.Second)
	if o.Wait < time.Second || o.Wait > serverapi.MaxWait*time.Second {
		return fmt.Errorf("long poll wait %s: want 1s to %ds", o.Wait, serverapi.MaxWait)
	}
	if err := selfBinary(&o.Binary); err != nil {
		return err
	}
	return nil
}

// ServerResult is what Server measured.
type ServerResult struct {
	// Poll has one entry per path ("200", "304") and side ("reeve",
	// "peer"), summed over the rounds.
	Poll []PollStats
	// Fleet is part 2.
	Fleet FleetStats
	// NoFile is RLIMIT_NOFILE (soft) of the benchmark and its children.
	NoFile uint64
}

// PollStats is one path and side of the throughput runs.
type PollStats struct {
	Path, Side string
	Requests   int
	Elapsed    time.Duration
	P50, P99   time.Duration
	// CPU is the user + system time the server process spent, as read
	// from /proc (10 ms ticks).
	CPU    time.Duration
	Errors map[string]int
}

// PerSecond is requests per second.
func (p PollStats) PerSecond() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Requests) / p.Elapsed.Seconds()
}

// FleetStats is part 2: the simulated devices.
type FleetStats struct {
	Devices      int // asked for
	Registered   int
	RegisterTime time.Duration
	// RegisterP50 and RegisterP99 are of one registration plus the first
	// GET of the target.
	RegisterP50, RegisterP99 time.Duration
	// PollsOpen is how many devices sent their first long poll, after
	// PollsOpenTime.
	PollsOpen     int
	PollsOpenTime time.Duration
	PushAt        time.Duration // since the devices started
	PushTook      time.Duration
	// Updated is how many devices' long polls answered 200 with the new
	// target; the fan-out latencies run from the start of the push.
	Updated                         int
	FanoutP50, FanoutP99, FanoutMax time.Duration
	Reports                         int
	ReportP50, ReportP99            time.Duration
	Elapsed                         time.Duration
	// LoadCPU is the CPU time of the benchmark process (the devices)
	// during the run.
	LoadCPU time.Duration
	Errors  map[string]int
	Server  []ProcSample
}

// ProcSample is the server process read from /proc at one moment.
type ProcSample struct {
	When     string
	RSS, HWM int64 // kB
	FDs      int
	CPU      time.Duration // user + system since it started
}

// Server runs the server benchmark and writes a report to out.
func Server(ctx context.Context, opts ServerOptions, out io.Writer) (ServerResult, error) {
	var res ServerResult
	if err := opts.defaults(); err != nil {
		return res, err
	}
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }

	nofile, note := raiseNoFile()
	res.NoFile = nofile
	p("reeve bench server: binary %s\n", opts.Binary)
	p("machine: %d CPUs, %s/%s, %s; the servers and the load generator share it\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	p("file descriptors (RLIMIT_NOFILE, inherited by the servers): %s\n", note)
	// A device holds two connections while a report runs beside its
	// long poll, and the idle one stays for the next report.
	if need := 2*uint64(opts.Devices) + 512; !opts.SkipDevices && nofile < need {
		p("warning: %d simulated devices can take up to %d file descriptors (two connections each) in the benchmark and as many in the server; the limit is %d: \"too many open files\" is possible\n", opts.Devices, need, nofile)
	}

	dir := opts.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "reeve-bench-server-*")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}

	if !opts.SkipPoll {
		p("\n")
		poll, err := pollThroughput(ctx, opts, dir, out)
		res.Poll = poll
		if err != nil {
			return res, err
		}
	}
	if !opts.SkipDevices {
		p("\n")
		fs, err := simulateFleet(ctx, opts, dir, nofile, out)
		res.Fleet = fs
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// raiseNoFile raises RLIMIT_NOFILE to its hard limit. Calling Setrlimit
// also makes children inherit the raised limit: the Go runtime raises the
// soft limit itself at start, but gives children the original one unless
// the program set it.
func raiseNoFile() (uint64, string) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Sprintf("cannot read the limit: %v", err)
	}
	old := lim.Cur
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return old, fmt.Sprintf("%d, NOT raised to the hard limit %d: %v", old, lim.Max, err)
	}
	return lim.Cur, fmt.Sprintf("%d (the hard limit; it was %d in this process)", lim.Cur, old)
}

// ---- child processes ----

type child struct {
	name    string
	cmd     *exec.Cmd
	exited  chan error
	logPath string
}

func startChild(name, bin string, args, env []string, logPath string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	c := &child{name: name, cmd: cmd, exited: make(chan error, 1), logPath: logPath}
	go func() { c.exited <- cmd.Wait() }() // owned by c: stop waits for it
	return c, nil
}

func (c *child) pid() string { return strconv.Itoa(c.cmd.Process.Pid) }

// stop ends the child with SIGTERM (SIGKILL after 15 s) and waits for it.
func (c *child) stop() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// logTail returns the end of the child's output, for error messages.
func (c *child) logTail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return fmt.Sprintf("%s output (%s):\n%s", c.name, c.logPath, b)
}

// waitHTTP waits until GET url answers 200.
func waitHTTP(ctx context.Context, c *child, url, token string) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no 200 from %s within 30 s\n%s", c.name, url, c.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-c.exited:
			c.exited <- err
			return fmt.Errorf("%s exited before answering: %v\n%s", c.name, err, c.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// serverProc is a `reeve server` child with an operator client.
type serverProc struct {
	*child
	url string
	op  *serverapi.Client
}

func startServer(ctx context.Context, bin, dir string) (*serverProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	token := randomHex(32)
	c, err := startChild("reeve server", bin,
		[]string{"server", "--data", dir, "--listen", addr, "--log-level", "warn"},
		[]string{"REEVE_ADMIN_TOKEN=" + token}, filepath.Join(dir, "server.log"))
	if err != nil {
		return nil, err
	}
	url := "http://" + addr
	if err := waitHTTP(ctx, c, url+"/api/v1/whoami", token); err != nil {
		c.stop()
		return nil, err
	}
	return &serverProc{child: c, url: url, op: serverapi.NewClient(url, token, nil)}, nil
}

// sample reads the server's memory, open files and CPU time.
func (s *serverProc) sample(when string) (ProcSample, error) {
	ps := ProcSample{When: when}
	var err error
	if ps.RSS, ps.HWM, err = procMemory(s.pid()); err != nil {
		return ps, err
	}
	if fds, err := os.ReadDir(filepath.Join("/proc", s.pid(), "fd")); err == nil {
		ps.FDs = len(fds)
	}
	ps.CPU = procCPU(s.pid())
	return ps, nil
}

// procCPU returns the user + system time of a process from
// /proc/<pid>/stat (in clock ticks of 1/100 s, as on every Linux build
// Go runs on by default); 0 when it cannot be read.
func procCPU(pid string) time.Duration {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; the fields after it do not.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

const (
	benchDeviceType = "raspberrypi4-64"
	benchCompose    = "services:\n  web:\n    image: registry.example.com/web:%d\n    environment:\n      GREETING: hello\n"
)

// setupFleet creates a fleet with a release and returns a provisioning key.
func (s *serverProc) setupFleet(ctx context.Context, name string) (string, error) {
	if _, err := s.op.CreateFleet(ctx, serverapi.CreateFleetRequest{Name: name, DeviceType: benchDeviceType}); err != nil {
		return "", fmt.Errorf("create fleet %s: %w", name, err)
	}
	k, err := s.op.CreateKey(ctx, name, serverapi.CreateKeyRequest{Name: "bench"})
	if err != nil {
		return "", fmt.Errorf("create a provisioning key: %w", err)
	}
	if _, _, err := s.op.Push(ctx, name, fmt.Appendf(nil, benchCompose, 1)); err != nil {
		return "", fmt.Errorf("push the first release: %w", err)
	}
	return k.Key, nil
}

// ---- device requests ----

// newTransport is the one client setting of every side: keep-alive, conns
// idle connections per host, no compression, no proxy.
func newTransport(conns int) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     2 * time.Minute,
		DisableCompression:  true,
	}
}

type device struct {
	uuid, key string
	auth      string // "Bearer <key>"
	stateURL  string // GET /device/v3/{uuid}/state
	reportURL string // PATCH /device/v3/state
	etag      string
	body      []byte // the target as first read; kept only for part 1
}

// errCounts counts errors by kind; safe for concurrent use.
type errCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (e *errCounts) add(kind string) {
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int{}
	}
	e.m[kind]++
	e.mu.Unlock()
}

func (e *errCounts) snapshot() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.m)
}

// errKind names what went wrong in a few words, so that errors can be
// counted by kind.
func errKind(op string, err error) string {
	var re *reeve.Error
	var ne net.Error
	k := ""
	switch {
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		k = "too many open files"
	case errors.Is(err, syscall.ECONNREFUSED):
		k = "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		k = "connection reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		k = "no free local port"
	case errors.Is(err, syscall.EPIPE):
		k = "broken pipe"
	case errors.Is(err, context.DeadlineExceeded):
		k = "timeout"
	case errors.As(err, &ne) && ne.Timeout():
		k = "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		k = "connection closed by the server (EOF)"
	case errors.As(err, &re):
		k = "error " + re.Code
	default:
		k = err.Error()
		if len(k) > 80 {
			k = k[:80] + "…"
		}
	}
	return op + ": " + k
}

// statusKind names an unexpected answer by its status and error code.
func statusKind(op string, resp *http.Response) string {
	var eb struct {
		Error struct{ Code string } `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	_ = json.Unmarshal(b, &eb)
	k := fmt.Sprintf("%s: HTTP %d", op, resp.StatusCode)
	if eb.Error.Code != "" {
		k += " " + eb.Error.Code
	}
	return k
}

// getState does GET state and reads the whole answer.
func getState(ctx context.Context, hc *http.Client, d *device, etag, query string) (status int, newETag string, body []byte, kind string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.stateURL+query, nil)
	if err != nil {
		return 0, "", nil, errKind("state", err)
	}
	req.Header["Authorization"] = []string{d.auth}
	if etag != "" {
		req.Header["If-None-Match"] = []string{etag}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", nil, errKind("state", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotModified {
		return resp.StatusCode, "", nil, statusKind("state", resp)
	}
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", nil, errKind("state", err)
	}
	return resp.StatusCode, resp.Header.Get("ETag"), body, ""
}

// send does a request with a JSON body and wants want.
func send(ctx context.Context, hc *http.Client, method, url, auth string, body []byte, want int, op string) string {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return errKind(op, err)
	}
	req.Header["Authorization"] = []string{auth}
	req.Header["Content-Type"] = []string{"application/json"}
	resp, err := hc.Do(req)
	if err != nil {
		return errKind(op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		return statusKind(op, resp)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return errKind(op, err)
	}
	return ""
}

type registered struct {
	devices []*device
	took    time.Duration
	lats    []time.Duration
	errs    map[string]int
}

// register registers n devices, workers at a time, each followed by a
// first GET of its target (its ETag, and its body when keepBody).
func register(ctx context.Context, hc *http.Client, base, provKey string, n, workers int, keepBody bool) registered {
	devs := make([]*device, n)
	lats := make([]time.Duration, n)
	var errs errCounts
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				uuid, key := randomHex(16), randomHex(32)
				body, _ := json.Marshal(serverapi.RegisterRequest{UUID: uuid, DeviceType: benchDeviceType, APIKey: key})
				t0 := time.Now()
				if k := send(ctx, hc, http.MethodPost, base+"/device/register", "Bearer "+provKey, body, http.StatusCreated, "register"); k != "" {
					errs.add(k)
					continue
				}
				d := &device{uuid: uuid, key: key, auth: "Bearer " + key, stateURL: base + "/device/v3/" + uuid + "/state", reportURL: base + "/device/v3/state"}
				status, etag, tb, k := getState(ctx, hc, d, "", "")
				switch {
				case k != "":
					errs.add("first " + k)
					continue
				case status != http.StatusOK || etag == "":
					errs.add(fmt.Sprintf("first state: HTTP %d, ETag %q", status, etag))
					continue
				}
				lats[i] = time.Since(t0)
				d.etag = etag
				if keepBody {
					d.body = tb
				}
				devs[i] = d
			}
		})
	}
	wg.Wait()
	r := registered{took: time.Since(start), errs: errs.snapshot()}
	for i, d := range devs {
		if d != nil {
			r.devices = append(r.devices, d)
			r.lats = append(r.lats, lats[i])
		}
	}
	return r
}

// ---- part 1: poll throughput ----

type loadRun struct {
	requests int
	elapsed  time.Duration
	lat      []time.Duration
	errs     map[string]int
}

// load runs conc clients for d, each reading the state of the devices in
// turn; conditional sends the device's ETag (the 304 path).
func load(ctx context.Context, base string, devs []*device, conc int, d time.Duration, conditional bool) loadRun {
	tr := newTransport(conc + 8)
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	want := http.StatusOK
	if conditional {
		want = http.StatusNotModified
	}
	// Each side gets its own URLs, built before the clock starts.
	urls := make([]string, len(devs))
	for i, dv := range devs {
		urls[i] = base + "/device/v3/" + dv.uuid + "/state"
	}
	lats := make([][]time.Duration, conc)
	var errs errCounts
	var stop atomic.Bool
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	for w := range conc {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<14)
			for i := w; !stop.Load() && ctx.Err() == nil; i += conc {
				dv := devs[i%len(devs)]
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, urls[i%len(devs)], nil)
				if err != nil {
					errs.add(errKind("state", err))
					continue
				}
				req.Header["Authorization"] = []string{dv.auth}
				if conditional {
					req.Header["If-None-Match"] = []string{dv.etag}
				}
				t0 := time.Now()
				resp, err := hc.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						errs.add(errKind("state", err))
					}
					continue
				}
				if resp.StatusCode != want {
					errs.add(statusKind("state", resp))
					resp.Body.Close()
					continue
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				l := time.Since(t0)
				switch {
				case err != nil:
					errs.add(errKind("state", err))
				case !conditional && (int(n) != len(dv.body) || resp.Header.Get("ETag") != dv.etag):
					errs.add("state: a body or ETag other than the device's")
				default:
					lat = append(lat, l)
				}
			}
			lats[w] = lat
		})
	}
	wg.Wait()
	r := loadRun{elapsed: time.Since(start), errs: errs.snapshot()}
	for _, l := range lats {
		r.lat = append(r.lat, l...)
	}
	r.requests = len(r.lat)
	return r
}

// peerTarget is one device's target as the peer serves it.
type peerTarget struct {
	UUID string `json:"uuid"`
	ETag string `json:"etag"`
	Body []byte `json:"body"`
}

// ServePeer is `reeve bench server peer`: a bare net/http server that
// answers GET /device/v3/{uuid}/state with the bytes and ETag in the file
// targets (JSON, [{uuid, etag, body}]), with the headers reeve sends and
// 304 when If-None-Match is the ETag. No authentication, no database: it is
// what serving the same bytes over HTTP costs at least. It serves until ctx
// ends.
func ServePeer(ctx context.Context, targets, listen string) error {
	b, err := os.ReadFile(targets)
	if err != nil {
		return fmt.Errorf("read the peer's targets: %w", err)
	}
	var ts []peerTarget
	if err := json.Unmarshal(b, &ts); err != nil {
		return fmt.Errorf("read the peer's targets %s: %w", targets, err)
	}
	byUUID := make(map[string]peerTarget, len(ts))
	for _, t := range ts {
		byUUID[t.UUID] = t
	}
	longPoll := strconv.Itoa(serverapi.MaxWait)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /device/v3/{uuid}/state", func(w http.ResponseWriter, r *http.Request) {
		t, ok := byUUID[r.PathValue("uuid")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set(serverapi.LongPollHeader, longPoll)
		h.Set("ETag", t.ETag)
		h.Set("Cache-Control", "no-cache")
		if r.Header.Get("If-None-Match") == t.ETag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		h.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(t.Body)
	})
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	// The same server settings as `reeve server`.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // owned here: Shutdown ends it, and it is waited for
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-served
	return err
}

func pollThroughput(ctx context.Context, opts ServerOptions, dir string, out io.Writer) ([]PollStats, error) {
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }
	sdir, err := os.MkdirTemp(dir, "poll-*")
	if err != nil {
		return nil, err
	}
	s, err := startServer(ctx, opts.Binary, sdir)
	if err != nil {
		return nil, err
	}
	defer s.stop()
	provKey, err := s.setupFleet(ctx, "bench-poll")
	if err != nil {
		return nil, err
	}
	tr := newTransport(opts.RegisterConcurrency)
	defer tr.CloseIdleConnections()
	reg := register(ctx, &http.Client{Transport: tr, Timeout: time.Minute}, s.url, provKey, opts.PollDevices, opts.RegisterConcurrency, true)
	if len(reg.errs) > 0 || len(reg.devices) != opts.PollDevices {
		return nil, fmt.Errorf("register %d devices: %d registered, errors %v\n%s", opts.PollDevices, len(reg.devices), reg.errs, s.logTail())
	}
	devs := reg.devices

	// The peer serves exactly the bytes and ETags reeve served.
	ts := make([]peerTarget, len(devs))
	for i, d := range devs {
		ts[i] = peerTarget{UUID: d.uuid, ETag: d.etag, Body: d.body}
	}
	tsPath := filepath.Join(sdir, "peer-targets.json")
	b, err := json.Marshal(ts)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(tsPath, b, 0o600); err != nil {
		return nil, err
	}
	paddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	peer, err := startChild("peer", opts.Binary, []string{"bench", "server", "peer", "--targets", tsPath, "--listen", paddr}, nil, filepath.Join(sdir, "peer.log"))
	if err != nil {
		return nil, err
	}
	defer peer.stop()
	purl := "http://" + paddr
	if err := waitHTTP(ctx, peer, purl+"/device/v3/"+devs[0].uuid+"/state", ""); err != nil {
		return nil, err
	}
	if err := samePeer(ctx, s.url, purl, devs[0]); err != nil {
		return nil, err
	}

	p("Poll throughput: GET /device/v3/{uuid}/state of %d devices, %d concurrent keep-alive clients, %d round(s) of %s per path and side, the sides alternating\n",
		len(devs), opts.Concurrency, opts.Rounds, opts.Duration)
	p("reeve: `reeve server` (pid %s): device key check, target from its poll cache (built from SQLite when the fleet changes); peer: bare net/http handler, `reeve bench server peer` (pid %s), the same bytes from memory\n", s.pid(), peer.pid())
	p("target: %d bytes, ETag %s (the peer answers the same bytes, ETag and headers: checked)\n", len(devs[0].body), devs[0].etag)
	p("CPU/req: CPU time (user+system) of the server process per request; load CPU/req: the same for this process, the load generator\n\n")
	p("%-5s %-6s %-6s %10s %10s %10s %10s %13s %8s\n", "path", "round", "side", "req/s", "p50", "p99", "CPU/req", "load CPU/req", "errors")

	type key struct{ path, side string }
	acc := map[key]*PollStats{}
	lats := map[key][]time.Duration{}
	procs := map[string]*child{"reeve": s.child, "peer": peer}
	bases := map[string]string{"reeve": s.url, "peer": purl}
	for round := 1; round <= opts.Rounds; round++ {
		for _, path := range []string{"200", "304"} {
			sides := []string{"reeve", "peer"}
			if round%2 == 0 {
				sides = []string{"peer", "reeve"}
			}
			for _, side := range sides {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				cpu0, self0 := procCPU(procs[side].pid()), procCPU("self")
				r := load(ctx, bases[side], devs, opts.Concurrency, opts.Duration, path == "304")
				cpu, self := procCPU(procs[side].pid())-cpu0, procCPU("self")-self0
				p("%-5s %-6d %-6s %10.0f %10s %10s %10s %13s %8d\n", path, round, side,
					float64(r.requests)/r.elapsed.Seconds(), ms(percentile(r.lat, 50)), ms(percentile(r.lat, 99)),
					perReq(cpu, r.requests), perReq(self, r.requests), sum(r.errs))
				k := key{path, side}
				a := acc[k]
				if a == nil {
					a = &PollStats{Path: path, Side: side, Errors: map[string]int{}}
					acc[k] = a
				}
				a.Requests += r.requests
				a.Elapsed += r.elapsed
				a.CPU += cpu
				lats[k] = append(lats[k], r.lat...)
				for e, v := range r.errs {
					a.Errors[e] += v
				}
			}
		}
	}

	var stats []PollStats
	p("\n%-20s %11s %11s %6s %20s %20s %9s %9s %6s\n", "path", "reeve req/s", "peer req/s", "ratio", "reeve p50 / p99", "peer p50 / p99", "reeve CPU", "peer CPU", "ratio")
	errs := 0
	for _, path := range []string{"200", "304"} {
		for _, side := range []string{"reeve", "peer"} {
			k := key{path, side}
			a := acc[k]
			a.P50, a.P99 = percentile(lats[k], 50), percentile(lats[k], 99)
			stats = append(stats, *a)
			errs += sum(a.Errors)
		}
		rs, ps := stats[len(stats)-2], stats[len(stats)-1]
		label := "200 (full target)"
		if path == "304" {
			label = "304 (If-None-Match)"
		}
		p("%-20s %11.0f %11.0f %6.2f %20s %20s %9s %9s %6.1f\n", label, rs.PerSecond(), ps.PerSecond(), ratio(rs.PerSecond(), ps.PerSecond()),
			ms(rs.P50)+" / "+ms(rs.P99), ms(ps.P50)+" / "+ms(ps.P99), perReq(rs.CPU, rs.Requests), perReq(ps.CPU, ps.Requests),
			ratio(float64(rs.CPU)/float64(max(rs.Requests, 1)), float64(ps.CPU)/float64(max(ps.Requests, 1))))
	}
	p("req/s ratio is reeve/peer (below 1: reeve serves fewer); CPU is server CPU per request, its ratio reeve/peer (above 1: reeve spends more)\n")
	if errs == 0 {
		p("errors: none\n")
	}
	for _, st := range stats {
		if len(st.Errors) > 0 {
			printErrors(out, fmt.Sprintf("errors, %s path, %s", st.Path, st.Side), st.Errors)
		}
	}
	if ps, err := s.sample("end"); err == nil {
		p("reeve server after the throughput runs: VmRSS %s, VmHWM %s\n", mib(ps.RSS), mib(ps.HWM))
	}
	return stats, nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// perReq formats CPU time per request in microseconds.
func perReq(cpu time.Duration, n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f µs", float64(cpu)/float64(n)/float64(time.Microsecond))
}

// samePeer checks that the peer answers as reeve does: the same body and
// ETag, and 304 to the ETag.
func samePeer(ctx context.Context, reeveURL, peerURL string, d *device) error {
	hc := &http.Client{Timeout: 10 * time.Second}
	var bodies [2][]byte
	for i, base := range []string{reeveURL, peerURL} {
		dd := *d
		dd.stateURL = base + "/device/v3/" + d.uuid + "/state"
		status, etag, body, k := getState(ctx, hc, &dd, "", "")
		if k != "" || status != http.StatusOK || etag != d.etag {
			return fmt.Errorf("check the peer against reeve: %s answered %d, ETag %s, %s", base, status, etag, k)
		}
		bodies[i] = body
		status, _, _, k = getState(ctx, hc, &dd, d.etag, "")
		if k != "" || status != http.StatusNotModified {
			return fmt.Errorf("check the peer against reeve: %s answered %d to If-None-Match, %s", base, status, k)
		}
	}
	if !bytes.Equal(bodies[0], bodies[1]) || !bytes.Equal(bodies[0], d.body) {
		return errors.New("check the peer against reeve: the bodies differ")
	}
	return nil
}

// ---- part 2: a fleet of simulated devices ----

func simulateFleet(ctx context.Context, opts ServerOptions, dir string, nofile uint64, out io.Writer) (FleetStats, error) {
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }
	fs := FleetStats{Devices: opts.Devices}
	sdir, err := os.MkdirTemp(dir, "fleet-*")
	if err != nil {
		return fs, err
	}
	s, err := startServer(ctx, opts.Binary, sdir)
	if err != nil {
		return fs, err
	}
	defer s.stop()
	sample := func(when string) {
		if ps, err := s.sample(when); err == nil {
			fs.Server = append(fs.Server, ps)
		}
	}
	sample("started, empty")
	provKey, err := s.setupFleet(ctx, "bench-fleet")
	if err != nil {
		return fs, err
	}
	p("Fleet of %d simulated devices: one long poll each (?wait=%d with its ETag), a report (PATCH /device/v3/state) every %s, for %s; a release is pushed halfway\n",
		opts.Devices, int(opts.Wait/time.Second), opts.ReportEvery, opts.DevicesDuration)
	p("reeve: `reeve server` (pid %s); one http.Client, keep-alive, up to %d connections\n", s.pid(), 2*opts.Devices+64)

	tr := newTransport(2*opts.Devices + 64)
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}

	regCtx, cancelReg := context.WithTimeout(ctx, 30*time.Minute)
	reg := register(regCtx, hc, s.url, provKey, opts.Devices, opts.RegisterConcurrency, false)
	cancelReg()
	fs.Registered, fs.RegisterTime = len(reg.devices), reg.took
	fs.RegisterP50, fs.RegisterP99 = percentile(reg.lats, 50), percentile(reg.lats, 99)
	p("registered %d of %d devices in %s (%.0f/s, %d at a time); one registration + first GET state: p50 %s, p99 %s\n",
		fs.Registered, opts.Devices, reg.took.Round(10*time.Millisecond), float64(fs.Registered)/reg.took.Seconds(),
		opts.RegisterConcurrency, msOrS(fs.RegisterP50), msOrS(fs.RegisterP99))
	printErrors(out, "registration errors", reg.errs)
	if err := ctx.Err(); err != nil {
		return fs, err
	}
	if len(reg.devices) == 0 {
		return fs, fmt.Errorf("no device could register: %v\n%s", reg.errs, s.logTail())
	}
	sample(fmt.Sprintf("%d devices registered", fs.Registered))

	devs := reg.devices
	n := len(devs)
	sim := &simulation{
		hc: hc, devs: devs, wait: opts.Wait, every: opts.ReportEvery,
		fanout: make([]time.Duration, n), reports: make([][]time.Duration, n),
	}
	simCtx, stopSim := context.WithCancel(ctx)
	defer stopSim()
	var wg sync.WaitGroup
	start := time.Now()
	self0 := procCPU("self")
	for i := range devs {
		wg.Go(func() { sim.poll(simCtx, i) })
		wg.Go(func() { sim.report(simCtx, i, start) })
	}
	finish := func() {
		stopSim()
		wg.Wait()
	}

	// Every device's first long poll is on the wire, or a minute passed.
	openDeadline := start.Add(max(opts.DevicesDuration/2, time.Minute))
	for int(sim.open.Load()) < n && time.Now().Before(openDeadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	fs.PollsOpen, fs.PollsOpenTime = int(sim.open.Load()), time.Since(start)
	p("long polls sent: %d of %d after %s\n", fs.PollsOpen, n, fs.PollsOpenTime.Round(10*time.Millisecond))

	// The push, halfway (or once the polls are open, when that took longer).
	select {
	case <-ctx.Done():
		finish()
		return fs, ctx.Err()
	case <-time.After(time.Until(start.Add(opts.DevicesDuration / 2))):
	}
	sample(fmt.Sprintf("%d long polls open, before the push", fs.PollsOpen))
	pushStart := time.Now()
	sim.pushStart.Store(pushStart.UnixNano())
	_, created, err := s.op.Push(ctx, "bench-fleet", fmt.Appendf(nil, benchCompose, 2))
	fs.PushTook, fs.PushAt = time.Since(pushStart), pushStart.Sub(start)
	if err != nil || !created {
		finish()
		return fs, fmt.Errorf("push the second release (created %v): %w\n%s", created, err, s.logTail())
	}

	// Run to the end; then longer, up to a long poll's wait, while some
	// devices have not seen the update yet.
	end := start.Add(opts.DevicesDuration)
	late := pushStart.Add(opts.Wait + 10*time.Second)
	allSeen := false
	for ctx.Err() == nil {
		if !allSeen && int(sim.updated.Load()) == n {
			allSeen = true
			sample("every long poll answered the push")
		}
		now := time.Now()
		if !now.Before(end) && (int(sim.updated.Load()) == n || !now.Before(late)) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	fs.Elapsed = time.Since(start)
	sample("end of the run")
	fs.LoadCPU = procCPU("self") - self0
	finish()
	if err := ctx.Err(); err != nil {
		return fs, err
	}

	var fan []time.Duration
	for _, d := range sim.fanout {
		if d > 0 {
			fan = append(fan, d)
		}
	}
	var reps []time.Duration
	for _, r := range sim.reports {
		reps = append(reps, r...)
	}
	fs.Updated = len(fan)
	fs.FanoutP50, fs.FanoutP99 = percentile(fan, 50), percentile(fan, 99)
	if len(fan) > 0 {
		fs.FanoutMax = slices.Max(fan)
	}
	fs.Reports = len(reps)
	fs.ReportP50, fs.ReportP99 = percentile(reps, 50), percentile(reps, 99)
	fs.Errors = sim.errs.snapshot()

	if fs.Elapsed > opts.DevicesDuration+time.Second {
		p("the run went on for %s, waiting for the last long polls to answer\n", fs.Elapsed.Round(100*time.Millisecond))
	}
	p("push at %s: the push took %s; the new target reached %d of %d long polls (200): from the start of the push p50 %s, p99 %s, max %s\n",
		fs.PushAt.Round(10*time.Millisecond), msOrS(fs.PushTook), fs.Updated, n, msOrS(fs.FanoutP50), msOrS(fs.FanoutP99), msOrS(fs.FanoutMax))
	p("reports: %d answered 200 (%.0f/s; %d devices every %s offer %.0f/s), latency p50 %s, p99 %s\n", fs.Reports, float64(fs.Reports)/fs.Elapsed.Seconds(),
		n, opts.ReportEvery, float64(n)/opts.ReportEvery.Seconds(), msOrS(fs.ReportP50), msOrS(fs.ReportP99))
	printErrors(out, "errors during the run", fs.Errors)
	p("\n%-44s %10s %10s %8s %10s\n", "reeve server process", "VmRSS", "VmHWM", "fds", "CPU")
	for _, ps := range fs.Server {
		p("%-44s %10s %10s %8d %8.1f s\n", ps.When, mib(ps.RSS), mib(ps.HWM), ps.FDs, ps.CPU.Seconds())
	}
	p("(fds: open file descriptors of the server, of a limit of %d; CPU: its user+system time so far; the simulated devices took %.1f s of CPU during the run)\n", nofile, fs.LoadCPU.Seconds())
	return fs, nil
}

// simulation is part 2's devices. Each device i has two goroutines, owned
// by simulateFleet: poll (its long poll) and report.
type simulation struct {
	hc    *http.Client
	devs  []*device
	wait  time.Duration
	every time.Duration

	open      atomic.Int64 // devices whose first long poll was sent
	pushStart atomic.Int64 // unix ns; 0 before the push
	updated   atomic.Int64 // devices that got the pushed target

	fanout  []time.Duration   // [i]: push start → device i's 200; written by poll i
	reports [][]time.Duration // [i]: written by report i
	errs    errCounts
}

func (s *simulation) poll(ctx context.Context, i int) {
	d := s.devs[i]
	etag := d.etag
	query := "?wait=" + strconv.Itoa(int(s.wait/time.Second))
	var once sync.Once
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(func() { s.open.Add(1) }) }}
	tctx := httptrace.WithClientTrace(ctx, trace)
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(tctx, s.wait+30*time.Second)
		status, newETag, _, k := getState(rctx, s.hc, d, etag, query)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if k != "" {
			s.errs.add("long poll: " + strings.TrimPrefix(k, "state: "))
			select { // as an agent would: back off, then poll again
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if status == http.StatusNotModified {
			continue
		}
		ps := s.pushStart.Load()
		switch {
		case newETag == etag:
			s.errs.add("long poll: 200 with the ETag it was sent")
		case ps == 0:
			s.errs.add("long poll: 200 with a new target before the push")
		case s.fanout[i] == 0:
			s.fanout[i] = time.Since(time.Unix(0, ps))
			s.updated.Add(1)
		default:
			s.errs.add("long poll: a second new target after the push")
		}
		etag = newETag
	}
}

func (s *simulation) report(ctx context.Context, i int, start time.Time) {
	d := s.devs[i]
	next := start.Add(rand.N(s.every)) // spread over the interval
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		body := fmt.Appendf(nil, `{%q:{"status":"Idle","update_status":"done","cpu_usage":%d,"cpu_temp":%d,"memory_usage":%d,"memory_total":3790}}`,
			d.uuid, k%100, 40+k%20, 300+k%50)
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		t0 := time.Now()
		kind := send(rctx, s.hc, http.MethodPatch, d.reportURL, d.auth, body, http.StatusOK, "report")
		l := time.Since(t0)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if kind != "" {
			s.errs.add(kind)
		} else {
			s.reports[i] = append(s.reports[i], l)
		}
		next = next.Add(s.every)
		if now := time.Now(); next.Before(now) {
			next = now // late: report now, do not catch up
		}
	}
}

// ---- helpers ----

// percentile is the nearest-rank q-th percentile; 0 for no values.
func percentile(ds []time.Duration, q int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (len(s)*q + 99) / 100 // ceil(q/100 n)
	return s[max(rank, 1)-1]
}

// msOrS formats a duration in ms below a second, else in seconds.
func msOrS(d time.Duration) string {
	if d < time.Second {
		return ms(d)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func printErrors(out io.Writer, title string, m map[string]int) {
	if len(m) == 0 {
		fmt.Fprintf(out, "%s: none\n", title)
		return
	}
	fmt.Fprintf(out, "%s:\n", title)
	kinds := slices.SortedFunc(maps.Keys(m), func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), strings.Compare(a, b)) })
	for _, k := range kinds {
		fmt.Fprintf(out, "  %8d  %s\n", m[k], k)
	}
}
