package main

// What the operator commands print: JSON for machines (the API's own
// shapes), aligned tables with a header row for people.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

// shortUUID is how many characters of a device UUID tables show, and the
// shortest prefix the device commands accept.
const shortUUID = 7

// shortCommit is how many characters of a release commit tables show.
const shortCommit = 7

// printJSON prints v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printList prints a listing as a JSON array ([] when empty, never null).
func printList[T any](w io.Writer, list []T) error {
	if list == nil {
		list = []T{}
	}
	return printJSON(w, list)
}

// table is what a listing shows people: a header row and rows.
type table struct {
	header []string
	rows   [][]string
}

// print prints the rows under the header, aligned; with no rows it prints
// empty instead (such as "no fleets").
func (t table) print(w io.Writer, empty string) {
	if len(t.rows) == 0 {
		fmt.Fprintln(w, empty)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.header, "\t"))
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

// printFields prints label/value pairs aligned, leaving out empty values.
func printFields(w io.Writer, fields [][2]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range fields {
		if f[1] != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", f[0], f[1])
		}
	}
	tw.Flush()
}

// orDash shows an empty value as "-" in a table.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// deref is the value of an optional reported field, "" when absent.
func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// relTime says how far t is from now for people: "12s ago", "in 29d";
// never for a zero time.
func relTime(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < 0 {
		return "in " + roughDuration(-d)
	}
	if d < time.Second {
		return "just now"
	}
	return roughDuration(d) + " ago"
}

// roughDuration writes d in its largest whole unit: 12s, 5m, 3h, 4d.
func roughDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// commitText shows the release a device runs against the one it should:
// "9f2c41d" when they agree, "9f2c41d -> 0be11a3" while it moves.
func commitText(current, target string) string {
	cur := orDash(short(current, shortCommit))
	if target == "" || target == current {
		return cur
	}
	return cur + " -> " + short(target, shortCommit)
}

// statusText is a device's reported status with its update status when an
// update is under way or failed.
func statusText(r reeve.DeviceReport) string {
	s := orDash(deref(r.Status))
	if u := deref(r.UpdateStatus); u != "" && u != "done" {
		s += " (" + u + ")"
	}
	return s
}

// serviceNames lists a release's services by name.
func serviceNames(r reeve.Release) string {
	return strings.Join(slices.Sorted(maps.Keys(r.Services)), ", ")
}

// plural writes n with its noun: "1 service", "2 services".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// problemList writes the problems of a validation error one a line, or
// reports false when err is no validation error.
func problemList(err error) (string, bool) {
	var ve *reeve.ValidationError
	if !errors.As(err, &ve) {
		return "", false
	}
	var b strings.Builder
	for _, p := range ve.Problems {
		b.WriteString("\n  " + p.String())
	}
	return b.String(), true
}

// fleetTable lists fleets; CLASS is fleet or dependent, PARENT the fleet
// whose devices carry a dependent fleet's; RELEASE is what their devices
// run: the newest release or a pinned one.
func fleetTable(fleets []reeve.Fleet, now time.Time) table {
	t := table{header: []string{"NAME", "ID", "CLASS", "PARENT", "DEVICE TYPE", "STRATEGY", "RELEASE", "CREATED"}}
	names := make(map[int64]string, len(fleets))
	for _, f := range fleets {
		names[f.ID] = f.Name
	}
	for _, f := range fleets {
		release := "latest"
		if f.PinnedRelease != "" {
			release = "pinned " + f.PinnedRelease
		}
		class := f.Class
		if class == "" {
			class = reeve.ClassFleet
		}
		var parent string
		if f.ParentID != 0 {
			parent = names[f.ParentID]
			if parent == "" {
				parent = fmt.Sprint(f.ParentID)
			}
		}
		t.rows = append(t.rows, []string{f.Name, fmt.Sprint(f.ID), class, orDash(parent), orDash(f.DeviceType), orDash(f.UpdateStrategy), release, relTime(f.CreatedAt, now)})
	}
	return t
}

// keyTable lists provisioning keys (never their secrets).
func keyTable(keys []reeve.ProvisioningKey, now time.Time) table {
	t := table{header: []string{"ID", "NAME", "STATUS", "EXPIRES", "CREATED"}}
	for _, k := range keys {
		status := "usable"
		switch {
		case !k.RevokedAt.IsZero():
			status = "revoked " + relTime(k.RevokedAt, now)
		case !k.Usable(now):
			status = "expired"
		}
		t.rows = append(t.rows, []string{fmt.Sprint(k.ID), orDash(k.Name), status, relTime(k.ExpiresAt, now), relTime(k.CreatedAt, now)})
	}
	return t
}

