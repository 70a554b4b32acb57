package gateway

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestWarnOnceWhileAProblemRepeats(t *testing.T) {
	var buf bytes.Buffer
	g := &Gateway{warned: map[string]string{}, log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for range 3 {
		g.warn("report/d1", "cannot report", "err", "agent down")
	}
	g.warn("report/d2", "cannot report", "err", "agent down") // another device
	g.warn("report/d1", "cannot report", "err", "agent refused")
	g.fine("report/d1")
	g.warn("report/d1", "cannot report", "err", "agent refused") // back after a good spell
	if n := strings.Count(buf.String(), "level=WARN"); n != 4 {
		t.Fatalf("%d warnings, want 4 (new, other device, changed, back):\n%s", n, buf.String())
	}
}
