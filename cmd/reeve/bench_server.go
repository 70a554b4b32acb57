package main

import (
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve/internal/bench"
)

func benchServerCmd() *cobra.Command {
	var opts bench.ServerOptions
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Load the fleet server: poll throughput against bare net/http, and a fleet of simulated devices",
		Long: `Run the fleet server (` + "`reeve server`" + ` from --binary, as a child process) under
load and print what it did.

Poll throughput: --poll-devices registered devices read their target state
(GET /device/v3/{uuid}/state) from --concurrency keep-alive clients for
--duration, without If-None-Match (200) and with the ETag (304). The same is
run against a bare net/http handler in another child process serving the same
bytes and ETags from memory; the sides alternate for --rounds rounds, and
requests/s, p50/p99 latency and the ratio reeve/peer are printed.

Fleet: a fresh server, --devices devices registered concurrently; each keeps a
long poll open (?wait=--wait with its ETag) and reports its state every
--report-every for --devices-duration. Halfway a release is pushed, and the
time until every long poll answered 200 with it is measured. Report latency,
errors by kind, and the server's memory (VmRSS, VmHWM), open files and CPU
time are printed.

RLIMIT_NOFILE is raised to its hard limit; the servers inherit it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := bench.Server(cmd.Context(), opts, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Binary, "binary", "", "reeve binary run as the server and the peer (default: this one)")
	f.StringVar(&opts.DataDir, "data", "", "keep the servers' databases and logs under this directory (default: a temporary one, removed after)")
	f.IntVar(&opts.PollDevices, "poll-devices", 100, "devices the poll throughput is measured with")
	f.IntVar(&opts.Concurrency, "concurrency", 32, "concurrent clients of the poll throughput runs")
	f.DurationVar(&opts.Duration, "duration", 10*time.Second, "length of each poll throughput run (per round, path and side)")
	f.IntVar(&opts.Rounds, "rounds", 2, "poll throughput rounds; reeve and the peer alternate")
	f.IntVar(&opts.Devices, "devices", 10000, "simulated devices of the fleet part")
	f.DurationVar(&opts.DevicesDuration, "devices-duration", 60*time.Second, "length of the fleet part; the release is pushed halfway")
	f.DurationVar(&opts.ReportEvery, "report-every", 10*time.Second, "how often each simulated device reports its state")
	f.DurationVar(&opts.Wait, "wait", 60*time.Second, "long poll wait (?wait=) of the simulated devices")
	f.IntVar(&opts.RegisterConcurrency, "register-concurrency", 64, "registrations at a time")
	f.BoolVar(&opts.SkipPoll, "skip-poll", false, "leave out the poll throughput part")
	f.BoolVar(&opts.SkipDevices, "skip-devices", false, "leave out the fleet part")
	cmd.AddCommand(benchServerPeerCmd())
	return cmd
}

// benchServerPeerCmd is the peer `reeve bench server` measures against, run
// by it as a child process.
func benchServerPeerCmd() *cobra.Command {
	var targets, listen string
	cmd := &cobra.Command{
		Use:    "peer",
		Short:  "Serve fixed target states with bare net/http (run by `reeve bench server`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bench.ServePeer(cmd.Context(), targets, listen)
		},
	}
	cmd.Flags().StringVar(&targets, "targets", "", "JSON file of [{uuid, etag, body}]")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "address")
	_ = cmd.MarkFlagRequired("targets")
	return cmd
}
