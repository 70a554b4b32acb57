package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/gateway/driver/sim"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/selfimage"
	"reeve.dev/reeve/internal/serverapi"
)

// GatewayOptions configures the gateway benchmark.
type GatewayOptions struct {
	// Binary is the reeve binary the agent and the gateway run from.
	Binary string
	// Devices is how many simulated boards take the update at once.
	Devices int
	// FirmwareBytes is the size of the firmware file.
	FirmwareBytes int
	// ChunkSize and ChunkDelay pace each board's link (as the sim
	// driver's settings).
	ChunkSize  int
	ChunkDelay time.Duration
	// Timeout bounds the update of every board.
	Timeout    time.Duration
	DockerHost string
	Logger     *slog.Logger
}

func (o *GatewayOptions) defaults() error {
	if err := selfBinary(&o.Binary); err != nil {
		return err
	}
	if o.Devices <= 0 {
		o.Devices = 200
	}
	if o.FirmwareBytes <= 0 {
		o.FirmwareBytes = 256 << 10
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 4096
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	return nil
}

// GatewayResult is what one run measured.
type GatewayResult struct {
	Devices int
	// Installed is from the push to every board running the release, as
	// the agent hears from the gateway; Reported to the fleet server
	// showing it (the agent reports at most every 10 s).
	Installed, Reported time.Duration
	// Bare is the sim driver installing the same firmware on as many
	// boards at once, in this process, with nothing around it.
	Bare time.Duration
	// GatewayRSS is the gateway's resident memory before the release and
	// at its peak during the update, in kB.
	GatewayRSSBefore, GatewayRSSPeak int64
}

const (
	gwFleet  = "bench-gateways"
	depFleet = "bench-boards"
)

// Gateway updates Devices simulated boards behind one gateway at once: a
// firmware release pushed to the fleet server goes through the agent (`reeve
// agent`, a child process) to the gateway (`reeve gateway` with the sim
// driver, a child process), which installs it on every board; and, as the
// peer, the sim driver alone installs the same firmware on as many boards.
func Gateway(ctx context.Context, opts GatewayOptions, out io.Writer) (GatewayResult, error) {
	if err := opts.defaults(); err != nil {
		return GatewayResult{}, err
	}
	b := &gwBench{opts: opts, out: out}
	b.deviceRig = deviceRig{ns: "bench-gw-" + randomHex(3), binary: opts.Binary, dockerHost: opts.DockerHost, logger: opts.Logger}
	defer func() {
		if err := b.close(); err != nil {
			fmt.Fprintf(out, "warning: cleaning up: %v\n", err)
		}
	}()
	return b.run(ctx)
}

type gwBench struct {
	deviceRig
	opts    GatewayOptions
	out     io.Writer
	regHost string
	gateway *child
	gwAddr  string
}

func (b *gwBench) printf(format string, args ...any) { fmt.Fprintf(b.out, format, args...) }

func (b *gwBench) run(ctx context.Context) (GatewayResult, error) {
	o := b.opts
	res := GatewayResult{Devices: o.Devices}
	var err error
	if b.workDir, err = os.MkdirTemp("", "reeve-bench-gateway-*"); err != nil {
		return res, err
	}
	b.cleanup = append(b.cleanup, func() error { return os.RemoveAll(b.workDir) })
	rt, err := docker.New(ctx, docker.Options{Host: o.DockerHost, Namespace: b.ns, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return res, err
	}
	b.cleanup = append(b.cleanup, rt.Close)
	if err := rt.Ping(ctx); err != nil {
		return res, fmt.Errorf("the Docker Engine does not answer: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	reg := selfimage.Serve(ln)
	b.cleanup = append(b.cleanup, reg.Close)
	b.regHost = ln.Addr().String()
	b.cleanup = append(b.cleanup, func() error {
		return rt.RemoveAll(context.Background(), func(ref string) bool { return strings.HasPrefix(ref, b.regHost+"/") })
	})
	firmware := make([]byte, o.FirmwareBytes)
	for i := range firmware {
		firmware[i] = byte(i * 31)
	}
	image, err := selfimage.PushFiles(ctx, b.regHost, "bench/firmware", map[string][]byte{"/assets/firmware.bin": firmware})
	if err != nil {
		return res, err
	}

	if err := b.startServer(ctx, gwFleet); err != nil {
		return res, err
	}
	if _, err := b.op.CreateFleet(ctx, serverapi.CreateFleetRequest{Name: depFleet, Parent: gwFleet}); err != nil {
		return res, err
	}
	if err := b.startAgent(ctx); err != nil {
		return res, err
	}
	if err := b.startGateway(ctx); err != nil {
		return res, err
	}
	b.printf("reeve bench gateway: %d simulated boards, firmware %d KiB in %d B chunks every %s per board; binary %s\n",
		o.Devices, o.FirmwareBytes>>10, o.ChunkSize, o.ChunkDelay, o.Binary)
	b.printf("machine: %d CPUs, %s/%s, %s; the fleet server (this process), `reeve agent` (pid %s), `reeve gateway` (pid %s) and the boards (in the gateway) share it\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), b.agent.pid(), b.gateway.pid())
	b.printf("reeve: push → server → agent (long poll, pulls the image, hooks) → gateway (downloads /assets once, installs on every board at once) → agent → server\n")
	b.printf("bare: the sim driver in this process installs the same file on as many boards at once, nothing around it\n\n")

	// Every board provisioned first: that is not the update.
	if err := b.waitBoards(ctx, "provisioned", func(v serverapi.DeviceView) bool { return true }); err != nil {
		return res, err
	}
	if res.GatewayRSSBefore, _, err = procMemory(b.gateway.pid()); err != nil {
		return res, err
	}
	rss := sampleRSS(b.gateway.pid(), 100*time.Millisecond)
	start := time.Now()
	rel, _, err := b.op.Push(ctx, depFleet, []byte("services:\n  firmware:\n    image: "+image+"\n"))
	if err != nil {
		rss.end()
		return res, err
	}
	res.Installed, err = b.waitInstalled(ctx, rel.Commit, start)
	if err == nil {
		err = b.waitBoards(ctx, "reported on release "+rel.Commit, func(v serverapi.DeviceView) bool {
			return v.State.Commit != nil && *v.State.Commit == rel.Commit
		})
		res.Reported = time.Since(start)
	}
	res.GatewayRSSPeak, _ = rss.end()
	if err != nil {
		return res, err
	}
	if res.Bare, err = bareUpdate(ctx, o, firmware); err != nil {
		return res, err
	}
	b.printf("%-28s %10s %10s %8s\n", "", "reeve", "bare", "ratio")
	b.printf("%-28s %10s %10s %8.1f\n", fmt.Sprintf("all %d installed", o.Devices), ms(res.Installed), ms(res.Bare), float64(res.Installed)/float64(res.Bare))
	b.printf("%-28s %10s\n", "all reported to the server", ms(res.Reported))
	b.printf("%-28s %10s %10s\n", "gateway RSS before / peak", mib(res.GatewayRSSBefore), mib(res.GatewayRSSPeak))
	return res, nil
}

// startGateway runs `reeve gateway` with the sim driver as a child process,
// and points the agent's hooks at it.
func (b *gwBench) startGateway(ctx context.Context) error {
	key, err := os.ReadFile(filepath.Join(b.workDir, "agent", "api-key"))
	if err != nil {
		return fmt.Errorf("read the agent's API key: %w", err)
	}
	if b.gwAddr, err = freeAddr(); err != nil {
		return err
	}
	if _, err := b.op.SetVar(ctx, reeve.VarConfig, serverapi.SetVarRequest{Device: b.uuid, Name: "REEVE_DEPENDENT_DEVICES_HOOK_ADDRESS", Value: "http://" + b.gwAddr}); err != nil {
		return err
	}
	o := b.opts
	args := []string{"gateway", "--agent", "http://" + b.agentAddr, "--agent-key", strings.TrimSpace(string(key)),
		"--data", filepath.Join(b.workDir, "gateway"), "--listen", b.gwAddr, "--driver", "sim",
		"--driver-opt", "sim.devices=" + strconv.Itoa(o.Devices), "--driver-opt", "sim.chunk_size=" + strconv.Itoa(o.ChunkSize),
		"--driver-opt", "sim.chunk_delay=" + o.ChunkDelay.String(), "--parallel", strconv.Itoa(o.Devices),
		"--loop-delay", "1s", "--lock-file", filepath.Join(b.workDir, "no-lock"), "--log-level", "warn"}
	c, err := startChild("reeve gateway", o.Binary, args, nil, filepath.Join(b.workDir, "gateway.log"))
	if err != nil {
		return err
	}
	b.gateway = c
	b.cleanup = append(b.cleanup, func() error { c.stop(); return nil })
	return waitHTTP(ctx, c, "http://"+b.gwAddr+"/v1/enm/status", "")
}

// waitBoards waits until the server lists every board and ok holds for
// each.
func (b *gwBench) waitBoards(ctx context.Context, what string, ok func(serverapi.DeviceView) bool) error {
	deadline := time.Now().Add(b.opts.Timeout)
	for {
		vs, err := b.op.Devices(ctx, depFleet)
		n := 0
		for _, v := range vs {
			if ok(v) {
				n++
			}
		}
		if err == nil && n == b.opts.Devices {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d boards %s after %s (%v)\ngateway:\n%s", n, b.opts.Devices, what, b.opts.Timeout, err, b.gateway.logTail())
		}
		if err := pause(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitInstalled waits until the agent hears from the gateway that every
// board runs commit, and returns the time since start.
func (b *gwBench) waitInstalled(ctx context.Context, commit string, start time.Time) (time.Duration, error) {
	key, err := os.ReadFile(filepath.Join(b.workDir, "agent", "api-key"))
	if err != nil {
		return 0, err
	}
	ac := localapi.NewClient(b.agentAddr).WithKey(strings.TrimSpace(string(key)))
	deadline := start.Add(b.opts.Timeout)
	for {
		n, err := running(ctx, ac, commit)
		if err == nil && n == b.opts.Devices {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d of %d boards installed after %s (%v)\ngateway:\n%s", n, b.opts.Devices, b.opts.Timeout, err, b.gateway.logTail())
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// bareUpdate installs firmware on opts.Devices simulated boards at once
// with the sim driver alone.
func bareUpdate(ctx context.Context, o GatewayOptions, firmware []byte) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "reeve-bench-bare-*")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "firmware.bin"), firmware, 0o644); err != nil {
		return 0, err
	}
	sum := sha256.Sum256(firmware)
	fw := driver.Firmware{Commit: "bare", Dir: dir, File: "firmware.bin", Size: int64(len(firmware)), SHA256: hex.EncodeToString(sum[:])}
	lab := sim.NewLab()
	lab.ChunkSize, lab.ChunkDelay = o.ChunkSize, o.ChunkDelay
	for i := 1; i <= o.Devices; i++ {
		lab.Add(fmt.Sprintf("b-%04d", i), "sim", "")
	}
	d := sim.NewDriver(lab)
	if err := d.Open(ctx, driver.App{}); err != nil {
		return 0, err
	}
	defer d.Close()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, o.Devices)
	for i := 1; i <= o.Devices; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- d.Update(ctx, fmt.Sprintf("b-%04d", i), fw, func(int) {})
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return took, nil
}

// running counts the dependent devices the agent lists as running commit.
func running(ctx context.Context, c *localapi.Client, commit string) (int, error) {
	devs, err := c.DependentDevices(ctx)
	n := 0
	for _, d := range devs {
		if d.Commit == commit {
			n++
		}
	}
	return n, err
}
