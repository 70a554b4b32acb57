// Command reeve is the fleet server, device agent, gateway, CLI and
// all-in-one of the reeve fleet system. This file wires flags to roles and
// nothing else.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/devmode"
	"reeve.dev/reeve/internal/example"
)

// usageError marks errors in what the user typed or sent: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := rootCmd()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "reeve:", err)
	os.Exit(exitCode(err))
}

// exitCode is 2 for what the user typed or sent wrong (a bad flag, an
// invalid compose file or target), 1 for everything else.
func exitCode(err error) int {
	var ue usageError
	var ve *reeve.ValidationError
	if errors.As(err, &ue) || errors.As(err, &ve) || reeve.ErrorCode(err) == reeve.CodeInvalid {
		return 2
	}
	return 1
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "reeve",
		Short:         "reeve keeps fleets of edge devices in line with what they should run",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       reeve.Version,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(append([]*cobra.Command{agentCmd(), devCmd(), localCmd(), exampleCmd(), benchCmd()}, fleetCommands()...)...)
	root.AddCommand(serverCmd(), gatewayCmd())
	return root
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", level)}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func agentCmd() *cobra.Command {
	var cfg agentd.Config
	var level string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the device agent",
		Long: `Run the device agent: it keeps this device's containers in line with its
target state, through crashes, power cuts and network loss.

With --config (default /etc/reeve/config.json, as printed by ` + "`reeve key create`" + `)
the agent registers with the fleet server in it, takes its target state from
there (long polls: updates arrive at once) and reports its state. The file
gets the device's UUID and key written into it on the first start, and loses
the provisioning key once the device is registered.

In local mode (--local) the target is set on the device itself with
` + "`reeve local apply`" + `; no fleet server is needed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(level)
			if err != nil {
				return err
			}
			cfg.Logger = log
			m, err := agentd.New(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return m.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", "/var/lib/reeve", "directory for the agent's database (update locks live under /run/reeve)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:48484", "address of the agent's local API")
	f.StringVar(&cfg.ConfigPath, "config", "/etc/reeve/config.json", "the device's config.json: its fleet server, provisioning key and identity (`reeve key create` makes one)")
	f.BoolVar(&cfg.Local, "local", false, "local mode: take the target state from the local API, not a fleet server")
	f.StringVar(&cfg.DockerHost, "docker-host", "", "Docker Engine address (default: $DOCKER_HOST or unix:///var/run/docker.sock)")
	f.StringVar(&cfg.RegistryAuth, "registry-auth", "", "docker config.json holding registry credentials")
	f.StringVar(&cfg.DeviceName, "device-name", "", "device name (default: the host name)")
	f.StringVar(&cfg.DeviceType, "device-type", "", "device type (default: generic-<arch>)")
	f.StringSliceVar(&cfg.RebootCommand, "reboot-command", nil, "command POST /v1/reboot runs, comma-separated (default: logind over D-Bus with busctl, else systemctl,reboot)")
	f.StringSliceVar(&cfg.ShutdownCommand, "shutdown-command", nil, "command POST /v1/shutdown runs, comma-separated (default: logind over D-Bus with busctl, else systemctl,poweroff)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&cfg.Namespace, "namespace", "", "separate this agent's containers from other agents' on the same engine")
	_ = f.MarkHidden("namespace")
	return cmd
}

func devCmd() *cobra.Command {
	var cfg devmode.Config
	var level string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a fleet server and an agent on this machine, with an example app, for a first run",
		Long: `Run a fleet server and a device agent on this machine on embedded
defaults: a fleet "hello" that the agent joins like any device, an example
app pushed to it (served from a registry inside this process: no internet
needed), ` + "`reeve gateway`" + ` driving --boards simulated microcontrollers of a
dependent fleet "hello-boards" with a firmware release, and the CLI logged in
to the server. Everything is kept under --data; the next start resumes (the
simulated boards start blank each time and are updated again).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(level)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.Out = cmd.OutOrStdout()
			m, err := devmode.New(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return m.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", "", "data directory (default: ~/.reeve/dev)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:48484", "address of the agent's local API")
	f.StringVar(&cfg.ServerListen, "server-listen", "127.0.0.1:48400", "address of the fleet server")
	f.StringVar(&cfg.RegistryListen, "registry", "127.0.0.1:48485", "address of the registry serving the example image")
	f.StringVar(&cfg.GatewayListen, "gateway-listen", "127.0.0.1:1337", "address of reeve gateway's API (it drives the simulated boards)")
	f.IntVar(&cfg.Boards, "boards", 5, "simulated microcontrollers behind the device")
	f.StringVar(&cfg.DockerHost, "docker-host", "", "Docker Engine address (default: $DOCKER_HOST or unix:///var/run/docker.sock)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func exampleCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "example-app web|worker",
		Short:              "Run a service of the example app (inside its container)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			return example.Run(args)
		},
	}
}
