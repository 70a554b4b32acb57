package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/compose"
	"reeve.dev/reeve/internal/fleetlink"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/logship"
)

func localCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "local",
		Short: "Work with an agent in local mode: apply a compose file, see its status",
	}
	cmd.PersistentFlags().String("device", localapi.DefaultAddress, "the agent's local API address")
	cmd.PersistentFlags().String("api-key", "", "the agent's API key (default: $REEVE_API_KEY, else read from the agent's data directory)")
	cmd.PersistentFlags().String("data", "/var/lib/reeve", "the agent's data directory, where its API key is")
	cmd.AddCommand(localApplyCmd(), localStatusCmd(), localTargetCmd(), localRemoveCmd(), localLogsCmd())
	return cmd
}

func deviceClient(cmd *cobra.Command) (*localapi.Client, error) {
	addr, _ := cmd.Flags().GetString("device")
	key, _ := cmd.Flags().GetString("api-key")
	if key == "" {
		key = os.Getenv("REEVE_API_KEY")
	}
	if key == "" {
		dir, _ := cmd.Flags().GetString("data")
		var err error
		if key, err = localapi.ReadKeyFile(dir); err != nil {
			return nil, err
		}
	}
	return localapi.NewClient(addr).WithKey(key), nil
}

func localApplyCmd() *cobra.Command {
	var file, name string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "apply -f docker-compose.yml",
		Short: "Make a compose file the device's target (validated first; nothing is applied if it is invalid)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := readInput(file)
			if err != nil {
				return usageError{err}
			}
			dir, _ := filepath.Abs(filepath.Dir(file))
			if file == "-" {
				dir, _ = os.Getwd()
			}
			if name == "" {
				name = compose.ProjectName(data, dir, environ())
			}
			rel, err := compose.Load(cmd.Context(), data, compose.Options{ProjectName: name, WorkingDir: dir, Env: environ()})
			if err != nil {
				return fmt.Errorf("%s is not a valid release: %w", file, err)
			}
			c, err := deviceClient(cmd)
			if err != nil {
				return err
			}
			commit := compose.Commit(data)
			version, info, err := c.ApplyApp(cmd.Context(), name, rel, commit)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "applied %s (release %s) as target version %d on device %s\n", name, commit, version, info.UUID)
			if !wait {
				fmt.Fprintln(cmd.OutOrStdout(), "follow it with: reeve local status")
				return nil
			}
			return waitApplied(cmd, c, version, timeout)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "docker-compose.yml", "compose file (- for standard input)")
	cmd.Flags().StringVar(&name, "name", "", "app name (default: the compose file's name, else its directory's)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the device has applied it")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long --wait waits")
	return cmd
}

func waitApplied(cmd *cobra.Command, c *localapi.Client, version int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.Status(cmd.Context())
		if err == nil && st.TargetVersion >= version && st.AppState == agent.AppStateApplied {
			fmt.Fprintln(cmd.OutOrStdout(), "applied")
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return fmt.Errorf("not applied after %s: state %s %s", timeout, st.AppState, st.LastError)
		}
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func localRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm APP",
		Short: "Remove an app from the target (its volumes are kept)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := deviceClient(cmd)
			if err != nil {
				return err
			}
			v, err := c.RemoveApp(cmd.Context(), args[0])
			if reeve.ErrorCode(err) == reeve.CodeNotFound {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s as target version %d\n", args[0], v)
			return nil
		},
	}
}

func localTargetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "target",
		Short: "Print the device's target state as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := deviceClient(cmd)
			if err != nil {
				return err
			}
			ts, _, err := c.Target(cmd.Context())
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(ts)
		},
	}
}

func localStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every service with its status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := deviceClient(cmd)
			if err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st.Status)
			}
			printFleetLink(cmd.OutOrStdout(), st.Fleet)
			printLogShipping(cmd.OutOrStdout(), st.Logs)
			printStatus(cmd.OutOrStdout(), st.Status)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printFleetLink says how the agent's connection to its fleet server is
