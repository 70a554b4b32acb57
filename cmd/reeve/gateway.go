package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve/internal/gateway"
	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/gateway/driver/lwm2m"
	"reeve.dev/reeve/internal/gateway/driver/mqtt"
	"reeve.dev/reeve/internal/gateway/driver/sim"
)

// gatewayDrivers are the drivers `reeve gateway` knows, by name.
func gatewayDrivers() map[string]driver.Factory {
	return map[string]driver.Factory{
		"sim":   sim.New,
		"mqtt":  mqtt.New,
		"lwm2m": lwm2m.New,
	}
}

// firstEnv returns the first of the variables that is set.
func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// parseDriverOpts reads --driver-opt driver.key=value flags.
func parseDriverOpts(opts []string, drivers map[string]driver.Factory) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for _, o := range opts {
		k, v, ok := strings.Cut(o, "=")
		name, key, ok2 := strings.Cut(k, ".")
		if !ok || !ok2 || key == "" {
			return nil, usageError{fmt.Errorf("--driver-opt %q: use driver.key=value, such as sim.devices=20", o)}
		}
		if drivers[name] == nil {
			return nil, usageError{fmt.Errorf("--driver-opt %q: no driver %q", o, name)}
		}
		if out[name] == nil {
			out[name] = map[string]string{}
		}
		out[name][key] = v
	}
	return out, nil
}

// loopDelayFromEnv reads REEVE_GATEWAY_LOOP_DELAY (a duration) or
// ENM_CONFIG_LOOP_DELAY (seconds).
func loopDelayFromEnv() (time.Duration, error) {
	if v := os.Getenv("REEVE_GATEWAY_LOOP_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return 0, usageError{fmt.Errorf("REEVE_GATEWAY_LOOP_DELAY %q is not a duration such as 10s", v)}
		}
		return d, nil
	}
	if v := os.Getenv("ENM_CONFIG_LOOP_DELAY"); v != "" {
		s, err := strconv.ParseFloat(v, 64)
		if err != nil || s <= 0 {
			return 0, usageError{fmt.Errorf("ENM_CONFIG_LOOP_DELAY %q is not a number of seconds", v)}
		}
		return time.Duration(s * float64(time.Second)), nil
	}
	return 10 * time.Second, nil
}

func gatewayCmd() *cobra.Command {
	var (
		cfg   gateway.Config
		opts  []string
		level string
	)
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the gateway: drive dependent devices (microcontrollers) for the agent",
		Long: `Run the gateway (the edge node manager) beside the agent of a gateway device.
It finds the devices of each dependent app over their own links (a driver per
app: sim, mqtt or lwm2m, the one REEVE_GATEWAY_DRIVER in the app's config names, else --driver),
provisions them through the agent, installs their firmware releases, gives
them their config and environment, and reports their status and logs.

It reaches the agent through REEVE_SUPERVISOR_ADDRESS and
REEVE_SUPERVISOR_API_KEY (or their BALENA_/RESIN_ forms), which a service
labelled io.reeve.features.supervisor-api gets, or --agent and --agent-key.
The agent's hooks reach it at --listen (the agent's default hook address is
http://127.0.0.1:1337). See docs/gateway.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(level)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.Drivers = gatewayDrivers()
			if cfg.Settings, err = parseDriverOpts(opts, cfg.Drivers); err != nil {
				return err
			}
			if !cmd.Flags().Changed("loop-delay") {
				if cfg.LoopDelay, err = loopDelayFromEnv(); err != nil {
					return err
				}
			}
			if cfg.AgentAddress == "" {
				cfg.AgentAddress = firstEnv("REEVE_SUPERVISOR_ADDRESS", "BALENA_SUPERVISOR_ADDRESS", "RESIN_SUPERVISOR_ADDRESS")
			}
			if cfg.AgentKey == "" {
				cfg.AgentKey = firstEnv("REEVE_SUPERVISOR_API_KEY", "BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY")
			}
			g, err := gateway.New(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return g.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.AgentAddress, "agent", "", "the agent's API, such as http://127.0.0.1:48484 (default $REEVE_SUPERVISOR_ADDRESS)")
	f.StringVar(&cfg.AgentKey, "agent-key", "", "the agent's API key (default $REEVE_SUPERVISOR_API_KEY)")
	f.StringVar(&cfg.DataDir, "data", "/var/lib/reeve-gateway", "directory for the gateway's database and firmware")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:1337", "address of the gateway's API and hook receiver")
	f.StringVar(&cfg.FirmwareURL, "firmware-url", "", "how devices that download firmware themselves reach this gateway, such as http://192.168.1.10:1337 (default: the listen address)")
	f.StringVar(&cfg.Driver, "driver", "", "driver for apps whose config has no REEVE_GATEWAY_DRIVER: sim, mqtt or lwm2m")
	f.StringArrayVar(&opts, "driver-opt", nil, "a driver setting, driver.key=value (repeat), such as sim.devices=20")
	f.DurationVar(&cfg.LoopDelay, "loop-delay", 10*time.Second, "wait between two rounds (default $REEVE_GATEWAY_LOOP_DELAY, or $ENM_CONFIG_LOOP_DELAY seconds, else 10s)")
	f.IntVar(&cfg.UpdateRetries, "update-retries", 3, "installs of one release tried on a device before it is left failed")
	f.DurationVar(&cfg.UpdateTimeout, "update-timeout", 30*time.Minute, "longest one install may take")
	f.IntVar(&cfg.Parallel, "parallel", 32, "installs at once")
	f.StringVar(&cfg.LockFile, "lock-file", "", "while this file exists, installs and restarts wait (default $REEVE_APP_LOCK_PATH, else /tmp/reeve/updates.lock)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	return cmd
}
