package docker

import (
	"testing"

	"github.com/moby/moby/api/types/jsonstream"

	"reeve.dev/reeve/internal/runtime"
)

// TestPullProgress feeds a pull's messages where layers start one after the
// other and one has no total for a while: the percentage must never go
// down, stay below 100 until every layer's size is known, and Current must
// never exceed Total.
func TestPullProgress(t *testing.T) {
	msg := func(id, status string, cur, total int64) jsonstream.Message {
		m := jsonstream.Message{ID: id, Status: status}
		if cur != 0 || total != 0 {
			m.Progress = &jsonstream.Progress{Current: cur, Total: total}
		}
		return m
	}
	msgs := []jsonstream.Message{
		{Status: "Pulling from reeve/x", ID: "v1"},
		msg("a", "Pulling fs layer", 0, 0),
		msg("b", "Pulling fs layer", 0, 0),
		msg("c", "Waiting", 0, 0),
		msg("a", "Downloading", 90, 100),
		msg("a", "Downloading", 100, 100),
		msg("a", "Download complete", 0, 0),
		msg("b", "Downloading", 500, 0), // size unknown yet
		msg("b", "Downloading", 700, 0),
		msg("c", "Downloading", 10, 1000),
		msg("b", "Downloading", 800, 2000),
		msg("b", "Download complete", 0, 0),
		msg("c", "Downloading", 1000, 1000),
		msg("a", "Extracting", 100, 100),
		msg("a", "Pull complete", 0, 0),
		msg("c", "Pull complete", 0, 0),
		msg("b", "Pull complete", 0, 0),
	}
	var p pullProgress
	var got []runtime.Progress
	allKnown := 0 // reports before the one where every layer's size is known
	for i, m := range msgs {
		if pr, ok := p.observe(m); ok {
			got = append(got, pr)
		}
		if i < 10 {
			allKnown = len(got)
		}
	}
	got = append(got, p.final(0))
	last := -1
	for i, pr := range got {
		if pr.Current > pr.Total || pr.Current < 0 {
			t.Errorf("report %d: %+v: current beyond total", i, pr)
		}
		if pc := pr.Percent(); pc < last {
			t.Errorf("report %d: %+v: %d %% after %d %%", i, pr, pc, last)
		} else {
			last = pc
		}
		if i < allKnown && pr.Percent() > 99 {
			t.Errorf("report %d: %+v: 100 %% while a layer's size is unknown", i, pr)
		}
	}
	f := got[len(got)-1]
	if f.Total != 3100 || f.Current != f.Total {
		t.Errorf("final report %+v, want 3100/3100", f)
	}
	t.Logf("%v", got)

	// Nothing downloaded: the final report is the image's size.
	var q pullProgress
	q.observe(jsonstream.Message{ID: "a", Status: "Already exists"})
	if f := q.final(1234); f.Current != 1234 || f.Total != 1234 {
		t.Errorf("final report with nothing downloaded %+v", f)
	}
}
