package bench_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve/internal/bench"
	"reeve.dev/reeve/internal/testimage"
)

// TestApply runs the apply benchmark once, small, against the real engine
// and compose. REEVE_BENCH_ROUNDS=N runs the full benchmark instead, as
// `reeve bench apply --rounds N` does (go test -v -timeout 30m shows it).
func TestApply(t *testing.T) {
	testimage.RequireDocker(t)
	ctx := context.Background()
	composeCmd, err := bench.DetectCompose(ctx, "")
	if err != nil {
		// The peer the benchmark measures against. CI installs Debian's
		// docker-compose, so there its absence is a failure.
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but no compose command to measure against: %v", err)
		}
		t.Skipf("waiting for a compose command to measure against (install docker-compose): %v", err)
	}
	// The image and the measured agent are the reeve binary; in a test,
	// os.Executable is the test binary, so build reeve.
	bin := filepath.Join(t.TempDir(), "reeve")
	build := exec.Command("go", "build", "-o", bin, "reeve.dev/reeve/cmd/reeve")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build reeve: %v\n%s", err, out)
	}

	opts := bench.ApplyOptions{
		Rounds: 1, Services: 2, NoopServices: 2,
		ComposeCommand: composeCmd, Binary: bin, RSSDelay: time.Second,
	}
	services := 2
	if s := os.Getenv("REEVE_BENCH_ROUNDS"); s != "" {
		// The full benchmark, as `reeve bench apply --rounds N` runs it.
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("REEVE_BENCH_ROUNDS=%q: want a number >= 1", s)
		}
		opts = bench.ApplyOptions{Rounds: n, ComposeCommand: composeCmd, Binary: bin}
		services = 20
	}
	var out bytes.Buffer
	start := time.Now()
	err = bench.Apply(ctx, opts, &out)
	t.Logf("Apply took %s; output:\n%s", time.Since(start).Round(100*time.Millisecond), out.String())
	if err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, re := range []string{
		`(?m)^median\s+\d+\.\d+ ms\s+\d+\.\d+ ms$`,
		`(?m)^ratio reeve/compose: \d+\.\d\d$`,
		`(?m)^snapshot\+plan\s+\d+\.\d+ ms\s+\d+\.\d+ ms$`,
		"(?m)^`reeve agent` subprocess, " + strconv.Itoa(services) + " services converged.* MiB +\\d+\\.\\d MiB$",
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("output has no line matching %s", re)
		}
	}
	if strings.Contains(text, "warning:") {
		t.Errorf("output has a warning")
	}
}
