package main

// reeve logs: a device's log from the fleet server, its history and, with
// -f, what comes after.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/server"
	"reeve.dev/reeve/internal/serverapi"
)

func logsCmd() *cobra.Command {
	var (
		q      serverapi.LogQuery
		since  string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "logs UUID [-f] [--service S]... [--since T] [--system] [--tail N] [--json]",
		Short: "Show a device's log: its services' output and the agent's own lines",
		Long: `Show a device's log as the fleet server keeps it: the newest --tail lines
(oldest first), then with -f every line the device ships after them, until
you stop it (Ctrl-C). When the stream ends (the server restarts, the network
goes) -f follows again from the last line shown.

A line reads "2026-11-23 15:28:44.123 [web] listening on :80": the time
the device wrote it (in this machine's time zone), then the service, with
"stderr" for its standard error, and "system" for the agent's own lines
("[system] Killed service db"). --json prints the server's JSON instead,
one object a line, with each line's id and device.`,
		Example: "  reeve logs 5d6c4a0 -f\n  reeve logs 5d6c4a0 --service web --since 10m\n  reeve logs 5d6c4a0 --system --tail 50 --json",
		Args:    exactArgs(1),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if q.Limit < 1 || q.Limit > server.MaxLogLimit {
				return usageError{fmt.Errorf("--tail %d: give a number of lines from 1 to %d", q.Limit, server.MaxLogLimit)}
			}
			for _, s := range q.Services {
				if s == "" {
					return usageError{errors.New("--service: give a service name")}
				}
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return usageError{err}
				}
				q.Since = t
			}
			return nil
		},
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, _ []string) error {
			out := cmd.OutOrStdout()
			var last int64 // the ID of the last line shown
			show := func(l reeve.LogLine) error {
				last = max(last, l.ID)
				return printLogLine(out, l, asJSON)
			}
			err := c.Logs(cmd.Context(), uuid, q, show)
			if !q.Follow {
				return err
			}
			return followAgain(cmd, c, uuid, q, show, &last, err)
		}),
	}
	f := cmd.Flags()
	f.BoolVarP(&q.Follow, "follow", "f", false, "go on printing lines as the device ships them")
	f.StringArrayVar(&q.Services, "service", nil, "only this service's lines (repeat for several)")
	f.StringVar(&since, "since", "", "only lines written since this time: RFC 3339 (2026-11-23T15:04:05Z) or a duration ago (10m, 2h)")
	f.BoolVar(&q.System, "system", false, "only the agent's own lines (downloads, kills, failures)")
	f.IntVar(&q.Limit, "tail", server.DefaultLogLimit, fmt.Sprintf("how many of the newest lines to show first (at most %d)", server.MaxLogLimit))
	f.BoolVar(&asJSON, "json", false, "print the server's JSON, one object a line")
	return cmd
}

// followAgain keeps `reeve logs -f` going when its stream ends (the
// server restarted, the network went): it follows again from after the
// last line shown, waiting longer each time it fails at once (up to
// 30 s), until the user stops it or the server refuses (the device was
// removed, the token revoked).
func followAgain(cmd *cobra.Command, c *serverapi.Client, uuid string, q serverapi.LogQuery,
	show func(reeve.LogLine) error, last *int64, err error) error {
	ctx := cmd.Context()
	wait := time.Second
	for {
		if ctx.Err() != nil {
			return nil // stopped by the user
		}
		switch reeve.ErrorCode(err) {
		case reeve.CodeNotFound, reeve.CodeUnauthorized, reeve.CodeForbidden, reeve.CodeInvalid:
			return err
		}
		why := "the fleet server ended the log stream"
		if err != nil {
			why = err.Error()
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "reeve logs: %s; following again in %s\n", why, wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if *last > 0 {
			// What came meanwhile, up to the most the server gives.
			q.After, q.Limit = *last, server.MaxLogLimit
		}
		start := time.Now()
		err = c.Logs(ctx, uuid, q, show)
		if time.Since(start) > time.Minute {
			wait = time.Second
		} else {
			wait = min(2*wait, 30*time.Second)
		}
	}
}

// parseSince reads --since: an RFC 3339 time, or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--since %q: give an RFC 3339 time (2026-11-23T15:04:05Z) or a duration such as 10m", s)
}

// printLogLine prints one line for people, or as its JSON.
func printLogLine(w io.Writer, l reeve.LogLine, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(l)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintln(w, formatLogLine(l, time.Local))
	return err
}

// formatLogLine is a line as people read it:
// "2026-11-23 15:28:44.123 [web stderr] message".
func formatLogLine(l reeve.LogLine, loc *time.Location) string {
	var tag []string
	if l.Service != "" {
		tag = append(tag, l.Service)
	}
	if l.System {
		tag = append(tag, "system")
	}
	if l.Stderr {
		tag = append(tag, "stderr")
	}
	var b strings.Builder
	b.WriteString(l.Timestamp.In(loc).Format("2006-01-02 15:04:05.000"))
	if len(tag) > 0 {
		b.WriteString(" [" + strings.Join(tag, " ") + "]")
	}
	b.WriteString(" " + l.Message)
	return b.String()
}
