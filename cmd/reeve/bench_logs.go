package main

import (
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve/internal/bench"
)

func benchLogsCmd() *cobra.Command {
	var opts bench.LogsOptions
	var lines, rate int
	var burst bool
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Follow a container's log through the agent and the fleet server, and with docker logs -f; print lines/s, latency and the agent's memory",
		Long: `Run a container that prints "line 1" … "line N" (the reeve binary packed as an
image, ` + "`reeve example-app lines`" + `) under a ` + "`reeve agent`" + ` process provisioned to a fleet
server in this process, and follow its log at once on the server's log API
(reeve) and on the engine (ContainerLogs with follow, as ` + "`docker logs -f`" + ` does).
Both sides must receive every line once and in order. Printed per side: lines,
lines/s from the first line received to the last, the p50 and p99 of each
line's latency from its engine timestamp, and the ratio reeve/docker; and the
agent's memory (VmRSS) before and during the load.

Two loads by default: --lines at --rate lines/s, then the same count as fast as
the container prints (--burst=false leaves it out). The reeve binary is packed
into the image, so it must be static (CGO_ENABLED=0).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Loads = []bench.LogLoad{{Lines: lines, Rate: rate}}
			if burst && rate != 0 {
				opts.Loads = append(opts.Loads, bench.LogLoad{Lines: lines, Rate: 0})
			}
			_, err := bench.Logs(cmd.Context(), opts, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&lines, "lines", 60000, "lines the container prints in each load")
	f.IntVar(&rate, "rate", 2000, "lines a second of the paced load (0: as fast as it can)")
	f.BoolVar(&burst, "burst", true, "also run an unpaced load of --lines lines, as fast as the container prints")
	f.DurationVar(&opts.Delay, "delay", 3*time.Second, "how long the container waits before its first line, so that both followers are on")
	f.StringVar(&opts.Binary, "binary", "", "reeve binary packed into the image and run as the agent (default: this one)")
	f.StringVar(&opts.DockerHost, "docker-host", "", "Docker Engine address (default: $DOCKER_HOST or unix:///var/run/docker.sock)")
	return cmd
}
