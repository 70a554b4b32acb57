package logship

import (
	"fmt"
	"testing"

	"reeve.dev/reeve"
)

func recs(from, to int) []Record {
	var out []Record
	for i := from; i <= to; i++ {
		out = append(out, Record{LogLine: reeve.LogLine{Seq: uint64(i), Message: fmt.Sprint(i)}})
	}
	return out
}

func msgs(lines []reeve.LogLine) string {
	var s []string
	for _, l := range lines {
		s = append(s, l.Message)
	}
	return fmt.Sprint(s)
}

func TestTailKeepsTheLastLines(t *testing.T) {
	tl := NewTail(3)
	if got := tl.Recent(10); len(got) != 0 {
		t.Fatalf("empty tail has %v", got)
	}
	tl.Add(recs(1, 2))
	if got := msgs(tl.Recent(10)); got != "[1 2]" {
		t.Errorf("recent %s", got)
	}
	tl.Add(recs(3, 7))
	if got := msgs(tl.Recent(10)); got != "[5 6 7]" {
		t.Errorf("recent after wrapping %s", got)
	}
	if got := msgs(tl.Recent(2)); got != "[6 7]" {
		t.Errorf("recent 2: %s", got)
	}
}

func TestTailFollow(t *testing.T) {
	tl := NewTail(10)
	tl.Add(recs(1, 3))
	recent, f := tl.Follow(2)
	if got := msgs(recent); got != "[2 3]" {
		t.Errorf("recent %s", got)
	}
	tl.Add(recs(4, 5))
	var got []reeve.LogLine
	got = append(got, <-f.Lines, <-f.Lines)
	if msgs(got) != "[4 5]" {
		t.Errorf("followed %s", msgs(got))
	}
	f.Close()
	if _, open := <-f.Lines; open {
		t.Error("lines still open after Close")
	}
	f.Close() // twice is fine
	tl.Add(recs(6, 6))
}

// A follower that does not read is ended, not waited for.
func TestTailEndsLaggingFollower(t *testing.T) {
	tl := NewTail(10)
	_, f := tl.Follow(0)
	tl.Add(recs(1, followerBuffer+1))
	n := 0
	for range f.Lines {
		n++
	}
	if n != followerBuffer || !f.Lagged() {
		t.Errorf("lagging follower got %d lines, lagged %v", n, f.Lagged())
	}
}