// doing; nothing in local mode.
func printFleetLink(w io.Writer, l *fleetlink.LinkStatus) {
	if l == nil {
		return
	}
	state := "connected"
	switch {
	case !l.Provisioned:
		state = "not provisioned yet"
	case l.Unauthorized:
		state = "REFUSED by the server"
	case l.PollError != "":
		state = "unreachable"
	}
	fmt.Fprintf(w, "fleet server %s: %s", l.Server, state)
	if !l.LastPoll.IsZero() {
		fmt.Fprintf(w, " (last poll %s)", l.LastPoll.Local().Format(time.TimeOnly))
	}
	fmt.Fprintln(w)
	for _, e := range []string{l.ProvisionError, l.PollError, l.TargetError, l.ReportError} {
		if e != "" {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
}

// printLogShipping says how the device's log reaches the server, when
// anything is amiss: lines waiting, lines dropped, the last failure.
func printLogShipping(w io.Writer, l *logship.Status) {
	if l == nil || (l.Queue.Lines < 100 && l.Queue.Dropped == 0 && (l.Shipper == nil || l.Shipper.LastError == "")) {
		return
	}
	fmt.Fprintf(w, "log: %d lines waiting for the server (%s on disk)", l.Queue.Lines, humanBytes(l.Queue.Bytes))
	if l.Queue.Dropped > 0 {
		fmt.Fprintf(w, ", %d dropped since the queue was made (over its cap, or lost to damage)", l.Queue.Dropped)
	}
	fmt.Fprintln(w)
	if l.Shipper != nil && l.Shipper.LastError != "" {
		fmt.Fprintf(w, "  %s\n", l.Shipper.LastError)
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func printStatus(w io.Writer, st agent.Status) {
	fmt.Fprintf(w, "device %s: %s (target version %d, %s runtime)\n", st.DeviceUUID, st.AppState, st.TargetVersion, st.Runtime)
	if st.RuntimeError != "" {
		fmt.Fprintf(w, "runtime unreachable: %s\n", st.RuntimeError)
	}
	for _, cw := range st.ConfigWarnings {
		fmt.Fprintf(w, "device config: %s\n", cw)
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "last error: %s", st.LastError)
		if !st.RetryAt.IsZero() {
			fmt.Fprintf(w, " (retrying at %s)", st.RetryAt.Local().Format(time.TimeOnly))
		}
		fmt.Fprintln(w)
	}
	if len(st.Services) == 0 {
		fmt.Fprintln(w, "no services")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tSERVICE\tSTATUS\tRELEASE\tCONTAINER")
	for _, s := range st.Services {
		app := s.AppName
		if app == "" {
			app = short(s.AppUUID, 8)
		}
		release := short(s.Commit, 12)
		if s.CurrentCommit != "" && s.CurrentCommit != s.Commit {
			release = short(s.CurrentCommit, 12) + " -> " + release
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", app, s.Service, serviceStatusText(s), release, short(s.ContainerID, 12))
	}
	tw.Flush()
}

func serviceStatusText(s agent.ServiceStatus) string {
	parts := []string{s.Status}
	switch {
	case s.Status == agent.SvcDownloading && s.DownloadProgress != nil:
		parts[0] = fmt.Sprintf("downloading %d %%", *s.DownloadProgress)
	case s.Status == agent.SvcExited && s.ExitCode != nil:
		parts[0] = fmt.Sprintf("exited (%d)", *s.ExitCode)
	}
	if s.Health != "" {
		parts = append(parts, "("+s.Health+")")
	}
	if s.RestartCount > 0 {
		parts = append(parts, fmt.Sprintf("restarts %d", s.RestartCount))
	}
	switch {
	case s.Detail == "":
	case s.Status == agent.SvcWaiting && strings.HasPrefix(s.Detail, "waiting "):
		parts[0] = s.Detail // "waiting for db", not "waiting - waiting for db"
	default:
		parts = append(parts, "- "+s.Detail)
	}
	if s.Error != "" {
		parts = append(parts, "- error: "+s.Error)
	}
	return strings.Join(parts, " ")
}

func short(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func readInput(file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(os.Stdin)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read compose file: %w", err)
	}
	return b, nil
}

func environ() map[string]string {
	out := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}
