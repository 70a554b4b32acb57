package main

import (
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve/internal/bench"
)

func benchGatewayCmd() *cobra.Command {
	var opts bench.GatewayOptions
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Update simulated boards behind one gateway at once; print the time to install and report, the gateway's memory, and the sim driver alone as the peer",
		Long: `Push a firmware release to a dependent fleet of --devices simulated boards
carried by one gateway device: a fleet server in this process, ` + "`reeve agent`" + ` and
` + "`reeve gateway`" + ` (sim driver, boards in its process) as child processes, on the
Docker Engine. Printed: the time from the push until the agent hears that every
board runs the release, and until the fleet server shows it (the agent reports
at most every 10 s); the gateway's memory (VmRSS) before and at its peak; and,
as the peer, the sim driver alone installing the same file on as many boards at
once, with the ratio between the two.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := bench.Gateway(cmd.Context(), opts, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Binary, "binary", "", "the reeve binary the agent and the gateway run (default: this one)")
	f.IntVar(&opts.Devices, "devices", 200, "simulated boards")
	f.IntVar(&opts.FirmwareBytes, "firmware-bytes", 256<<10, "size of the firmware file")
	f.IntVar(&opts.ChunkSize, "chunk-size", 4096, "bytes a board takes at a time")
	f.DurationVar(&opts.ChunkDelay, "chunk-delay", 2*time.Millisecond, "pause between two chunks of one board (its link's speed)")
	f.DurationVar(&opts.Timeout, "timeout", 10*time.Minute, "longest the update may take")
	f.StringVar(&opts.DockerHost, "docker-host", "", "Docker Engine address (default: $DOCKER_HOST or the default socket)")
	return cmd
}
