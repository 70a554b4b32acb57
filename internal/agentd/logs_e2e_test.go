package agentd_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/fleetlink"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/logship"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd"
	"reeve.dev/reeve/internal/testimage"
)

// logRig is a fleet server that can be stopped and started again on the
// same address and data, and a device provisioned to it, on the real
// engine: what a device that loses its server sees.
type logRig struct {
	t       *testing.T
	ctx     context.Context
	log     *slog.Logger
	reg     *testimage.Registry
	op      *serverapi.Client
	ns      string
	conf    string // config.json
	dataDir string // the agent's

	srvDir, srvAddr string
	srv             *serverd.Main
	srvStop         context.CancelFunc
	srvDone         chan error

	agent     *agentd.Main // in-process agent, when started so
	agentStop context.CancelFunc
	agentDone chan error
}

const logRigToken = "logs-e2e-admin-token-0123456789ab"

func newLogRig(t *testing.T) *logRig {
	t.Helper()
	testimage.RequireDocker(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r := &logRig{t: t, ctx: ctx, reg: testimage.StartRegistry(t), srvDir: t.TempDir(), srvAddr: freeAddr(t), dataDir: t.TempDir(),
		log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		ns:  "logs-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))}
	r.startServer()
	r.op = serverapi.NewClient("http://"+r.srvAddr, logRigToken, nil)
	if _, err := r.op.CreateFleet(ctx, serverapi.CreateFleetRequest{Name: "logs"}); err != nil {
		t.Fatal(err)
	}
	key, err := r.op.CreateKey(ctx, "logs", serverapi.CreateKeyRequest{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	r.conf = filepath.Join(t.TempDir(), "config.json")
	conf, _ := json.Marshal(map[string]string{"apiEndpoint": "http://" + r.srvAddr, "provisioningKey": key.Key})
	if err := os.WriteFile(r.conf, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.stopAgent()
		r.stopServer()
		rt, err := docker.New(context.Background(), docker.Options{Namespace: r.ns})
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer rt.Close()
		if err := rt.RemoveAll(context.Background(), func(ref string) bool { return strings.HasPrefix(ref, r.reg.Host()+"/") }); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return r
}

func (r *logRig) startServer() {
	r.t.Helper()
	ctx, cancel := context.WithCancel(r.ctx)
	m, err := serverd.New(ctx, serverd.Config{DataDir: r.srvDir, Listen: r.srvAddr, AdminToken: logRigToken, Logger: r.log.With("role", "server")})
	if err != nil {
		cancel()
		r.t.Fatal(err)
	}
	r.srv, r.srvStop, r.srvDone = m, cancel, make(chan error, 1)
	go func() { r.srvDone <- m.Run(ctx) }()
}

func (r *logRig) stopServer() {
	r.t.Helper()
	if r.srv == nil {
		return
	}
	stopRole(r.t, "fleet server", r.srvStop, r.srvDone)
	r.srv = nil
}

// stopRole stops a role run in this process and checks how it ended.
func stopRole(t *testing.T, what string, stop context.CancelFunc, done <-chan error) {
	t.Helper()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s stopped with %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("%s did not stop within 30 s", what)
	}
}

// startAgent runs the agent in this process.
func (r *logRig) startAgent() {
	r.t.Helper()
	ctx, cancel := context.WithCancel(r.ctx)
	m, err := agentd.New(ctx, agentd.Config{
		DataDir: r.dataDir, Listen: "127.0.0.1:0", ConfigPath: r.conf, Logger: r.log.With("role", "agent"), Namespace: r.ns,
		Agent: agent.Config{NoopDelay: 100 * time.Millisecond, ReconcileInterval: time.Second,
			BackoffMin: 100 * time.Millisecond, BackoffMax: 2 * time.Second},
		Link: fleetlink.LinkConfig{ReportInterval: 200 * time.Millisecond, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second},
		Logs: agentd.LogsConfig{Shipper: logship.ShipperConfig{BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}},
	})
	if err != nil {
		cancel()
		r.t.Fatal(err)
	}
	r.agent, r.agentStop, r.agentDone = m, cancel, make(chan error, 1)
	go func() { r.agentDone <- m.Run(ctx) }()
}

func (r *logRig) stopAgent() {
	if r.agent == nil {
		return
	}
	stopRole(r.t, "agent", r.agentStop, r.agentDone)
	r.agent = nil
}

func (r *logRig) uuid() string {
	r.t.Helper()
	var c struct {
		UUID string `json:"uuid"`
	}
	b, err := os.ReadFile(r.conf)
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil || c.UUID == "" {
		r.t.Fatalf("the device's uuid in config.json: %q %v", c.UUID, err)
	}
	return c.UUID
}

func (r *logRig) push(yml string) {
	r.t.Helper()
	if _, _, err := r.op.Push(r.ctx, "logs", []byte(strings.ReplaceAll(yml, "{{IMAGE}}", r.image()))); err != nil {
		r.t.Fatal(err)
	}
}

func (r *logRig) image() string {
	return r.reg.Push(r.t, "reeve/logs", "v1", map[string]string{"/version": "v1"})
}

// serverLines is the device's log on the server: the lines of service
// (all when ""), oldest first.
func (r *logRig) serverLines(service string) []reeve.LogLine {
	r.t.Helper()
	q := serverapi.LogQuery{Limit: 10000}
	if service != "" {
		q.Services = []string{service}
	}
	var out []reeve.LogLine
	if err := r.op.Logs(r.ctx, r.uuid(), q, func(l reeve.LogLine) error { out = append(out, l); return nil }); err != nil {
		r.t.Fatalf("read the device's log on the server: %v", err)
	}
	return out
}

// localSeen reports whether the agent has collected line msg (padded
// with "x" or not).
func localSeen(ctx context.Context, c *localapi.Client, service, msg string) bool {
	found := false
	_ = c.Logs(ctx, localapi.LogQuery{Tail: 1000, Services: []string{service}}, func(l reeve.LogLine) error {
		found = found || strings.TrimRight(l.Message, "x ") == msg
		return nil
	})
	return found
}

// numbered checks that the output lines (not the agent's own) are
// "line 1" … "line n", each once, in order, and returns the lines before
// the first of them ("testprog … started").
func numbered(t *testing.T, what string, lines []reeve.LogLine, n int) {
	t.Helper()
	next := 1
	for _, l := range lines {
		num, ok := strings.CutPrefix(l.Message, "line ")
		if l.System || !ok {
			continue
		}
		if num != strconv.Itoa(next) {
			t.Fatalf("%s: line %q where %q was due (each line once, in order)", what, l.Message, "line "+strconv.Itoa(next))
		}
		next++
	}
	if next != n+1 {
		t.Fatalf("%s: lines 1 to %d arrived, want 1 to %d", what, next-1, n)
	}
}

// While the fleet server is down the agent keeps collecting into its
// queue; once it is back every line arrives, once, in order.
func TestLogsSurviveServerDowntime(t *testing.T) {
	r := newLogRig(t)
	r.startAgent()
	uuid := r.uuid()
	const n = 1500
	r.push(fmt.Sprintf(`services:
  counter:
    image: {{IMAGE}}
    environment:
      TESTPROG_LINES: "%d"
      TESTPROG_LINE_INTERVAL: 8ms
  mixed:
    image: {{IMAGE}}
    environment:
      TESTPROG_LINES: "400"
      TESTPROG_LINE_INTERVAL: 20ms
      TESTPROG_STDERR: "1"
`, n))
	waitUntil(t, "the first lines reach the server", func() bool {
		for _, l := range r.serverLines("counter") {
			if l.Message == "line 20" {
				return true
			}
		}
		return false
	})
	r.stopServer()
	local := localapi.NewClient(r.agent.Addr()).WithKey(r.agent.Agent().APIKey())
	waitUntil(t, "the service prints on while the server is down", func() bool {
		return localSeen(r.ctx, local, "counter", "line 600")
	})
	r.startServer()
	waitUntil(t, "every line reaches the server", func() bool {
		lines := r.serverLines("")
		var last, lastMixed bool
		for _, l := range lines {
			last = last || (l.Service == "counter" && l.Message == fmt.Sprintf("line %d", n))
			lastMixed = lastMixed || (l.Service == "mixed" && l.Message == "line 400")
		}
		return last && lastMixed
	})
	counter := r.serverLines("counter")
	numbered(t, "counter", counter, n)
	if counter[0].Device != uuid {
		t.Errorf("line of device %q, want %s", counter[0].Device, uuid)
	}
	// stdout and stderr each in order (the engine may interleave the two
	// streams either way), every line once.
	var out, errs []reeve.LogLine
	for _, l := range r.serverLines("mixed") {
		if l.System {
			continue
		}
		if l.Stderr {
			errs = append(errs, l)
		} else {
			out = append(out, l)
		}
	}
	checkStep := func(what string, lines []reeve.LogLine, first, count int) {
		t.Helper()
		var got []string
		for _, l := range lines {
			if strings.HasPrefix(l.Message, "line ") {
				got = append(got, l.Message)
			}
		}
		if len(got) != count {
			t.Fatalf("%s: %d lines, want %d", what, len(got), count)
		}
		for i, m := range got {
			if want := fmt.Sprintf("line %d", first+2*i); m != want {
				t.Fatalf("%s: %q where %q was due", what, m, want)
			}
		}
	}
	checkStep("mixed stdout", out, 1, 200)
	checkStep("mixed stderr", errs, 2, 200)
	// The agent's own lines are there too.
	sys := false
	for _, l := range counter {
		sys = sys || (l.System && strings.HasPrefix(l.Message, "Started service counter"))
	}
	if !sys {
		t.Error("no system line 'Started service counter' in the device's log")
	}
}

// With the server down and the queue over its cap (LOG_QUEUE_MAX_MB=1),
// the oldest lines go and the operator is told how many.
func TestLogQueueCapDropsOldestAndSaysSo(t *testing.T) {
	r := newLogRig(t)
	if _, err := r.op.SetVar(r.ctx, reeve.VarConfig, serverapi.SetVarRequest{Fleet: "logs", Name: "REEVE_SUPERVISOR_LOG_QUEUE_MAX_MB", Value: "1"}); err != nil {
		t.Fatal(err)
	}
	r.startAgent()
	const n = 6000 // of 500 bytes: about 3 MB, three times the cap
	r.push(fmt.Sprintf(`services:
  burst:
    image: {{IMAGE}}
    environment:
      TESTPROG_LINES: "%d"
      TESTPROG_LINE_INTERVAL: 1ms
      TESTPROG_LINE_BYTES: "500"
`, n))
	local := localapi.NewClient(r.agent.Addr()).WithKey(r.agent.Agent().APIKey())
	waitUntil(t, "the service prints", func() bool {
		printing := false
		_ = local.Logs(r.ctx, localapi.LogQuery{Tail: 10, Services: []string{"burst"}}, func(l reeve.LogLine) error {
			printing = printing || strings.HasPrefix(l.Message, "line ")
			return nil
		})
		return printing
	})
	r.stopServer()
	waitUntil(t, "every line is printed", func() bool { return localSeen(r.ctx, local, "burst", fmt.Sprintf("line %d", n)) })
	r.startServer()
	waitUntil(t, "the last line reaches the server", func() bool {
		ls := r.serverLines("")
		return len(ls) > 0 && ls[len(ls)-1].Message != "" && hasMessage(ls, fmt.Sprintf("line %d", n))
	})
	lines := r.serverLines("")
	// What arrived: some early lines, one system line counting the
	// dropped ones (the agent's own lines count too), then every line
	// after them, in order.
	dropped, seen, last, afterDrop := 0, 0, 0, 0
	var numbers []int
	for _, l := range lines {
		if l.System && strings.Contains(l.Message, "lines dropped") {
			if dropped != 0 {
				t.Errorf("a second dropped-lines line: %q", l.Message)
			}
			if _, err := fmt.Sscanf(l.Message, "%d", &dropped); err != nil || dropped <= 0 {
				t.Fatalf("dropped-lines line without a count: %q", l.Message)
			}
			afterDrop = last
			continue
		}
		num, ok := strings.CutPrefix(l.Message, "line ")
		if l.System || l.Service != "burst" || !ok {
			continue
		}
		i, err := strconv.Atoi(strings.TrimRight(num, "x "))
		if err != nil || i <= last {
			t.Fatalf("line %q after line %d: lines repeated or out of order", l.Message, last)
		}
		if dropped != 0 && last != afterDrop && i != last+1 {
			t.Fatalf("line %d after line %d: a gap after the dropped lines", i, last)
		}
		numbers = append(numbers, i)
		last, seen = i, seen+1
	}
	t.Logf("%d lines arrived, %d dropped (the last before the drop: line %d)", seen, dropped, afterDrop)
	if dropped == 0 {
		t.Fatalf("no dropped-lines line though %d lines of 500 bytes went through a 1 MiB queue", n)
	}
	if last != n {
		t.Fatalf("the last line is %d, want %d", last, n)
	}
	// Every line arrived or was counted; the count may include a few of
	// the agent's own lines dropped with them.
	if lost := n - seen; dropped < lost || dropped > lost+50 {
		t.Errorf("%d lines of %d did not arrive, and %d were counted as dropped", lost, n, dropped)
	}
}

func hasMessage(lines []reeve.LogLine, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l.Message, prefix) {
			return true
		}
	}
	return false
}

// agentProcess runs `reeve agent` as a process of its own, to be killed.
type agentProcess struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

func (r *logRig) startAgentProcess(bin string, logf *os.File) *agentProcess {
	r.t.Helper()
	addr := freeAddr(r.t)
	cmd := exec.Command(bin, "agent", "--config", r.conf, "--data", r.dataDir, "--listen", addr, "--namespace", r.ns)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	p := &agentProcess{cmd: cmd, addr: addr, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	r.t.Cleanup(p.kill)
	waitUntil(r.t, "the agent answers", func() bool {
		resp, err := http.Get("http://" + addr + "/ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

func (p *agentProcess) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// rss is the process's resident memory in bytes (0 when it cannot be read).
func (p *agentProcess) rss() int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// An agent killed (SIGKILL) while a service prints, again and again,
// loses no line and the operator sees none twice.
func TestLogsAgentKilledMidStream(t *testing.T) {
	r := newLogRig(t)
	bin := buildReeve(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	const n = 3000
	r.push(fmt.Sprintf(`services:
  counter:
    image: {{IMAGE}}
    environment:
      TESTPROG_LINES: "%d"
      TESTPROG_LINE_INTERVAL: 5ms
`, n))
	p := r.startAgentProcess(bin, logf)
	for _, at := range []int{100, 800, 1600, 2400} {
		waitUntil(t, fmt.Sprintf("line %d reaches the server", at), func() bool {
			return hasMessage(r.serverLines("counter"), fmt.Sprintf("line %d", at))
		})
		p.kill()
		p = r.startAgentProcess(bin, logf)
	}
	waitUntil(t, "the last line reaches the server", func() bool {
		return hasMessage(r.serverLines("counter"), fmt.Sprintf("line %d", n))
	})
	numbered(t, "counter", r.serverLines("counter"), n)
}

// A service printing about 2,000 lines a second for a minute: every line
// reaches a follower on the server, and the agent's memory does not grow
// with the lines.
func TestLogsAgentMemoryBoundedUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of load: not in -short")
	}
	r := newLogRig(t)
	bin := buildReeve(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p := r.startAgentProcess(bin, logf)
	uuid := r.uuid()
	waitUntil(t, "the device registers", func() bool { _, err := r.op.Device(r.ctx, uuid); return err == nil })

	// Follow from the start, counting the load's lines in order.
	const n = 120000
	fctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	var mu sync.Mutex
	next, outOfOrder := 1, ""
	followed := make(chan error, 1)
	go func() {
		followed <- r.op.Logs(fctx, uuid, serverapi.LogQuery{Services: []string{"load"}, Follow: true}, func(l reeve.LogLine) error {
			num, ok := strings.CutPrefix(l.Message, "line ")
			if l.System || !ok {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			if num != strconv.Itoa(next) && outOfOrder == "" {
				outOfOrder = fmt.Sprintf("%q where line %d was due", l.Message, next)
			}
			next++
			return nil
		})
	}()
	idle := p.rss()
	r.push(fmt.Sprintf(`services:
  load:
    image: {{IMAGE}}
    environment:
      TESTPROG_LINES: "%d"
      TESTPROG_LINE_INTERVAL: 500us
`, n))
	var samples []int64
	start := time.Now()
	deadline := start.Add(4 * time.Minute)
	for {
		mu.Lock()
		done, bad := next > n, outOfOrder
		mu.Unlock()
		if bad != "" {
			t.Fatalf("the follower got %s", bad)
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			mu.Lock()
			t.Fatalf("after 4 min the follower has %d of %d lines", next-1, n)
		}
		samples = append(samples, p.rss())
		time.Sleep(time.Second)
	}
	elapsed := time.Since(start)
	cancel()
	<-followed
	// Memory: the peak in the second half of the run against the peak in
	// the first. Lines kept in memory would grow it with the count.
	half := len(samples) / 2
	var early, late int64
	for i, s := range samples {
		if i < half {
			early = max(early, s)
		} else {
			late = max(late, s)
		}
	}
	t.Logf("%d lines in %s (%.0f lines/s end to end); agent RSS idle %d MiB, first half peak %d MiB, second half peak %d MiB",
		n, elapsed.Round(time.Second), float64(n)/elapsed.Seconds(), idle>>20, early>>20, late>>20)
	if len(samples) < 20 {
		t.Fatalf("only %d memory samples", len(samples))
	}
	if late > early+16<<20 {
		t.Errorf("agent memory grew with the lines: peak %d MiB in the first half of the run, %d MiB in the second", early>>20, late>>20)
	}
	if late > 160<<20 {
		t.Errorf("agent RSS %d MiB under load", late>>20)
	}
}
