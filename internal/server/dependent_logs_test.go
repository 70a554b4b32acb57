package server

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
)

// A gateway ships the lines of the dependent devices it carries in its own
// log stream; each line is stored under its device.

// depLine is a line of device (none: the gateway's own) with seq.
func depLine(device string, seq uint64, msg string) reeve.LogLine {
	return reeve.LogLine{Device: device, Seq: seq, Service: "firmware", Message: msg}
}

func (e *depEnv) lines(t *testing.T, uuid string) []string {
	t.Helper()
	ls, err := e.s.DeviceLogs(t.Context(), uuid, LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.Device != uuid {
			t.Errorf("a line of device %s is stored as %s's", l.Device, uuid)
		}
	}
	return msgsOf(ls)
}

func TestLogsOfDependentDevices(t *testing.T) {
	e := newDepEnv(t)
	ctx := t.Context()
	a := e.dependent(t, e.gw1, strings.Repeat("d", 32), "a")
	theirs := e.dependent(t, e.gw2, strings.Repeat("e", 32), "theirs")
	f, hist, err := e.s.FollowLogs(ctx, a.UUID, LogQuery{})
	if err != nil || len(hist) != 0 {
		t.Fatalf("follow a: %v %v", hist, err)
	}
	defer f.Close()

	in, err := e.s.LogIngest(e.gw1, "s1")
	if err != nil {
		t.Fatal(err)
	}
	lines := []reeve.LogLine{
		depLine("", 1, "gw one"), depLine(a.UUID, 2, "a two"), depLine(e.gw1.UUID, 3, "gw three"), depLine(a.UUID, 4, "a four"),
	}
	for i := range lines {
		if err := in.Check(ctx, &lines[i]); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
	}
	calls := len(e.ls.commits())
	res, err := in.Append(ctx, lines)
	if err != nil {
		t.Fatal(err)
	}
	if res.LastSeq != 4 || len(res.Stored) != 4 || res.Duplicates != 0 {
		t.Errorf("appended: last seq %d, %d stored, %d duplicates; want 4, 4, 0", res.LastSeq, len(res.Stored), res.Duplicates)
	}
	commits := e.ls.commits()[calls:]
	if len(commits) != 1 || len(commits[0]) != 2 || commits[0][0].Device != e.gw1.UUID || commits[0][1].Device != a.UUID || commits[0][1].Stream != "s1" {
		t.Errorf("the lines went to the store as %+v, want one call with a batch of the gateway's and one of a's, in its stream", commits)
	}
	if diff := cmp.Diff([]string{"gw one", "gw three"}, e.lines(t, e.gw1.UUID)); diff != "" {
		t.Errorf("gateway's lines (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a two", "a four"}, e.lines(t, a.UUID)); diff != "" {
		t.Errorf("a's lines (-want +got):\n%s", diff)
	}
	if got := msgsOf(next(t, f)); !cmp.Equal(got, []string{"a two", "a four"}) {
		t.Errorf("a's follower got %q", got)
	}

	// Lines of devices the gateway does not carry are refused.
	for _, other := range []string{theirs.UUID, e.kiosk.UUID, e.gw2.UUID, strings.Repeat("9", 32), "not-a-uuid"} {
		l := depLine(other, 5, "spoof")
		wantCode(t, in.Check(ctx, &l), reeve.CodeInvalid, "device", other)
	}

	// A device registered after the stream began is taken.
	late := e.dependent(t, e.gw1, strings.Repeat("b", 32), "late")
	l := depLine(late.UUID, 5, "late five")
	if err := in.Check(ctx, &l); err != nil {
		t.Fatalf("a line of a device registered meanwhile: %v", err)
	}
	// Only a dependent's line: LastSeq still counts the gateway's.
	if res, err := in.Append(ctx, []reeve.LogLine{l}); err != nil || res.LastSeq != 5 {
		t.Fatalf("appended late's line: %+v %v", res, err)
	}

	// Again: duplicates by stream and seq, per device; LastSeq is the
	// highest of the devices the lines are of, at least theirs.
	again := []reeve.LogLine{depLine(a.UUID, 4, "a four"), depLine("", 3, "gw three")}
	for i := range again {
		if err := in.Check(ctx, &again[i]); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := in.Append(ctx, again); err != nil || res.Duplicates != 2 || len(res.Stored) != 0 || res.LastSeq != 4 {
		t.Errorf("sent again: %+v %v; want 2 duplicates and last seq 4", res, err)
	}

	// An empty request asks how far the stream is: its highest seq, a
	// dependent device's here.
	fresh, err := e.s.LogIngest(e.gw1, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := fresh.Append(ctx, nil); err != nil || res.LastSeq != 5 {
		t.Errorf("empty request: %+v %v; want last seq 5", res, err)
	}
}

// TestLogsOfARemovedDependentDevice: a dependent device removed while its
// gateway streams loses the lines on their way, without failing the
// request: the gateway's are stored.
func TestLogsOfARemovedDependentDevice(t *testing.T) {
	e := newDepEnv(t)
	ctx := t.Context()
	a := e.dependent(t, e.gw1, strings.Repeat("d", 32), "a")
	in, err := e.s.LogIngest(e.gw1, "s1")
	if err != nil {
		t.Fatal(err)
	}
	lines := []reeve.LogLine{depLine(a.UUID, 1, "a one"), depLine("", 2, "gw two")}
	for i := range lines {
		if err := in.Check(ctx, &lines[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.s.DeleteDevice(ctx, a.UUID); err != nil {
		t.Fatal(err)
	}
	res, err := in.Append(ctx, lines)
	if err != nil {
		t.Fatalf("the gateway's lines were refused with a removed device's: %v", err)
	}
	if diff := cmp.Diff([]string{"gw two"}, msgsOf(res.Stored)); diff != "" {
		t.Errorf("stored (-want +got):\n%s", diff)
	}
	for _, b := range e.ls.commits()[len(e.ls.commits())-1] {
		if b.Device == a.UUID {
			t.Errorf("the lines of a removed device went to the store: %+v", b)
		}
	}
	lines, err = e.ls.LogLines(ctx, a.UUID, store.LogQuery{})
	if err != nil || len(lines) != 0 {
		t.Errorf("a removed device has lines: %v %v", lines, err)
	}
	// A request that begins after the removal refuses its lines.
	in, err = e.s.LogIngest(e.gw1, "s1")
	if err != nil {
		t.Fatal(err)
	}
	l := depLine(a.UUID, 3, "a three")
	wantCode(t, in.Check(ctx, &l), reeve.CodeInvalid, a.UUID)
}
