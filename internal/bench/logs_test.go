package bench

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve/internal/testimage"
)

// TestLogs runs `reeve bench logs` small against the real engine: a burst
// of 2,000 lines and 1,000 lines at 500/s. It checks what was measured, not
// how fast: every line reached both sides (Logs fails otherwise), and the
// report has both rows and the ratios.
func TestLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds reeve and runs an agent on the engine: not in -short")
	}
	testimage.RequireDocker(t)
	// The image and the agent are the reeve binary; os.Executable is the
	// test binary here.
	bin := filepath.Join(t.TempDir(), "reeve")
	gobuild := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "reeve.dev/reeve/cmd/reeve")
	gobuild.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := gobuild.CombinedOutput(); err != nil {
		t.Fatalf("build the reeve binary: %v\n%s", err, msg)
	}

	loads := []LogLoad{{Lines: 2000, Rate: 0}, {Lines: 1000, Rate: 500}}
	var out bytes.Buffer
	res, err := Logs(t.Context(), LogsOptions{Loads: loads, Binary: bin}, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if res.IdleRSS <= 0 {
		t.Errorf("idle RSS %d kB", res.IdleRSS)
	}
	if len(res.Loads) != len(loads) {
		t.Fatalf("%d loads measured, want %d", len(res.Loads), len(loads))
	}
	for i, lr := range res.Loads {
		for _, s := range []LogSide{lr.Reeve, lr.Docker} {
			if s.Lines != loads[i].Lines || s.PerSecond() <= 0 || s.P99 < s.P50 || s.P50 <= 0 {
				t.Errorf("load %d, %s: %+v", i+1, s.Side, s)
			}
		}
		if lr.RSSPeak <= 0 || lr.Samples == 0 || lr.HWM <= 0 {
			t.Errorf("load %d: agent memory peak %d kB of %d samples, VmHWM %d kB", i+1, lr.RSSPeak, lr.Samples, lr.HWM)
		}
	}
	text := out.String()
	for _, re := range []string{
		`(?m)^Load 1: burst, 2000 lines`,
		`(?m)^Load 2: paced, 1000 lines at 500 lines/s`,
		`(?m)^reeve +2000 +\d+ +[\d.]+ m?s +[\d.]+ m?s$`,
		`(?m)^docker +2000 +\d+ +[\d.]+ m?s +[\d.]+ m?s$`,
		`(?m)^reeve +1000 +\d+ +[\d.]+ m?s +[\d.]+ m?s$`,
		`(?m)^docker +1000 +\d+ +[\d.]+ m?s +[\d.]+ m?s$`,
		`(?m)^ratio reeve/docker: lines/s \d+\.\d\d, latency p50 \d+\.\d, p99 \d+\.\d$`,
		`(?m)^agent: VmRSS [\d.]+ MiB before, peak [\d.]+ MiB during the load`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("output has no line matching %s", re)
		}
	}
	if strings.Contains(text, "cleaning up") {
		t.Error("the benchmark did not clean up")
	}
}

// The check each side runs: "line 1" … "line N" once each, in order, then
// "lines done"; anything else fails the benchmark.
func TestLogTally(t *testing.T) {
	ts := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	feed := func(msgs ...string) (*logTally, error) {
		tl := newLogTally("reeve", 3)
		for i, m := range msgs {
			if err := tl.add(ts.Add(time.Duration(i+1)*time.Millisecond), ts, m); err != nil {
				return tl, err
			}
		}
		return tl, nil
	}
	tl, err := feed("line 1", "line 2", "line 3", "lines done")
	if !errors.Is(err, errLogsComplete) {
		t.Fatalf("every line then %q: %v", linesDone, err)
	}
	if s := tl.result(); s.Lines != 3 || s.Span != 2*time.Millisecond || s.P50 != 2*time.Millisecond || s.P99 != 3*time.Millisecond {
		t.Errorf("result %+v", s)
	}
	for name, msgs := range map[string][]string{
		"a line twice":        {"line 1", "line 1"},
		"a line missing":      {"line 1", "line 3"},
		"out of order":        {"line 2", "line 1"},
		"another line":        {"line 1", "hello"},
		"more lines than N":   {"line 1", "line 2", "line 3", "line 4"},
		"the last line again": {"line 1", "line 2", "line 3", "line 3"},
	} {
		if _, err := feed(msgs...); err == nil || errors.Is(err, errLogsComplete) {
			t.Errorf("%s: %v, want a failure", name, err)
		}
	}
	if tl, err := feed("line 1", "line 2"); err != nil || tl.got.Load() != 2 {
		t.Errorf("two of three lines: %v, %d counted", err, tl.got.Load())
	}
}

// The engine's timestamped stream, split anywhere across writes, gives
// each line with its timestamp.
func TestTimestampedLines(t *testing.T) {
	stream := "2026-11-23T12:00:00.000000001Z line 1\n2026-11-23T12:00:00.5Z line 2\n2026-11-23T12:00:01Z line 3\n2026-11-23T12:00:01Z lines done\n"
	for split := 1; split < len(stream); split++ {
		tl := newLogTally("docker", 3)
		w := &timestampedLines{tally: tl}
		var err error
		for _, part := range []string{stream[:split], stream[split:]} {
			if _, err = w.Write([]byte(part)); err != nil {
				break
			}
		}
		if !errors.Is(err, errLogsComplete) || tl.result().Lines != 3 {
			t.Fatalf("split at %d: %v, %d lines", split, err, tl.result().Lines)
		}
		if want := time.Date(2026, 11, 23, 12, 0, 0, 1, time.UTC); !tl.firstTS.Equal(want) || !tl.lastTS.Equal(want.Add(time.Second-1)) {
			t.Fatalf("split at %d: timestamps %s … %s", split, tl.firstTS, tl.lastTS)
		}
	}
	w := &timestampedLines{tally: newLogTally("docker", 3)}
	if _, err := w.Write([]byte("line 1\n")); err == nil {
		t.Error("a line without a timestamp passed")
	}
}
