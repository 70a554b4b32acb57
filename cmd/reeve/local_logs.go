package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/localapi"
)

func localLogsCmd() *cobra.Command {
	q := localapi.LogQuery{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "logs [-f] [--service S]... [--system] [--tail N] [--json]",
		Short: "Show the device's log as the agent sees it, without a fleet server",
		Long: `Show the device's log from the agent itself (GET /v2/local/logs): the newest
--tail lines it keeps in memory, then with -f every line as it is written,
until you stop it (Ctrl-C). Lines read as with "reeve logs".`,
		Example: "  reeve local logs -f\n  reeve local logs --service web --tail 20",
		Args:    cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if q.Tail < 0 {
				return usageError{fmt.Errorf("--tail %d: give a number of lines, 0 or more", q.Tail)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := deviceClient(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			err = c.Logs(cmd.Context(), q, func(l reeve.LogLine) error { return printLogLine(out, l, asJSON) })
			switch {
			case errors.Is(err, context.Canceled) && cmd.Context().Err() != nil:
				return nil // stopped by the user
			case err == nil && q.Follow:
				return errors.New("the agent ended the log stream (it is stopping, or this reader fell behind): run the command again to go on")
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&q.Follow, "follow", "f", false, "go on printing lines as they are written")
	f.StringArrayVar(&q.Services, "service", nil, "only this service's lines (repeat for several)")
	f.BoolVar(&q.System, "system", false, "only the agent's own lines (downloads, kills, failures)")
	f.IntVar(&q.Tail, "tail", localapi.DefaultLogTail, "how many of the newest lines to show first")
	f.BoolVar(&asJSON, "json", false, "print JSON, one object a line")
	return cmd
}
