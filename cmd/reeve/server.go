package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve/internal/server"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd"
)

func serverCmd() *cobra.Command {
	var cfg serverd.Config
	var level string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the fleet server",
		Long: `Run the fleet server: fleets, provisioning keys, devices, releases and
variables, kept in SQLite under --data. Devices poll it for their target
state (long polls: updates reach them at once) and report their state to it.
Their logs are kept apart, in logs.db under --data: at most --log-max-lines
lines a device, none received longer than --log-max-age ago.

The first start prints an operator token for ` + "`reeve login`" + `. For automation
give one with --admin-token or REEVE_ADMIN_TOKEN (it is accepted from then
on). Tokens and keys are stored hashed: a lost one is replaced, never shown
again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(level)
			if err != nil {
				return err
			}
			cfg.Logger = log
			if cfg.Logs.MaxLines < 1 {
				return usageError{fmt.Errorf("--log-max-lines %d: keep at least one line a device", cfg.Logs.MaxLines)}
			}
			if cfg.Logs.MaxAge < time.Minute {
				return usageError{fmt.Errorf("--log-max-age %s: keep lines at least a minute (e.g. 168h)", cfg.Logs.MaxAge)}
			}
			if cfg.AdminToken == "" {
				cfg.AdminToken = os.Getenv("REEVE_ADMIN_TOKEN")
			}
			m, err := serverd.New(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if t := m.FirstToken(); t != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "Operator token (shown only now; keep it safe):\n\n  %s\n\nLog the CLI in with:\n\n  reeve login %s --token %s\n\n", t, m.URL(), t)
			}
			return m.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", "/var/lib/reeve-server", "directory for the server's database")
	f.StringVar(&cfg.Listen, "listen", serverapi.DefaultAddress, "address of the device and operator APIs")
	f.StringVar(&cfg.AdminToken, "admin-token", "", "an operator token to accept (default $REEVE_ADMIN_TOKEN); without one the first start makes one")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.IntVar(&cfg.Logs.MaxLines, "log-max-lines", server.DefaultLogMaxLines, "how many log lines the server keeps a device (the oldest go first)")
	f.DurationVar(&cfg.Logs.MaxAge, "log-max-age", server.DefaultLogMaxAge, "how long device log lines are kept after the server got them")
	return cmd
}
