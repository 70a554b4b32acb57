package reeve

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTruncateLogMessage(t *testing.T) {
	if got := TruncateLogMessage("short"); got != "short" {
		t.Errorf("a short line changed: %q", got)
	}
	exact := strings.Repeat("a", MaxLogLineBytes)
	if got := TruncateLogMessage(exact); got != exact {
		t.Error("a line of exactly the limit was cut")
	}
	// A long line of 3-byte characters: cut on a character boundary.
	long := strings.Repeat("€", MaxLogLineBytes)
	got := TruncateLogMessage(long)
	if len(got) > MaxLogLineBytes || !strings.HasSuffix(got, LogTruncatedMarker) || !utf8.ValidString(got) {
		t.Errorf("cut line: %d bytes, marker %v, valid %v", len(got), strings.HasSuffix(got, LogTruncatedMarker), utf8.ValidString(got))
	}
}
