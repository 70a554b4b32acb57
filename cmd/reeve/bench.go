package main

import (
	"strings"
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve/internal/bench"
)

func benchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure reeve against a peer on this machine",
	}
	cmd.AddCommand(benchApplyCmd())
	cmd.AddCommand(benchServerCmd())
	cmd.AddCommand(benchLogsCmd())
	cmd.AddCommand(benchGatewayCmd())
	return cmd
}

func benchApplyCmd() *cobra.Command {
	var opts bench.ApplyOptions
	var composeCmd string
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Apply the same compose file with reeve and with docker compose, alternating; print medians and the ratio",
		Long: `Apply the same compose file with reeve and with docker compose on the same
engine, alternating for --rounds rounds, from images already pulled; then time
a no-op reconcile with --noop-services services and read the agent's memory.
The reeve binary is packed into the services' image, so it must be static
(CGO_ENABLED=0).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if composeCmd != "" {
				opts.ComposeCommand = strings.Fields(composeCmd)
			}
			return bench.Apply(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Rounds, "rounds", 5, "rounds of each side")
	f.IntVar(&opts.Services, "services", 5, "services in the applied compose file")
	f.IntVar(&opts.NoopServices, "noop-services", 20, "services for the no-op reconcile and memory measurement")
	f.StringVar(&opts.DockerHost, "docker-host", "", "Docker Engine address (default: $DOCKER_HOST or unix:///var/run/docker.sock)")
	f.StringVar(&composeCmd, "compose", "", `compose command (default: "docker compose" if it works, else "docker-compose")`)
	f.DurationVar(&opts.RSSDelay, "rss-delay", 10*time.Second, "how long the converged agent runs before its memory is read")
	return cmd
}
