// Package bench is `reeve bench`: benchmarks of the agent against the real
// Docker Engine.
//
// Apply compares how long the agent takes to bring a compose file's services
// up from nothing with how long `docker compose up -d` takes, measures one
// converged (no-op) reconcile of the agent's loop, and the agent's memory.
package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/moby/client"

	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/compose"
	"reeve.dev/reeve/internal/engine"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/selfimage"
)

// ApplyOptions configures Apply. Zero values get the documented defaults.
type ApplyOptions struct {
	// Rounds is how many times each side applies the compose file from
	// nothing. Default 5.
	Rounds int
	// Services is the number of services in the compose file. Default 5.
	Services int
	// NoopServices is the number of converged services the no-op
	// reconcile and the memory of the agent are measured with. Default 20.
	NoopServices int
	// DockerHost is the engine address; "" means $DOCKER_HOST, else the
	// default socket.
	DockerHost string
	// ComposeCommand runs compose. Default: ["docker", "compose"] when
	// `docker compose version` works, else ["docker-compose"].
	ComposeCommand []string
	// Binary is the reeve binary, static (CGO_ENABLED=0): it is packed into
	// the services' image and run as the `reeve agent` whose memory is
	// measured. Default os.Executable().
	Binary string
	// RSSDelay is how long the `reeve agent` subprocess runs converged
	// before its memory is read. Default 10 s.
	RSSDelay time.Duration
	// Logger gets the logs of the agents run in the process; nil discards
	// them.
	Logger *slog.Logger
}

const (
	noopIterations = 20
	applyTimeout   = 5 * time.Minute
)

// Apply runs the apply benchmark and writes its results to out as plain
// text.
func Apply(ctx context.Context, opts ApplyOptions, out io.Writer) error {
	b, err := newBencher(ctx, opts, out)
	if err != nil {
		return err
	}
	defer b.close()
	return b.run(ctx)
}

type bencher struct {
	opts    ApplyOptions
	out     io.Writer
	log     *slog.Logger
	id      string // unique per run: namespaces and project names
	engine  *client.Client
	rt      *docker.Runtime // without namespace: images only
	image   string
	workDir string
	cleanup []func()
}

func newBencher(ctx context.Context, opts ApplyOptions, out io.Writer) (*bencher, error) {
	if opts.Rounds <= 0 {
		opts.Rounds = 5
	}
	if opts.Services <= 0 {
		opts.Services = 5
	}
	if opts.NoopServices <= 0 {
		opts.NoopServices = 20
	}
	if opts.RSSDelay <= 0 {
		opts.RSSDelay = 10 * time.Second
	}
	if err := selfBinary(&opts.Binary); err != nil {
		return nil, err
	}
	if len(opts.ComposeCommand) == 0 {
		cmd, err := DetectCompose(ctx, opts.DockerHost)
		if err != nil {
			return nil, err
		}
		opts.ComposeCommand = cmd
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	b := &bencher{opts: opts, out: out, log: log, id: "bench-" + randomHex(3)}
	clientOpts := []client.Opt{client.FromEnv}
	if opts.DockerHost != "" {
		clientOpts = append(clientOpts, client.WithHost(opts.DockerHost))
	}
	var err error
	if b.engine, err = client.New(clientOpts...); err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	b.cleanup = append(b.cleanup, func() { b.engine.Close() })
	if b.rt, err = docker.New(ctx, docker.Options{Host: opts.DockerHost, Logger: log}); err != nil {
		b.close()
		return nil, err
	}
	b.cleanup = append(b.cleanup, func() { b.rt.Close() })
	if err := b.rt.Ping(ctx); err != nil {
		b.close()
		return nil, err
	}
	if b.workDir, err = os.MkdirTemp("", "reeve-bench-*"); err != nil {
		b.close()
		return nil, err
	}
	b.cleanup = append(b.cleanup, func() { os.RemoveAll(b.workDir) })
	return b, nil
}

// close undoes what was set up, last first.
func (b *bencher) close() {
	for i := len(b.cleanup) - 1; i >= 0; i-- {
		b.cleanup[i]()
	}
	b.cleanup = nil
}

// DetectCompose returns ["docker", "compose"] when `docker compose version`
// works, else ["docker-compose"] when `docker-compose version` works.
func DetectCompose(ctx context.Context, dockerHost string) ([]string, error) {
	for _, cmd := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		c := exec.CommandContext(ctx, cmd[0], append(slices.Clone(cmd[1:]), "version")...)
		c.Env = composeEnv(dockerHost)
		if err := c.Run(); err == nil {
			return cmd, nil
		}
	}
	return nil, errNoCompose
}

