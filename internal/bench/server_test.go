package bench_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"reeve.dev/reeve/internal/bench"
)

// TestServer runs `reeve bench server` small (200 devices, 1 s runs)
// against a freshly built reeve, and checks that it measured something on
// every path and that nothing failed: every request answered as expected,
// every device registered, and every long poll saw the pushed release. No
// timing is checked: the machine is shared.
func TestServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds reeve and runs servers: not in -short")
	}
	// The server and the peer are the reeve binary; in a test os.Executable
	// is the test binary, so build reeve.
	bin := filepath.Join(t.TempDir(), "reeve")
	build := exec.Command("go", "build", "-o", bin, "reeve.dev/reeve/cmd/reeve")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build reeve: %v\n%s", err, out)
	}

	const devices = 200
	opts := bench.ServerOptions{
		Binary:  bin,
		DataDir: t.TempDir(),
		// Part 1: every path and side once.
		PollDevices: 20, Concurrency: 4, Duration: time.Second, Rounds: 1,
		// Part 2.
		Devices: devices, DevicesDuration: 2 * time.Second, ReportEvery: 500 * time.Millisecond,
		Wait: 30 * time.Second, RegisterConcurrency: 16,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := bench.Server(ctx, opts, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}

	// Part 1: both paths, both sides, requests and no errors.
	if len(res.Poll) != 4 {
		t.Fatalf("%d poll results, want 4 (2 paths × 2 sides): %+v", len(res.Poll), res.Poll)
	}
	for _, p := range res.Poll {
		if p.Requests == 0 || p.PerSecond() <= 0 || p.P50 <= 0 || p.P99 < p.P50 {
			t.Errorf("%s path, %s: %d requests in %s, p50 %s, p99 %s", p.Path, p.Side, p.Requests, p.Elapsed, p.P50, p.P99)
		}
		if len(p.Errors) > 0 {
			t.Errorf("%s path, %s: errors %v", p.Path, p.Side, p.Errors)
		}
	}

	// Part 2: every device registered, polled, saw the push and reported.
	f := res.Fleet
	if f.Registered != devices || f.PollsOpen != devices {
		t.Errorf("registered %d, long polls sent %d; want %d each", f.Registered, f.PollsOpen, devices)
	}
	if f.Updated != devices {
		t.Errorf("%d of %d long polls answered the pushed release", f.Updated, devices)
	}
	if f.FanoutP50 <= 0 || f.FanoutMax < f.FanoutP99 || f.FanoutP99 < f.FanoutP50 {
		t.Errorf("fan-out p50 %s, p99 %s, max %s: not ordered", f.FanoutP50, f.FanoutP99, f.FanoutMax)
	}
	if f.Reports < devices { // each device reports about 4 times
		t.Errorf("%d reports answered; want at least %d", f.Reports, devices)
	}
	if len(f.Errors) > 0 {
		t.Errorf("errors during the run: %v", f.Errors)
	}
	if len(f.Server) < 4 {
		t.Errorf("%d samples of the server process, want at least 4: %+v", len(f.Server), f.Server)
	}
	for _, s := range f.Server {
		if s.RSS <= 0 || s.HWM < s.RSS || s.FDs <= 0 {
			t.Errorf("server sample %q: VmRSS %d kB, VmHWM %d kB, %d fds", s.When, s.RSS, s.HWM, s.FDs)
		}
	}

	// The report says it in words.
	text := out.String()
	for _, re := range []string{
		`(?m)^200 \(full target\)\s+\d+\s+\d+\s+\d+\.\d\d `,
		`(?m)^304 \(If-None-Match\)\s+\d+\s+\d+\s+\d+\.\d\d `,
		`(?m)^errors: none$`,
		`(?m)^registered 200 of 200 devices `,
		`(?m)the new target reached 200 of 200 long polls`,
		`(?m)^errors during the run: none$`,
		`(?m)^end of the run\s+\d+\.\d MiB\s+\d+\.\d MiB\s+\d+\s+\d+\.\d s$`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("output has no line matching %s", re)
		}
	}
}