// releaseTable lists releases with their full commits (what pins take).
func releaseTable(rels []reeve.FleetRelease, now time.Time) table {
	t := table{header: []string{"COMMIT", "SERVICES", "NAMES", "CREATED"}}
	for _, r := range rels {
		t.rows = append(t.rows, []string{r.Commit, fmt.Sprint(len(r.Release.Services)), orDash(serviceNames(r.Release)), relTime(r.CreatedAt, now)})
	}
	return t
}

// deviceTable lists devices with short UUIDs (longer when two devices
// share their first characters) and the release each runs against the
// one it should. When dependent devices are listed, GATEWAY shows the
// device that carries each.
func deviceTable(devs []serverapi.DeviceView, now time.Time) table {
	t := table{header: []string{"UUID", "NAME", "FLEET", "STATUS", "ONLINE", "COMMIT", "LAST SEEN"}}
	gateways := slices.ContainsFunc(devs, func(d serverapi.DeviceView) bool { return d.Gateway != "" })
	if gateways {
		t.header = append(t.header, "GATEWAY")
	}
	n := uniquePrefix(devs)
	for _, d := range devs {
		row := []string{
			short(d.UUID, n), orDash(d.Name), orDash(d.Fleet), statusText(d.State), yesNo(d.Online),
			commitText(deref(d.State.Commit), d.TargetCommit), relTime(d.LastSeen, now),
		}
		if gateways {
			row = append(row, orDash(short(d.Gateway, shortUUID)))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

// uniquePrefix is how many characters of the devices' UUIDs tell them
// apart: shortUUID, or more when two devices share their first ones.
func uniquePrefix(devs []serverapi.DeviceView) int {
	uuids := make([]string, len(devs))
	for i, d := range devs {
		uuids[i] = d.UUID
	}
	slices.Sort(uuids) // UUIDs sharing a prefix are neighbours
	n := shortUUID
	for i := 1; i < len(uuids); i++ {
		a, b := uuids[i-1], uuids[i]
		k := 0
		for k < len(a) && k < len(b) && a[k] == b[k] {
			k++
		}
		n = max(n, k+1)
	}
	return n
}

// varTable lists the variables of one scope.
func varTable(vars []reeve.Variable) table {
	t := table{header: []string{"NAME", "VALUE"}}
	for _, v := range vars {
		t.rows = append(t.rows, []string{v.Name, v.Value})
	}
	return t
}

// printDevice prints one device for people: what it is, what it runs and
// what it reported.
func printDevice(w io.Writer, d serverapi.DeviceView, now time.Time) {
	st := d.State
	online := yesNo(d.Online) + " (last seen " + relTime(d.LastSeen, now) + ")"
	target := orDash(d.TargetCommit)
	if d.PinnedRelease != "" {
		target += " (device pinned)"
	}
	var tags []string
	for _, k := range slices.Sorted(maps.Keys(d.Tags)) {
		tags = append(tags, k+"="+d.Tags[k])
	}
	var pollInterval string
	if st.PollInterval != nil {
		pollInterval = st.PollInterval.D().String()
	}
	var reportedOnline string // a dependent device's, by its gateway
	if st.IsOnline != nil {
		reportedOnline = yesNo(*st.IsOnline)
	}
	printFields(w, [][2]string{
		{"UUID", d.UUID},
		{"Name", d.Name},
		{"Fleet", d.Fleet},
		{"Device type", d.DeviceType},
		{"Gateway", d.Gateway},
		{"Local ID", d.LocalID},
		{"Online", online},
		{"Reported online", reportedOnline},
		{"Status", statusText(st)},
		{"Commit", orDash(deref(st.Commit))},
		{"Target commit", target},
		{"Last error", deref(st.LastError)},
		{"IP address", deref(st.IPAddress)},
		{"OS", deref(st.OSVersion)},
		{"Agent", deref(st.AgentVersion)},
		{"Poll interval", pollInterval},
		{"Tags", strings.Join(tags, ", ")},
		{"Registered", relTime(d.CreatedAt, now)},
	})
	svcTable := table{header: []string{"SERVICE", "STATUS", "RELEASE", "IMAGE"}}
	for _, app := range slices.Sorted(maps.Keys(st.Apps)) {
		rels := st.Apps[app].Releases
		for _, commit := range slices.Sorted(maps.Keys(rels)) {
			svcs := rels[commit].Services
			for _, name := range slices.Sorted(maps.Keys(svcs)) {
				s := svcs[name]
				status := s.Status
				if s.DownloadProgress != nil && s.Status == "downloading" {
					status = fmt.Sprintf("downloading %d %%", *s.DownloadProgress)
				}
				if s.ExitCode != nil {
					status += fmt.Sprintf(" (exit %d)", *s.ExitCode)
				}
				if s.Error != "" {
					status += " - error: " + s.Error
				}
				svcTable.rows = append(svcTable.rows, []string{name, orDash(status), short(commit, shortCommit), s.Image})
			}
		}
	}
	if len(svcTable.rows) > 0 {
		fmt.Fprintln(w)
		svcTable.print(w, "")
	}
}