func composeEnv(dockerHost string) []string {
	env := os.Environ()
	if dockerHost != "" {
		env = append(env, "DOCKER_HOST="+dockerHost)
	}
	return env
}

func randomHex(n int) string {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		panic(err)
	}
	return hex.EncodeToString(buf)
}

func (b *bencher) printf(format string, args ...any) {
	fmt.Fprintf(b.out, format, args...)
}

func (b *bencher) run(ctx context.Context) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the benchmark registry: %w", err)
	}
	reg := selfimage.Serve(ln)
	b.cleanup = append(b.cleanup, func() { _ = reg.Close() })
	if b.image, err = selfimage.Push(ctx, ln.Addr().String(), "reeve/bench", b.opts.Binary,
		[]string{"example-app", "worker", "--data", "/tmp"}); err != nil {
		return err
	}
	// Pulled here, so that neither side measures the download.
	if err := b.rt.Fetch(ctx, b.image, nil); err != nil {
		return fmt.Errorf("pre-pull the benchmark image: %w", err)
	}
	b.cleanup = append(b.cleanup, func() { _ = b.rt.RemoveImage(context.Background(), b.image) })

	composeVersion := b.composeVersion(ctx)
	b.printf("reeve bench apply: rounds %d, services %d, image %s (pre-pulled)\n", b.opts.Rounds, b.opts.Services, b.image)
	b.printf("compose: %s (%s)\n\n", strings.Join(b.opts.ComposeCommand, " "), composeVersion)

	if err := b.applyRounds(ctx); err != nil {
		return err
	}
	if err := b.noop(ctx); err != nil {
		return err
	}
	return nil
}

func (b *bencher) composeVersion(ctx context.Context) string {
	c := exec.CommandContext(ctx, b.opts.ComposeCommand[0], append(slices.Clone(b.opts.ComposeCommand[1:]), "version", "--short")...)
	c.Env = composeEnv(b.opts.DockerHost)
	outb, err := c.Output()
	if err != nil {
		return "version unknown"
	}
	return "version " + strings.TrimSpace(string(outb))
}

