package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

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
	return cmd
}