// composeFile is n services of the benchmark image on one network, each with
// its own environment variable, restart always.
func composeFile(image string, n int) []byte {
	var sb strings.Builder
	sb.WriteString("services:\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&sb, `  svc%02d:
    image: %s
    environment:
      BENCH_SERVICE: "svc%02d"
    networks: [bench]
    restart: always
`, i, image, i)
	}
	sb.WriteString("networks:\n  bench: {}\n")
	return []byte(sb.String())
}

func (b *bencher) applyRounds(ctx context.Context) error {
	data := composeFile(b.image, b.opts.Services)
	file := filepath.Join(b.workDir, "docker-compose.yml")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return err
	}
	b.printf("Apply %d services from nothing until all run (reeve: SetTarget until status applied, all running; compose: `%s up -d` until it returns)\n",
		b.opts.Services, strings.Join(b.opts.ComposeCommand, " "))
	b.printf("%-8s %12s %12s\n", "round", "reeve", "compose")
	var reeveTimes, composeTimes []time.Duration
	for i := 1; i <= b.opts.Rounds; i++ {
		rd, err := b.reeveRound(ctx, i, data)
		if err != nil {
			return fmt.Errorf("round %d, reeve: %w", i, err)
		}
		cd, err := b.composeRound(ctx, i, file)
		if err != nil {
			return fmt.Errorf("round %d, compose: %w", i, err)
		}
		reeveTimes, composeTimes = append(reeveTimes, rd), append(composeTimes, cd)
		b.printf("%-8d %12s %12s\n", i, ms(rd), ms(cd))
	}
	rm, cm := median(reeveTimes), median(composeTimes)
	b.printf("%-8s %12s %12s\n", "median", ms(rm), ms(cm))
	b.printf("ratio reeve/compose: %.2f\n\n", float64(rm)/float64(cm))
	return nil
}

// agentRun is an agent run in this process.
type agentRun struct {
	main   *agentd.Main
	client *localapi.Client
	ns     string
	dir    string
	stop   func() error
}

// startAgent starts an in-process agent in local mode on a fresh data
// directory and a namespace of its own.
func (b *bencher) startAgent(ctx context.Context, ns string) (*agentRun, error) {
	dir, err := os.MkdirTemp(b.workDir, "agent-*")
	if err != nil {
		return nil, err
	}
	m, err := agentd.New(ctx, agentd.Config{DataDir: dir, Listen: "127.0.0.1:0", Local: true,
		DockerHost: b.opts.DockerHost, Namespace: ns, Logger: b.log})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	stopped := false
	return &agentRun{main: m, client: localapi.NewClient(m.Addr()).WithKey(m.Agent().APIKey()), ns: ns, dir: dir, stop: func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}}, nil
}

// apply sets data as the agent's only app and returns the version.
func (a *agentRun) apply(ctx context.Context, name string, data []byte) (int64, error) {
	rel, err := compose.Load(ctx, data, compose.Options{ProjectName: name})
	if err != nil {
		return 0, fmt.Errorf("the benchmark compose file does not load: %w", err)
	}
	info, err := a.client.DeviceInfo(ctx)
	if err != nil {
		return 0, err
	}
	ts, _, err := a.client.Target(ctx)
	if err != nil {
		return 0, err
	}
	uuid, app := localapi.LocalApp(name, rel, compose.Commit(data))
	return a.client.SetTarget(ctx, localapi.WithApp(ts, info.UUID, info.Name, uuid, app))
}

// waitRunning polls the status until version is applied with n services
// running.
func waitRunning(ctx context.Context, c *localapi.Client, version int64, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var st localapi.StatusResponse
	var err error
	for {
		st, err = c.Status(ctx)
		if err == nil && st.TargetVersion >= version && st.AppState == agent.AppStateApplied && len(st.Services) == n {
			running := 0
			for _, s := range st.Services {
				if s.Status == agent.SvcRunning {
					running++
				}
			}
			if running == n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("not applied after %s: %w", timeout, err)
			}
			return fmt.Errorf("not applied after %s: state %s, last error %q, steps %v", timeout, st.AppState, st.LastError, st.Steps)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// reeveRound times one apply by a fresh in-process agent, then removes
// what it made (not timed).
func (b *bencher) reeveRound(ctx context.Context, i int, data []byte) (d time.Duration, err error) {
	ns := fmt.Sprintf("%s-r%d", b.id, i)
	a, err := b.startAgent(ctx, ns)
	if err != nil {
		return 0, err
	}
	defer func() {
		err = errors.Join(err, a.stop(), b.removeNamespace(ns), os.RemoveAll(a.dir))
	}()
	// The agent answers before the clock starts.
	if _, err := a.client.DeviceInfo(ctx); err != nil {
		return 0, err
	}
	start := time.Now()
	version, err := a.apply(ctx, b.id, data)
	if err != nil {
		return 0, err
	}
	if err := waitRunning(ctx, a.client, version, b.opts.Services, applyTimeout); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// removeNamespace removes the containers, networks and volumes of an
// agent's namespace.
func (b *bencher) removeNamespace(ns string) error {
	ctx := context.Background()
	rt, err := docker.New(ctx, docker.Options{Host: b.opts.DockerHost, Namespace: ns, Logger: b.log})
	if err != nil {
		return err
	}
	defer rt.Close()
	return rt.RemoveAll(ctx, nil)
}

// composeRound times `compose up -d` as a subprocess, checks that every
// container runs, then takes the project down (not timed).
func (b *bencher) composeRound(ctx context.Context, i int, file string) (d time.Duration, err error) {
	project := strings.ReplaceAll(fmt.Sprintf("%sc%d", b.id, i), "-", "")
	run := func(ctx context.Context, args ...string) error {
		argv := append(slices.Clone(b.opts.ComposeCommand[1:]), "-p", project, "-f", file)
		c := exec.CommandContext(ctx, b.opts.ComposeCommand[0], append(argv, args...)...)
		c.Env = composeEnv(b.opts.DockerHost)
		c.Dir = b.workDir
		if outb, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %w\n%s", strings.Join(b.opts.ComposeCommand, " "), strings.Join(args, " "), err, outb)
		}
		return nil
	}
	defer func() {
		// Also when ctx ends (Ctrl-C): leave nothing behind.
		if derr := run(context.WithoutCancel(ctx), "down", "--remove-orphans", "-t", "5"); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	start := time.Now()
	if err := run(ctx, "up", "-d"); err != nil {
		return 0, err
	}
	d = time.Since(start)
	list, err := b.engine.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: client.Filters{}.Add("label", "com.docker.compose.project="+project)})
	if err != nil {
		return 0, err
	}
	running := 0
	for _, c := range list.Items {
		if c.State == "running" {
			running++
		}
	}
	if len(list.Items) != b.opts.Services || running != b.opts.Services {
		return 0, fmt.Errorf("after up -d: %d containers, %d running, want %d running", len(list.Items), running, b.opts.Services)
	}
	return d, nil
}

// noop converges NoopServices services with an in-process agent, times the
// work of one converged round of the agent's loop (Snapshot and Plan), reads
// this process's memory, then runs `reeve agent` as a subprocess on the same
// data and reads its memory.
func (b *bencher) noop(ctx context.Context) (err error) {
	ns := b.id + "-noop"
	n := b.opts.NoopServices
	a, err := b.startAgent(ctx, ns)
	if err != nil {
		return err
	}
	defer func() {
		err = errors.Join(err, a.stop(), b.removeNamespace(ns))
	}()
	data := composeFile(b.image, n)
	version, err := a.apply(ctx, b.id, data)
	if err != nil {
		return err
	}
	if err := waitRunning(ctx, a.client, version, n, applyTimeout); err != nil {
		return fmt.Errorf("converge %d services: %w", n, err)
	}

	rt, err := docker.New(ctx, docker.Options{Host: b.opts.DockerHost, Namespace: ns, Logger: b.log})
	if err != nil {
		return err
	}
	defer rt.Close()
	ag := a.main.Agent()
	ts, _ := ag.Target()
	dev := ts[ag.UUID()]
	var snaps, plans, totals []time.Duration
	var notEmpty []engine.Step
	for i := 0; i <= noopIterations; i++ {
		t0 := time.Now()
		snap, err := rt.Snapshot(ctx)
		if err != nil {
			return err
		}
		t1 := time.Now()
		steps := engine.Plan(snap, dev, engine.Env{
			Now:          t1,
			InFlight:     map[string]bool{},
			FetchFailed:  map[string]string{},
			HandoverDone: map[string]bool{},
			Locks:        map[string]engine.LockState{},
			OwnedImages:  map[string]bool{},
		})
		t2 := time.Now()
		if len(steps) > 0 {
			notEmpty = steps
		}
		if i == 0 {
			continue // warm-up
		}
		snaps, plans, totals = append(snaps, t1.Sub(t0)), append(plans, t2.Sub(t1)), append(totals, t2.Sub(t0))
	}
	b.printf("No-op reconcile: %d services converged, %d iterations of the work of one converged loop round (runtime Snapshot + engine.Plan)\n", n, noopIterations)
	b.printf("%-16s %12s %12s\n", "", "median", "p90")
	b.printf("%-16s %12s %12s\n", "snapshot", ms(median(snaps)), ms(p90(snaps)))
	b.printf("%-16s %12s %12s\n", "plan", ms(median(plans)), ms(p90(plans)))
	b.printf("%-16s %12s %12s\n", "snapshot+plan", ms(median(totals)), ms(p90(totals)))
	if len(notEmpty) > 0 {
		b.printf("warning: the plan of the converged device is not empty: %v\n", notEmpty)
	}
	b.printf("\n")

	rss, hwm, err := procMemory("self")
	if err != nil {
		return err
	}
	if err := a.stop(); err != nil {
		return fmt.Errorf("stop the in-process agent: %w", err)
	}
	subRSS, subHWM, err := b.agentProcessMemory(ctx, a.dir, ns, version, n)
	if err != nil {
		return err
	}
	b.printf("Agent memory\n")
	b.printf("%-62s %10s %10s\n", "", "VmRSS", "VmHWM")
	b.printf("%-62s %10s %10s\n", "this process (benchmark harness, registry, in-process agents)", mib(rss), mib(hwm))
	b.printf("%-62s %10s %10s\n", fmt.Sprintf("`reeve agent` subprocess, %d services converged, after %s", n, b.opts.RSSDelay), mib(subRSS), mib(subHWM))
	b.printf("(the first row includes the benchmark itself: the image it packed and pushed, the registry holding it, and every agent it ran; the second is the agent alone)\n")
	return nil
}

// agentProcessMemory runs `reeve agent --local` on a converged data
// directory and returns its VmRSS and VmHWM (kB) after RSSDelay.
func (b *bencher) agentProcessMemory(ctx context.Context, dataDir, ns string, version int64, n int) (rss, hwm int64, err error) {
	addr, err := freeAddr()
	if err != nil {
		return 0, 0, err
	}
	args := []string{"agent", "--local", "--data", dataDir, "--listen", addr, "--namespace", ns, "--log-level", "warn"}
	if b.opts.DockerHost != "" {
		args = append(args, "--docker-host", b.opts.DockerHost)
	}
	cmd := exec.CommandContext(ctx, b.opts.Binary, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("start %s agent: %w", b.opts.Binary, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		select {
		case <-exited:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	if err := waitPing(ctx, addr, exited); err != nil {
		return 0, 0, fmt.Errorf("%s agent: %w\n%s", b.opts.Binary, err, logs.String())
	}
	c := localapi.NewClient(addr).WithKeyFrom(dataDir)
	if err := waitRunning(ctx, c, version, n, applyTimeout); err != nil {
		return 0, 0, fmt.Errorf("%s agent: %w\n%s", b.opts.Binary, err, logs.String())
	}
	select {
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	case err := <-exited:
		return 0, 0, fmt.Errorf("%s agent exited: %v\n%s", b.opts.Binary, err, logs.String())
	case <-time.After(b.opts.RSSDelay):
	}
	return procMemory(strconv.Itoa(cmd.Process.Pid))
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitPing(ctx context.Context, addr string, exited <-chan error) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/ping", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer at %s/ping within 30 s", addr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-exited:
			return fmt.Errorf("exited before answering: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// procMemory reads VmRSS and VmHWM (kB) from /proc/<pid>/status.
func procMemory(pid string) (rss, hwm int64, err error) {
	f, err := os.Open(filepath.Join("/proc", pid, "status"))
	if err != nil {
		return 0, 0, fmt.Errorf("read memory of process %s: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch key {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%s/status", pid)
	}
	return rss, hwm, sc.Err()
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// p90 is the nearest-rank 90th percentile.
func p90(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (len(s)*90 + 99) / 100 // ceil(0.9 n)
	return s[rank-1]
}

func ms(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func mib(kb int64) string {
	return fmt.Sprintf("%.1f MiB", float64(kb)/1024)
}

// selfBinary sets *path, when empty, to this executable: the reeve binary
// a benchmark packs into images and runs as the agent.
func selfBinary(path *string) error {
	if *path != "" {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the reeve binary: %w", err)
	}
	*path = exe
	return nil
}
